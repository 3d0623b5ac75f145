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

Size (~590 lines, over the ~400 guide): `Collection` is the one public face of a collection, and its methods
are short delegations to the modules that own each concern (`versions` layout, `commit` writes and compaction,
`build` the distributed build, `sync`, `store` metadata, `faiss_index`/`rerank`/`batch` search, `duplicates`,
`filters`); what remains here is the API itself, its locking and its snapshots.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from indexing import duplicates, faiss_index, queries, versions
from indexing import embed as embedding
from indexing.commit import publish_next
from indexing.errors import IndexingError, ModelMismatchError
from indexing.faiss_index import IndexConfig
from indexing.results import AddResult, Excluded, Hits, ModelSpec, RemoveResult, Stats, SyncResult
from indexing.sources import Gathered, Item, gather
from indexing.store import Filter, ImageRecord, ref_json
from indexing.sync import SyncPlan, plan_sync
from indexing.versions import CHUNKS, CURRENT, FORMAT, FORMAT_VERSION, INDEX, MANIFEST, STAGING, STORE, Version
from vlm.models import Encoders
from vlm.readers.images import ImageRef
from vlm.readers.rows import BadRow

LOG = logging.getLogger(__name__)

COMPACT_MIN_DEAD = 1000  # chunks are compacted once they hold more vectors of removed images than this and than live


# ---------------------------------------------------------------------------------------------------------------
# The collection.


