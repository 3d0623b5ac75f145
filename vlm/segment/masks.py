"""Masks for referring segmentation: mask PNGs, and COCO polygons and RLE decoded in NumPy.

COCO masks (polygons, RLE lists, compressed RLE strings) are decoded here with pycocotools' own algorithms
(`maskApi.c: rleFrPoly, rleFrString, rleDecode`), so masks equal `pycocotools.mask.decode` pixel for pixel (tested
against it where it is installed) without making it a dependency.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from vlm.errors import DataError


@dataclasses.dataclass(frozen=True)
class MaskRef:
    """Where one mask lives; small and picklable, decoded lazily.

    kind "png":  `path` is a mask image (see `read_mask_png` for which pixels count as on).
    kind "coco": `parts` are COCO segmentations of an image of `size` (rows, cols), united: each part is
                 ("poly", (x1, y1, x2, y2, ...)), ("rle", (count, ...)) or ("rle_str", "compressed counts").
    """

    kind: str
    path: str = ""
    size: tuple[int, int] = (0, 0)
    parts: tuple[tuple[str, Any], ...] = ()

    def describe(self) -> str:
        return self.path if self.kind == "png" else f"COCO mask ({len(self.parts)} part(s), {self.size})"

    def open(self) -> np.ndarray:
        """(rows, cols) bool. Raises DataError naming the mask on failure."""
        if self.kind == "png":
            return read_mask_png(self.path)
        if self.kind == "coco":
            return coco_mask(self.parts, *self.size)
        raise DataError(f"unknown MaskRef kind {self.kind!r}; expected 'png' or 'coco'")


def read_mask_png(path: str | Path) -> np.ndarray:
    """A mask image -> (rows, cols) bool. Palette images: index != 0. Others, as grey: value > 127, except that a
    mask whose values are all 0 or 1 (a label image saved as is) counts every nonzero pixel."""
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode == "P":
                arr = np.asarray(im) != 0
            elif im.mode == "1":
                arr = np.asarray(im).astype(bool)
            else:
                grey = np.asarray(im.convert("L") if im.mode not in ("L", "I", "I;16", "F") else im)
                arr = grey > (127 if grey.max(initial=0) > 1 else 0)
    except FileNotFoundError as e:
        raise DataError(f"mask file not found: {path}") from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"cannot read mask {path}: {e}") from e
    return arr


def rle_from_string(counts: str) -> list[int]:
    """COCO's compressed RLE string -> run lengths (pycocotools `rleFrString`: 5 bits per char, offset 48, a
    continuation bit 0x20 and a sign bit 0x10; from the fourth count on, each is stored minus the one two before)."""
    out: list[int] = []
    p = 0
    data = counts.encode("ascii") if isinstance(counts, str) else counts
    while p < len(data):
        x, k, more = 0, 0, True
        while more:
            if p >= len(data):
                raise DataError(f"compressed RLE string ends inside a number: {counts[:40]!r}")
            c = data[p] - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(out) > 2:
            x += out[-2]
        out.append(x)
    return out


def rle_decode(counts: Sequence[int], rows: int, cols: int) -> np.ndarray:
    """Run lengths (starting with a run of 0s, column-major as COCO stores them) -> (rows, cols) bool."""
    counts = np.asarray(counts, dtype=np.int64)
    if (counts < 0).any() or counts.sum() != rows * cols:
        raise DataError(f"RLE counts sum to {int(counts.sum())}, not rows x cols = {rows * cols}, or are negative")
    values = np.arange(len(counts)) % 2 == 1
    return np.repeat(values, counts).reshape(cols, rows).T


def polygon_toggles(xy: Sequence[float], rows: int, cols: int) -> np.ndarray:
    """Column-major pixel indices where a polygon's mask switches on or off (pycocotools `rleFrPoly`): the outline
    is traced on a 5x finer grid, and each place it crosses a pixel column's centre toggles that column from the
    crossing's row down."""
    pts = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    if len(pts) == 0:
        return np.zeros(0, dtype=np.int64)
    scale = 5.0
    x = np.trunc(scale * pts[:, 0] + 0.5).astype(np.int64)  # C's (int) cast truncates toward zero
    y = np.trunc(scale * pts[:, 1] + 0.5).astype(np.int64)
    x, y = np.append(x, x[0]), np.append(y, y[0])
    us, vs = [], []
    for j in range(len(pts)):  # every edge, densely, in the polygon's own order
        xs, xe, ys, ye = int(x[j]), int(x[j + 1]), int(y[j]), int(y[j + 1])
        dx, dy = abs(xe - xs), abs(ys - ye)
        flip = (dx >= dy and xs > xe) or (dx < dy and ys > ye)
        if flip:
            xs, xe, ys, ye = xe, xs, ye, ys
        n = max(dx, dy)
        d = np.arange(n + 1)
        t = n - d if flip else d
        s = ((ye - ys) if dx >= dy else (xe - xs)) / n if n else 0.0
        if dx >= dy:
            us.append(t + xs)
            vs.append(np.trunc(ys + s * t + 0.5).astype(np.int64))
        else:
            vs.append(t + ys)
            us.append(np.trunc(xs + s * t + 0.5).astype(np.int64))
    u, v = np.concatenate(us), np.concatenate(vs)
    j = np.nonzero(u[1:] != u[:-1])[0] + 1  # steps where the traced outline moves to another fine column
    xd = np.where(u[j] < u[j - 1], u[j], u[j] - 1).astype(np.float64)
    xd = (xd + 0.5) / scale - 0.5
    keep = (np.floor(xd) == xd) & (xd >= 0) & (xd <= cols - 1)  # only at a pixel column's centre
    yd = np.minimum(v[j], v[j - 1]).astype(np.float64)
    yd = np.ceil(np.clip((yd + 0.5) / scale - 0.5, 0, rows))
    return (xd[keep] * rows + yd[keep]).astype(np.int64)


