"""CIFAR-10/100 "python version" folders, read without running code.

CIFAR's files are Python pickles. They are read with an unpickler that only rebuilds NumPy arrays and dtypes and
refuses every other global, so a crafted file cannot run code; anything that is not the documented dict of arrays
and lists is rejected.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from eval.images import ArrayImages, LabelledData
from vlm.errors import ConfigError, DataError

CIFAR_DIRS = {"cifar-10-batches-py": "cifar10", "cifar-100-python": "cifar100"}
CIFAR_FILES = {
    "cifar10": {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"], "meta": "batches.meta"},
    "cifar100": {"train": ["train"], "test": ["test"], "meta": "meta"},
}
CIFAR_SIDE = 32


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


def cifar_dir(path: Path, required: bool = True) -> tuple[Path, str] | None:
    """(the batches folder, "cifar10" or "cifar100") for the folder itself or a parent holding one."""
    for kind, files in CIFAR_FILES.items():
        if (path / files["meta"]).is_file() and (path / files["test"][0]).is_file():
            return path, kind
    found = [(path / d, kind) for d, kind in CIFAR_DIRS.items() if (path / d).is_dir()]
    if len(found) == 1:
        return cifar_dir(found[0][0], required)
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
    folder, kind = cifar_dir(Path(path).expanduser())
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