class Collection:
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
        self._runtime = runtime  # (runtime, ONNX export folder) for loading the recorded model: vlm.onnx_runtime
        self._v = version
        self._lock_fd = lock_fd
        self._encoders = encoders
        self._device = device
        self._encoders_lock = threading.Lock()
        self._write_lock = threading.Lock()
        if encoders is not None:
            self._check_model(encoders.fingerprint, encoders.source)

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
            encoders = _load_model(model, pretrained, device, runtime, onnx)
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
            spec = ModelSpec(
                model=None if isinstance(model, Encoders) else _reloadable(model),
                pretrained=None if isinstance(model, Encoders) else pretrained,
                source=encoders.source,
                fingerprint=encoders.fingerprint,
                embed_dim=encoders.embed_dim,
            )
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

    def __enter__(self) -> Collection:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

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
    def encoders(self) -> Encoders:
        """The model that built the collection: the one given at open/create, else loaded from the manifest."""
        with self._encoders_lock:
            if self._encoders is None:
                spec = self.model
                if spec.model is None:
                    raise IndexingError(
                        f"{self.root} was built from an in-memory model ({spec.source}); pass encoders= to open it"
                    )
                runtime, onnx = self._runtime
                if runtime == "auto" and spec.fingerprint.endswith("-int8"):  # vlm.onnx_export.int8_fingerprint
                    runtime = "onnx-int8"
                encoders = _load_model(spec.model, spec.pretrained, self._device, runtime, onnx)
                self._check_model(encoders.fingerprint, encoders.source)
                self._encoders = encoders
            return self._encoders

    def _check_model(self, fingerprint: str, source: str) -> None:
        spec = self.model
        if fingerprint != spec.fingerprint:
            raise ModelMismatchError(
                f"{self.root} holds vectors of {spec.source} (fingerprint {spec.fingerprint}), but the model given "
                f"is {source} (fingerprint {fingerprint}); vectors of different weights cannot be compared. Use the "
                f"model that built the collection, or build a new collection with this one: "
                f"vlm index build NEW_COLLECTION INPUTS --model ..."
            )

    # Adding and removing.

    def add(
        self,
        inputs: str | Path | Sequence[str | Path],
        *,
        embed: embedding.EmbedConfig | None = None,
        progress: bool = True,
    ) -> AddResult:
        """Embed and add images (see `indexing.sources` for the inputs). Inputs whose path is already in the
        collection are skipped; an image whose pixels equal an image in the collection is not added twice.
        An interrupted add resumes from its embedded shards when called again with the same inputs."""
        cfg = embed or embedding.EmbedConfig()
        with self._writing():
            todo, gathered, present = self.plan_add(inputs)
            job = embedding.Job.for_items(todo, self.encoders, dtype=self.dtype, shard_size=cfg.shard_size)
            staging = self.root / STAGING
            embedding.prepare(staging, job)
            stats = embedding.embed(self.encoders, todo, staging, job, cfg, progress=progress) if todo else None
            result = self.commit_staged(todo, job, gathered, present, stats)
            shutil.rmtree(staging)
        LOG.info("%s", result.summary())
        return result

    def sync(
        self,
        folders: str | Path | Sequence[str | Path],
        *,
        embed: embedding.EmbedConfig | None = None,
        progress: bool = True,
    ) -> SyncResult:
        """Make the collection's images under `folders` match the files there, in one new version: new files added,
        changed ones embedded again, moved or touched ones (same pixels) updated without embedding, vanished ones
        removed (`indexing.sync` says how changes are told apart). An interrupted sync resumes from its embedded
        shards when run again over the same folders; nothing is committed until the end."""
        cfg = embed or embedding.EmbedConfig()
        folders = [folders] if isinstance(folders, str | Path) else list(folders)
        with self._writing():
            plan = plan_sync(
                self._v.store,
                folders,
                root=self.root_dir,
                cfg=cfg,
                device_type=self.encoders.device.type,
                progress=progress,
            )
            job = embedding.Job.for_items(plan.embed, self.encoders, dtype=self.dtype, shard_size=cfg.shard_size)
            staging = self.root / STAGING
            embedding.prepare(staging, job)
            stats = (
                embedding.embed(self.encoders, plan.embed, staging, job, cfg, progress=progress) if plan.embed else None
            )
            result = self._commit_sync(plan, embedding.collect(staging, job), stats)
            shutil.rmtree(staging)
        LOG.info("%s", result.summary())
        return result

    def _commit_sync(self, plan: SyncPlan, done: embedding.Embedded, stats) -> SyncResult:
        items = plan.embed
        bad = plan.bad + [BadRow(items[p].ref.describe(), None, items[p].key, reason) for p, reason in done.bad]
        embedded_keys = {items[p].key for p in done.positions}
        # A changed file that could not be read keeps its old record (and vector) until a later sync reads it.
        replaced = [r for key, r in plan.replaces.items() if key in embedded_keys]
        remove_ids = np.array(sorted(r.id for r in [*plan.removed, *replaced]), dtype=np.int64)
        gone = set(remove_ids.tolist())
        kept_hashes = {sha: r.path for sha, r in self._v.store.by_hashes(done.sha256).items() if r.id not in gone}
        excluded = self._v.store.excluded()
        records, rows, duplicates, copies = self._new_records(items, done, kept_hashes, excluded)
        changed = sum(r.path in plan.replaces for r in records)
        added = len(records) - changed
        if records or len(remove_ids) or plan.updates or copies:
            vectors = done.vectors[rows] if records else None
            self._commit(
                records=records, vectors=vectors, remove_ids=remove_ids, updates=plan.updates,
                exclude=[(key, excluded[twin][0]) for key, twin in copies],
            )  # fmt: skip
        return SyncResult(
            added=added,
            changed=changed,
            moved=plan.moved,
            touched=plan.touched,
            recaptioned=plan.recaptioned,
            removed=[r.path for r in plan.removed],
            unchanged=plan.unchanged,
            kept=plan.kept,
            duplicates=duplicates,
            bad=bad,
            version=self._v.number,
            embed=stats,
            filled=plan.filled,
            excluded=plan.excluded,
            excluded_copies=copies,
        )

    def _new_records(
        self, items: list[Item], done: embedding.Embedded, known: dict[str, str], excluded: dict[str, tuple]
    ) -> tuple[list[ImageRecord], list[int], list[tuple[str, str]], list[tuple[str, str]]]:
        """(records with fresh ids, their rows in `done`, (key, twin) pixel duplicates, (key, excluded path)
        copies of excluded images) for the embedded `items`.

        `known` maps the SHA-256 of pixels already in the collection to their stored path; it grows as new images are
        taken, so a second copy within the same batch is a duplicate too (the store keeps one image per pixels).
        `excluded` is `Store.excluded()`: an image with the pixels of an excluded one is left out (and its path is
        to be excluded too, so that it is not embedded again)."""
        next_id = self._v.manifest["next_id"]
        records, rows, duplicates, copies = [], [], [], []
        excluded_shas = {sha: path for path, (sha, _) in excluded.items()}
        now = time.time()
        for row, (position, sha) in enumerate(zip(done.positions, done.sha256, strict=True)):
            item = items[position]
            if sha in excluded_shas:
                copies.append((item.key, excluded_shas[sha]))
                continue
            if sha in known:
                duplicates.append((item.key, known[sha]))
                continue
            known[sha] = item.key
            meta = done.meta[row] or (None,) * 4  # date taken, camera, width, height
            size, mtime = int(done.size[row]), float(done.mtime[row])
            records.append(
                ImageRecord(
                    next_id, item.key, item.ref.kind, ref_json(item.ref), item.caption, sha, size, mtime, now, *meta
                )
            )
            rows.append(row)
            next_id += 1
        return records, rows, duplicates, copies

    @property
    def dtype(self) -> str:
        return self._v.manifest["dtype"]

    def plan_add(self, inputs) -> tuple[list[Item], Gathered, int]:
        """(the inputs not in the collection yet nor excluded, everything gathered, how many were present): the first
        half of an add, shared with `indexing.build.add_distributed`."""
        gathered = gather(inputs, root=self.root_dir)
        present = self._v.store.by_paths([item.key for item in gathered.items])
        excluded = self._v.store.excluded()
        todo = [item for item in gathered.items if item.key not in present and item.key not in excluded]
        return todo, gathered, len(present)

    def commit_staged(self, todo: list[Item], job: embedding.Job, gathered: Gathered, present: int, stats) -> AddResult:
        """Publish the staged embeddings of `todo` (pixel duplicates skipped): the second half of an add."""
        done = embedding.collect(self.root / STAGING, job)
        known = {sha: r.path for sha, r in self._v.store.by_hashes(done.sha256).items()}
        excluded = self._v.store.excluded()
        records, rows, duplicates, copies = self._new_records(todo, done, known, excluded)
        bad = gathered.bad + [BadRow(todo[p].ref.describe(), None, todo[p].key, reason) for p, reason in done.bad]
        ids = np.array([r.id for r in records], dtype=np.int64)
        if records or copies:
            self._commit(
                records=records, vectors=done.vectors[rows] if records else None, remove_ids=np.empty(0, np.int64),
                exclude=[(key, excluded[twin][0]) for key, twin in copies],
            )  # fmt: skip
        left_out = [item.key for item in gathered.items if item.key in excluded]
        return AddResult(len(records), ids, present, duplicates, bad, self._v.number, stats, left_out, copies)

    def remove(
        self, ids: Sequence[int] = (), paths: Sequence[str | Path] = (), *, exclude: bool = False
    ) -> RemoveResult:
        """Remove images by id and/or by path (as stored, or a file path that resolves to a stored one). With
        `exclude`, they stay out: later syncs and adds leave their paths, and files with their pixels, out (the
        collection's exclusion list, versioned with it) until `unexclude`."""
        with self._writing():
            store = self._v.store
            found = store.get([int(i) for i in ids])
            not_found: list[str | int] = [int(i) for i in ids if int(i) not in found]
            keys = {str(p): _stored_key(p, self.root_dir) for p in paths}
            by_path = store.by_paths(list({*keys, *keys.values()}))
            for given, key in keys.items():
                record = by_path.get(given) or by_path.get(key)
                if record is None:
                    not_found.append(given)
                else:
                    found[record.id] = record
            removed = np.array(sorted(found), dtype=np.int64)
            excluded = [(found[i].path, found[i].sha256) for i in removed.tolist()] if exclude else []
            if len(removed):
                self._commit(records=[], vectors=None, remove_ids=removed, exclude=excluded)
        return RemoveResult(removed, not_found, self._v.number, [path for path, _ in excluded])

    def excluded(self) -> list[Excluded]:
        """The images removed with `exclude=True` (and copies of them found later), by path."""
        return [Excluded(path, sha, since) for path, (sha, since) in self._v.store.excluded().items()]

    def unexclude(self, paths: Sequence[str | Path] = (), *, everything: bool = False) -> tuple[list[str], list[str]]:
        """Take paths (as stored, or file paths) off the exclusion list, or all of them with `everything`: the next
        sync or add of their folder brings them back. Returns (taken off, not on the list)."""
        with self._writing():
            listed = self._v.store.excluded()
            found, missing = (list(listed), []) if everything else ([], [])
            for p in () if everything else paths:
                key = str(p) if str(p) in listed else _stored_key(p, self.root_dir)
                found.append(key) if key in listed else missing.append(str(p))
            found = list(dict.fromkeys(found))
            if found:
                self._commit(records=[], vectors=None, remove_ids=np.empty(0, np.int64), unexclude=found)
        return found, missing

    @contextlib.contextmanager
    def _writing(self):
        if self._lock_fd is None:
            raise IndexingError(f"{self.root} was opened read-only; open it with read_only=False to change it")
        with self._write_lock:
            yield

    def _commit(
        self,
        *,
        records: list[ImageRecord],
        vectors: np.ndarray | None,
        remove_ids: np.ndarray,
        updates: Sequence[ImageRecord] = (),
        exclude: Sequence[tuple[str, str]] = (),
        unexclude: Sequence[str] = (),
    ) -> None:
        """Publish the next version: current + `records` (with `vectors`) - `remove_ids`, `updates` rewritten,
        (path, pixel hash) pairs `exclude`d, paths `unexclude`d."""
        self._v = publish_next(
            self.root, self._v, records=records, vectors=vectors, remove_ids=remove_ids, updates=updates,
            exclude=exclude, unexclude=unexclude,
        )  # fmt: skip

    @property
    def dim(self) -> int:
        return int(self._v.manifest["model"]["embed_dim"])

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
        cut = queries.default_min_score(self.model) if min_score is None else float(min_score)
        return queries.newest_first(v, q, k, min_score=cut, filters=filters, nprobe=nprobe, cfg=cfg)

    def search_text(self, texts: str | Sequence[str], k: int = 10, **kwargs) -> Hits:
        """Images matching each text; keyword arguments as in `search_vector`."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        return self.search_vector(self.encoders.encode_text(texts).cpu().numpy(), k, **kwargs)

    def search_image(self, images: Image.Image | str | Path | Sequence, k: int = 10, **kwargs) -> Hits:
        """Images similar to each query image (PIL images or paths); keyword arguments as in `search_vector`."""
        single = isinstance(images, Image.Image | str | Path)
        images = [images] if single else list(images)
        opened = [ImageRef("file", str(im)).open() if isinstance(im, str | Path) else im for im in images]
        pixels = torch.stack([self.encoders.preprocess(im.convert("RGB")) for im in opened])
        return self.search_vector(self.encoders.encode_image(pixels).cpu().numpy(), k, **kwargs)

    def duplicates(self, threshold: float | None = None, *, filters: Filter | None = None) -> list:
        """Groups of near-identical images (cosine above `threshold`, default `duplicates.DEFAULT_THRESHOLD`), the
        largest first; see `indexing.duplicates`."""
        t = duplicates.DEFAULT_THRESHOLD if threshold is None else threshold
        return duplicates.find(self._v, t, filters=filters)

    # Looking things up.

    def records(self, ids: Sequence[int]) -> dict[int, ImageRecord]:
        return self._v.store.get(ids)

    def image_path(self, image_id: int) -> Path | None:
        """The file of image `image_id`, or None if that id is not in the collection or the image lives inside a
        shard or dataset. Only paths recorded in the collection come out: a web app can serve them safely."""
        record = self._v.store.get([int(image_id)]).get(int(image_id))
        if record is None or record.kind != "file":
            return None
        return Path(record.image_ref(self.root_dir).path)

    def open_image(self, image_id: int) -> Image.Image:
        """The decoded image `image_id` (any kind); raises `IndexingError` for an id not in the collection."""
        record = self._v.store.get([int(image_id)]).get(int(image_id))
        if record is None:
            raise IndexingError(f"no image with id {image_id} in {self.root}")
        return record.image_ref(self.root_dir).open()

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


# ---------------------------------------------------------------------------------------------------------------
# Helpers.


def _load_model(model: str, pretrained: str | None, device, runtime: str = "auto", onnx=None) -> Encoders:
    from vlm.models import load

    return load(model, pretrained, device=device, runtime=runtime, onnx=onnx)


def _reloadable(model: str) -> str:
    """A checkpoint path is recorded absolute, so the collection can be opened from another folder."""
    path = Path(model).expanduser()
    return str(path.resolve()) if path.exists() else model


def _stored_key(path: str | Path, root: Path | None) -> str:
    resolved = os.path.realpath(Path(path).expanduser())
    prefix = os.path.join(os.path.realpath(root), "") if root is not None else None
    return resolved[len(prefix) :].replace(os.sep, "/") if prefix and resolved.startswith(prefix) else resolved
