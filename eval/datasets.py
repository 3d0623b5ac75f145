"""Labelled image datasets for zero-shot classification (caption datasets are `vlm.data.read_pairs`).

`read_labelled(source)` accepts
    a class folder        root/<class>/<image>, recursive; classes are the sorted folder names, "_" read as a space
    a CSV/TSV file        an image-path column and a label column (class name or integer id); an optional id column
                          (`label_id`, `class_id`, `target`) fixes the class order, else names are sorted
    a Hugging Face set    a save_to_disk folder or local parquet/json files with an Image column and a label column
                          (a ClassLabel feature gives the class names)
    CIFAR-10/100          the "python version" folders (cifar-10-batches-py, cifar-100-python) or their parent
and returns a `LabelledData`: images (opened lazily, or held as arrays for CIFAR), integer targets, class names and
the rows it skipped. `LabelledDataset` wraps it for a DataLoader and carries `.classes` as clip-benchmark expects.
CIFAR is read by `eval.cifar`, without running the code a pickle may hold; the images and the record are
`eval.images`.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from eval.cifar import cifar_dir, read_cifar
from eval.images import HFImages, LabelledData, RefImages, verify
from vlm.data import read_pairs
from vlm.errors import ConfigError, DataError
from vlm.readers import hf
from vlm.readers.images import IMAGE_EXTS, ImageRef
from vlm.readers.paths import RootedPaths
from vlm.readers.rows import BadRow
from vlm.readers.tables import IMAGE_KEYS, open_text, pick_column, read_header

LOG = logging.getLogger(__name__)

FORMATS = ("auto", "folder", "csv", "tsv", "hf", "cifar")
LABEL_KEYS = ("label", "labels", "class", "category", "label_name", "class_name", "fine_label", "target")
ID_KEYS = ("label_id", "class_id", "target_id")


# ---------------------------------------------------------------------------------------------------------------
# Readers.


LABEL_FILES = ("labels.csv", "labels.tsv")  # a folder holding one of these is read through it


def labels_file(folder: Path) -> Path | None:
    """A dataset root's own labels table (`labels.csv` or `labels.tsv`, as `vlm synth` writes), if it has one."""
    found = [folder / name for name in LABEL_FILES if (folder / name).is_file()]
    return found[0] if found else None


def detect_format(source: str | Path) -> str:
    """The format `read_labelled(format="auto")` would use."""
    path = Path(source).expanduser()
    if path.is_dir():
        if cifar_dir(path, required=False) is not None:
            return "cifar"
        if hf.is_saved_dataset(path):
            return "hf"
        return "folder"
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        return suffix[1:]
    if suffix in hf.HF_FILE_BUILDERS:
        return "hf"
    if not path.exists():
        raise DataError(f"dataset not found: {path}")
    raise DataError(f"cannot tell the format of {path}; pass format= one of {list(FORMATS[1:])}")


def read_labelled(
    source: str | Path,
    *,
    format: str = "auto",
    image_key: str | None = None,
    label_key: str | None = None,
    class_names: Sequence[str] | None = None,
    split: str | None = None,
    root: str | Path | None = None,
    verify_images: bool = True,
    workers: int = 4,
    progress: bool = False,
) -> LabelledData:
    """Read a labelled image dataset (see the module docstring).

    `class_names` renames the classes by class id (its length must equal the class count), or, for CSV and Hugging
    Face data whose labels are integer ids, gives the names those ids stand for. `split` picks a Hugging Face split
    or the CIFAR part ("train" or "test", default "test"). Raises `DataError` when the source cannot be read or
    holds no usable image.
    """
    if format not in FORMATS:
        raise ConfigError(f"unknown labelled-data format {format!r}; choose one of {list(FORMATS)}")
    path = Path(source).expanduser()
    if format == "auto" and path.is_dir() and (table := labels_file(path)) is not None:
        LOG.info("%s holds %s: reading the labels from it", path, table.name)  # not its images/ as one class
        path, source = table, table
    fmt = detect_format(source) if format == "auto" else format
    if fmt == "folder":
        data = _read_folder(path, verify_images, workers)
    elif fmt in ("csv", "tsv"):
        data = _read_table(path, fmt, image_key, label_key, class_names, root, verify_images, workers, progress)
    elif fmt == "hf":
        data = _read_hf(path, image_key, label_key, class_names, split, verify_images, workers)
    else:
        data = read_cifar(path, split or "test", label_key=label_key)
    if class_names is not None and tuple(class_names) != data.classes:
        if len(class_names) != len(data.classes):
            raise DataError(
                f"{data.source}: {len(class_names)} class names given for {len(data.classes)} classes {data.classes}"
            )
        data = replace(data, classes=tuple(class_names))
    if len(data) == 0:
        raise DataError(
            f"{data.source}: no usable labelled image" + (f" ({len(data.bad)} bad rows)" if data.bad else "")
        )
    LOG.info("%s", data.summary())
    return data


