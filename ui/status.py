"""What the server is doing now, as one record: the active model (as asked for, its architecture, weights and
fingerprint, whether its weights are random), a model switch under way, the collection, and the training run (read
from its run folder). Every page reads it when it loads and again every `POLL_S` seconds, so a reload, a second tab
or a switch made by another visitor shows the model that actually answers. API: `server_status`.
"""

from __future__ import annotations

from typing import Any

from ui.state import Active, AppState
from vlm import demo

POLL_S = 5.0  # how often an open page asks again

DEMO_HINT = (
    "For real photos start the app with a pretrained model and your own folder: "
    "`python app.py --model ViT-B-32 --pretrained laion2b_s34b_b79k --images DIR`."
)


def server_status(state: AppState, active: Active | None = None) -> dict[str, Any]:
    """A JSON-ready record of the active model, a switch under way, the collection and the training run."""
    active = active or state.active  # one snapshot: model and collection belong together
    enc = active.encoders
    collection = active.collection
    run = state.trainer.status()
    switching = state.switching
    return {
        "model": {
            "requested": active.choice.model,
            "pretrained": active.choice.pretrained,
            "source": enc.source,
            "architecture": enc.model_name,
            "fingerprint": enc.fingerprint,
            "random_weights": enc.random_weights,
            "demo": active.is_demo,
            # what the demo model knows and does not, from its card's held-out figures (`vlm.demo.describe`)
            "about": demo_about(active),
        },
        "switching_to": str(switching) if switching is not None else None,
        "collection": {"folder": str(collection.root), "images": collection.count, "version": collection.version},
        "run": {
            "state": run.state,
            "step": run.step,
            "total": run.total,
            "folder": str(run.run_dir) if run.run_dir is not None else None,
            "checkpoint": str(run.checkpoint) if run.checkpoint is not None else None,
        },
    }


def demo_about(active: Active) -> dict[str, str] | None:
    """For the demo model: what it knows and what it does not (`vlm.demo.describe`); None for any other model."""
    if not active.is_demo:
        return None
    about = demo.describe(active.encoders.provenance)
    return {"knows": about.knows, "weak": about.weak}


def banner(status: dict[str, Any]) -> str:
    """The line at the top of every page: which model answers (with a warning for random weights), what it searches,
    a switch or a training run under way."""
    model, count = status["model"], status["collection"]["images"]
    if model["demo"]:
        about = model.get("about") or {"knows": "what its model card says", "weak": "photos"}
        lines = [
            f"**Demo** — a small model trained from scratch by this project, searching {count:,} demo images. It "
            f"knows {about['knows']}. It does not know {about['weak']}. {DEMO_HINT}"
        ]
    else:
        lines = [f"Model **{model['source']}** (`{model['fingerprint']}`) · collection of {count:,} images."]
    if model["random_weights"]:
        lines.append(
            f"⚠️ **Randomly initialised weights**: `{model['architecture']}` has not been trained, so every answer is "
            f"noise. Choose pretrained weights in the Model tab, or train it in the Train tab."
        )
    if status["switching_to"]:
        lines.append(f"Switching to **{status['switching_to']}**… (the model above answers until it is ready)")
    run = status["run"]
    if run["state"] in ("starting", "reading data", "training", "stopping"):
        progress = f"step {run['step']:,}" + (f" / {run['total']:,}" if run["total"] else "")
        lines.append(f"Training run **{run['state']}** — {progress} (Train tab).")
    return "\n\n".join(lines)
