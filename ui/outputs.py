"""The app's picture outputs: images the server renders (results, heat maps, masks, plots), shown read-only.

One place for what every such output shares: PIL images sent as PNG (lossless: masks and heat maps keep their exact
colours) and no editing; galleries scaled to fit, not cropped (a result's corners matter), with their own preview
off where a click selects a result instead.
"""

from __future__ import annotations

import gradio as gr


def picture(label: str, **kwargs) -> gr.Image:
    """A read-only image output."""
    return gr.Image(label=label, type="pil", format="png", interactive=False, **kwargs)


def pictures(label: str, *, columns: int = 6, **kwargs) -> gr.Gallery:
    """A read-only gallery output (`allow_preview=False` unless given: a click selects)."""
    kwargs.setdefault("allow_preview", False)
    return gr.Gallery(label=label, columns=columns, format="png", object_fit="contain", **kwargs)
