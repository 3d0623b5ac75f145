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

CIFAR's files are Python pickles. They are read with an unpickler that only rebuilds NumPy arrays and dtypes and
refuses every other global, so a crafted file cannot run code; anything that is not the documented dict of arrays
and lists is rejected.
"""

from __future__ import annotations

import csv
import logging
import os
import pickle
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
import torch
from PIL import Image

from vlm.data import FOLDER_IMAGE_EXTS, BadRow, ImageError, ImageRef, read_pairs, to_rgb
from vlm.errors import ConfigError, DataError
from vlm.readers.tables import IMAGE_KEYS, pick_column

LOG = logging.getLogger(__name__)

FORMATS = ("auto", "folder", "csv", "tsv", "hf", "cifar")
LABEL_KEYS = ("label", "labels", "class", "category", "label_name", "class_name", "fine_label", "target")
ID_KEYS = ("label_id", "class_id", "target_id")
HF_DISK_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
HF_FILE_BUILDERS = {".parquet": "parquet", ".json": "json", ".jsonl": "json"}
CIFAR_DIRS = {"cifar-10-batches-py": "cifar10", "cifar-100-python": "cifar100"}
CIFAR_FILES = {
    "cifar10": {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"], "meta": "batches.meta"},
    "cifar100": {"train": ["train"], "test": ["test"], "meta": "meta"},
}
CIFAR_SIDE = 32


# ---------------------------------------------------------------------------------------------------------------
# Images, by where they live.


class Images(Protocol):
    def __len__(self) -> int: ...
    def open(self, i: int) -> Image.Image: ...
    def subset(self, indices: np.ndarray) -> Images: ...


@dataclass(frozen=True)
class RefImages:
    """Image files (or tar members, Arrow rows) referenced by `vlm.data.ImageRef`."""

    refs: tuple[ImageRef, ...]

    def __len__(self) -> int:
        return len(self.refs)

    def open(self, i: int) -> Image.Image:
        return self.refs[i].open()

    def subset(self, indices: np.ndarray) -> RefImages:
        return RefImages(tuple(self.refs[i] for i in indices))


@dataclass(frozen=True, eq=False)  # holds an array: compared by identity
class ArrayImages:
    """Images held in memory: (N, H, W, 3) uint8."""

    array: np.ndarray

    def __len__(self) -> int:
        return len(self.array)

    def open(self, i: int) -> Image.Image:
        return Image.fromarray(self.array[i])

    def subset(self, indices: np.ndarray) -> ArrayImages:
        return ArrayImages(self.array[indices])


@dataclass(frozen=True, eq=False)
class HFImages:
    """Rows of a Hugging Face dataset's Image column, decoded on access (the dataset is memory-mapped)."""

    dataset: Any
    column: str
    rows: np.ndarray  # (N,) int64 dataset rows
    label: str  # the source, for error messages

    def __len__(self) -> int:
        return len(self.rows)

    def open(self, i: int) -> Image.Image:
        row = int(self.rows[i])
        try:
            image = self.dataset[row][self.column]
        except Exception as e:  # datasets decodes with PIL: OSError, ValueError, UnidentifiedImageError, ...
            raise ImageError(f"hf:{self.label}[row {row}]", f"cannot decode ({type(e).__name__}: {e})") from e
        if not isinstance(image, Image.Image):
            raise ImageError(f"hf:{self.label}[row {row}]", f"not an image ({type(image).__name__})")
        return to_rgb(image)

    def subset(self, indices: np.ndarray) -> HFImages:
        return replace(self, rows=self.rows[indices])


# ---------------------------------------------------------------------------------------------------------------
# The dataset record.


@dataclass(eq=False)
class LabelledData:
    images: Images
    targets: np.ndarray  # (N,) int64 class ids in [0, C)
    classes: tuple[str, ...]  # class id -> class name, as used in prompts
    source: str
    bad: list[BadRow] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.targets = np.asarray(self.targets, dtype=np.int64)
        if self.targets.shape != (len(self.images),):
            raise DataError(f"{self.source}: {len(self.images)} images but {self.targets.shape} targets")
        if self.targets.size and (self.targets.min() < 0 or self.targets.max() >= len(self.classes)):
            raise DataError(f"{self.source}: class ids must lie in [0, {len(self.classes)})")

    def __len__(self) -> int:
        return len(self.images)

    def class_counts(self) -> np.ndarray:
        """(C,) int64 images per class."""
        return np.bincount(self.targets, minlength=len(self.classes))

    def subset(self, indices: Sequence[int] | np.ndarray) -> LabelledData:
        """The listed images (same classes, same class ids)."""
        idx = np.asarray(indices, dtype=np.int64)
        return LabelledData(self.images.subset(idx), self.targets[idx], self.classes, self.source, list(self.bad))

    def summary(self) -> str:
        text = f"read {len(self):,} labelled images in {len(self.classes):,} classes from {self.source}"
        return text + (f"; skipped {len(self.bad):,} bad rows" if self.bad else "")


