"""Why it matched: the heat map of where a text matches an image, its peak, and the whole image's cosine.

The map comes from the training-free dense matching of `vlm.segment` (ClearCLIP on ViTs, MaskCLIP on ResNets), with
the same model that classified or found the image: at each pixel, the text's probability against the background
prompts (`vlm.segment.BACKGROUND_PROMPTS`). Its figure is its **peak** (the brightest pixel's heat) and the
**score** behind it (the peak log-odds, `SegmentationResult.scores`); with the model's "absent" threshold
(`vlm.segment.absent`) a text whose presence score (`SegmentationResult.presence`, a second, coarser pass against
background and colour/shape words) is below it is "not found in this image", and its map is shown unscaled (dark).
The whole image's cosine with the text (what search and classification rank by) is reported beside it as what it
is: a different measure, which can be low for a text that matches a small part of the image.
The app's "Why it matched" tab and `vlm explain IMAGE TEXT --out heat.png` are thin over `explain`.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from PIL import Image

from vlm.models import Encoders
from vlm.segment.absent import AbsentCalibration
from vlm.segment.api import segment
from vlm.segment.overlay import heatmap_image

MIN_SIDE = 256  # small images (72 px icons) are enlarged so the heat map can be seen
MAX_SIDE = 1024  # large ones are reduced: the picture is for a screen, and the maps cost 5 bytes a pixel
ALPHA = 0.55  # weight of the heat colours over the image
MIN_STRETCH = 0.05  # a map whose maximum is below this is shown as it is (stretching it would only show noise)


def heat_picture(image: Image.Image, heat: np.ndarray, stretch: bool = True) -> Image.Image:
    """`heat` (H, W) in [0, 1] blended over `image`, its colours stretched to the map's own maximum (unless
    `stretch` is False or the maximum is below MIN_STRETCH): small models give low absolute scores, and the
    question here is where in the image the text matches best."""
    top = float(heat.max()) if heat.size else 0.0
    shown = heat / top if stretch and top >= MIN_STRETCH else heat
    return Image.blend(image, heatmap_image(shown), ALPHA)


class Explanation(NamedTuple):
    picture: Image.Image  # the image with the heat map blended over it
    heat: np.ndarray  # (H, W) float32 in [0, 1], H x W of `picture`
    similarity: float  # cosine similarity of the whole image and the text, as search and classification use it
    score: float  # the map's peak log-odds of the text against the background prompts (heat = its sigmoid)
    absent: AbsentCalibration | None = None  # the model's "not in this image" threshold, if it was applied
    presence: float | None = None  # the text's presence score (`vlm.segment.absent`), compared with `absent`

    @property
    def peak(self) -> float:
        """The map's brightest pixel: the text's probability against the background prompts there."""
        return float(self.heat.max())

    @property
    def stretched(self) -> bool:
        """Whether the picture's colours run up to the map's maximum (else they show the heat as it is)."""
        return not self.not_found and self.peak >= MIN_STRETCH

    @property
    def not_found(self) -> bool:
        return self.absent is not None and self.presence is not None and self.absent.is_absent(self.presence)

    def describe(self, text: str) -> str:
        """Markdown for people: what the map says (its peak and score, or "not found"), what its colours mean,
        and the whole image's cosine as the different measure it is."""
        share = float((self.heat >= 0.5).mean())
        if self.not_found:
            head = (
                f"**{text}** is not found in this image: its presence score is {self.presence:.2f}, below this "
                f"model's threshold {self.absent.threshold:.2f} (measured on synthetic scenes with known objects). "
                f"The map shows where it comes closest, unscaled: dark purple is no match, yellow would be a certain "
                f"one (peak heat {self.peak:.2f}, score {self.score:.2f} log-odds against the background words)."
            )
        else:
            scale = (
                f"dark purple (no match) to yellow (the map's maximum, heat {self.peak:.2f})"
                if self.stretched
                else "dark purple (no match) to yellow (a certain match), unscaled: the map is faint everywhere"
            )
            cut = (
                ""
                if self.absent is None or self.presence is None
                else f"; presence score {self.presence:.2f}, above this model's 'not here' threshold "
                f"{self.absent.threshold:.2f}"
            )
            head = (
                f"**{text}** matches best where the map is brightest: there the text wins {self.peak:.0%} against "
                f"background words such as 'a plain background' (heat {self.peak:.2f}, score {self.score:.2f} "
                f"log-odds{cut}); {share:.0%} of the image is above one half. Colours run from {scale}."
            )
        return (
            f"{head}\n\nWhole-image cosine similarity {self.similarity:.3f}: the image as a whole against the text as "
            f"written, what search ranks by (Classify averages prompt templates, so its cosine differs a little). "
            f"It is a different measure from the map, which compares each "
            f"region with the text and background words, so a text that matches a small part of the image can have "
            f"a low or even negative cosine while the map finds it."
        )


def display_size(image: Image.Image) -> Image.Image:
    """The image at a size for the screen: short side at least MIN_SIDE, long side at most MAX_SIDE."""
    scale = max(1.0, MIN_SIDE / min(image.size))
    scale = min(scale, MAX_SIDE / max(image.size))
    if abs(scale - 1.0) < 1e-6:
        return image
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.BICUBIC if scale > 1 else Image.Resampling.LANCZOS)


def explain(encoders: Encoders, image: Image.Image, text: str, absent: AbsentCalibration | None = None) -> Explanation:
    """Where `text` matches `image` (any size; the map and picture are at `display_size`). With `absent` (the
    model's `vlm.segment.absent.absent_threshold`), a text scoring below it is "not found" and shown unscaled."""
    shown_image = display_size(image.convert("RGB"))
    below = absent.threshold if absent is not None else None
    result = segment(encoders, shown_image, [text], method="dense", absent_below=below)
    heat, score = result.heatmaps[0], result.scores[0]
    pixels = encoders.preprocess(image.convert("RGB"))[None]
    similarity = float((encoders.encode_image(pixels) @ encoders.encode_text([text]).T).item())
    found = Explanation(shown_image, heat, similarity, score, absent, result.presence[0] if result.presence else None)
    return found._replace(picture=heat_picture(shown_image, heat, stretch=found.stretched))
