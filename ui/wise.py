"""The Train tab's WiSE-FT panel: once a fine-tune from weights has finished, every α between the model it started
from (α = 0) and the fine-tune (α = 1) is scored on "your data" and "what it knew" (`eval.wise_run`, cached in the
run folder), the frontier is drawn, a slider over α shows both scores, and "Use this model" makes the model at that
α active (exported once as an ordinary checkpoint, `<run>/wise_ft/alpha-<α>/`).
API: `train_wise_sweep`, `train_wise_at`, `train_wise_use`."""

from __future__ import annotations

import io
from pathlib import Path

import gradio as gr
from PIL import Image

from eval import wise_run
from ui.errors import shown
from ui.inputs import checked_float
from ui.model import banner_text, describe_active
from ui.outputs import picture
from ui.state import AppState, ModelChoice
from vlm.errors import VLMError

ALPHAS = "0,0.1,...,1"  # the α the panel scores (the slider's steps)
INTRO = (
    "**WiSE-FT** (weight-space ensembles, Wortsman et al. 2022): after a fine-tune finishes, average its weights with "
    "the model it started from. α = 0 is that model, α = 1 the fine-tune; the α in between often keep most of what "
    "the model knew and much of what it learned. Score every α, pick one on the slider, and use it."
)


def finished_run(state: AppState) -> Path:
    """The app's latest run, once it has ended (`ConfigError` from `eval.wise_run` names what else is missing)."""
    status = state.trainer.status()
    if status.run_dir is None:
        raise VLMError("no training run yet: fine-tune the active model first (Start training)")
    if status.running:
        raise VLMError("the run is still going: WiSE-FT needs its final model, wait for it to finish")
    return status.run_dir


def scored(state: AppState) -> wise_run.RunSweep:
    """The latest run's sweep, scored already (a slider move or "Use this model" never starts one)."""
    sweep = wise_run.cached(finished_run(state), ALPHAS)
    if sweep is None:
        raise VLMError("the α of this run are not scored yet: click 'Score every α' first")
    return sweep


def scores_at(sweep: wise_run.RunSweep, alpha: float) -> str:
    """ "α = 0.3: your data 0.41 · what it knew 0.87", with both ends for comparison and the picked α."""
    p = sweep.at(alpha)
    ends = {0.0: "the model it started from", 1.0: "the fine-tune"}
    name = f" ({ends[p.alpha]})" if p.alpha in ends else ""
    lines = [f"**α = {p.alpha:g}{name}:** your data **{p.scores['val']:.3f}** · what it knew "
             f"**{p.scores['reference']:.3f}**"]  # fmt: skip
    for alpha, what in ends.items():
        try:
            q = sweep.at(alpha)
        except VLMError:
            continue
        lines.append(f"α = {alpha:g} ({what}): {q.scores['val']:.3f} · {q.scores['reference']:.3f}")
    lines.append(f"Picked by {sweep.rule}: α = {sweep.picked.alpha:g}. Your data = {sweep.labels[0]}; what it knew "
                 f"= {sweep.labels[1]}.")  # fmt: skip
    return "\n\n".join(lines)


def build(state: AppState, banner: gr.Markdown) -> None:
    """The panel, inside the Train tab's layout (`ui.train.build`)."""
    with gr.Accordion("WiSE-FT: between the model it started from and the fine-tune", open=False, elem_id="train-wise"):
        gr.Markdown(INTRO)
        sweep_button = gr.Button("Score every α (after a fine-tune)", elem_id="train-wise-sweep")
        frontier = picture("Frontier: your data against what it knew", height=360, elem_id="train-wise-frontier")
        alpha = gr.Slider(0.0, 1.0, value=0.5, step=0.1, label="α (0: the model it started from, 1: the fine-tune)",
                          elem_id="train-wise-alpha")  # fmt: skip
        scores = gr.Markdown(elem_id="train-wise-scores")
        use_button = gr.Button("Use this model (at this α)", elem_id="train-wise-use")
        used = gr.Markdown(elem_id="train-wise-used")

    @shown
    def train_wise_sweep(progress=gr.Progress()):  # noqa: B008 (Gradio's idiom)
        """Score every α of the latest run (or read its cached sweep); the slider moves to the picked α."""
        run = finished_run(state)
        sweep = wise_run.sweep_run(run, ALPHAS, device=state.device, progress=lambda line: progress(None, desc=line))
        picture = Image.open(io.BytesIO(sweep.frontier.read_bytes()))
        return picture, sweep.picked.alpha, scores_at(sweep, sweep.picked.alpha)

    @shown
    def train_wise_at(value: float):
        """Both scores at α (from the cached sweep: nothing is recomputed)."""
        return scores_at(scored(state), checked_float(value, "α", 0.0, 1.0))

    @shown
    def train_wise_use(value: float, progress=gr.Progress(track_tqdm=True)):  # noqa: B008 (Gradio's idiom)
        """Export the model at α (once) and make it the active model, re-embedding the collection."""
        sweep = scored(state)
        point = sweep.at(checked_float(value, "α", 0.0, 1.0))
        path = wise_run.export_run(sweep.run, point.alpha, device=state.device, scores=point.scores)
        active = state.switch(ModelChoice(str(path)), progress=True)
        return f"Using α = {point.alpha:g} (`{path}`).\n\n" + describe_active(state, active), banner_text(state, active)

    sweep_button.click(train_wise_sweep, None, [frontier, alpha, scores], api_name="train_wise_sweep",
                       concurrency_id="wise", concurrency_limit=1)  # fmt: skip
    alpha.release(train_wise_at, [alpha], [scores], api_name="train_wise_at", show_progress="hidden")
    use_button.click(train_wise_use, [alpha], [used, banner], api_name="train_wise_use", concurrency_id="admin",
                     concurrency_limit=1)  # fmt: skip
