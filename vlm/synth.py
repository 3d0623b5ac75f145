"""The seeded synthetic "shapes" world: images, captions, per-object masks, referring phrases and class labels.

It is the project's offline demo data, the training-test fixture, and the referring-segmentation and zero-shot
fixture. A scene holds 1-4 non-overlapping coloured shapes on a plain, gradient or noisy background:

    generate("runs/shapes", scenes=6000, seed=0)       # the dataset on disk (layout below)
    render_scene(np.random.default_rng(0))             # one scene in memory: (image, masks, spec)
    single_object_scene("star", "red", seed=1)         # one red star, for zero-shot checks

Scene i is drawn from its own generator, `SeedSequence(seed, spawn_key=(i,))`, so it does not depend on how many
scenes are generated, and the same (scenes, seed, image_size) gives byte-identical files.

Layout written by `generate` (paths in the CSVs are relative to the dataset folder):
    images/000000.png       RGB, image_size x image_size
    masks/000000_0.png      one per object: single channel, 0/255, the object's pixels
    pairs.csv               path,caption                      (several captions per scene)
    phrases.csv             path,mask_path,phrase,shape,colour,size,position   (one row per object)
    labels.csv              path,label,label_id               (single-object scenes; label "red circle")
    scenes.jsonl            the full spec of each scene
    README.md               what the set is, how it was made, the vocabulary and the columns

Positions are the cells of a 3 x 3 grid over the canvas, named "top left", "top", "top right", "left", "centre",
"right", "bottom left", "bottom", "bottom right" (by the object's centre). In a referring phrase "on the left" means
any cell of the left column, "at the top" any cell of the top row, "in the top left" that one cell, and "in the
centre" the centre cell.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import logging
import math
import multiprocessing
import os
import re
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw

from vlm.atomic import atomic_write_text, publish_dir
from vlm.errors import ConfigError, DataError

LOG = logging.getLogger(__name__)

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
PHRASE_ATTRIBUTES = ("shape", "colour", "size", "position")  # the attribute columns of phrases.csv
LABELS = tuple(f"{c} {s}" for c in COLOURS for s in SHAPES)  # zero-shot classes; label_id is the index here

OBJECT_COUNT_P = (0.3, 0.3, 0.2, 0.2)  # P(1..4 objects): single-object scenes are common (zero-shot fixture)
# How a later object relates to an earlier one: the same colour and shape (counts; referring by size or place), the
# same colour only, the same shape only. Scenes where colour alone does not tell objects apart make a model (and a
# referring-segmentation method) learn shape; otherwise colour, learnt first, explains most captions.
RELATION_P = {"twin": 0.15, "same colour": 0.25, "same shape": 0.15}
MAX_ROTATION = {"circle": 0.0, "square": 15.0, "triangle": 20.0, "star": 36.0, "diamond": 12.0, "cross": 15.0}
MIN_CONTRAST = 120.0  # least RGB distance between any object colour and any background colour
CAPTIONS_PER_SCENE = 3
TOKEN_BUDGET = 40  # words + punctuation; 48-token context minus SOT/EOT minus slack for words BPE splits in two
README_TITLE = "# Synthetic shapes dataset (vlm.synth)"
PARALLEL_MIN_SCENES = 400


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


@dataclass(frozen=True)
class SynthSummary:
    out_dir: Path
    scenes: int
    pairs: int  # rows of pairs.csv (captions)
    objects: int  # rows of phrases.csv (object masks)
    labels: int  # rows of labels.csv (single-object scenes)


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
    _check_image_size(image_size)
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(2**32 - 1,)))
    obj = _place(rng, shape, colour, size or SIZES[rng.integers(len(SIZES))], [], image_size)
    spec = SceneSpec(0, image_size, _sample_background(rng, [colour]), (obj,))
    return render_scene(spec).image


# -- language ---------------------------------------------------------------------------------------------------


def _pos_matches(phrase_pos: str, cell: str) -> bool:
    """'left' matches the whole left column, 'top' the top row, 'top left' and 'centre' one cell."""
    if phrase_pos == "centre":
        return cell == "centre"
    return set(phrase_pos.split()) <= set(cell.split())


def _phrase_candidates(obj: ObjectSpec) -> list[tuple[str | None, str | None]]:
    """(size, position) additions to '<colour> <shape>', shortest first."""
    parts = obj.position.split()
    places = [parts[1], parts[0], obj.position] if len(parts) == 2 else [obj.position]
    return [(None, None), (obj.size, None), *((None, p) for p in places), *((obj.size, p) for p in places)]


def referring_phrases(objects: list[ObjectSpec] | tuple[ObjectSpec, ...]) -> list[str | None]:
    """The shortest phrase that picks out each object alone among `objects` (None where none does)."""
    out: list[str | None] = []
    for obj in objects:
        phrase = None
        for size, pos in _phrase_candidates(obj):
            hits = [
                o
                for o in objects
                if (o.colour, o.shape) == (obj.colour, obj.shape)
                and size in (None, o.size)
                and (pos is None or _pos_matches(pos, o.position))
            ]
            if len(hits) == 1:
                words = ["the", size, obj.colour, obj.shape, POSITION_PHRASE[pos] if pos else None]
                phrase = " ".join(w for w in words if w)
                break
        out.append(phrase)
    return out


NUMBER_WORDS = ("zero", "one", "two", "three", "four")


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _plural(shape: str) -> str:
    return shape + ("es" if shape.endswith(("s", "x")) else "s")


def _noun(unit: list[ObjectSpec], with_size: bool, with_pos: bool, relative: bool = False) -> str:
    """'a small red circle in the top left', 'a circle that is red', 'two red circles', 'two circles that are red'."""
    o, k = unit[0], len(unit)
    size = f"{o.size} " if with_size and all(u.size == o.size for u in unit) else ""
    if k > 1:
        return f"{NUMBER_WORDS[k]} {size}" + (
            f"{_plural(o.shape)} that are {o.colour}" if relative else f"{o.colour} {_plural(o.shape)}"
        )
    place = f" {POSITION_PHRASE[o.position]}" if with_pos else ""
    return _a(f"{size}{o.shape} that is {o.colour}{place}" if relative else f"{size}{o.colour} {o.shape}{place}")


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _relation(a: ObjectSpec, b: ObjectSpec) -> str | None:
    """'to the left of', 'above', ... when the two are clearly apart along the dominant axis, else None."""
    dx, dy = b.centre[0] - a.centre[0], b.centre[1] - a.centre[1]
    if max(abs(dx), abs(dy)) < a.radius + b.radius:
        return None
    if abs(dx) >= abs(dy):
        return "to the left of" if dx > 0 else "to the right of"
    return "above" if dy > 0 else "below"


def _compose(
    template: str,
    spec: SceneSpec,
    units: list[list[ObjectSpec]],
    flags: list[tuple[bool, bool]],
    rng: np.random.Generator,
) -> str:
    """One caption from a template; `units` are groups of objects sharing colour and shape, `flags` (size, place)."""
    nouns = [_noun(u, s, p, relative=template == "relative") for u, (s, p) in zip(units, flags, strict=True)]
    listing = _join(nouns)
    n = len(spec.objects)
    if template == "list":
        return listing
    if template == "count":
        return f"{NUMBER_WORDS[n]} {'shape' if n == 1 else 'shapes'}: {listing}"
    if template == "there":
        return f"there {'is' if len(units[0]) == 1 else 'are'} {listing}"
    if template == "relative":
        return f"{nouns[0]} next to {nouns[1]}" if len(nouns) == 2 else listing
    if template == "picture":
        return f"{rng.choice(['a picture of', 'an image of', 'a drawing of'])} {listing}"
    if template == "background":
        return f"a {spec.background.kind} background with {listing}"
    if template == "with":
        return f"{nouns[0]} with {_join(nouns[1:])}"
    if template == "relation":
        a, b = (_noun(u, with_size, False) for u, (with_size, _) in zip(units, flags, strict=True))
        return f"{a} {_relation(units[0][0], units[1][0])} {b}"
    raise ValueError(f"unknown caption template {template!r}")


def approx_tokens(text: str) -> int:
    """Words plus punctuation: the CLIP BPE count for this vocabulary, give or take a split word."""
    return len(re.findall(r"\w+|[^\w\s]", text))


def captions(spec: SceneSpec, rng: np.random.Generator, n: int = CAPTIONS_PER_SCENE) -> list[str]:
    """`n` distinct captions naming every object's colour and shape, with varied templates, orders and details."""
    groups: dict[tuple[str, str], list[ObjectSpec]] = {}
    for o in spec.objects:
        groups.setdefault((o.colour, o.shape), []).append(o)
    units = list(groups.values())
    templates = ["list", "count", "there", "relative", "picture", "background"]
    if len(units) > 1:
        templates.append("with")
    if len(units) == 2 and all(len(u) == 1 for u in units) and _relation(units[0][0], units[1][0]):
        templates.append("relation")
    out: list[str] = []
    for _ in range(4 * n):
        if len(out) == n:
            break
        template = templates[rng.integers(len(templates))]
        order = [units[i] for i in rng.permutation(len(units))]
        if template == "relation" and _relation(order[0][0], order[1][0]) is None:
            order = order[::-1]
        # The first caption gives every size and place (as the token budget allows): a specific caption per scene
        # tells scenes with the same shapes apart in retrieval and teaches size and place; the rest vary.
        p_size, p_pos = (1.0, 1.0) if not out else (0.35, 0.6 if len(spec.objects) == 1 else 0.3)
        flags = [(bool(rng.random() < p_size), bool(rng.random() < p_pos)) for _ in order]
        text = _compose(template, spec, order, flags, rng)
        for drop in (1, 0):  # too long for a 48-token context: drop places, then sizes
            if approx_tokens(text) > TOKEN_BUDGET:
                flags = [(s and drop == 1, False) for s, _ in flags]
                text = _compose(template, spec, order, flags, rng)
        if text not in out:
            out.append(text)
    return out


