"""What a collection returns to its callers: search hits, the results of adding and removing, statistics."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from indexing.embed import EmbedStats
from indexing.faiss_index import IndexInfo
from indexing.store import ImageRecord
from vlm.readers.rows import BadRow


@dataclass(frozen=True)
class ModelSpec:
    model: str | None  # what `vlm.models.load` takes to load it again; None when built from an Encoders object
    pretrained: str | None
    source: str  # for people: "checkpoint runs/demo/final", "ViT-B-32 + laion2b_s34b_b79k"
    fingerprint: str
    embed_dim: int


class Hits(NamedTuple):
    """Search results, shaped as in faiss."""

    ids: np.ndarray  # (nq, k) int64; -1 where fewer than k images match
    scores: np.ndarray  # (nq, k) float32 cosine similarities, best first; -inf where ids is -1
    records: list[list[ImageRecord]]  # per query, the metadata of the ids found, in rank order


@dataclass
class AddResult:
    added: int
    ids: np.ndarray  # (added,) int64, in input order
    already_present: int  # inputs whose path was already in the collection (not re-embedded)
    duplicates: list[tuple[str, str]]  # (input, path of the image with the same pixels) for inputs not added
    bad: list[BadRow]  # inputs that could not be used, with the reason
    version: int
    embed: EmbedStats | None

    def summary(self) -> str:
        text = f"added {self.added:,} image(s) (version {self.version})"
        parts = [f"{self.already_present:,} already present"] if self.already_present else []
        parts += [f"{len(self.duplicates):,} duplicate(s)"] if self.duplicates else []
        parts += [f"{len(self.bad):,} unusable"] if self.bad else []
        return text + (f"; skipped {', '.join(parts)}" if parts else "")


@dataclass
class RemoveResult:
    removed: np.ndarray  # ids removed, int64
    not_found: list[str | int]
    version: int


@dataclass
class Stats:
    path: str
    version: int
    count: int
    dim: int
    dtype: str
    root: str | None
    model: ModelSpec
    index: IndexInfo
    chunk_rows: int  # vectors stored, including those of removed images until chunks are compacted
    disk_bytes: int  # of the current version and its chunks
