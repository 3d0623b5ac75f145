"""Labelled images in memory: where the images live (files, arrays, 🤗 rows), `LabelledData` and its Dataset.

`eval.datasets` reads them from disk, `eval.cifar` from CIFAR's pickles; `eval.zeroshot` scores them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image

from vlm.errors import DataError
from vlm.readers import rows
from vlm.readers.images import ImageError, ImageRef, to_rgb
from vlm.readers.rows import BadRow


class Images(Protocol):
    def __len__(self) -> int: ...
    def open(self, i: int) -> Image.Image: ...
    def subset(self, indices: np.ndarray) -> Images: ...


@dataclass(frozen=True)
class RefImages:
    """Image files (or tar members, Arrow rows) referenced by `vlm.readers.images.ImageRef`."""

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
        return rows.summary(
            f"read {len(self):,} labelled images in {len(self.classes):,} classes from {self.source}", self.bad
        )


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


def verify(images: Images, source: str, workers: int) -> tuple[np.ndarray, list[BadRow]]:
    """Decode every image once; (indices of good images, bad rows)."""

    def check(i: int) -> str | None:
        try:
            images.open(i)
        except ImageError as e:
            return e.reason
        return None

    with ThreadPoolExecutor(max(1, workers)) as pool:
        reasons = list(pool.map(check, range(len(images))))
    bad = [BadRow(source, None, describe(images, i), r) for i, r in enumerate(reasons) if r is not None]
    good = np.array([i for i, r in enumerate(reasons) if r is None], dtype=np.int64)
    return good, bad


def describe(images: Images, i: int) -> str:
    return images.refs[i].describe() if isinstance(images, RefImages) else f"image {i}"