# -- writing the dataset ----------------------------------------------------------------------------------------


def _check_image_size(image_size: int) -> None:
    if not isinstance(image_size, int) or image_size < 32:
        raise ConfigError(f"image_size must be an integer >= 32 (small shapes need a few pixels), got {image_size!r}")


def _png(image: Image.Image, path: Path) -> None:
    image.save(path, format="PNG", compress_level=1)  # level 1: a third faster than the default, files ~1.5x larger


def _make_scene(index: int, seed: int, image_size: int, root: Path, width: int) -> dict:
    """Sample, render and write one scene's PNGs; return its record (written to the CSVs by the caller)."""
    rng = scene_rng(seed, index)
    image, masks, spec = render_scene(sample_scene(rng, image_size, index))
    stem = f"{index:0{width}d}"
    _png(image, root / "images" / f"{stem}.png")
    objects = []
    for k, (obj, mask, phrase) in enumerate(zip(spec.objects, masks, referring_phrases(spec.objects), strict=True)):
        mask_path = f"masks/{stem}_{k}.png"
        _png(Image.fromarray(mask.astype(np.uint8) * 255), root / mask_path)
        objects.append({**asdict(obj), "mask_path": mask_path, "phrase": phrase})
    return {
        "index": index,
        "path": f"images/{stem}.png",
        "image_size": image_size,
        "background": asdict(spec.background),
        "objects": objects,
        "captions": captions(spec, rng),
    }


