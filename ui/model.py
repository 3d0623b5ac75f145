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

from ui.errors import shown
from ui.inputs import checked_model
from ui.state import Active, AppState, ModelChoice
from vlm import checkpoint

LOG = logging.getLogger(__name__)

DEMO_HINT = (
    "For real photos start the app with a pretrained model and your own folder: "
    "`python app.py --model ViT-B-32 --pretrained laion2b_s34b_b79k --images DIR`."
)
MAX_LISTED = 40  # local checkpoints offered in the list


def banner_text(state: AppState, active: Active | None = None) -> str:
    active = active or state.active
    count = active.collection.stats().count
    if active.is_demo:
        return (
            f"**Demo** — a small model trained by this project on synthetic shapes and Twemoji icons, searching "
            f"{count:,} demo images; it knows colours and shapes well, emoji names only a little. {DEMO_HINT}"
        )
    return f"Model **{active.encoders.source}** · collection of {count:,} images."


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


def build(state: AppState, banner: gr.Markdown, tab: gr.Tab) -> None:
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
            )
            pretrained = gr.Textbox(
                value=state.active.choice.pretrained or "",
                label="Pretrained tag or weights file (open_clip names only)",
                placeholder="laion2b_s34b_b79k",
            )
            load = gr.Button("Load model", variant="primary")
            refresh = gr.Button("Refresh the list")
            gr.Markdown(
                "Loading a model opens its collection; the first time, every image is embedded with it (progress "
                "is shown). Searches go on with the current model meanwhile."
            )

    @shown
    def model_switch(model: str, pretrained: str, progress=gr.Progress(track_tqdm=True)):  # noqa: B008
        name, weights = checked_model(model, pretrained, state.allowed_dirs)
        active = state.switch(ModelChoice(name, weights), progress=True)
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
