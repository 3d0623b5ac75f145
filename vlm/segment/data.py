"""(image, phrase, mask) triples for referring segmentation: readers, COCO mask decoding, a torch dataset.

`read_segmentation(source)` accepts
    phrases.csv          columns path,mask_path,phrase (more columns are ignored): `vlm synth` writes this, and so
                         is ../shared/data/refseg_small laid out. Mask PNGs: single channel, same size as the image
    a folder             holding phrases.csv; or images/<stem>.<ext> with masks/<stem>__<phrase_slug>.png
                         (the slug's underscores become spaces)
    a COCO JSON file     {"images", "annotations", "categories"}: one sample per (image, category), the mask the
                         union of that category's instances, the phrase the category name;
                         with "refs" (RefCOCO-style, [{"ann_id", "image_id", "sentences": [{"sent"}|str], "split"}])
                         one sample per (ref, sentence), the mask that one annotation. `split=` keeps one split.
and returns a `SegTable`: the samples plus every row it skipped, with the reason and the row number. Image paths are
resolved against a root (default: the data file's folder) and may not leave it.

COCO masks (polygons, RLE lists, compressed RLE strings) are decoded here in NumPy with pycocotools' own
algorithms (`maskApi.c: rleFrPoly, rleFrString, rleDecode`), so masks equal `pycocotools.mask.decode` pixel for
pixel (tested against it where it is installed) without making it a dependency.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import logging
import re
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from vlm.data import BadRow, ImageRef
from vlm.errors import DataError
from vlm.readers.paths import RootedPaths

LOG = logging.getLogger(__name__)

FORMATS = ("auto", "csv", "folder", "coco")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


# -- masks ----------------------------------------------------------------------------------------------------


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


# -- samples --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SegSample:
    key: str  # unique: "<image key>#<mask key or annotation>#<phrase>"
    group: str  # the image's key; a split keeps all phrases of one image together
    image: ImageRef
    phrase: str
    mask: MaskRef


@dataclasses.dataclass
class SegTable:
    samples: list[SegSample]
    bad: list[BadRow]
    source: str

    def summary(self) -> str:
        text = f"read {len(self.samples):,} (image, phrase, mask) samples from {self.source}"
        if not self.bad:
            return f"{text}; no bad rows"
        kinds = ", ".join(f"{n:,} {k}" for k, n in Counter(b.kind for b in self.bad).most_common())
        return f"{text}; skipped {len(self.bad):,} bad rows: {kinds}"


def detect_format(source: Path) -> str:
    if source.is_dir():
        return "folder"
    suffix = source.suffix.lower()
    if suffix in (".csv", ".tsv"):
        return "csv"
    if suffix == ".json":
        return "coco"
    raise DataError(f"cannot tell the format of {source}: expected a .csv, a COCO .json or a folder")


def read_segmentation(
    source: str | Path,
    *,
    format: str = "auto",
    root: str | Path | None = None,
    split: str | None = None,
    strict: bool = False,
) -> SegTable:
    """Read (image, phrase, mask) samples; see the module docstring for the formats."""
    source = Path(source).expanduser()
    if format not in FORMATS:
        raise DataError(f"unknown segmentation data format {format!r}; choose one of {list(FORMATS)}")
    if not source.exists():
        raise DataError(f"segmentation data not found: {source}")
    fmt = detect_format(source) if format == "auto" else format
    if fmt == "folder" and (source / "phrases.csv").is_file():
        source, fmt = source / "phrases.csv", "csv"
    resolver = RootedPaths(Path(root) if root else (source if source.is_dir() else source.parent))
    bad: list[BadRow] = []

    def reject(row: int | None, item: str, reason: str) -> None:
        if strict:
            raise DataError(f"{source}, line {row}: {item}: {reason}" if row else f"{source}: {item}: {reason}")
        bad.append(BadRow(str(source), row, item, reason))

    if fmt == "csv":
        samples = _read_csv(source, resolver, reject)
    elif fmt == "folder":
        samples = _read_mask_folder(source, resolver, reject)
    else:
        samples = _read_coco(source, resolver, reject, split)
    table = SegTable(samples, bad, str(source))
    LOG.info("%s", table.summary())
    if not samples:
        raise DataError(f"{table.summary()}; there is nothing to use" + (f" (first: {bad[0]})" if bad else ""))
    return table


def _read_csv(path: Path, resolver: RootedPaths, reject: Callable) -> list[SegSample]:
    samples: list[SegSample] = []
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f, delimiter=delimiter)
            missing = {"path", "mask_path", "phrase"} - set(reader.fieldnames or [])
            if missing:
                raise DataError(
                    f"{path} lacks the column(s) {sorted(missing)}; it needs path,mask_path,phrase "
                    f"(found: {reader.fieldnames})"
                )
            for row in reader:
                line = reader.line_num
                image, mask, phrase = (row.get(k) or "" for k in ("path", "mask_path", "phrase"))
                _add_png_sample(samples, resolver, reject, line, image.strip(), mask.strip(), phrase)
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text ({e.reason}); re-save it as UTF-8") from e
    return samples


def _add_png_sample(samples, resolver, reject, line, image: str, mask: str, phrase: str) -> None:
    phrase = " ".join(phrase.split())
    if not phrase:
        reject(line, image, "empty phrase")
        return
    image_path, problem = resolver(image) if image else (None, "empty image path")
    if problem is None:
        mask_path, problem = resolver(mask) if mask else (None, "empty mask path")
        problem = f"mask: {problem}" if problem else None
    if problem is not None:
        reject(line, image or mask, problem)
        return
    group = resolver.key(image_path)
    key = f"{group}#{resolver.key(mask_path)}#{phrase}"
    samples.append(SegSample(key, group, ImageRef("file", image_path), phrase, MaskRef("png", path=mask_path)))


def _read_mask_folder(folder: Path, resolver: RootedPaths, reject: Callable) -> list[SegSample]:
    """images/<stem>.<ext> + masks/<stem>__<phrase_slug>.png."""
    images_dir, masks_dir = folder / "images", folder / "masks"
    if not images_dir.is_dir() or not masks_dir.is_dir():
        raise DataError(
            f"{folder} has no phrases.csv and no images/ + masks/ folders; lay it out as images/<stem>.png with "
            f"masks/<stem>__<phrase_words>.png, or pass a CSV with columns path,mask_path,phrase"
        )
    images = {p.stem: p for p in sorted(images_dir.iterdir()) if p.suffix.lower() in IMAGE_EXTS}
    samples: list[SegSample] = []
    for mask in sorted(masks_dir.glob("*.png")):
        stem, sep, slug = mask.stem.partition("__")
        rel_mask = f"masks/{mask.name}"
        if not sep or stem not in images:
            reject(None, rel_mask, "no image for this mask (expected masks/<image stem>__<phrase>.png)")
            continue
        phrase = slug.replace("_", " ")
        _add_png_sample(samples, resolver, reject, None, f"images/{images[stem].name}", rel_mask, phrase)
    return samples


def _sentences(ref: dict) -> list[str]:
    out = []
    for s in ref.get("sentences", []):
        text = s.get("sent") or s.get("raw") if isinstance(s, dict) else s
        if isinstance(text, str) and text.strip():
            out.append(" ".join(text.split()))
    return out


def _read_coco(path: Path, resolver: RootedPaths, reject: Callable, split: str | None) -> list[SegSample]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
        raise DataError(f"{path} is not COCO-style: it needs 'images' and 'annotations' lists")
    images = {img["id"]: img for img in data["images"]}
    categories = {c["id"]: c["name"] for c in data.get("categories", [])}
    anns = {a["id"]: a for a in data["annotations"] if "id" in a}
    samples: list[SegSample] = []

    def add(image_id: Any, anns_: list[dict], phrase: str, tag: str) -> None:
        img = images.get(image_id)
        if img is None:
            reject(None, f"image_id {image_id}", "annotation names an image that is not in 'images'")
            return
        name = str(img.get("file_name", ""))
        image_path, problem = resolver(name) if name else (None, "empty file_name")
        if problem is None:
            try:
                rows, cols = int(img["height"]), int(img["width"])
                parts = tuple(p for a in anns_ for p in coco_parts(a["segmentation"], rows, cols))
            except (KeyError, TypeError, ValueError) as e:
                problem = f"malformed annotation: {e}"
        if problem is not None:
            reject(None, name or f"image_id {image_id}", problem)
            return
        group = resolver.key(image_path)
        mask = MaskRef("coco", size=(rows, cols), parts=parts)
        samples.append(SegSample(f"{group}#{tag}#{phrase}", group, ImageRef("file", image_path), phrase, mask))

    if "refs" in data:
        for ref in data["refs"]:
            if split is not None and ref.get("split") != split:
                continue
            ann = anns.get(ref.get("ann_id"))
            if ann is None:
                reject(None, f"ref {ref.get('ref_id')}", f"ann_id {ref.get('ann_id')} is not in 'annotations'")
                continue
            for k, sentence in enumerate(_sentences(ref)):
                add(ann["image_id"], [ann], sentence, f"ref{ref.get('ref_id')}.{k}")
        return samples
    by_class: dict[tuple[Any, Any], list[dict]] = {}
    for a in data["annotations"]:
        by_class.setdefault((a.get("image_id"), a.get("category_id")), []).append(a)
    for (image_id, cat), group in by_class.items():
        name = categories.get(cat)
        if not name:
            reject(None, f"category_id {cat}", "category has no name in 'categories'")
            continue
        add(image_id, group, " ".join(str(name).replace("_", " ").split()), f"cat{cat}")
    return samples


# -- splitting and loading ------------------------------------------------------------------------------------


def split_by_image(samples: Sequence[SegSample], val_fraction: float, seed: int = 0):
    """Deterministic split that keeps every phrase of one image on the same side: (train, val)."""
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")

    def score(group: str) -> float:
        h = hashlib.blake2b(f"{seed}:{group}".encode(), digest_size=8).digest()
        return int.from_bytes(h, "big") / 2**64

    train = [s for s in samples if score(s.group) >= val_fraction]
    val = [s for s in samples if score(s.group) < val_fraction]
    return train, val


def load_pair(sample: SegSample) -> tuple[Image.Image, np.ndarray]:
    """The sample's RGB image and its (rows, cols) bool mask; DataError if their sizes differ."""
    image = sample.image.open()
    mask = sample.mask.open()
    if mask.shape != (image.height, image.width):
        raise DataError(
            f"mask {sample.mask.describe()} is {mask.shape[1]} x {mask.shape[0]} but image "
            f"{sample.image.describe()} is {image.width} x {image.height}; a mask must match its image"
        )
    return image, mask


