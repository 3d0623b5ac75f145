"""Why it matched: the heat map of where a text matches an image, and their cosine similarity.

The map comes from the training-free dense matching of `vlm.segment` (ClearCLIP on ViTs, MaskCLIP on ResNets), with
the same model that classified or found the image; the similarity is the one search and classification rank by.
The app's "Why it matched" tab and `vlm explain IMAGE TEXT --out heat.png` are thin over `explain`.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from PIL import Image

from vlm.models import Encoders
from vlm.segment.api import segment
from vlm.segment.overlay import heatmap_image

MIN_SIDE = 256  # small images (72 px icons) are enlarged so the heat map can be seen
MAX_SIDE = 1024  # large ones are reduced: the picture is for a screen, and the maps cost 5 bytes a pixel
ALPHA = 0.55  # weight of the heat colours over the image
MIN_STRETCH = 0.05  # a map whose maximum is below this is shown as it is (stretching it would only show noise)


def heat_picture(image: Image.Image, heat: np.ndarray) -> Image.Image:
    """`heat` (H, W) in [0, 1] blended over `image`, its colours stretched to the map's own maximum: small models
    give low absolute scores, and the question here is where in the image the text matches best."""
    top = float(heat.max()) if heat.size else 0.0
    shown = heat / top if top >= MIN_STRETCH else heat
    return Image.blend(image, heatmap_image(shown), ALPHA)


class Explanation(NamedTuple):
    picture: Image.Image  # the image with the heat map blended over it
    heat: np.ndarray  # (H, W) float32 in [0, 1], H x W of `picture`
    similarity: float  # cosine similarity of the whole image and the text, as search and classification use it

    def describe(self, text: str) -> str:
        """A sentence (Markdown) for people: the similarity, and how much of the image matches."""
        share = float((self.heat >= 0.5).mean())
        return (
            f"**{text}** — image–text cosine similarity {self.similarity:.3f}. Bright areas are where the text "
            f"matches best (dense matching, training-free; colours scaled to the map's maximum, "
            f"{float(self.heat.max()):.2f}); {share:.0%} of the image is above one half."
        )


def display_size(image: Image.Image) -> Image.Image:
    """The image at a size for the screen: short side at least MIN_SIDE, long side at most MAX_SIDE."""
    scale = max(1.0, MIN_SIDE / min(image.size))
    scale = min(scale, MAX_SIDE / max(image.size))
    if abs(scale - 1.0) < 1e-6:
        return image
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.BICUBIC if scale > 1 else Image.Resampling.LANCZOS)


def explain(encoders: Encoders, image: Image.Image, text: str) -> Explanation:
    """Where `text` matches `image` (any size; the map and picture are at `display_size`)."""
    shown_image = display_size(image.convert("RGB"))
    result = segment(encoders, shown_image, [text], method="dense")
    heat = result.heatmaps[0]
    picture = heat_picture(shown_image, heat)
    pixels = encoders.preprocess(image.convert("RGB"))[None]
    similarity = float((encoders.encode_image(pixels) @ encoders.encode_text([text]).T).item())
    return Explanation(picture, heat, similarity)
