"""First-visit examples, one click each (`gr.Examples` that fill the inputs and run): shipped images with the labels
and phrases the demo model's card says it knows (`vlm.demo_examples`), and the card's search queries. Only for the
demo model (another model's card says nothing of what it knows); rebuilt from the card of the model that answers
when the app starts, so a new demo model brings its own."""

from __future__ import annotations

from PIL import Image

from ui.state import AppState
from vlm import demo
from vlm.demo_examples import DemoExample, demo_examples


def image_examples(state: AppState) -> list[tuple[str, DemoExample]]:
    """(a copy of the image in the app's result folder, the example) for the demo model; [] for others. The copy
    lives where Gradio serves files from, wherever the shipped data is installed."""
    if not state.active.is_demo:
        return []
    out = []
    for ex in demo_examples(state.active.encoders.provenance):
        with Image.open(ex.image) as im:
            out.append((state.files.image(im.convert("RGB")), ex))
    return out


def search_queries(state: AppState) -> tuple[str, ...]:
    """The demo model's card's queries (its held-out hits); () for other models."""
    return demo.describe(state.active.encoders.provenance).queries if state.active.is_demo else ()
