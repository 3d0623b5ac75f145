"""The Train tab: point at pairs (a path on the server or an upload), choose a model, epochs and batch size; the run
goes on in a background process (`ui.jobs`) with a live loss and recall plot, can be stopped, and its checkpoint
made the active model (re-embedding the collection) with one click.

A fine-tune (the active model) gets the fine-tune recipe of `vlm.finetune` (lr 1e-5, wd 0.1, frozen BatchNorm
statistics), shown beside the fields, and is scored on what the model knew (its reference set) beside the user's
validation: both curves are plotted ("your data", "what it knew"). Where the model names its own training data (the
demo model's recipe, a checkpoint's train_data), part of each batch replays it unless the box is unticked. Once a
fine-tune has finished, the WiSE-FT panel (`ui.wise`) scores every α between the model and its fine-tune and uses one.
API: `train_start`, `train_status`, `train_stop`, `train_use`, `train_recipe`."""

from __future__ import annotations

import logging
import math
from dataclasses import replace
from pathlib import Path

import gradio as gr
import pandas as pd

from ui import wise
from ui.errors import shown
from ui.inputs import checked_float, checked_int, checked_model, local_example, server_path
from ui.jobs import TrainStatus
from ui.model import banner_text, describe_active
from ui.state import AppState, ModelChoice
from ui.train_data import PAIR_FILES, check_dataset, unpack_upload
from vlm import finetune
from vlm.config import TrainConfig, from_dict
from vlm.errors import ConfigError, VLMError
from vlm.rundir import RunDir
from vlm.train import planned_steps

LOG = logging.getLogger(__name__)

MODELS = {
    "the active model (fine-tune)": None,
    "vlm-tiny (from scratch, 32 px)": "vlm-tiny",
    "vlm-small (from scratch, 64 px)": "vlm-small",
}
POLL_S = 2.0
MAX_COUNT = 10**9  # epochs, steps, validation interval: bounds on the number only (the server's caps come later)
MAX_BATCH = 65536
# The validation curves: the user's own held-out pairs, and the reference score ("what it knew", vlm/finetune.py).
RECALL_KEYS = {
    "val/image_retrieval_recall@1": "your data: image R@1",
    "val/text_retrieval_recall@1": "your data: text R@1",
    "val/mean_recall": "your data: mean recall",
    "ref/score": "what it knew",
}
KEEP_FRACTION = 0.5  # replay: half of each batch from the model's own training data (issue 14's probe)


def model_source(state: AppState, model: str) -> tuple[str, str | None]:
    """(model, pretrained) that the Model field names: the active model, a from-scratch architecture, or a path."""
    try:
        active = state.active.choice
    except VLMError:  # still loading (the tab is being built): the model it was started with
        active = state.choice
    name = MODELS[model] if model in MODELS else checked_model(model, None, state.allowed_dirs)[0]
    return (name, None) if name else (active.model, active.pretrained)


def recipe(state: AppState, model: str) -> tuple[float, str]:
    """The learning rate the run will use and a line saying the recipe and why (fine-tune or from scratch)."""
    name, pretrained = model_source(state, model)
    cfg = from_dict(TrainConfig, {"model": {"model": name, "pretrained": pretrained}})
    fine = finetune.starts_from_weights(cfg)
    r = finetune.FINE_TUNE if fine else finetune.FROM_SCRATCH
    what = "Fine-tune" if fine else "From scratch"
    line = (
        f"**{what} recipe:** learning rate {r.lr:g}, weight decay {r.weight_decay:g}, warm-up "
        + (f"min({r.warmup_max}, {r.warmup_share:.0%} of the steps)" if r.warmup_share else f"≤ {r.warmup_max} steps")
        + ", cosine"
        + (", BatchNorm statistics kept" if fine else "")
        + f" — {r.why}."
    )
    if fine:
        refs = finetune.default_reference(name)
        line += (
            f" Scored on what it knew: {', '.join(Path(s.split(':', 1)[-1]).name for s in refs)}."
            if refs
            else " This model brings no reference set, so nothing will show what it forgets."
        )
    return r.lr, line


def keep_data_for(state: AppState, name: str) -> tuple[str, str] | None:
    """The pairs a fine-tune of `name` replays, and a line saying what they are: its own training data where it names
    it (`vlm.demo.replay_data` for the demo model: its corpus where it exists, else a part rebuilt offline under the
    runs folder once)."""
    from vlm import demo

    if demo.is_demo_model(name):
        path, what = demo.replay_data(state.runs_dir / "demo-replay")
        return str(path), what
    own = finetune.own_training_data(name)
    return (own, f"the model's own training data ({own})") if own else None


