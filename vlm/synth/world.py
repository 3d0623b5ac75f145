"""The shapes world's vocabulary (shapes, colours, sizes, positions), the shapes' geometry, and the scene specs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from PIL import Image

SHAPES = ("circle", "square", "triangle", "star", "diamond", "cross")
COLOURS = ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "white")
# Saturated, far apart in RGB (nearest pair orange-yellow is 86 apart); objects are jittered by at most 10 per channel.
COLOUR_RGB = {
    "red": (220, 30, 30),
    "orange": (245, 135, 20),
    "yellow": (240, 220, 30),
    "green": (30, 170, 50),
    "cyan": (30, 200, 220),
    "blue": (40, 70, 230),
    "purple": (145, 50, 200),
    "white": (245, 245, 245),
}
SIZES = ("small", "medium", "large")
# Nominal radius as a fraction of the image side; the gaps between the classes keep them apart by eye.
SIZE_RADIUS = {"small": (0.065, 0.085), "medium": (0.11, 0.14), "large": (0.17, 0.21)}
POSITIONS = ("top left", "top", "top right", "left", "centre", "right", "bottom left", "bottom", "bottom right")
POSITION_PHRASE = {
    "top left": "in the top left",
    "top": "at the top",
    "top right": "in the top right",
    "left": "on the left",
    "centre": "in the centre",
    "right": "on the right",
    "bottom left": "in the bottom left",
    "bottom": "at the bottom",
    "bottom right": "in the bottom right",
}
LABELS = tuple(f"{c} {s}" for c in COLOURS for s in SHAPES)  # zero-shot classes; label_id is the index here

OBJECT_COUNT_P = (0.3, 0.3, 0.2, 0.2)  # P(1..4 objects): single-object scenes are common (zero-shot fixture)
# How a later object relates to an earlier one: the same colour and shape (counts; referring by size or place), the
# same colour only, the same shape only. Scenes where colour alone does not tell objects apart make a model (and a
# referring-segmentation method) learn shape; otherwise colour, learnt first, explains most captions.
RELATION_P = {"twin": 0.15, "same colour": 0.25, "same shape": 0.15}
MAX_ROTATION = {"circle": 0.0, "square": 15.0, "triangle": 20.0, "star": 36.0, "diamond": 12.0, "cross": 15.0}
MIN_CONTRAST = 120.0  # least RGB distance between any object colour and any background colour


def _unit_polygons() -> dict[str, np.ndarray]:
    """Each shape as (k, 2) vertices around the origin, radius about 1, y pointing down (image coordinates)."""

    def ring(n: int, radii: list[float], start_deg: float = -90.0) -> np.ndarray:
        a = np.deg2rad(start_deg + 360.0 * np.arange(n) / n)
        return np.stack([np.cos(a), np.sin(a)], 1) * np.resize(radii, n)[:, None]

    w, arm = 0.36, 1.05
    cross = [(-w, -arm), (w, -arm), (w, -w), (arm, -w), (arm, w), (w, w), (w, arm), (-w, arm), (-w, w), (-arm, w)]
    return {
        "circle": ring(64, [1.0]),
        "square": np.array([(-0.85, -0.85), (0.85, -0.85), (0.85, 0.85), (-0.85, 0.85)]),
        "triangle": ring(3, [1.3]),
        "star": ring(10, [1.3, 0.55]),
        "diamond": np.array([(0.0, -1.25), (0.85, 0.0), (0.0, 1.25), (-0.85, 0.0)]),
        "cross": np.array([*cross, (-arm, -w), (-w, -w)]),
    }


UNIT_POLYGONS = _unit_polygons()
CIRCUMRADIUS = {s: float(np.linalg.norm(p, axis=1).max()) for s, p in UNIT_POLYGONS.items()}


# -- specs ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ObjectSpec:
    """One shape. Coordinates are pixels, x right, y down; `bbox` is (x0, y0, x1, y1) with exclusive ends."""

    shape: str
    colour: str
    size: str  # one of SIZES
    position: str  # one of POSITIONS (the 3 x 3 cell of `centre`)
    centre: tuple[float, float]
    radius: float  # nominal radius in pixels; the shape reaches out to radius * CIRCUMRADIUS[shape]
    rotation: float  # degrees, small enough that the shape keeps its name (a square never becomes a diamond)
    rgb: tuple[int, int, int]  # the named colour, slightly jittered
    bbox: tuple[int, int, int, int] | None = None  # filled in by render_scene, from the mask


@dataclass(frozen=True)
class Background:
    kind: str  # "dark" or "light"
    style: str  # "plain", "gradient" or "noise"
    colours: tuple[tuple[int, int, int], tuple[int, int, int]]  # gradient ends (equal when plain)
    angle: float  # gradient direction, degrees
    noise: float  # std of Gaussian pixel noise over the whole image
    noise_seed: int


@dataclass(frozen=True)
class SceneSpec:
    index: int
    image_size: int
    background: Background
    objects: tuple[ObjectSpec, ...]


class RenderedScene(NamedTuple):
    image: Image.Image  # RGB, image_size x image_size
    masks: list[np.ndarray]  # one (H, W) bool array per object, in spec order
    spec: SceneSpec  # with each object's bbox filled in
