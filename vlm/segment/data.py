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
Masks (PNG files, COCO polygons and RLE) are `vlm.segment.masks`.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from vlm.errors import DataError
from vlm.readers import rows
from vlm.readers import split as readers_split
from vlm.readers.images import IMAGE_EXTS, ImageRef
from vlm.readers.paths import RootedPaths
from vlm.readers.rows import BadRow
from vlm.readers.tables import open_text
from vlm.segment.masks import MaskRef, coco_parts

LOG = logging.getLogger(__name__)

FORMATS = ("auto", "csv", "folder", "coco")


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
        return rows.summary(f"read {len(self.samples):,} (image, phrase, mask) samples from {self.source}", self.bad)


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
    with open_text(path, newline="") as f:
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


def split_by_image(
    samples: Sequence[SegSample], val_fraction: float, seed: int = 0
) -> tuple[list[SegSample], list[SegSample]]:
    """Deterministic split that keeps every phrase of one image on the same side: (train, val). The one split
    algorithm (`vlm.readers.split`) over the images: round(val_fraction * images) of them are held out."""
    return readers_split.split(samples, val_fraction, seed, key=lambda s: s.group, grouped=True, what="images")


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
