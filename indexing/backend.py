"""The collection API both backends share (`ImageCollection`), and what a backend provides to get it.

    indexing.collection.Collection     FAISS index + SQLite metadata + vector chunks, versioned in a local folder
    indexing.milvus.MilvusCollection   a Milvus collection: Milvus Lite (a local .db file) or a server / cluster URI

Everything that does not depend on where vectors and metadata live is here, once: loading and checking the model
(the fingerprint check), embedding through the resumable staging folder, skipping paths already present and
pixel duplicates, giving fresh ids, planning a sync, resolving removals by id or path, text and image queries,
looking images up. A backend implements the abstract members: its metadata reads (`records_view`: an object with
the `indexing.store.Store` read methods `get`, `by_paths`, `by_hashes`, `files`), `commit` (publish a `Change`:
records and vectors, removals, metadata updates, exclusions), `search_vector`, and the few properties below.
tests/test_collection_api.py runs one test suite against both.

Size (~510 lines, over the ~400 guide): it is the whole public API of a collection written once (a third of it the
abstract members a backend fills in, with their contracts, and the exclusion list and exact copies both share);
splitting add/sync from remove/lookup would scatter one class over modules without making either shorter to read.
"""

from __future__ import annotations

import abc
import contextlib
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from indexing import embed as embedding
from indexing.errors import IndexingError, ModelMismatchError
from indexing.results import AddResult, Excluded, Hits, ModelSpec, RemoveResult, SyncResult
from indexing.sources import Gathered, Item, gather
from indexing.store import Filter, ImageRecord, ref_json
from indexing.sync import SyncPlan, plan_sync
from vlm.models import Encoders
from vlm.readers.images import ImageRef
from vlm.readers.rows import BadRow

LOG = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class Change:
    """What one commit publishes: the current images + `records` (with `vectors`, rows in the same order) -
    `remove_ids`, `updates` rewritten (records already present, same id and vector, new metadata: a moved or touched
    file), (path, pixel hash) pairs `exclude`d, paths `unexclude`d, exact copies (path, pixel hash, size, mtime)
    `twins` recorded and `untwin` forgotten (where the backend keeps them)."""

    records: Sequence[ImageRecord] = ()
    vectors: np.ndarray | None = None
    remove_ids: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    updates: Sequence[ImageRecord] = ()
    exclude: Sequence[tuple[str, str]] = ()
    unexclude: Sequence[str] = ()
    twins: Sequence[tuple[str, str, int, float]] = ()
    untwin: Sequence[str] = ()

    def __post_init__(self) -> None:
        rows = 0 if self.vectors is None else len(self.vectors)
        if rows != len(self.records):
            raise ValueError(f"a change of {len(self.records)} new records comes with {rows} vectors")

    @property
    def empty(self) -> bool:
        """True when publishing it would change nothing."""
        parts = (self.records, self.remove_ids, self.updates, self.exclude, self.unexclude, self.twins, self.untwin)
        return not any(len(part) for part in parts)


