"""`Collection`: a searchable set of images (FAISS index + SQLite metadata + vectors), versioned on disk.

    coll = Collection.create("runs/photos.coll", "demo", root="photos/")    # or an Encoders object
    coll.add("photos/")                                                      # a folder, CSV/JSONL, dataset, files
    hits = coll.search_text("a red circle", k=10)                            # Hits: ids, scores (nq, k), records
    coll.remove(paths=["holiday/blurry.jpg"])
    reader = Collection.open("runs/photos.coll")                             # read-only; searches are thread-safe

Every write publishes a new version of the whole (index, metadata, manifest) and only then points CURRENT at it,
so readers never see half a change and a crash loses at most the change in progress (`indexing.versions` has the
layout; indexing/README.md says why). Searches take one version as a snapshot, so they are thread-safe and need no
lock, while writers (one at a time, across processes) publish new versions.

What does not depend on the FAISS layout (the model check, adding through the staging folder, sync, removal, text
and image queries, lookups) is `indexing.backend.ImageCollection`, shared with the Milvus backend
(`indexing.milvus`); this class adds the versioned folder: its locking, snapshots, commits and search.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from indexing import duplicates, faiss_index, queries, versions
from indexing import embed as embedding
from indexing.backend import Change, ImageCollection, load_model, model_spec
from indexing.commit import publish_next
from indexing.errors import IndexingError
from indexing.faiss_index import IndexConfig
from indexing.results import Hits, ModelSpec, Stats
from indexing.signatures import SIGNATURES
from indexing.store import Filter, ImageRecord
from indexing.versions import CHUNKS, CURRENT, FORMAT, FORMAT_VERSION, INDEX, MANIFEST, STAGING, STORE, Version
from vlm.models import Encoders

LOG = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------------------
# The collection.


class Collection(ImageCollection):
    """A searchable, versioned image collection. Create with `Collection.create`, open with `Collection.open`."""

    def __init__(
        self,
        root: Path,
        version: Version,
        *,
        lock_fd: int | None,
        encoders: Encoders | None,
        device,
        runtime=("auto", None),
    ):
        self.root = root
        self._v = version
        self._lock_fd = lock_fd
        self._thumbnails: duplicates.Thumbnails | None = None  # what `duplicates` decoded, kept while open
        self._init_model(encoders, device, runtime)

    # Opening.

    @classmethod
    def create(
        cls,
        path: str | Path,
        model: str | Encoders,
        *,
        pretrained: str | None = None,
        root: str | Path | None = None,
        index: IndexConfig | None = None,
        dtype: str = "float32",
        device: str | torch.device | None = None,
        exist_ok: bool = False,
        encoders: Encoders | None = None,
        runtime: str = "auto",
        onnx: str | Path | None = None,
    ) -> Collection:
        """A new empty collection at `path`, for images embedded by `model` (a name `vlm.models.load` takes, or
        an Encoders object). Stored paths are relative to `root` when images are inside it. With `exist_ok`, an
        existing collection built by the same model is opened for writing instead. `encoders`: `model` already
        loaded by the caller (its name is still what the collection records, to load it again later). `runtime`,
        `onnx`: how a model loaded here embeds (`vlm.onnx_runtime.attach`: ONNX Runtime on a CPU when exported)."""
        path = Path(path)
        if isinstance(model, Encoders):
            encoders = model
        elif encoders is None:
            encoders = load_model(model, pretrained, device, runtime, onnx)
        if (path / CURRENT).exists():
            if not exist_ok:
                raise IndexingError(f"{path} already holds a collection; open it, or choose another folder")
            return cls.open(path, read_only=False, encoders=encoders, device=device, runtime=runtime, onnx=onnx)
        if dtype not in embedding.DTYPES:
            raise IndexingError(f"unknown vector dtype {dtype!r}; choose one of {list(embedding.DTYPES)}")
        path.mkdir(parents=True, exist_ok=True)
        lock_fd = versions.lock(path)
        try:
            versions.clear_unfinished_create(path)
            spec = model_spec(model, pretrained, encoders)
            manifest = {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "created": time.time(),
                "model": dataclasses.asdict(spec),
                "root": str(Path(root).resolve()) if root is not None else None,
                "dtype": dtype,
                "config": dataclasses.asdict(index or IndexConfig()),
                "count": 0,
                "next_id": 0,
                "chunks": [],
            }
            first = versions.publish_empty(path, manifest, encoders.embed_dim)
        except BaseException:
            os.close(lock_fd)
            raise
        return cls(path, first, lock_fd=lock_fd, encoders=encoders, device=device, runtime=(runtime, onnx))

    @classmethod
    def open(
        cls,
        path: str | Path,
        *,
        read_only: bool = True,
        encoders: Encoders | None = None,
        device: str | torch.device | None = None,
        runtime: str = "auto",
        onnx: str | Path | None = None,
    ) -> Collection:
        """Open the published version. Writable opens take the collection's lock (one writer at a time) and clear
        what a crashed writer left. Text and image searches load the recorded model unless `encoders` is given,
        embedding through `runtime` (`vlm.onnx_runtime`; a collection built with int8 ONNX keeps using it)."""
        path = Path(path)
        versions.read_current(path)
        lock_fd = None if read_only else versions.lock(path)
        try:
            coll = cls(
                path, versions.open_latest(path), lock_fd=lock_fd, encoders=encoders, device=device,
                runtime=(runtime, onnx),
            )  # fmt: skip
        except BaseException:
            if lock_fd is not None:
                os.close(lock_fd)
            raise
        if not read_only:
            versions.collect_garbage(path, coll._v)
        return coll

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def refresh(self) -> bool:
        """Switch to the newest published version if another process wrote one; True if it changed."""
        if versions.read_current(self.root) == self._v.name:
            return False
        self._v = versions.open_latest(self.root)
        return True

    # Model.

    @property
    def model(self) -> ModelSpec:
        return ModelSpec(**self._v.manifest["model"])

    @property
    def root_dir(self) -> Path | None:
        root = self._v.manifest["root"]
        return Path(root) if root is not None else None

    @property
    def location(self) -> str:
        return str(self.root)

    @property
    def dtype(self) -> str:
        return self._v.manifest["dtype"]

    # Writing.

    @property
    def writable(self) -> bool:
        return self._lock_fd is not None

    @property
    def staging_dir(self) -> Path:
        return self.root / STAGING

    @property
    def records_view(self):
        return self._v.store

    @property
    def next_id(self) -> int:
        return int(self._v.manifest["next_id"])

    def commit(self, change: Change) -> None:
        """Publish `change` as the next version (the exclusion list and exact copies in the version's store, so
        published with it)."""
        self._v = publish_next(self.root, self._v, change)

    def excluded_view(self) -> dict[str, tuple[str, float]]:
        return self._v.store.excluded()

    def twins_view(self) -> dict[str, tuple[str, int, float]]:
        return self._v.store.twins()

    @property
    def count(self) -> int:
        """Images in the current version (from its manifest: no file is read, unlike `stats`)."""
        return int(self._v.manifest["count"])

    @property
    def version(self) -> int:
        return self._v.number

    @property
    def config(self) -> IndexConfig:
        return IndexConfig(**self._v.manifest["config"])

    # Searching.

    def search_vector(
        self,
        vectors: np.ndarray | torch.Tensor,
        k: int = 10,
        *,
        filters: Filter | None = None,
        nprobe: int | None = None,
        fingerprint: str | None = None,
        sort: str = "relevance",
        min_score: float | None = None,
    ) -> Hits:
        """The k nearest images to each query vector (nq, D) or (D,), by cosine similarity (queries are
        L2-normalised here). `fingerprint`, when given, must be the collection model's. `sort="date"`: of the
        images scoring at least `min_score` (default: `queries.default_min_score` of the model), the k newest."""
        if fingerprint is not None:
            self._check_model(fingerprint, "the model that made the query vectors")
        v = self._v  # one snapshot for the whole search, whatever a writer publishes meanwhile
        q, cfg = queries.as_queries(vectors, self.dim), self.config
        if sort == "relevance":
            return queries.search(v, q, k, filters=filters, nprobe=nprobe, cfg=cfg)
        if sort != "date":
            raise IndexingError(f"unknown sort {sort!r}; choose 'relevance' or 'date' (newest first)")
        cut = queries.cut_off(self.model, min_score)
        return queries.newest_first(v, q, k, min_score=cut, filters=filters, nprobe=nprobe, cfg=cfg)

    def duplicates(
        self,
        threshold: float | None = None,
        *,
        filters: Filter | None = None,
        pixels: float | duplicates.PixelCheck | None = duplicates.PIXEL_THRESHOLD,
        thumbnails: duplicates.Thumbnails | None = None,
    ) -> list:
        """Groups of near-identical images, the largest first: pairs proposed by the vectors (cosine above
        `threshold`, default `duplicates.DEFAULT_THRESHOLD`) or by small thumbnails, and confirmed by the thumbnails
        (`pixels`: a `duplicates.PixelCheck`, or its correlation alone; None: the vectors alone); see
        `indexing.duplicates`. `thumbnails`: signatures to reuse; by default the collection keeps those it decoded
        while it is open (~2.3 KB per image, ~9 KB more per image with a candidate), and the coarse ones that propose
        pairs also in its folder (`indexing.signatures`, by pixel hash), so a call, in this process or a later one,
        decodes only images it has never seen (and those with a candidate, to confirm it)."""
        t = duplicates.DEFAULT_THRESHOLD if threshold is None else threshold
        v = self._v
        if thumbnails is None:
            root = self.root_dir
            if self._thumbnails is None or self._thumbnails.root != root:
                self._thumbnails = duplicates.Thumbnails(root, self.root / SIGNATURES)
            thumbnails = self._thumbnails
        groups = duplicates.find(v, t, filters=filters, pixels=pixels, thumbnails=thumbnails)
        for cache in thumbnails.caches or ():
            if cache.stale(int(v.manifest["count"])):  # entries of images removed since
                cache.prune({r.sha256 for r in v.store.get(v.store.ids().tolist()).values()})
        return groups

    # Looking things up.

    def stats(self) -> Stats:
        v = self._v
        names = [v.folder / n for n in (INDEX, STORE, MANIFEST)]
        names += [self.root / CHUNKS / c["name"] for c in v.manifest["chunks"]]
        return Stats(
            path=str(self.root),
            version=self.version,
            count=self.count,
            dim=self.dim,
            dtype=self.dtype,
            root=v.manifest["root"],
            model=self.model,
            index=v.info,
            chunk_rows=v.vectors.rows,
            # A writer may have deleted this (older) version's files since this reader opened them: count 0 then.
            disk_bytes=sum(f.stat().st_size for f in names if f.exists()),
        )

    def verify(self) -> None:
        """Check the published version in depth: the same ids in index and store, a vector for each, ids below
        next_id. Raises `IndexingError` describing the first problem."""
        v = self._v
        store_ids, index_ids = v.store.ids(), faiss_index.index_ids(v.index)
        if not np.array_equal(store_ids, index_ids):
            extra = np.setdiff1d(index_ids, store_ids)[:5].tolist()
            missing = np.setdiff1d(store_ids, index_ids)[:5].tolist()
            raise IndexingError(
                f"{v.folder}: index and store disagree (only in index: {extra}; only in store: {missing})"
            )
        v.vectors.get(store_ids)
        if len(store_ids) and store_ids[-1] >= v.manifest["next_id"]:
            raise IndexingError(f"{v.folder}: id {store_ids[-1]} is not below next_id {v.manifest['next_id']}")

    def rows(self, batch: int = 4096) -> Iterator[tuple[list[ImageRecord], np.ndarray]]:
        """Every image of the current version, in id order, as (records, their float32 vectors (n, D)), `batch` at
        a time, from one snapshot: what `vlm index export-milvus` copies."""
        v = self._v
        ids = v.store.ids()
        for start in range(0, len(ids), batch):
            chunk = ids[start : start + batch]
            found = v.store.get(chunk.tolist())
            yield [found[int(i)] for i in chunk], v.vectors.get(chunk)
