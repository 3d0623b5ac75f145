"""Scenes of the shapes world: sampled from a seeded generator (every object with a unique referring phrase), then
rendered to an RGB image and one mask per object."""

from __future__ import annotations

import functools
import math
from dataclasses import replace

import numpy as np
from PIL import Image, ImageDraw

from vlm.errors import ConfigError
from vlm.synth.language import referring_phrases
from vlm.synth.world import (
    CIRCUMRADIUS,
    COLOUR_RGB,
    COLOURS,
    MAX_ROTATION,
    MIN_CONTRAST,
    OBJECT_COUNT_P,
    POSITIONS,
    RELATION_P,
    SHAPES,
    SIZE_RADIUS,
    SIZES,
    UNIT_POLYGONS,
    Background,
    ObjectSpec,
    RenderedScene,
    SceneSpec,
)


def check_image_size(image_size: int) -> None:
    if not isinstance(image_size, int) or image_size < 32:
        raise ConfigError(f"image_size must be an integer >= 32 (small shapes need a few pixels), got {image_size!r}")


# -- sampling ---------------------------------------------------------------------------------------------------


def scene_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of scene `index`: independent of every other scene and of the number of scenes."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))


def position_word(cx: float, cy: float, image_size: int) -> str:
    col = min(int(3 * cx / image_size), 2)
    row = min(int(3 * cy / image_size), 2)
    return POSITIONS[3 * row + col]


def _near_cell_line(cx: float, cy: float, image_size: int) -> bool:
    """True within 2% of the image side of a grid line, where the position word would be a coin toss by eye."""
    lines = (image_size / 3, 2 * image_size / 3)
    return any(abs(v - line) < 0.02 * image_size for v in (cx, cy) for line in lines)


def _place(
    rng: np.random.Generator, shape: str, colour: str, size: str, placed: list[ObjectSpec], image_size: int
) -> ObjectSpec | None:
    """Rejection-sample a spot that is inside the canvas, clear of the other objects, and leaves every object a
    unique referring phrase. Falls back to smaller size classes when the canvas is crowded."""
    gap = max(2.0, 0.02 * image_size)
    for size_now in SIZES[: SIZES.index(size) + 1][::-1]:
        lo, hi = SIZE_RADIUS[size_now]
        for _ in range(60):
            r = float(rng.uniform(lo, hi)) * image_size
            reach = r * CIRCUMRADIUS[shape]
            cx, cy = (float(v) for v in rng.uniform(reach + 1, image_size - reach - 1, size=2))
            if _near_cell_line(cx, cy, image_size):
                continue
            if any(math.dist((cx, cy), o.centre) < reach + o.radius * CIRCUMRADIUS[o.shape] + gap for o in placed):
                continue
            jitter = rng.integers(-10, 11, size=3)
            rgb = tuple(int(v) for v in np.clip(np.add(COLOUR_RGB[colour], jitter), 0, 255))
            angle = float(rng.uniform(-1, 1)) * MAX_ROTATION[shape]
            pos = position_word(cx, cy, image_size)
            obj = ObjectSpec(
                shape, colour, size_now, pos, (round(cx, 2), round(cy, 2)), round(r, 2), round(angle, 2), rgb
            )
            if all(p is not None for p in referring_phrases([*placed, obj])):
                return obj
    return None


def _sample_background(rng: np.random.Generator, colours: list[str]) -> Background:
    """A dark or light, nearly grey background that keeps MIN_CONTRAST to every object colour in the scene."""
    for _ in range(20):
        kind = "dark" if rng.random() < 0.5 else "light"
        lum = rng.uniform(15, 70) if kind == "dark" else rng.uniform(185, 240)
        c0 = np.clip(lum + rng.uniform(-15, 15, size=3), 0, 255)
        style = str(rng.choice(["plain", "gradient", "noise"], p=[0.4, 0.35, 0.25]))
        c1 = np.clip(c0 + rng.uniform(-35, 35), 0, 255) if style == "gradient" else c0
        angle = float(rng.uniform(0, 360))
        noise = float(rng.uniform(3, 7)) if style == "noise" else 0.0
        ends = (tuple(int(v) for v in c0), tuple(int(v) for v in c1))
        if all(math.dist(COLOUR_RGB[c], e) >= MIN_CONTRAST for c in colours for e in ends):
            return Background(kind, style, ends, round(angle, 2), round(noise, 2), int(rng.integers(2**31)))
    return Background("dark", "plain", ((30, 30, 30), (30, 30, 30)), 0.0, 0.0, 0)  # contrasts with every colour


