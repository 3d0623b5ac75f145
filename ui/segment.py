"""The Segment tab: an image and one or more phrases give a coloured mask overlay (one colour per phrase) and a
heat map per phrase (`vlm.segment`), training-free or with a decoder trained by `vlm train-seg`. A phrase whose
score is below the model's "absent" threshold (`vlm.segment.absent`, measured on the synthetic world on first use)
is "not found in this image" and gets no mask. API: `segment`."""

from __future__ import annotations

import logging
from pathlib import Path

import gradio as gr
from PIL import Image

from ui.errors import shown
from ui.examples import image_examples
from ui.inputs import checked_float, checked_phrases, image_input, require_image, server_path
from ui.outputs import picture, pictures
from ui.state import AppState
from vlm.errors import ConfigError
from vlm.rundir import usable_checkpoints
from vlm.segment import segment
from vlm.segment.absent import absent_threshold
from vlm.segment.decoder import is_decoder_dir, load_decoder
from vlm.segment.explain import display_size, heat_picture

LOG = logging.getLogger(__name__)

METHODS = {"training-free (dense)": "dense", "learned decoder": "decoder"}
DENSE = "training-free (dense)"


def decoders(state: AppState) -> list[str]:
    """The decoders trained under the app's runs folder (each run once: `vlm.rundir.usable_checkpoints`)."""
    return [str(p) for p in usable_checkpoints(state.runs_dir, is_decoder_dir)]


def as_typed(path: Path) -> str:
    """`path` as a person would type it where the app runs: relative to the working folder when it is inside it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def no_decoder_hint(state: AppState) -> str:
    choice = state.active.choice
    model = f"--model {choice.model}" + (f" --pretrained {choice.pretrained}" if choice.pretrained else "")
    return (
        "*Learned decoder*: none has been trained yet, so only the training-free method is offered. Train one for "
        f"this model with `vlm train-seg {model} --train-data <phrases.csv> "
        f"--output-dir {as_typed(state.runs_dir / 'seg')}` (phrases.csv from `vlm synth`; see vlm/segment/README.md; "
        "a decoder under the app's runs folder is offered here), then reload this page."
    )


def run_segmentation(
    state: AppState, image: Image.Image | None, phrases: str, method: str, decoder: str, threshold: float
) -> tuple[str, list[tuple[str, str]], str]:
    """Files of the mask overlay (with a legend) and of each phrase's heat map ([(file, phrase)]), and a summary
    with each phrase's share of the image."""
    image = display_size(require_image(image))
    wanted = checked_phrases(phrases, state.limits.max_phrases)
    kind = METHODS.get(method, method)
    if kind not in METHODS.values():
        raise ConfigError(f"unknown method {method!r}; choose one of {list(METHODS)}")
    encoders = state.active.encoders
    seg_decoder = None
    if kind == "decoder":
        path = server_path(decoder, state.allowed_dirs, "decoder folder")
        seg_decoder = load_decoder(path, encoders)  # CheckpointError if trained on other encoder weights
    mask_threshold = checked_float(threshold, "the mask threshold", 0.0, 1.0)
    cal = absent_threshold(encoders, kind, seg_decoder)
    result = segment(
        encoders, image, wanted, method=kind, decoder=seg_decoder, threshold=mask_threshold, absent_below=cal.threshold
    )
    heat = [
        (state.files.image(heat_picture(image, h)), p) for h, p in zip(result.heatmaps, result.phrases, strict=True)
    ]
    lines = []
    for p, m, score, absent in zip(result.phrases, result.masks, result.presence, result.absent, strict=True):
        if absent:
            lines.append(
                f"- **{p}**: not found in this image (score {score:.2f}, below the threshold {cal.threshold:.2f})"
            )
        else:
            lines.append(f"- **{p}**: {m.mean():.1%} of the image (score {score:.2f}, threshold {cal.threshold:.2f})")
    if any(result.truncated):
        lines.append("- some phrases were too long for the text encoder and were cut")
    what = (
        "peak log-odds against background words and words for a colour or a shape alone ('a red shape', 'a star'), "
        "on a coarser view of the image than the masks'"
        if kind == "dense"
        else "peak logit of the decoder (the heat map's brightest pixel)"
    )
    lines.append(
        f"\nScore: the phrase's {what}. Below the threshold the phrase is not in the image and gets no mask; {cal.how}."
    )
    return state.files.image(result.overlay(image)), heat, "\n".join(lines)


def build(state: AppState) -> None:
    with gr.Row():
        with gr.Column() as inputs_column:
            image = image_input(state.limits.max_pixels, label="Image", elem_id="segment-image")
            phrases = gr.Textbox(
                label="Phrases (one per line)", value="a red circle\na blue square", lines=3, elem_id="segment-phrases"
            )
            trained = decoders(state)
            # a learned decoder is offered only when one exists; otherwise the page says how to get one
            # (hidden, not shortened: the API still takes "learned decoder" with a decoder folder of the caller's)
            method = gr.Radio(
                list(METHODS), value=DENSE, label="Method", elem_id="segment-method", visible=bool(trained)
            )
            decoder = gr.Textbox(
                value=trained[0] if trained else "",
                label="Decoder folder on the server (vlm train-seg output)",
                info=f"found under the runs folder: {', '.join(trained)}" if trained else None,
                visible=False,
            )
            if not trained:
                gr.Markdown(no_decoder_hint(state), elem_id="segment-no-decoder")
            threshold = gr.Slider(0.05, 0.95, value=0.5, step=0.05, label="Mask threshold")
            button = gr.Button("Segment", variant="primary")
        with gr.Column():
            overlay = picture("Masks", elem_id="segment-overlay")
            summary = gr.Markdown(elem_id="segment-summary")
            heat = pictures("Heat maps (bright = matches)", columns=3, height=260, allow_preview=True)

    @shown
    def segment_image(image: Image.Image | None, phrases: str, method: str, decoder: str, threshold: float):
        return run_segmentation(state, image, phrases, method, decoder, threshold)

    tries = [(path, ex) for path, ex in image_examples(state) if ex.phrases]  # scenes: one object there, one not
    if tries:
        with inputs_column:
            gr.Examples(
                [[path, "\n".join(ex.phrases), DENSE, "", 0.5] for path, ex in tries],
                [image, phrases, method, decoder, threshold],
                [overlay, heat, summary],
                fn=segment_image,
                run_on_click=True,
                label="Try one: a click segments it (a shape that is there, and one that is not)",
                visible_columns=[0, 1],
                elem_id="segment-examples",
                api_visibility="private",
            )

    method.change(lambda m: gr.Textbox(visible=METHODS.get(m) == "decoder"), method, decoder, api_visibility="private")
    gr.on(
        [button.click],
        segment_image,
        [image, phrases, method, decoder, threshold],
        [overlay, heat, summary],
        api_name="segment",
    )
