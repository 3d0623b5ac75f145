"""The Model tab: the active model and its provenance, and a switch between open_clip pretrained names (downloaded
when online; offline, `vlm.models.load` says what to do), local checkpoints and the demo model. A switch opens the
new model's collection, embedding the images if this model has none yet. API: `model_info`, `model_switch`.
Also the banner at the top of the app, which labels the demo as such."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import gradio as gr

from indexing.errors import EmbedStopped
from ui import status
from ui.errors import shown
from ui.inputs import checked_model
from ui.state import Active, AppState, ModelChoice
from ui.status import DEMO_HINT, server_status
from vlm import models
from vlm.errors import ConfigError
from vlm.printable import printable
from vlm.rundir import usable_checkpoints

LOG = logging.getLogger(__name__)

MAX_LISTED = 40  # local checkpoints offered in the list
FROM_SCRATCH = "random weights (train from scratch)"  # chosen explicitly, never a default
OWN_WEIGHTS = "its own weights"  # the demo, a checkpoint folder, an hf-hub: id


def banner_text(state: AppState, active: Active | None = None) -> str:
    """The banner for the server as it is now (`ui.status`); `active`, a snapshot just made, is what it shows."""
    return status.banner(server_status(state, active))


def info(state: AppState) -> dict[str, Any]:
    """The active model (`Encoders.describe`), what it was asked as, and its collection."""
    active = state.active
    stats = active.collection.stats()
    return {
        "requested": {"model": active.choice.model, "pretrained": active.choice.pretrained},
        "demo": active.is_demo,
        **active.encoders.describe(),
        "collection": {"folder": stats.path, "images": stats.count, "version": stats.version},
    }


def describe_active(state: AppState, active: Active | None = None) -> str:
    active = active or state.active
    enc = active.encoders
    prov = enc.provenance
    lines = [
        f"### {enc.source}",
        f"- architecture `{enc.model_name}`, {sum(p.numel() for p in enc.model.parameters()):,} parameters, "
        f"{enc.embed_dim}-d embeddings, {enc.image_size} px input, {enc.device} / {enc.precision}",
        f"- fingerprint `{enc.fingerprint}` (a collection only answers queries from these exact weights)",
        *(
            ["- ⚠️ **randomly initialised**: these weights were never trained; its answers are noise"]
            if enc.random_weights
            else []
        ),
        f"- collection: {active.collection.count:,} images in `{active.collection.root}`",
    ]
    if prov:
        lines.append(
            f"- trained by {prov.get('trained_by', '?')} on {prov.get('date', '?')}: {prov.get('steps', '?')} steps "
            f"on {prov.get('train_pairs', '?')} pairs from `{prov.get('train_data', '?')}`, "
            f"initial weights {prov.get('initial_weights', '?')}"
        )
        for title, key in (("validation at the end of training", "metrics"), ("model card figures", "demo_figures")):
            figures = {k: v for k, v in (prov.get(key) or {}).items() if isinstance(v, float)}
            if figures:
                lines.append(f"- {title}: " + ", ".join(f"{k} {v:.3f}" for k, v in list(figures.items())[:8]))
    if active.is_demo:
        lines.append(f"\n{DEMO_HINT}")
    return "\n".join(lines)


def local_checkpoints(*folders: Path) -> list[str]:
    """The weights under `folders`, each once (a run by its final/ or newest step: `vlm.rundir.usable_checkpoints`),
    newest first."""
    found = sorted(
        {p for folder in folders for p in usable_checkpoints(folder)}, key=lambda p: p.stat().st_mtime, reverse=True
    )
    return [str(p) for p in found[:MAX_LISTED]]


def choices(state: AppState) -> list[str]:
    return ["demo", *local_checkpoints(state.runs_dir), "vlm-tiny", "vlm-small", "ViT-B-32"]  # paths people may load


def chosen(state: AppState, model: str, weights: str | None) -> ModelChoice:
    """The model and weights people chose. An architecture without weights would answer at random, so it needs
    either pretrained weights (a tag open_clip knows for it, or a file) or `FROM_SCRATCH`, chosen explicitly."""
    weights = (weights or "").strip()
    scratch = weights == FROM_SCRATCH
    name, weights = checked_model(model, None if scratch or weights == OWN_WEIGHTS else weights, state.allowed_dirs)
    tags = models.pretrained_tags(name)
    if scratch and tags is None:
        raise ConfigError(f"{FROM_SCRATCH!r} is for an architecture name; {printable(name)} carries its own weights")
    if tags is not None and weights is None and not scratch:
        offer = f"one of its pretrained tags ({', '.join(tags)}), a weights file, or " if tags else ""
        raise ConfigError(
            f"{name} has no weights given, so it would answer at random: choose {offer}{FROM_SCRATCH!r} "
            f"(to train it from scratch)"
        )
    return ModelChoice(name, weights)


def weights_choices(model: str | None) -> list[str]:
    """What the weights list offers for `model`: the pretrained tags open_clip knows for an architecture and, last,
    `FROM_SCRATCH`; only `OWN_WEIGHTS` for a model that carries its own (the demo, a checkpoint, an hf-hub: id)."""
    tags = models.pretrained_tags(str(model or "").strip())
    return [OWN_WEIGHTS] if tags is None else [*tags, FROM_SCRATCH]


def weights_field(model: str | None, value: str | None = None) -> gr.Dropdown:
    """The weights list for `model`, with `value` chosen (None: nothing chosen; people must pick)."""
    offered = weights_choices(model)
    if offered == [OWN_WEIGHTS]:
        return gr.Dropdown(choices=offered, value=OWN_WEIGHTS, info="this model carries its own weights")
    tags = len(offered) - 1
    return gr.Dropdown(
        choices=offered,
        value=value,
        info=f"{tags} pretrained tag(s) known to open_clip, or train from scratch; or type a weights file's path",
    )


def follow_weights(state: AppState, model: str | None, weights: str | None) -> gr.Dropdown:
    """The weights list after the model field changed (by a person, or by `follow` showing the active model): the
    active model's own weights for the active model; for another one a tag kept only if it has it too, otherwise
    nothing chosen (random weights never carry over from one model to the next)."""
    active = state.active
    if (model or "").strip() == active.choice.model:
        return weights_field(model, active_weights(active))
    tags = models.pretrained_tags((model or "").strip()) or []
    return weights_field(model, weights if weights in tags else None)


def active_weights(active: Active) -> str:
    if active.choice.pretrained:
        return active.choice.pretrained
    return FROM_SCRATCH if active.encoders.random_weights else OWN_WEIGHTS


def build(state: AppState, banner: gr.Markdown, tab: gr.Tab) -> list[gr.components.Component]:
    """The tab; returns the fields that show the active model (`follow` keeps them current)."""
    active = state.active
    with gr.Row():
        with gr.Column(scale=3):
            details = gr.Markdown(describe_active(state), elem_id="model-details")
            with gr.Accordion("Provenance (JSON)", open=False):
                provenance = gr.Code(json.dumps(info(state), indent=2, default=str), language="json")
        with gr.Column(scale=2):
            model = gr.Dropdown(
                choices(state),
                value=active.choice.model,
                allow_custom_value=True,
                label="Model: 'demo', a checkpoint folder, or an open_clip name",
                elem_id="model-choice",
            )
            pretrained = gr.Dropdown(
                weights_choices(active.choice.model),
                value=active_weights(active),
                allow_custom_value=True,
                label="Weights (open_clip names: a pretrained tag, a weights file, or train from scratch)",
                elem_id="model-weights",
            )
            load = gr.Button("Load model", variant="primary", elem_id="model-load")
            plan = gr.Markdown(elem_id="model-plan")
            with gr.Row():
                confirm = gr.Button("Embed and switch", variant="primary", visible=False, elem_id="model-confirm")
                cancel = gr.Button("Cancel", visible=False, elem_id="model-cancel")
                stop = gr.Button("Stop embedding", variant="stop", visible=False, elem_id="model-stop")
            refresh = gr.Button("Refresh the list")
            gr.Markdown(
                "Loading a model first estimates how long embedding the collection with it takes, and asks before "
                "starting; a model used before is switched to at once. Searches go on with the current model meanwhile."
            )

    hidden = (gr.Button(visible=False), gr.Button(visible=False))

    @shown
    def model_plan(model: str, pretrained: str | None, progress=gr.Progress()):  # noqa: B008
        """Load the chosen model and estimate the embedding; switch at once when there is nothing to embed."""
        choice = chosen(state, model, pretrained)
        progress(0, desc=f"loading {choice}")
        encoders = models.load(choice.model, choice.pretrained, device=state.device, runtime="auto")
        current = state.active
        estimate = state.library.embed_plan(encoders, current.collection.count)
        state.hold(choice, encoders)
        if estimate.images == 0 or encoders.fingerprint == current.encoders.fingerprint:
            active = state.switch(choice)
            return (f"Switched to **{choice}**: its collection was ready.", *hidden, describe_active(state, active),
                    json.dumps(info(state), indent=2, default=str), banner_text(state))  # fmt: skip
        warning = (
            " ⚠️ Its weights are **random**: it will answer at random until trained." if encoders.random_weights else ""
        )
        text = f"**{choice}**: {estimate.describe()}.{warning} Embed and switch, or cancel?"
        return (text, gr.Button(visible=True), gr.Button(visible=True), gr.skip(), gr.skip(), gr.skip())

    note = {"text": ""}  # how the last switch from this app ended, for the plan line (a stop is no error)

    @shown
    def model_switch(model: str, pretrained: str | None, progress=gr.Progress(track_tqdm=True)):  # noqa: B008
        choice = chosen(state, model, pretrained)
        note["text"] = ""
        try:
            active = state.switch(choice, progress=True)
        except EmbedStopped as e:
            note["text"] = f"Stopped: {e}. The active model is unchanged; load **{choice}** again to finish embedding."
            active = state.active
        return describe_active(state, active), json.dumps(info(state), indent=2, default=str), banner_text(state)

    def model_stop():
        """Stop the embedding of a switch under way (before its next batch; what is embedded is kept)."""
        if not state.stop_switch():
            return "No embedding is under way."
        return "Stopping after the current batch…"

    def model_cancel():
        held = state.release()
        return ("Cancelled: nothing was embedded; the active model is unchanged." if held else ""), *hidden

    def model_info() -> dict:
        """The active model, its provenance and its collection."""
        return info(state)

    load.click(model_plan, [model, pretrained], [plan, confirm, cancel, details, provenance, banner],
               api_name="model_plan", concurrency_id="admin", concurrency_limit=1)  # fmt: skip
    confirm.click(
        lambda: ("Embedding…", *hidden, gr.Button(visible=True)),
        None,
        [plan, confirm, cancel, stop],
        api_visibility="private",
    ).then(
        model_switch,
        [model, pretrained],
        [details, provenance, banner],
        api_name="model_switch",
        concurrency_id="admin",
        concurrency_limit=1,
    ).then(lambda: (note["text"], gr.Button(visible=False)), None, [plan, stop], api_visibility="private")
    stop.click(model_stop, None, plan, api_name="model_stop")  # fmt: skip
    cancel.click(model_cancel, None, [plan, confirm, cancel], api_name="model_cancel")
    model.change(lambda m, w: follow_weights(state, m, w), [model, pretrained], pretrained, api_visibility="private")
    refresh.click(lambda: gr.Dropdown(choices=choices(state)), None, model, api_visibility="private")
    # The model may have been switched elsewhere (the Train tab, another visitor): show the current one.
    tab.select(
        lambda: (describe_active(state), json.dumps(info(state), indent=2, default=str)),
        None,
        [details, provenance],
        api_visibility="private",
    )
    gr.api(model_info, api_name="model_info")
    return [model, pretrained, details, provenance]


def follow(state: AppState, page: gr.Blocks, banner: gr.Markdown, fields: list[gr.components.Component]) -> None:
    """Every page reads the server's status (`ui.status`) when it loads and every `POLL_S` seconds: the banner always,
    the Model tab's `fields` when the answering model differs from the one this page shows (so what a person is typing
    there is not overwritten while nothing changed)."""
    # Per page: the model its fields show; a page starts with the values the fields were built with.
    shown_fingerprint = gr.State(state.active.encoders.fingerprint)

    def refresh(seen: str):
        now = server_status(state)
        fingerprint, text = now["model"]["fingerprint"], status.banner(now)
        if fingerprint == seen:
            return text, seen, *(gr.skip() for _ in fields)
        active = state.active
        return (
            text,
            fingerprint,
            gr.Dropdown(choices=choices(state), value=active.choice.model),
            weights_field(active.choice.model, active_weights(active)),
            describe_active(state, active),
            json.dumps(info(state), indent=2, default=str),
        )

    timer = gr.Timer(status.POLL_S)
    outputs = [banner, shown_fingerprint, *fields]
    page.load(refresh, shown_fingerprint, outputs, api_visibility="private", show_progress="hidden")
    timer.tick(refresh, shown_fingerprint, outputs, api_visibility="private", show_progress="hidden",
               concurrency_limit=None)  # fmt: skip

    def server_now() -> dict:
        """What the server is doing: the active model, a switch under way, the collection, the training run."""
        return server_status(state)

    gr.api(server_now, api_name="server_status")
