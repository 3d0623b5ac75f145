"""What a collection returns to its callers: search hits, the results of adding and removing, statistics."""

from __future__ import annotations

from dataclasses import dataclass, field
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
    excluded: list[str] = field(default_factory=list)  # inputs left out: removed from the collection for good
    excluded_copies: list[tuple[str, str]] = field(default_factory=list)  # (input, excluded path with its pixels)

    def summary(self) -> str:
        text = f"added {self.added:,} image(s) (version {self.version})"
        parts = [f"{self.already_present:,} already present"] if self.already_present else []
        left_out = len(self.excluded) + len(self.excluded_copies)
        parts += [f"{left_out:,} excluded (removed earlier; `vlm index unexclude` brings back)"] if left_out else []
        parts += [f"{len(self.duplicates):,} duplicate(s)"] if self.duplicates else []
        parts += [f"{len(self.bad):,} unusable"] if self.bad else []
        return text + (f"; skipped {', '.join(parts)}" if parts else "")


@dataclass
class SyncResult:
    added: int  # new files, embedded
    changed: int  # files whose pixels changed, embedded again (their old vector removed)
    moved: list[tuple[str, str]]  # (old path, new path): same pixels, same id and vector, nothing embedded
    touched: int  # same pixels, new mtime (or size): metadata updated only
    recaptioned: int  # sidecar caption changed: metadata updated only
    removed: list[str]  # paths whose file is gone
    unchanged: int
    kept: list[str]  # paths not listed but kept: their folder could not be listed
    duplicates: list[tuple[str, str]]  # (file, path of the image with the same pixels) not added
    bad: list[BadRow]  # files that could not be used; an image already in the collection keeps its old vector
    version: int
    embed: EmbedStats | None
    filled: int = 0  # unchanged records given the date taken, camera and dimensions they were made without
    excluded: list[str] = field(default_factory=list)  # files left out: removed from the collection for good
    excluded_copies: list[tuple[str, str]] = field(default_factory=list)  # (file, excluded path with its pixels)

    def summary(self) -> str:
        counts = [
            (self.added, "added"),
            (self.changed, "re-embedded (changed)"),
            (len(self.moved), "moved"),
            (self.touched, "touched"),
            (self.recaptioned, "recaptioned"),
            (len(self.removed), "removed"),
            (self.unchanged, "unchanged"),
            (len(self.duplicates), "duplicate(s) skipped"),
            (len(self.bad), "unusable"),
            (len(self.kept), "kept (folder unreadable)"),
            (self.filled, "given their date taken and dimensions"),
            (len(self.excluded) + len(self.excluded_copies), "excluded (removed earlier)"),
        ]
        text = ", ".join(f"{n:,} {what}" for n, what in counts if n)
        return f"synced (version {self.version}): {text or 'nothing to do'}"


@dataclass
class RemoveResult:
    removed: np.ndarray  # ids removed, int64
    not_found: list[str | int]
    version: int
    excluded: list[str] = field(default_factory=list)  # their paths, kept out of later syncs and adds


@dataclass(frozen=True)
class Excluded:
    path: str  # as stored
    sha256: str  # the pixel hash of the image removed
    since: float  # when, seconds since the epoch


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