class LabelledDataset(torch.utils.data.Dataset):
    """`dataset[i]` -> (transform(image i), class id); `.classes` lists the class names (clip-benchmark reads it)."""

    def __init__(self, data: LabelledData, transform: Callable):
        self.data = data
        self.transform = transform
        self.classes = list(data.classes)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.data.images.open(i)), int(self.data.targets[i])


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
        if _cifar_dir(path, required=False) is not None:
            return "cifar"
        if any((path / m).is_file() for m in HF_DISK_MARKERS):
            return "hf"
        return "folder"
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        return suffix[1:]
    if suffix in HF_FILE_BUILDERS:
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


def _verify(images: Images, source: str, workers: int) -> tuple[np.ndarray, list[BadRow]]:
    """Decode every image once; (indices of good images, bad rows)."""

    def check(i: int) -> str | None:
        try:
            images.open(i)
        except ImageError as e:
            return e.reason
        return None

    with ThreadPoolExecutor(max(1, workers)) as pool:
        reasons = list(pool.map(check, range(len(images))))
    bad = [BadRow(source, None, _describe(images, i), r) for i, r in enumerate(reasons) if r is not None]
    good = np.array([i for i, r in enumerate(reasons) if r is None], dtype=np.int64)
    return good, bad


def _describe(images: Images, i: int) -> str:
    return images.refs[i].describe() if isinstance(images, RefImages) else f"image {i}"


def _read_folder(root: Path, verify_images: bool, workers: int) -> LabelledData:
    """root/<class>/**/<image>: one class per top-level sub-folder (sorted, as torchvision's ImageFolder)."""
    if not root.is_dir():
        raise DataError(f"image folder not found: {root}")
    real_root = os.path.join(os.path.realpath(root), "")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataError(f"{root} has no class sub-folders; expected {root}/<class name>/<image files>")
    refs, targets, bad = [], [], []
    for cid, d in enumerate(class_dirs):
        found = 0
        for dirpath, dirnames, filenames in os.walk(d):
            dirnames[:] = sorted(n for n in dirnames if not n.startswith("."))
            for name in sorted(filenames):
                if name.startswith(".") or not name.lower().endswith(FOLDER_IMAGE_EXTS):
                    continue
                path = os.path.join(dirpath, name)
                if not os.path.realpath(path).startswith(real_root):
                    bad.append(BadRow(str(root), None, path, "path escapes the dataset root"))
                    continue
                refs.append(ImageRef("file", os.path.realpath(path)))
                targets.append(cid)
                found += 1
        if not found:
            LOG.warning("class folder %s holds no images; the class still competes as a label", d)
    classes = tuple(" ".join(d.name.replace("_", " ").split()) for d in class_dirs)
    data = LabelledData(RefImages(tuple(refs)), np.array(targets, dtype=np.int64), classes, str(root), bad)
    if verify_images and len(data):
        good, more_bad = _verify(data.images, str(root), workers)
        data = replace(data.subset(good), bad=bad + more_bad)
    return data


def _header(path: Path, delimiter: str) -> list[str]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            return next(csv.reader(f, delimiter=delimiter), [])
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {path}: {e}") from e


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
    columns = _header(path, delimiter)
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

    try:
        if path.is_dir() and any((path / m).is_file() for m in HF_DISK_MARKERS):
            ds = datasets.load_from_disk(str(path))
        elif path.is_dir():
            ds = datasets.load_dataset(str(path))
        elif path.is_file() and path.suffix.lower() in HF_FILE_BUILDERS:
            ds = datasets.load_dataset(HF_FILE_BUILDERS[path.suffix.lower()], data_files=str(path))
        else:
            raise DataError(f"Hugging Face dataset not found: {path} (a save_to_disk folder or a .parquet/.json file)")
    except DataError:
        raise
    except Exception as e:  # datasets raises many types (FileNotFoundError, ValueError, DatasetGenerationError)
        raise DataError(f"cannot load Hugging Face dataset {path}: {type(e).__name__}: {e}") from e
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
        good, more_bad = _verify(data.images, label, workers)
        data = replace(data.subset(good), bad=bad + more_bad)
    return data


# ---------------------------------------------------------------------------------------------------------------
# CIFAR-10/100 python pickles, read without running code.


def _latin1_bytes(text: str, encoding: str) -> bytes:
    """What pickle protocol <= 2 calls to rebuild a bytes object (`_codecs.encode(text, "latin1")`); nothing else."""
    if encoding != "latin1" or not isinstance(text, str):
        raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


