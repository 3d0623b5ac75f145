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

from ui import status
from ui.errors import shown
from ui.inputs import checked_model
from ui.state import Active, AppState, ModelChoice
from ui.status import DEMO_HINT, server_status
from vlm import checkpoint, models
from vlm.errors import ConfigError
from vlm.printable import printable

LOG = logging.getLogger(__name__)

MAX_LISTED = 40  # local checkpoints offered in the list
FROM_SCRATCH = "random weights (train from scratch)"  # chosen explicitly, never a default


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
        f"- collection: {active.collection.stats().count:,} images in `{active.collection.root}`",
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
    """Checkpoint folders under `folders` (a run's final/ and step checkpoints), newest first."""
    found: list[Path] = []
    for folder in folders:
        if folder.is_dir():
            found += [p.parent for p in folder.glob("**/config.json") if checkpoint.is_checkpoint_dir(p.parent)]
    found = sorted(set(found), key=lambda p: p.stat().st_mtime, reverse=True)
    return [str(p) for p in found[:MAX_LISTED]]


def choices(state: AppState) -> list[str]:
    return ["demo", *local_checkpoints(state.runs_dir), "vlm-tiny", "vlm-small", "ViT-B-32"]  # paths people may load


def chosen(state: AppState, model: str, weights: str | None) -> ModelChoice:
    """The model and weights people chose. An architecture without weights would answer at random, so it needs
    either pretrained weights (a tag open_clip knows for it, or a file) or `FROM_SCRATCH`, chosen explicitly."""
    scratch = (weights or "").strip() == FROM_SCRATCH
    name, weights = checked_model(model, None if scratch else weights, state.allowed_dirs)
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


def build(state: AppState, banner: gr.Markdown, tab: gr.Tab) -> list[gr.components.Component]:
    """The tab; returns the fields that show the active model (`follow` keeps them current)."""
    with gr.Row():
        with gr.Column(scale=3):
            details = gr.Markdown(describe_active(state), elem_id="model-details")
            with gr.Accordion("Provenance (JSON)", open=False):
                provenance = gr.Code(json.dumps(info(state), indent=2, default=str), language="json")
        with gr.Column(scale=2):
            model = gr.Dropdown(
                choices(state),
                value=state.active.choice.model,
                allow_custom_value=True,
                label="Model: 'demo', a checkpoint folder, or an open_clip name",
                elem_id="model-choice",
            )
            pretrained = gr.Textbox(
                value=state.active.choice.pretrained or "",
                label="Pretrained tag or weights file (open_clip names only)",
                placeholder="laion2b_s34b_b79k",
                elem_id="model-weights",
            )
            load = gr.Button("Load model", variant="primary")
            refresh = gr.Button("Refresh the list")
            gr.Markdown(
                "Loading a model opens its collection; the first time, every image is embedded with it (progress "
                "is shown). Searches go on with the current model meanwhile."
            )

    @shown
    def model_switch(model: str, pretrained: str, progress=gr.Progress(track_tqdm=True)):  # noqa: B008
        active = state.switch(chosen(state, model, pretrained), progress=True)
        return describe_active(state, active), json.dumps(info(state), indent=2, default=str), banner_text(state)

    def model_info() -> dict:
        """The active model, its provenance and its collection."""
        return info(state)

    load.click(model_switch, [model, pretrained], [details, provenance, banner], api_name="model_switch",
               concurrency_id="admin", concurrency_limit=1)  # fmt: skip
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
    shown_fingerprint = gr.State(None)  # per page: the model its fields show

    def refresh(seen: str | None):
        now = server_status(state)
        fingerprint, text = now["model"]["fingerprint"], status.banner(now)
        if fingerprint == seen:
            return text, seen, *(gr.skip() for _ in fields)
        active = state.active
        return (
            text,
            fingerprint,
            gr.Dropdown(choices=choices(state), value=active.choice.model),
            active.choice.pretrained or "",
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