def _mask_at(mask: np.ndarray, size: int) -> torch.Tensor:
    """(rows, cols) bool -> (size, size) float32 in [0, 1]: the share of each output pixel the mask covers."""
    m = torch.from_numpy(mask.astype(np.float32))[None, None]
    if m.shape[-2:] == (size, size):
        return m[0, 0]
    return torch.nn.functional.interpolate(m, size=(size, size), mode="area")[0, 0]


class SegDataset(torch.utils.data.Dataset):
    """Samples as (pixels (3, S, S) normalised, target (S, S) float32, phrase index, image index) for the decoder
    trainer; the image index numbers the distinct images (for caching their encoder activations). Deterministic:
    no augmentation (a flip would turn "on the left" into a wrong label)."""

    def __init__(
        self, samples: Sequence[SegSample], phrase_index: dict[str, int], size: int, to_pixels: Callable
    ) -> None:
        self.samples = list(samples)
        self.phrase_index = phrase_index
        self.size = size
        self.to_pixels = to_pixels  # (PIL image, (rows, cols)) -> (3, rows, cols) normalised float32
        groups = dict.fromkeys(s.group for s in self.samples)
        self.image_index = {g: i for i, g in enumerate(groups)}

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        i = item[1] if isinstance(item, tuple) else item  # the trainer's sampler yields (epoch, index)
        sample = self.samples[i]
        image, mask = load_pair(sample)
        pixels = self.to_pixels(image, (self.size, self.size))
        return pixels, _mask_at(mask, self.size), self.phrase_index[sample.phrase], self.image_index[sample.group]


def slug(phrase: str) -> str:
    """A file-name-safe form of a phrase ("dining table" -> "dining_table")."""
    return re.sub(r"[^a-z0-9]+", "_", phrase.lower()).strip("_")[:60] or "phrase"
