"""Pictures of segmentation results: masks over the image (with outlines and a legend) and heat maps."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Distinct, saturated colours for masks, in order (Tableau 10 without its greys).
PALETTE = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (188, 189, 34),
    (23, 190, 207),
)
# A perceptually ordered ramp for heat maps (dark blue -> teal -> yellow), as anchor colours at 0, 1/3, 2/3, 1.
HEAT_RAMP = np.array([(48, 18, 59), (40, 140, 160), (160, 220, 70), (250, 240, 40)], dtype=np.float32)
LEGEND_MIN_SIDE = 64  # smaller images get no legend: it would cover them


def _outline(mask: np.ndarray) -> np.ndarray:
    """(H, W) bool -> the mask's pixels that touch a pixel outside it (4-neighbourhood)."""
    inner = mask.copy()
    inner[1:, :] &= mask[:-1, :]
    inner[:-1, :] &= mask[1:, :]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return mask & ~inner


def overlay(
    image: Image.Image,
    masks: np.ndarray,
    labels: Sequence[str] | None = None,
    *,
    alpha: float = 0.45,
) -> Image.Image:
    """Draw `masks` (P, H, W) bool over `image` (H x W): each mask tinted in its own colour with a solid outline,
    and, when `labels` are given and the image is large enough, a legend in the top-left corner."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32).copy()  # (H, W, 3)
    if masks.ndim != 3 or masks.shape[1:] != rgb.shape[:2]:
        raise ValueError(f"masks {masks.shape} do not match the image {rgb.shape[:2]}: expected (P, H, W)")
    for i, mask in enumerate(masks):
        colour = np.array(PALETTE[i % len(PALETTE)], dtype=np.float32)
        rgb[mask] = (1 - alpha) * rgb[mask] + alpha * colour
        rgb[_outline(mask)] = colour
    out = Image.fromarray(np.clip(np.rint(rgb), 0, 255).astype(np.uint8))
    if labels and min(out.size) >= LEGEND_MIN_SIDE:
        _legend(out, labels)
    return out


def _legend(image: Image.Image, labels: Sequence[str]) -> None:
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    y = 2
    for i, label in enumerate(labels):
        text = label if len(label) <= 40 else label[:39] + "…"
        box = draw.textbbox((14, y), text, font=font)
        draw.rectangle((2, y, box[2] + 2, box[3] + 2), fill=(0, 0, 0))
        draw.rectangle((4, y + 2, 11, box[3]), fill=PALETTE[i % len(PALETTE)])
        draw.text((14, y), text, fill=(255, 255, 255), font=font)
        y = box[3] + 4
        if y > image.height - 12:
            break


def heatmap_image(heat: np.ndarray) -> Image.Image:
    """(H, W) values in [0, 1] -> an RGB picture on the HEAT_RAMP colour scale."""
    t = np.clip(np.nan_to_num(heat.astype(np.float32)), 0.0, 1.0) * (len(HEAT_RAMP) - 1)
    lo = np.minimum(t.astype(np.int64), len(HEAT_RAMP) - 2)
    frac = (t - lo)[..., None]
    rgb = HEAT_RAMP[lo] * (1 - frac) + HEAT_RAMP[lo + 1] * frac
    return Image.fromarray(np.rint(rgb).astype(np.uint8))