def sample_scene(rng: np.random.Generator, image_size: int = 128, index: int = 0) -> SceneSpec:
    n = 1 + int(rng.choice(len(OBJECT_COUNT_P), p=OBJECT_COUNT_P))
    objects: list[ObjectSpec] = []
    for _ in range(n):
        shape, colour = SHAPES[rng.integers(len(SHAPES))], COLOURS[rng.integers(len(COLOURS))]
        if objects:
            other, u = objects[rng.integers(len(objects))], rng.random()
            twin, same_colour = RELATION_P["twin"], RELATION_P["twin"] + RELATION_P["same colour"]
            if u < same_colour:
                colour = other.colour
            if u < twin or same_colour <= u < same_colour + RELATION_P["same shape"]:
                shape = other.shape
        obj = _place(rng, shape, colour, SIZES[rng.integers(len(SIZES))], objects, image_size)
        if obj is not None:  # a crowded canvas gives fewer objects rather than overlapping ones
            objects.append(obj)
    background = _sample_background(rng, [o.colour for o in objects])
    return SceneSpec(index, image_size, background, tuple(objects))


# -- rendering --------------------------------------------------------------------------------------------------


def object_mask(obj: ObjectSpec, image_size: int) -> np.ndarray:
    """(H, W) bool: the pixels of `obj`, rasterised by PIL (the image is coloured through this same mask)."""
    a = np.deg2rad(obj.rotation)
    rot = np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]])
    pts = UNIT_POLYGONS[obj.shape] @ rot * obj.radius + np.array(obj.centre)
    canvas = Image.new("L", (image_size, image_size), 0)
    ImageDraw.Draw(canvas).polygon([(float(x), float(y)) for x, y in pts], fill=255)
    return np.asarray(canvas) > 0


@functools.lru_cache(maxsize=8)
def _pixel_grid(image_size: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:image_size, 0:image_size].astype(np.float32)
    return xs, ys


def _background_pixels(bg: Background, image_size: int) -> np.ndarray:
    """(H, W, 3) float32 linear gradient between the two colours along `angle` (flat when they are equal)."""
    c0, c1 = (np.array(c, dtype=np.float32) for c in bg.colours)
    if bg.colours[0] == bg.colours[1]:
        return np.broadcast_to(c0, (image_size, image_size, 3)).copy()
    xs, ys = _pixel_grid(image_size)
    a = np.deg2rad(bg.angle)
    t = xs * np.float32(np.cos(a)) + ys * np.float32(np.sin(a))
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    return c0 * (1 - t[..., None]) + c1 * t[..., None]


def render_scene(scene: np.random.Generator | SceneSpec, image_size: int = 128) -> RenderedScene:
    """Draw a scene (sampled first when given a generator; `image_size` is then used, else the spec's).

    Returns the RGB image, one (H, W) bool mask per object, and the spec with each object's bbox set.
    """
    spec = sample_scene(scene, image_size) if isinstance(scene, np.random.Generator) else scene
    size = spec.image_size
    pixels = _background_pixels(spec.background, size)
    masks, objects = [], []
    for obj in spec.objects:
        mask = object_mask(obj, size)
        pixels[mask] = obj.rgb
        ys, xs = np.nonzero(mask)
        masks.append(mask)
        objects.append(replace(obj, bbox=(int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)))
    if spec.background.noise > 0:
        noise = np.random.default_rng(spec.background.noise_seed).standard_normal(pixels.shape, dtype=np.float32)
        pixels += noise * np.float32(spec.background.noise)
    image = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))
    return RenderedScene(image, masks, replace(spec, objects=tuple(objects)))


def single_object_scene(
    shape: str, colour: str, image_size: int = 128, seed: int = 0, size: str | None = None
) -> Image.Image:
    """One `colour` `shape` on a random background (seeded); `size` defaults to a random class."""
    for name, value, valid in (("shape", shape, SHAPES), ("colour", colour, COLOURS), ("size", size, SIZES)):
        if value is not None and value not in valid:
            raise ConfigError(f"unknown {name} {value!r}; choose one of {list(valid)}")
    check_image_size(image_size)
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(2**32 - 1,)))
    obj = _place(rng, shape, colour, size or SIZES[rng.integers(len(SIZES))], [], image_size)
    spec = SceneSpec(0, image_size, _sample_background(rng, [colour]), (obj,))
    return render_scene(spec).image