class ImageCollection(abc.ABC):
    """A searchable image collection embedded by one model; see the module docstring for what a backend adds."""

    def _init_model(self, encoders: Encoders | None, device, runtime: tuple[str, object]) -> None:
        self._runtime = runtime  # (runtime, ONNX export folder) for loading the recorded model: vlm.onnx_runtime
        self._encoders = encoders
        self._device = device
        self._encoders_lock = threading.Lock()
        self._write_lock = threading.Lock()
        if encoders is not None:
            self._check_model(encoders.fingerprint, encoders.source)

    # What a backend provides.

    @property
    @abc.abstractmethod
    def location(self) -> str:
        """Where the collection lives, for messages (a folder, or a Milvus URI and collection name)."""

    @property
    @abc.abstractmethod
    def model(self) -> ModelSpec: ...

    @property
    @abc.abstractmethod
    def root_dir(self) -> Path | None:
        """The folder stored paths are relative to, or None."""

    @property
    @abc.abstractmethod
    def dtype(self) -> str: ...

    @property
    @abc.abstractmethod
    def count(self) -> int: ...

    @property
    @abc.abstractmethod
    def version(self) -> int:
        """A number that grows with every published write."""

    @property
    @abc.abstractmethod
    def writable(self) -> bool: ...

    @property
    @abc.abstractmethod
    def staging_dir(self) -> Path:
        """A local folder for an add's embedded shards (resumable: kept until the add is committed)."""

    @property
    @abc.abstractmethod
    def records_view(self):
        """The current metadata's reads: `get(ids)`, `by_paths(paths)`, `by_hashes(hashes)`, `files()`."""

    @property
    @abc.abstractmethod
    def next_id(self) -> int:
        """The first id never given to an image (ids are never reused)."""

    @abc.abstractmethod
    def excluded_view(self) -> dict[str, tuple[str, float]]:
        """The exclusion list: stored path -> (pixel hash, since when) of images removed with `exclude=True`."""

    def twins_view(self) -> dict[str, tuple[str, int, float]]:
        """Exact copies left out: path -> (pixel hash, size, mtime). A backend that keeps none returns {} (its syncs
        then decode and embed such copies again each time, to find them duplicates again)."""
        return {}

    @abc.abstractmethod
    def commit(self, change: Change) -> None:
        """Publish `change` as the next version."""

    @abc.abstractmethod
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
    ) -> Hits: ...

    @abc.abstractmethod
    def refresh(self) -> bool:
        """Pick up writes published by another process; True if there were any."""

    @abc.abstractmethod
    def close(self) -> None: ...

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def dim(self) -> int:
        return int(self.model.embed_dim)

    # Model.

    @property
    def encoders(self) -> Encoders:
        """The model that built the collection: the one given at open/create, else loaded from its record."""
        with self._encoders_lock:
            if self._encoders is None:
                spec = self.model
                if spec.model is None:
                    raise IndexingError(
                        f"{self.location} was built from an in-memory model ({spec.source}); pass encoders= to open it"
                    )
                runtime, onnx = self._runtime
                if runtime == "auto" and spec.fingerprint.endswith("-int8"):  # vlm.onnx_export.int8_fingerprint
                    runtime = "onnx-int8"
                encoders = load_model(spec.model, spec.pretrained, self._device, runtime, onnx)
                self._check_model(encoders.fingerprint, encoders.source)
                self._encoders = encoders
            return self._encoders

    def _check_model(self, fingerprint: str, source: str) -> None:
        spec = self.model
        if fingerprint != spec.fingerprint:
            raise ModelMismatchError(
                f"{self.location} holds vectors of {spec.source} (fingerprint {spec.fingerprint}), but the model "
                f"given is {source} (fingerprint {fingerprint}); vectors of different weights cannot be compared. "
                f"Use the model that built the collection, or build a new collection with this one: "
                f"vlm index build NEW_COLLECTION INPUTS --model ..."
            )

    # Adding and removing.

    def add(
        self,
        inputs: str | Path | Sequence[str | Path],
        *,
        embed: embedding.EmbedConfig | None = None,
        progress: bool = True,
        should_stop: Callable[[], bool] | None = None,
    ) -> AddResult:
        """Embed and add images (see `indexing.sources` for the inputs). Inputs whose path is already in the
        collection or on its exclusion list (`remove(exclude=True)`) are skipped; an image whose pixels equal an
        image in the collection is not added twice.
        An interrupted add resumes from its embedded shards when called again with the same inputs; so does one
        stopped by `should_stop` (asked before every batch; `EmbedStopped` is raised, nothing is committed)."""
        cfg = embed or embedding.EmbedConfig()
        with self._writing():
            todo, gathered, present = self.plan_add(inputs)
            job = embedding.Job.for_items(todo, self.encoders, dtype=self.dtype, shard_size=cfg.shard_size)
            staging = self.staging_dir
            embedding.prepare(staging, job)
            stats = (
                embedding.embed(self.encoders, todo, staging, job, cfg, progress=progress, should_stop=should_stop)
                if todo
                else None
            )
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
        """Make the collection's images under `folders` match the files there: new files added, changed ones
        embedded again, moved or touched ones (same pixels) updated without embedding, vanished ones removed
        (`indexing.sync` says how changes are told apart). An interrupted sync resumes from its embedded shards
        when run again over the same folders; nothing is committed until the end."""
        cfg = embed or embedding.EmbedConfig()
        folders = [folders] if isinstance(folders, str | Path) else list(folders)
        with self._writing():
            plan = plan_sync(
                self.records_view,
                folders,
                root=self.root_dir,
                cfg=cfg,
                device_type=self.encoders.device.type,
                progress=progress,
                excluded=self.excluded_view(),
                twins=self.twins_view(),
            )
            job = embedding.Job.for_items(plan.embed, self.encoders, dtype=self.dtype, shard_size=cfg.shard_size)
            staging = self.staging_dir
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
        kept_hashes = {sha: r.path for sha, r in self.records_view.by_hashes(done.sha256).items() if r.id not in gone}
        excluded = self.excluded_view()
        records, rows, duplicates, copies, twins = self._new_records(items, done, kept_hashes, excluded)
        changed = sum(r.path in plan.replaces for r in records)
        added = len(records) - changed
        change = Change(
            records, done.vectors[rows] if records else None, remove_ids, plan.updates,
            exclude=[(key, excluded[twin][0]) for key, twin in copies], twins=twins, untwin=plan.untwin,
        )  # fmt: skip
        if not change.empty:
            self.commit(change)
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
            version=self.version,
            embed=stats,
            filled=plan.filled,
            excluded=plan.excluded,
            excluded_copies=copies,
        )

    def _new_records(
        self, items: list[Item], done: embedding.Embedded, known: dict[str, str], excluded: dict[str, tuple]
    ) -> tuple[list[ImageRecord], list[int], list[tuple[str, str]], list[tuple[str, str]], list[tuple]]:
        """(records with fresh ids, their rows in `done`, (key, twin) pixel duplicates, (key, excluded path)
        copies of excluded images, (key, pixel hash, size, mtime) of the duplicates: the twins to record) for the
        embedded `items`.

        `known` maps the SHA-256 of pixels already in the collection to their stored path; it grows as new images are
        taken, so a second copy within the same batch is a duplicate too (a collection keeps one image per pixels).
        `excluded` is `excluded_view()`: an image with the pixels of an excluded one is left out (and its path is to
        be excluded too, so that it is not embedded again)."""
        next_id = self.next_id
        records, rows, duplicates, copies, twins = [], [], [], [], []
        excluded_shas = {sha: path for path, (sha, _) in excluded.items()}
        now = time.time()
        for row, (position, sha) in enumerate(zip(done.positions, done.sha256, strict=True)):
            item = items[position]
            if sha in excluded_shas:
                copies.append((item.key, excluded_shas[sha]))
                continue
            if sha in known:
                duplicates.append((item.key, known[sha]))
                twins.append((item.key, sha, int(done.size[row]), float(done.mtime[row])))
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
        return records, rows, duplicates, copies, twins

    def plan_add(self, inputs) -> tuple[list[Item], Gathered, int]:
        """(the inputs not in the collection yet nor excluded, everything gathered, how many were present): the first
        half of an add, shared with `indexing.build.add_distributed`."""
        gathered = gather(inputs, root=self.root_dir)
        present = self.records_view.by_paths([item.key for item in gathered.items])
        skip = {**self.excluded_view(), **self.twins_view()}  # excluded, and exact copies already found
        todo = [item for item in gathered.items if item.key not in present and item.key not in skip]
        return todo, gathered, len(present)

    def commit_staged(self, todo: list[Item], job: embedding.Job, gathered: Gathered, present: int, stats) -> AddResult:
        """Publish the staged embeddings of `todo` (pixel duplicates skipped): the second half of an add."""
        done = embedding.collect(self.staging_dir, job)
        known = {sha: r.path for sha, r in self.records_view.by_hashes(done.sha256).items()}
        excluded = self.excluded_view()
        records, rows, duplicates, copies, twins = self._new_records(todo, done, known, excluded)
        bad = gathered.bad + [BadRow(todo[p].ref.describe(), None, todo[p].key, reason) for p, reason in done.bad]
        ids = np.array([r.id for r in records], dtype=np.int64)
        change = Change(
            records, done.vectors[rows] if records else None,
            exclude=[(key, excluded[twin][0]) for key, twin in copies], twins=twins,
        )  # fmt: skip
        if not change.empty:
            self.commit(change)
        left_out = [item.key for item in gathered.items if item.key in excluded]
        return AddResult(len(records), ids, present, duplicates, bad, self.version, stats, left_out, copies)

    def remove(
        self, ids: Sequence[int] = (), paths: Sequence[str | Path] = (), *, exclude: bool = False
    ) -> RemoveResult:
        """Remove images by id and/or by path (as stored, or a file path that resolves to a stored one). With
        `exclude`, they stay out: later syncs and adds leave their paths, and files with their pixels, out (the
        collection's exclusion list, published with it) until `unexclude`."""
        with self._writing():
            store = self.records_view
            found = store.get([int(i) for i in ids])
            not_found: list[str | int] = [int(i) for i in ids if int(i) not in found]
            keys = {str(p): stored_key(p, self.root_dir) for p in paths}
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
                self.commit(Change(remove_ids=removed, exclude=excluded))
        return RemoveResult(removed, not_found, self.version, [path for path, _ in excluded])

    def exact_copies(self) -> list[tuple[str, str]]:
        """(copy, stored path with the same pixels) for the files left out as exact copies, by copy path."""
        twins = self.twins_view()
        stored = self.records_view.by_hashes(sorted({sha for sha, _, _ in twins.values()}))
        return [(path, stored[sha].path) for path, (sha, _, _) in sorted(twins.items()) if sha in stored]

    def keep_out(self, entries: Sequence[tuple[str, str]]) -> int:
        """Put (stored path, pixel hash) `entries` on the exclusion list, removing their images where present (another
        collection's list carried over: `indexing.library`). Returns how many were new to the list."""
        with self._writing():
            listed = self.excluded_view()
            new = list(dict((path, sha) for path, sha in entries if path not in listed).items())
            if new:
                present = self.records_view.by_paths([path for path, _ in new])
                remove_ids = np.array(sorted(r.id for r in present.values()), dtype=np.int64)
                self.commit(Change(remove_ids=remove_ids, exclude=new))
        return len(new)

    def excluded(self) -> list[Excluded]:
        """The images removed with `exclude=True` (and copies of them found later), by path."""
        return [Excluded(path, sha, since) for path, (sha, since) in sorted(self.excluded_view().items())]

    def unexclude(self, paths: Sequence[str | Path] = (), *, everything: bool = False) -> tuple[list[str], list[str]]:
        """Take paths (as stored, or file paths) off the exclusion list, or all of them with `everything`: the next
        sync or add of their folder brings them back. Paths listed with the same pixels (copies) come off with them,
        or a copy would keep the picture out. Returns (taken off, given but not on the list)."""
        with self._writing():
            listed = self.excluded_view()
            found, missing = (list(listed), []) if everything else ([], [])
            for p in () if everything else paths:
                key = str(p) if str(p) in listed else stored_key(p, self.root_dir)
                found.append(key) if key in listed else missing.append(str(p))
            shas = {listed[key][0] for key in found}
            found = list(dict.fromkeys([*found, *(path for path, (sha, _) in listed.items() if sha in shas)]))
            if found:
                self.commit(Change(unexclude=found))
        return found, missing

    @contextlib.contextmanager
    def _writing(self):
        if not self.writable:
            raise IndexingError(f"{self.location} was opened read-only; open it with read_only=False to change it")
        with self._write_lock:
            yield

    # Queries by text and image.

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

    # Looking things up.

    def records(self, ids: Sequence[int]) -> dict[int, ImageRecord]:
        return self.records_view.get(ids)

    def image_path(self, image_id: int) -> Path | None:
        """The file of image `image_id`, or None if that id is not in the collection or the image lives inside a
        shard or dataset. Only paths recorded in the collection come out: a web app can serve them safely."""
        record = self.records_view.get([int(image_id)]).get(int(image_id))
        if record is None or record.kind != "file":
            return None
        return Path(record.image_ref(self.root_dir).path)

    def open_image(self, image_id: int) -> Image.Image:
        """The decoded image `image_id` (any kind); raises `IndexingError` for an id not in the collection."""
        record = self.records_view.get([int(image_id)]).get(int(image_id))
        if record is None:
            raise IndexingError(f"no image with id {image_id} in {self.location}")
        return record.image_ref(self.root_dir).open()