def _read_folder(root: Path, verify_images: bool, workers: int) -> LabelledData:
    """root/<class>/**/<image>: one class per top-level sub-folder (sorted, as torchvision's ImageFolder)."""
    if not root.is_dir():
        raise DataError(f"image folder not found: {root}")
    rooted = RootedPaths(root)
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataError(f"{root} has no class sub-folders; expected {root}/<class name>/<image files>")
    refs, targets, bad = [], [], []
    for cid, d in enumerate(class_dirs):
        found = 0
        for dirpath, dirnames, filenames in os.walk(d):
            dirnames[:] = sorted(n for n in dirnames if not n.startswith("."))
            for name in sorted(filenames):
                if name.startswith(".") or not name.lower().endswith(IMAGE_EXTS):
                    continue
                path = os.path.join(dirpath, name)
                resolved, problem = rooted(os.path.relpath(path, root))
                if problem is not None:
                    bad.append(BadRow(str(root), None, path, problem))
                    continue
                refs.append(ImageRef("file", resolved))
                targets.append(cid)
                found += 1
        if not found:
            LOG.warning("class folder %s holds no images; the class still competes as a label", d)
    classes = tuple(" ".join(d.name.replace("_", " ").split()) for d in class_dirs)
    data = LabelledData(RefImages(tuple(refs)), np.array(targets, dtype=np.int64), classes, str(root), bad)
    if verify_images and len(data):
        good, more_bad = verify(data.images, str(root), workers)
        data = replace(data.subset(good), bad=bad + more_bad)
    return data


def _read_table(
    path: Path,
    fmt: str,
    image_key: str | None,
    label_key: str | None,
    class_names: Sequence[str] | None,
    root: str | Path | None,
    verify_images: bool,
    workers: int,
    progress: bool,
) -> LabelledData:
    """A CSV/TSV of (image path, label): `vlm.data.read_pairs` resolves and checks the paths, the label is the
    "caption" it reads; an image listed with two different labels is an error (this reader is single-label)."""
    if not path.is_file():
        raise DataError(f"labels file not found: {path}")
    delimiter = "," if fmt == "csv" else "\t"
    with open_text(path, newline="") as f:
        columns = read_header(csv.reader(f, delimiter=delimiter), path, delimiter)
    image_col = pick_column(columns, image_key, IMAGE_KEYS, "image", path)
    label_col = pick_column(columns, label_key, LABEL_KEYS, "label", path)
    table = read_pairs(
        path, format=fmt, image_key=image_col, caption_key=label_col, root=root,
        verify_images=verify_images, workers=workers, progress=progress,
    )  # fmt: skip
    for p in table.pairs:
        if len(p.captions) > 1:
            raise DataError(f"{path}: image {p.key} is listed with several labels {list(p.captions)}")
    names = [p.captions[0] for p in table.pairs]
    id_col = next((c for c in columns if c.lower() in ID_KEYS), None)
    if class_names is not None:
        classes, targets = _ids_from_names(names, class_names, path)
    elif id_col is not None:
        classes, targets = _ids_from_column(path, delimiter, label_col, id_col, names)
    else:
        classes = tuple(sorted(set(names)))
        index = {c: i for i, c in enumerate(classes)}
        targets = [index[n] for n in names]
    bad = [replace(b, reason="empty label") if b.reason == "empty caption" else b for b in table.bad]
    return LabelledData(RefImages(tuple(p.image for p in table.pairs)), np.array(targets), classes, str(path), bad)


def _ids_from_names(names: Sequence[str], class_names: Sequence[str], source: Path) -> tuple[tuple[str, ...], list]:
    """Labels that are class names from `class_names`, or integer ids into it."""
    index = {c: i for i, c in enumerate(class_names)}
    targets = []
    for n in names:
        if n in index:
            targets.append(index[n])
        elif n.lstrip("-").isdigit() and 0 <= int(n) < len(class_names):
            targets.append(int(n))
        else:
            raise DataError(f"{source}: label {n!r} is neither one of the class names nor an id in [0, {len(index)})")
    return tuple(class_names), targets