def polygon_mask(xy: Sequence[float], rows: int, cols: int) -> np.ndarray:
    """One COCO polygon (x1, y1, x2, y2, ...) in pixel coordinates -> (rows, cols) bool, as pycocotools draws it."""
    toggles = np.bincount(polygon_toggles(xy, rows, cols), minlength=rows * cols + 1)[: rows * cols]
    on = np.cumsum(toggles) % 2 == 1  # a pixel is on after an odd number of toggles (column-major order)
    return on.reshape(cols, rows).T


def coco_mask(parts: Sequence[tuple[str, Any]], rows: int, cols: int) -> np.ndarray:
    """The union of COCO segmentation parts (see `MaskRef`) -> (rows, cols) bool."""
    out = np.zeros((rows, cols), dtype=bool)
    for kind, value in parts:
        if kind == "poly":
            out |= polygon_mask(value, rows, cols)
        elif kind == "rle":
            out |= rle_decode(value, rows, cols)
        elif kind == "rle_str":
            out |= rle_decode(rle_from_string(value), rows, cols)
        else:
            raise DataError(f"unknown COCO mask part {kind!r}")
    return out


def coco_parts(segmentation: Any, rows: int, cols: int) -> tuple[tuple[str, Any], ...]:
    """A COCO annotation's `segmentation` (a list of polygons, or an RLE dict) -> MaskRef parts."""
    if isinstance(segmentation, list):
        polys = []
        for poly in segmentation:
            if not isinstance(poly, list) or len(poly) < 6 or len(poly) % 2:
                raise DataError(f"a COCO polygon needs an even number (>= 6) of coordinates, got {str(poly)[:60]}")
            polys.append(("poly", tuple(float(v) for v in poly)))
        return tuple(polys)
    if isinstance(segmentation, dict) and "counts" in segmentation:
        size = tuple(segmentation.get("size", (rows, cols)))
        if size != (rows, cols):
            raise DataError(f"RLE size {list(size)} differs from the image's {[rows, cols]}")
        counts = segmentation["counts"]
        if isinstance(counts, str):
            return (("rle_str", counts),)
        return (("rle", tuple(int(c) for c in counts)),)
    raise DataError(f"unsupported COCO segmentation {str(segmentation)[:60]}: expected polygons or an RLE dict")
