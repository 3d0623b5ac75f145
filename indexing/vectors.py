"""A collection's stored vectors: immutable chunk files (`chunks/c000007_0.npy`), each a structured array of
(id int64, vector float32|float16 (D,)), shared between versions and memory-mapped.

Apart from `indexing.versions` (which owns the folder layout) so that a process that only reads vectors, such as a
worker filling an index shard (`indexing.parallel`), imports neither the store nor the image readers.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from indexing.errors import IndexingError
from vlm.atomic import atomic_write_with

CHUNKS = "chunks"  # the folder of a collection that holds them


def chunk_dtype(dim: int, dtype: str) -> np.dtype:
    return np.dtype([("id", "<i8"), ("vector", dtype, (dim,))])


def write_chunk(root: Path, name: str, ids: np.ndarray, vectors: np.ndarray, dtype: str) -> dict[str, Any]:
    """A new immutable chunk file; returns its entry for a manifest's chunk list."""
    table = np.empty(len(ids), dtype=chunk_dtype(vectors.shape[1], dtype))
    table["id"] = ids
    table["vector"] = vectors
    atomic_write_with(root / CHUNKS / name, lambda tmp: _save_npy(tmp, table))
    return {"name": name, "rows": len(ids)}


def _save_npy(path: str, array: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, array, allow_pickle=False)


class Vectors:
    """The vectors of one version: its chunk files, memory-mapped; the id lookup is built on first use."""

    def __init__(self, folder: Path, names: Sequence[str], dim: int):
        self.folder, self.names = folder, list(names)
        self.arrays = [np.load(folder / name, mmap_mode="r", allow_pickle=False) for name in names]
        self.dim = dim
        self._lock = threading.Lock()
        self._lookup: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    @property
    def rows(self) -> int:
        return sum(len(a) for a in self.arrays)

    def _table(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(sorted ids, their rows counted across the chunks, each chunk's first such row): 16 bytes per vector."""
        with self._lock:
            if self._lookup is None:
                arrays = self.arrays
                ids = np.concatenate([a["id"] for a in arrays]) if arrays else np.empty(0, np.int64)
                order = np.argsort(ids, kind="stable")
                starts = np.cumsum([0, *(len(a) for a in arrays)])
                self._lookup = (ids[order], order.astype(np.int64), starts)
            return self._lookup

    def get(self, ids: np.ndarray) -> np.ndarray:
        """(len(ids), D) float32: the vectors of `ids`, each of which must be stored."""
        ids = np.asarray(ids, dtype=np.int64)
        out = np.empty((len(ids), self.dim), np.float32)
        if not len(ids):
            return out
        table_ids, rows, starts = self._table()
        at = np.minimum(np.searchsorted(table_ids, ids), max(len(table_ids) - 1, 0))
        if not len(table_ids) or not np.array_equal(table_ids[at], ids):
            raise IndexingError("an id has no stored vector: the collection is inconsistent (run verify)")
        row = rows[at]
        chunk = np.searchsorted(starts, row, side="right") - 1
        for i, array in enumerate(self.arrays):
            mine = np.flatnonzero(chunk == i)
            if len(mine):
                local = row[mine] - starts[i]
                order = np.argsort(local)  # read the file front to back
                out[mine[order]] = array["vector"][local[order]]
        return out