def _is_synth_output(path: Path) -> bool:
    readme = path / "README.md"
    return readme.is_file() and readme.read_text(encoding="utf-8").startswith(README_TITLE)


def _check_target(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"{out_dir} exists and is not a directory; choose another output path")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not _is_synth_output(out_dir):
        raise DataError(
            f"{out_dir} is not empty and was not written by `vlm synth`; refusing to overwrite it. "
            "Choose a new or empty directory, or remove this one yourself."
        )


def _records(seed: int, image_size: int, scenes: int, root: Path, progress: bool) -> list[dict]:
    from tqdm.auto import tqdm

    width = max(6, len(str(scenes - 1)))
    make = functools.partial(_make_scene, seed=seed, image_size=image_size, root=root, width=width)
    workers = min(os.cpu_count() or 1, 8)
    bar = functools.partial(tqdm, total=scenes, desc="synth", unit="scene", disable=not progress)
    if scenes < PARALLEL_MIN_SCENES or workers == 1:
        return list(bar(map(make, range(scenes))))
    # fork: the CLI's `python -m vlm` entry has no __main__ guard, which spawn/forkserver would re-run in each child
    ctx = multiprocessing.get_context("fork") if "fork" in multiprocessing.get_all_start_methods() else None
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        return list(bar(pool.map(make, range(scenes), chunksize=64)))


