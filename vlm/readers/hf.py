"""Hugging Face datasets on disk (or, when reachable, on the hub): loading them, and the Arrow files behind them.

Local data never needs the network: a `save_to_disk` folder, a folder of data files, or one .parquet/.json(l)/.csv
file. Images stored in an Image() column stay in the Arrow files and are read lazily (`vlm.readers.images.ImageRef`).
"""

from __future__ import annotations

import re
from collections.abc import Collection
from pathlib import Path
from typing import Any

from vlm.errors import DataError
from vlm.readers.images import arrow_table

# Files that mark a `Dataset.save_to_disk` / `DatasetDict.save_to_disk` folder.
HF_DISK_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
# A single data file -> the `datasets` builder that reads it.
HF_FILE_BUILDERS = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv", ".tsv": "csv"}


def is_saved_dataset(path: Path) -> bool:
    """Whether `path` is a folder written by `save_to_disk`."""
    return path.is_dir() and any((path / m).is_file() for m in HF_DISK_MARKERS)


def looks_like_hub_name(text: str, file_suffixes: Collection[str] = ()) -> bool:
    """ "org/name", not a path with `..` nor a file name ending in one of `file_suffixes`."""
    return (
        re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", text) is not None
        and ".." not in text
        and Path(text).suffix.lower() not in file_suffixes
    )


def load(source: str | Path) -> tuple[Any, Path]:
    """(the `Dataset` or `DatasetDict` stored locally at `source`, the folder that relative image paths in it are
    resolved against). `load_hub` is the one way to the network."""
    import datasets

    path = Path(source).expanduser()
    try:
        if is_saved_dataset(path):
            return datasets.load_from_disk(str(path)), path
        if path.is_dir():
            return datasets.load_dataset(str(path)), path
        if path.is_file():
            builder = HF_FILE_BUILDERS.get(path.suffix.lower())
            if builder is None:
                raise DataError(f"cannot load {path} as a Hugging Face dataset: use .parquet, .json(l) or .csv")
            extra = {"delimiter": "\t"} if path.suffix.lower() == ".tsv" else {}
            return datasets.load_dataset(builder, data_files=str(path), **extra), path.parent
        raise DataError(f"Hugging Face dataset not found: {source} (a save_to_disk folder or a .parquet/.json file)")
    except DataError:
        raise
    except Exception as e:  # datasets raises many types (FileNotFoundError, ValueError, DatasetGenerationError)
        raise DataError(f"cannot load Hugging Face dataset {source}: {type(e).__name__}: {e}") from e


def load_hub(name: str) -> Any:
    """The dataset "org/name" from the Hugging Face Hub; `DataError` saying how to bring it here when offline."""
    import datasets

    from vlm import models

    if not models.hub_reachable():
        raise DataError(
            f"{name!r} is not a local path, and the Hugging Face Hub cannot be reached to load it as a dataset. "
            f"Check the path, or on a connected machine run "
            f"datasets.load_dataset({name!r}).save_to_disk('DIR'), copy DIR here and pass it instead"
        )
    try:
        return datasets.load_dataset(name)
    except Exception as e:  # datasets raises many types (FileNotFoundError, ValueError, DatasetGenerationError)
        raise DataError(f"cannot load Hugging Face dataset {name}: {type(e).__name__}: {e}") from e


def arrow_files(ds: Any, label: str) -> tuple[list[str], list[int]]:
    """The Arrow files behind a dataset and the dataset row at which each starts."""
    files = [f["filename"] for f in ds.cache_files]
    starts, total = [], 0
    for f in files:
        starts.append(total)
        total += arrow_table(f).num_rows
    if not files or total != len(ds):
        raise DataError(
            f"{label} is not backed by Arrow files on disk in row order; write it with "
            f"dataset.save_to_disk(DIR) and pass DIR"
        )
    return files, starts