def load_model(model: str, pretrained: str | None, device, runtime: str = "auto", onnx=None) -> Encoders:
    from vlm.models import load

    return load(model, pretrained, device=device, runtime=runtime, onnx=onnx)


def reloadable(model: str) -> str:
    """A checkpoint path is recorded absolute, so the collection can be opened from another folder."""
    path = Path(model).expanduser()
    return str(path.resolve()) if path.exists() else model


def model_spec(model: str | Encoders, pretrained: str | None, encoders: Encoders) -> ModelSpec:
    """What a new collection records about the model that embeds it (`model`: a name or the Encoders object).

    An Encoders object is recorded by what `vlm.models.load` loaded it from (`Encoders.loaded_from`), so that the
    collection opens later without it, from the command line too (opening checks the fingerprint of what loads);
    one with no such record (weights changed in memory, e.g. a merged LoRA) or built with random weights, which no
    load gives back, stays in-memory: it opens only with `encoders=`."""
    if isinstance(model, Encoders):
        loadable = bool(model.loaded_from[0]) and not model.random_weights
        model, pretrained = model.loaded_from if loadable else (None, None)
    return ModelSpec(
        model=reloadable(model) if model is not None else None,
        pretrained=pretrained,
        source=encoders.source,
        fingerprint=encoders.fingerprint,
        embed_dim=encoders.embed_dim,
    )


def stored_key(path: str | Path, root: Path | None) -> str:
    """The key a file is stored under: relative to `root` (with /) when inside it, else its real absolute path."""
    resolved = os.path.realpath(Path(path).expanduser())
    prefix = os.path.join(os.path.realpath(root), "") if root is not None else None
    return resolved[len(prefix) :].replace(os.sep, "/") if prefix and resolved.startswith(prefix) else resolved