def _ids_from_column(
    path: Path, delimiter: str, label_col: str, id_col: str, names: Sequence[str]
) -> tuple[tuple[str, ...], list]:
    """Class order from an id column: each name must have one id and each id one name; ids are re-numbered
    densely in increasing order (a subset of classes keeps its source order)."""
    name_to_id: dict[str, int] = {}
    with open(path, newline="", encoding="utf-8-sig") as f:
        for line, row in enumerate(csv.DictReader(f, delimiter=delimiter), start=2):
            name, raw = " ".join((row.get(label_col) or "").split()), (row.get(id_col) or "").strip()
            if not name:
                continue
            try:
                cid = int(raw)
            except ValueError:
                raise DataError(f"{path}, line {line}: {id_col} {raw!r} is not an integer") from None
            if name_to_id.setdefault(name, cid) != cid:
                raise DataError(
                    f"{path}, line {line}: label {name!r} has {id_col} {cid} here, {name_to_id[name]} before"
                )
    by_id: dict[int, str] = {}
    for name, cid in name_to_id.items():
        if by_id.setdefault(cid, name) != name:
            raise DataError(f"{path}: {id_col} {cid} names two labels, {by_id[cid]!r} and {name!r}")
    classes = tuple(by_id[c] for c in sorted(by_id))
    index = {c: i for i, c in enumerate(classes)}
    return classes, [index[n] for n in names]


def _load_hf(path: Path, split: str | None) -> tuple[Any, str]:
    import datasets

    ds, _ = hf.load(path)
    if isinstance(ds, datasets.DatasetDict):
        names = list(ds)
        if split is None:
            split = next((s for s in ("test", "validation", "train") if s in ds), names[0] if len(names) == 1 else None)
        if split not in ds:
            raise DataError(f"{path} has splits {names}; choose one with split=")
        return ds[split], split
    if split is not None and ds.split is not None and str(ds.split) != split:
        raise DataError(f"{path} holds only the {ds.split!s} split, not {split!r}")
    return ds, str(ds.split or "")


def _read_hf(
    path: Path,
    image_key: str | None,
    label_key: str | None,
    class_names: Sequence[str] | None,
    split: str | None,
    verify_images: bool,
    workers: int,
) -> LabelledData:
    import datasets

    ds, split = _load_hf(path, split)
    label = f"{path}" + (f"/{split}" if split else "")
    features = ds.features
    image_col = image_key or next((c for c, f in features.items() if isinstance(f, datasets.Image)), None)
    if image_col is None or image_col not in features or not isinstance(features[image_col], datasets.Image):
        raise DataError(f"{label}: no Image column (columns: {dict(features)}); name it with image_key=")
    label_col = label_key or next((c for c, f in features.items() if isinstance(f, datasets.ClassLabel)), None)
    label_col = pick_column(list(features), label_col, LABEL_KEYS, "label", path)
    values = ds.data.column(label_col).to_pylist()
    feature = features[label_col]
    keep = np.array([i for i, v in enumerate(values) if v is not None and v != -1], dtype=np.int64)
    bad = [BadRow(label, None, f"row {i}", "missing label") for i in sorted(set(range(len(values))) - set(keep))]
    kept = [values[i] for i in keep]
    if isinstance(feature, datasets.ClassLabel):
        classes, targets = tuple(class_names or feature.names), kept
    elif all(isinstance(v, int) for v in kept):
        if class_names is None:
            raise DataError(f"{label}: labels are integer ids without names; pass class_names= (one per id)")
        classes, targets = _ids_from_names([str(v) for v in kept], class_names, path)
    elif all(isinstance(v, str) for v in kept):
        classes = tuple(class_names) if class_names is not None else tuple(sorted(set(kept)))
        classes, targets = _ids_from_names(kept, classes, path)
    else:
        raise DataError(f"{label}: label column {label_col!r} must hold integers or strings, got {feature}")
    images = HFImages(ds.select_columns([image_col]), image_col, keep, label)
    data = LabelledData(images, np.array(targets, dtype=np.int64), classes, label, bad)
    if verify_images and len(data):
        good, more_bad = verify(data.images, label, workers)
        data = replace(data.subset(good), bad=bad + more_bad)
    return data
