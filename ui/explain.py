"""The "Why it matched" tab: the heat map of where a text matches an image (`vlm.segment.explain`), with the same
model that classified or found the image. The Classify and Search tabs show it too (click a label or a result).
"""

from __future__ import annotations

import logging

import gradio as gr
from PIL import Image

from ui.errors import shown
from ui.inputs import checked_text, image_input, require_image
from ui.outputs import picture
from ui.state import AppState
from vlm.segment.absent import absent_threshold
from vlm.segment.explain import explain

LOG = logging.getLogger(__name__)


def build(state: AppState) -> None:
    """The "Why it matched" tab: an image and a text give the heat map (API: `explain`)."""
    gr.Markdown(
        "Where in the image does a text match? Click a label in **Classify** or a result in **Search** to see "
        "this for it, or give any image and text here."
    )
    with gr.Row():
        with gr.Column():
            image = image_input(state.limits.max_pixels, label="Image", elem_id="explain-image")
            text = gr.Textbox(label="Text", placeholder="a red circle", elem_id="explain-text")
            button = gr.Button("Show where it matches", variant="primary")
        with gr.Column():
            heat_map = picture("Heat map (bright = matches)", elem_id="explain-picture")
            info = gr.Markdown(elem_id="explain-info")

    @shown
    def explain_image(image: Image.Image | None, text: str) -> tuple[Image.Image, str]:
        image = require_image(image)
        text = checked_text(text, "text", state.limits.max_text_chars)
        encoders = state.active.encoders
        found = explain(encoders, image, text, absent_threshold(encoders))
        return state.files.image(found.picture), found.describe(text)

    gr.on([button.click, text.submit], explain_image, [image, text], [heat_map, info], api_name="explain")