def _csv(rows: list[list], header: list[str]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def _write_tables(root: Path, records: list[dict]) -> tuple[int, int, int]:
    """The CSVs, JSONL and README; returns the row counts of pairs.csv, phrases.csv and labels.csv."""
    pairs = [[r["path"], c] for r in records for c in r["captions"]]
    phrases = [
        [r["path"], o["mask_path"], o["phrase"], o["shape"], o["colour"], o["size"], o["position"]]
        for r in records
        for o in r["objects"]
    ]
    labels = []
    for r in records:
        if len(r["objects"]) == 1:
            label = f"{r['objects'][0]['colour']} {r['objects'][0]['shape']}"
            labels.append([r["path"], label, LABELS.index(label)])
    atomic_write_text(root / "scenes.jsonl", "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    atomic_write_text(root / "phrases.csv", _csv(phrases, ["path", "mask_path", "phrase", *PHRASE_ATTRIBUTES]))
    atomic_write_text(root / "labels.csv", _csv(labels, ["path", "label", "label_id"]))
    atomic_write_text(root / "pairs.csv", _csv(pairs, ["path", "caption"]))
    return len(pairs), len(phrases), len(labels)


def _readme(scenes: int, seed: int, image_size: int, counts: tuple[int, int, int]) -> str:
    pairs, objects, labels = counts
    sizes = ", ".join(f"{s} {lo:g}-{hi:g}" for s, (lo, hi) in SIZE_RADIUS.items())
    return f"""{README_TITLE}

Procedurally drawn scenes of 1-4 non-overlapping coloured shapes on plain, gradient or noisy backgrounds, with
captions, per-object masks, referring phrases and colour-shape labels. Made by this project's `vlm/synth.py`;
nothing here comes from elsewhere.

Made with: `vlm synth DIR --scenes {scenes} --seed {seed} --size {image_size}`
(the same command gives byte-identical files; scene i depends only on the seed and i).

Contents: {scenes} scenes ({image_size}x{image_size} px), {pairs} captions, {objects} object masks and phrases,
{labels} single-object scenes in labels.csv.

## Vocabulary
- shapes: {", ".join(SHAPES)}
- colours: {", ".join(f"{c} {COLOUR_RGB[c]}" for c in COLOURS)} (RGB, jittered by up to 10 per channel)
- sizes (nominal radius / image side): {sizes}
- positions (3 x 3 grid cell of the centre): {", ".join(POSITIONS)}

## Captions
{CAPTIONS_PER_SCENE} distinct captions per scene, each naming every object's colour and shape in a random order,
repeated colour+shape counted ("two red circles"). The first gives every size and place the 48-token context allows;
the others add a size (35%) or place (30%, 60% alone) at random. Templates: "<list>", "<n> shapes: <list>",
"there is/are <list>", "a circle that is red next to a square that is blue", "a picture/an image/a drawing of <list>",
"a dark/light background with <list>", "<first> with <rest>", "<a> to the left of/above <b>" (two objects).

## Files and columns (paths relative to this folder)
- `images/NNNNNN.png`: RGB scene.
- `masks/NNNNNN_K.png`: object K's pixels, single channel, 0 or 255.
- `pairs.csv`: `path,caption` - {CAPTIONS_PER_SCENE} captions per scene naming every object's colour and shape.
- `phrases.csv`: `path,mask_path,phrase,shape,colour,size,position` - one row per object; `phrase` is the shortest
  phrase that picks the object out alone ("the red circle", "the small red circle", "the red circle on the left";
  "on the left" = left column, "at the top" = top row, "in the top left" = that cell).
- `labels.csv`: `path,label,label_id` - single-object scenes only; label "<colour> <shape>", label_id its index in
  the {len(LABELS)} classes ordered colour-major ({LABELS[0]}, {LABELS[1]}, ...).
- `scenes.jsonl`: per scene its path, background and objects (shape, colour, size, position, centre (x, y),
  radius, rotation, rgb, bbox (x0, y0, x1, y1) exclusive, mask_path, phrase) and captions.
"""


def _clean_stale(out_dir: Path) -> None:
    """Remove temp dirs of earlier runs into `out_dir` that were killed (their process no longer exists)."""
    for stale in out_dir.parent.glob(f".{out_dir.name}.synth-*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def generate(
    out_dir: str | Path, scenes: int, seed: int = 0, image_size: int = 128, *, progress: bool = True
) -> SynthSummary:
    """Write the dataset to `out_dir` (layout in the module docstring).

    Everything is written to a temporary sibling directory, then moved into place, so `out_dir` is either
    absent, the previous complete set, or the new complete set. A non-empty `out_dir` that `generate` did not
    write is refused with a DataError.
    """
    if not isinstance(scenes, int) or scenes < 1:
        raise ConfigError(f"scenes must be a positive integer, got {scenes!r}")
    if not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    _check_image_size(image_size)
    out_dir = Path(out_dir)
    _check_target(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    _clean_stale(out_dir)
    tmp = out_dir.parent / f".{out_dir.name}.synth-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    start = time.perf_counter()
    try:
        (tmp / "images").mkdir(parents=True)
        (tmp / "masks").mkdir()
        records = _records(seed, image_size, scenes, tmp, progress)
        counts = _write_tables(tmp, records)
        atomic_write_text(tmp / "README.md", _readme(scenes, seed, image_size, counts))
        publish_dir(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    LOG.info("synth: %d scenes in %.1f s -> %s", scenes, time.perf_counter() - start, out_dir)
    return SynthSummary(out_dir, scenes, *counts)