class _ArrayUnpickler(pickle.Unpickler):
    """Rebuilds NumPy arrays, dtypes and scalars (numpy 1 or 2 module names) and bytes, refuses every other global."""

    _RECONSTRUCT = np.ndarray((0,)).__reduce__()[0]  # numpy's `_reconstruct`, without importing numpy.core
    _SCALAR = np.float64(0).__reduce__()[0]  # numpy's `scalar`
    ALLOWED: ClassVar[dict[tuple[str, str], Any]] = {
        ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
        ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
        ("numpy.core.multiarray", "scalar"): _SCALAR,
        ("numpy._core.multiarray", "scalar"): _SCALAR,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_bytes,
    }

    def find_class(self, module: str, name: str) -> Any:
        found = self.ALLOWED.get((module, name))
        if found is None:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only NumPy arrays are allowed here")
        return found


def load_array_pickle(path: Path) -> dict[str, Any]:
    """A pickled dict of NumPy arrays and plain lists (CIFAR's format), with bytes keys decoded."""
    try:
        with open(path, "rb") as f:
            obj = _ArrayUnpickler(f, encoding="latin1").load()
    except FileNotFoundError:
        raise DataError(f"CIFAR file missing: {path}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise DataError(f"{path} is not a CIFAR pickle (a dict of arrays): {e}") from e
    if not isinstance(obj, dict):
        raise DataError(f"{path} holds a {type(obj).__name__}, not the dict of arrays CIFAR files hold")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _cifar_dir(path: Path, required: bool = True) -> tuple[Path, str] | None:
    """(the batches folder, "cifar10" or "cifar100") for the folder itself or a parent holding one."""
    for kind, files in CIFAR_FILES.items():
        if (path / files["meta"]).is_file() and (path / files["test"][0]).is_file():
            return path, kind
    found = [(path / d, kind) for d, kind in CIFAR_DIRS.items() if (path / d).is_dir()]
    if len(found) == 1:
        return _cifar_dir(found[0][0], required)
    if required:
        what = "both CIFAR-10 and CIFAR-100; pass one of the two folders" if found else "no CIFAR batches"
        raise DataError(f"{path} holds {what} (expected {list(CIFAR_DIRS)} with their meta and test files)")
    return None


def _cifar_labels(batch: dict[str, Any], key: str, path: Path, n: int) -> np.ndarray:
    if key not in batch:
        raise DataError(f"{path} has no {key!r} entry; entries: {sorted(batch)}")
    labels = np.asarray(batch[key])
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: {key!r} must be {n} integers, got {labels.dtype} {labels.shape}")
    return labels.astype(np.int64)


def read_cifar(path: str | Path, split: str = "test", *, label_key: str | None = None) -> LabelledData:
    """CIFAR-10 or CIFAR-100 (python version). `label_key` picks CIFAR-100's "coarse_labels" (default: fine).

    Class names have "_" read as a space ("aquarium_fish" -> "aquarium fish"), as CLIP's prompts use them.
    """
    if split not in ("train", "test"):
        raise ConfigError(f"CIFAR split must be 'train' or 'test', got {split!r}")
    folder, kind = _cifar_dir(Path(path).expanduser())
    key = label_key or ("labels" if kind == "cifar10" else "fine_labels")
    meta_path = folder / CIFAR_FILES[kind]["meta"]
    meta = load_array_pickle(meta_path)
    names_key = {"labels": "label_names", "fine_labels": "fine_label_names", "coarse_labels": "coarse_label_names"}
    if key not in names_key or names_key[key] not in meta:
        raise DataError(f"{meta_path}: no class names for labels {key!r}; entries: {sorted(meta)}")
    raw_names = meta[names_key[key]]
    if not isinstance(raw_names, list) or not all(isinstance(n, str | bytes) for n in raw_names):
        raise DataError(f"{meta_path}: {names_key[key]!r} must be a list of strings")
    classes = tuple(" ".join((n.decode() if isinstance(n, bytes) else n).replace("_", " ").split()) for n in raw_names)
    arrays, targets = [], []
    for name in CIFAR_FILES[kind][split]:
        batch = load_array_pickle(folder / name)
        pixels = batch.get("data")
        if not isinstance(pixels, np.ndarray) or pixels.dtype != np.uint8 or pixels.ndim != 2:
            raise DataError(f"{folder / name}: 'data' must be a (N, 3072) uint8 array")
        if pixels.shape[1] != 3 * CIFAR_SIDE * CIFAR_SIDE:
            raise DataError(f"{folder / name}: 'data' rows must hold 3072 values, got {pixels.shape[1]}")
        arrays.append(pixels.reshape(-1, 3, CIFAR_SIDE, CIFAR_SIDE).transpose(0, 2, 3, 1))  # (N, 32, 32, 3)
        targets.append(_cifar_labels(batch, key, folder / name, len(pixels)))
    return LabelledData(
        ArrayImages(np.ascontiguousarray(np.concatenate(arrays))),
        np.concatenate(targets),
        classes,
        f"{folder}[{split}]",
    )