def start(state: AppState, data: str, upload: str | None, model: str, epochs: int, steps: int, batch_size: int,
          lr: float | None, val_every: int, replay: bool = True) -> str:  # fmt: skip
    """Check the request, take the run slot, put an upload into the run's own folder, check the dataset and launch
    the run from its `TrainConfig`; returns a line for people. `lr` None or 0: the recipe's (fine-tune or from
    scratch); `replay`: a fine-tune replays the model's own training data where it names it."""
    limits = state.limits
    if batch_size < 2:
        raise ConfigError(f"the batch size must be at least 2 (contrastive training needs negatives), got {batch_size}")
    if epochs < 1 and steps < 1:
        raise ConfigError("give at least one epoch, or a number of steps")
    if steps > limits.max_train_steps:
        raise ConfigError(_too_many_steps(steps, limits.max_train_steps))
    if lr is not None and lr != 0 and not (math.isfinite(lr) and lr > 0):
        raise ConfigError(f"the learning rate must be a positive number (0 or empty: the recipe's), got {lr}")
    if upload and Path(upload).suffix.lower() in PAIR_FILES and not (data or "").strip():
        raise ConfigError(
            "an uploaded pairs file names images on the server: type the folder its image paths are relative to in "
            "the path box, or upload a .zip with the images"
        )
    name, pretrained = model_source(state, model)
    said: list[str] = []

    def prepare(run: RunDir) -> TrainConfig:
        # Runs with the slot taken, so an upload lands in this run's own folder and nowhere another start can write.
        if upload:
            source = unpack_upload(Path(upload), run.upload, int(limits.max_upload_mb * 2**20))
            in_server = Path(upload).suffix.lower() in PAIR_FILES  # a bare pairs file names images on the server
            root = server_path(data, state.allowed_dirs, "image folder") if in_server else None
        else:
            source, root = server_path(data, state.allowed_dirs, "dataset"), None
        dataset = check_dataset(source, root, batch_size)
        cfg = from_dict(TrainConfig, {
            "output_dir": str(run.path), "batch_size": batch_size, "epochs": max(1, epochs),
            "steps": steps if steps > 0 else None, "log_every": 1, "tensorboard": False,
            "time_limit_minutes": limits.max_train_minutes,
            "model": {"model": name, "pretrained": pretrained},
            "data": {"train_data": dataset.source, "data_root": dataset.root, "workers": 1},
            "optim": {"lr": lr or None},
        })  # fmt: skip
        cfg, notes = finetune.resolve(cfg)  # the fine-tune or from-scratch recipe for what is unset
        cfg, reference_notes = finetune.with_reference(cfg)  # the model's own reference set, or a note
        notes += reference_notes
        fine = finetune.starts_from_weights(cfg)
        keep = keep_data_for(state, name) if fine and replay else None
        if keep:
            cfg = replace(cfg, data=replace(cfg.data, keep_data=keep[0], keep_fraction=KEEP_FRACTION))
            notes.append(f"replaying {KEEP_FRACTION:.0%} of each batch from {keep[1]}")
        total = planned_steps(cfg, dataset.pairs)
        if total > limits.max_train_steps:
            raise ConfigError(_too_many_steps(total, limits.max_train_steps))
        told = "".join(f"{n[:1].upper()}{n[1:]}. " for n in notes)
        said.append(f"Started: {dataset.summary()}; about {total:,} steps. {told}Run folder: `{run.path}`.")
        r = finetune.FINE_TUNE if fine else finetune.FROM_SCRATCH
        warmup = finetune.warmup_steps(r, total) if fine else max(1, min(100, total // 10))
        return replace(
            cfg,
            optim=replace(cfg.optim, warmup_steps=warmup),  # the app has no warm-up field: always the run's own
            val_every=val_every if val_every > 0 else max(1, total // 5),
            save_every=max(10, total // 4),
        )

    state.trainer.start(prepare)
    return said[0]


def _too_many_steps(steps: int, cap: int) -> str:
    return (
        f"{steps:,} steps asked for; this server allows at most {cap:,} steps per run (its --max-train-steps): "
        f"give fewer steps or epochs"
    )


def describe(status: TrainStatus) -> str:
    """A progress line: state, step of total with a bar, the latest loss and speed, what to do next."""
    if status.state == "idle":
        return "No training run yet."
    head = f"**{status.state}**"
    if status.total:
        done = min(1.0, status.step / status.total)
        bar = "█" * round(20 * done) + "░" * (20 - round(20 * done))
        head += f" — step {status.step:,} / {status.total:,} `{bar}` {done:.0%}"
    elif status.running:
        head += f" — step {status.step:,}" if status.step else " — reading the data…"
    last = next((m for m in reversed(status.metrics) if "train/loss" in m), None)
    if last is not None:
        head += f" · loss {last['train/loss']:.3f} · {last.get('train/samples_per_s', 0):.0f} samples/s"
    lines = [head]
    scores = scores_line(status.metrics)
    if scores:
        lines.append(scores)
    if status.bad_rows:
        lines.append(f"{status.bad_rows:,} bad row(s) were skipped (see `{status.run_dir}/bad_rows.jsonl`).")
    if status.train_pairs is not None:
        lines.append(f"{status.train_pairs:,} training pairs, {status.val_pairs or 0:,} held out for validation.")
    if status.note and not status.running:
        lines.append(status.note[:1].upper() + status.note[1:] + ".")
    if status.message:
        lines.append(f"Error: {status.message}")
    if status.checkpoint is not None and not status.running:
        lines.append(f"Checkpoint: `{status.checkpoint}` — click **Use this model** to make it active.")
    lines.append(f"Run folder: `{status.run_dir}`")
    return "\n\n".join(lines)


def scores_line(metrics: list[dict]) -> str:
    """ "Your data: mean recall 0.41 · What it knew: 0.83 (0.95 before the first step)", from what was logged."""
    val = next((m["val/mean_recall"] for m in reversed(metrics) if "val/mean_recall" in m), None)
    refs = [m["ref/score"] for m in metrics if "ref/score" in m]
    parts = [f"Your data: mean recall {val:.3f}"] if val is not None else []
    if refs:
        parts.append(
            f"What it knew: {refs[-1]:.3f}" + (f" ({refs[0]:.3f} before the first step)" if len(refs) > 1 else "")
        )
    return " · ".join(parts)


def curves(status: TrainStatus) -> tuple[pd.DataFrame | None, pd.DataFrame | None]:
    """(step, loss) and (step, value, metric) tables for the two plots; None while a table has no rows (Gradio
    6.31's colour-encoded line plot never draws lines once it has been sent an empty table)."""
    rows = [m for m in status.metrics if "train/loss" in m]
    loss = pd.DataFrame({
        "step": pd.Series([m["step"] for m in rows], dtype="int64"),
        "loss": pd.Series([m["train/loss"] for m in rows], dtype="float64"),
    })  # fmt: skip
    points = [(m["step"], m[k], label) for m in status.metrics for k, label in RECALL_KEYS.items() if k in m]
    recall = pd.DataFrame({
        "step": pd.Series([p[0] for p in points], dtype="int64"),
        "value": pd.Series([p[1] for p in points], dtype="float64"),
        "metric": pd.Series([p[2] for p in points], dtype="string"),
    })  # fmt: skip
    return (loss if len(loss) else None), (recall if len(recall) else None)


def build(state: AppState, banner: gr.Markdown, page: gr.Blocks) -> None:
    gr.Markdown(
        "Train on image–text pairs: a CSV/TSV/JSONL file (an image path and a caption per row), a folder of images "
        "with same-named .txt captions, a Hugging Face dataset folder or WebDataset shards — on the server, or "
        "uploaded as a .zip. Training runs in the background; you can leave this tab."
    )
    with gr.Row():
        with gr.Column():
            data = gr.Textbox(label="Dataset on the server", placeholder="runs/shapes/pairs.csv", elem_id="train-data")
            upload = local_example(
                gr.File(label="…or upload a .zip (or a pairs file)", file_types=[".zip", ".csv", ".tsv", ".jsonl"]),
                "my_pairs.zip",
            )
            model = gr.Dropdown(
                list(MODELS), value=next(iter(MODELS)), label="Model", allow_custom_value=True, elem_id="train-model"
            )
            with gr.Row():
                epochs = gr.Number(value=1, precision=0, minimum=0, label="Epochs", elem_id="train-epochs")
                steps = gr.Number(value=0, precision=0, minimum=0, label="Steps (0: use epochs)", elem_id="train-steps")
            with gr.Row():
                batch_size = gr.Number(value=32, precision=0, minimum=2, label="Batch size", elem_id="train-batch")
                lr = gr.Number(value=recipe(state, next(iter(MODELS)))[0], label="Learning rate", elem_id="train-lr")
                val_every = gr.Number(value=0, precision=0, minimum=0, label="Validate every (0: 5 times)")
            replay = gr.Checkbox(value=True, label="Replay what the model learned from (fine-tune)",
                                 elem_id="train-replay")  # fmt: skip
            recipe_md = gr.Markdown(recipe(state, next(iter(MODELS)))[1], elem_id="train-recipe")
            with gr.Row():
                start_button = gr.Button("Start training", variant="primary")
                stop_button = gr.Button("Stop", variant="stop")
                use_button = gr.Button("Use this model")
        with gr.Column():
            status = gr.Markdown(describe(state.trainer.status()), elem_id="train-status")
            loss_plot = gr.LinePlot(
                x="step",
                y="loss",
                label="Training loss",
                height=220,
                y_axis_format=".2f",
                x_axis_format="d",
                elem_id="train-loss",
            )
            recall_plot = gr.LinePlot(
                x="step", y="value", color="metric", y_lim=[0, 1], label="Your data and what it knew", height=220,
                y_axis_format=".2f", x_axis_format="d", elem_id="train-recall",
            )  # fmt: skip
            used = gr.Markdown(elem_id="train-used")
            wise.build(state, banner)  # after a fine-tune: WiSE-FT's slider over α, then "Use this model"
    timer = gr.Timer(POLL_S, active=False)

    @shown
    def train_start(data: str, upload: str | None, model: str, epochs: float, steps: float, batch_size: float,
                    lr: float | None, val_every: float, replay: bool = True):  # fmt: skip
        line = start(state, data, upload, model, checked_int(epochs or 0, "epochs", 0, MAX_COUNT),
                     checked_int(steps or 0, "steps", 0, MAX_COUNT), checked_int(batch_size or 0, "the batch size", 0,
                     MAX_BATCH), checked_float(lr or 0, "the learning rate", 0.0, 1.0),
                     checked_int(val_every or 0, "validate every", 0, MAX_COUNT), bool(replay))  # fmt: skip
        return line, gr.Timer(active=True)

    @shown
    def train_recipe(model: str):
        """The recipe for the chosen model: its learning rate goes into the field, the line says why."""
        value, line = recipe(state, model)
        return value, line

    def train_status():
        current = state.trainer.status()
        loss, recall = curves(current)
        return describe(current), loss, recall, gr.Timer(active=current.running)

    @shown
    def train_stop():
        stopped = state.trainer.stop()
        loss, recall = curves(stopped)
        return describe(stopped), loss, recall, gr.Timer(active=stopped.running)

    @shown
    def train_use(progress=gr.Progress(track_tqdm=True)):  # noqa: B008 (Gradio's idiom)
        current = state.trainer.status()
        if current.running:
            raise VLMError("the run is still going: wait for it to finish, or stop it (a stop saves a checkpoint)")
        if current.checkpoint is None:
            raise VLMError("this run has no checkpoint yet: train for more steps first")
        active = state.switch(ModelChoice(str(current.checkpoint)), progress=True)
        return describe_active(state, active), banner_text(state, active)

    start_button.click(train_start, [data, upload, model, epochs, steps, batch_size, lr, val_every, replay],
                       [used, timer], api_name="train_start", concurrency_id="train", concurrency_limit=1)  # fmt: skip
    model.change(train_recipe, [model], [lr, recipe_md], api_name="train_recipe")
    page.load(train_recipe, [model], [lr, recipe_md], api_visibility="private", show_progress="hidden")
    polled = [status, loss_plot, recall_plot, timer]
    timer.tick(train_status, None, polled, api_name="train_status", concurrency_limit=None, show_progress="hidden")
    # A reload (or a second visitor) sees the run as it is now, and polls it while it runs: the values above were
    # computed when the app was built.
    page.load(train_status, None, polled, api_visibility="private", show_progress="hidden")
    stop_button.click(train_stop, None, polled, api_name="train_stop", concurrency_id="train", concurrency_limit=1)
    use_button.click(train_use, None, [used, banner], api_name="train_use", concurrency_id="admin", concurrency_limit=1)
