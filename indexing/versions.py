"""A collection's folder: published versions, shared vector chunks, the writer's lock, and garbage collection.

    CURRENT              the name of the published version, e.g. "v000007", replaced atomically
    v000007/             manifest.json (model, counts, chunk list, index settings), index.faiss, meta.sqlite
                         (+ index.ivfdata: the inverted lists of a parallel build, `indexing.parallel`)
    chunks/c000007_0.npy immutable vectors: a structured array of (id int64, vector float32|float16 (D,))
    staging/             the add in progress: job.json and embedded shards (`indexing.embed`)
    LOCK                 held (flock) by the one writer; readers take no lock
    signatures.sqlite    near-duplicates' thumbnails by pixel hash (`indexing.signatures`): a cache, in no version
    .tmp-v000008-<pid>/  a version being written (or left by a crashed writer)

A version is written under a temporary name, fsynced, renamed into place (`vlm.atomic.publish_dir`) and only then
named by CURRENT (`atomic_write_text`): that replace is the commit point. Chunks are written before the version
that lists them. `collect_garbage` (run by the writer, under the lock) deletes versions other than the newest
`KEEP_VERSIONS`, temporary folders, and chunks no kept version lists. A crash anywhere leaves CURRENT naming a
complete version; a reader that opened an older one keeps its open files (POSIX unlink semantics).
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss

from indexing import faiss_index
from indexing.errors import IndexingError
from indexing.faiss_index import IndexInfo
from indexing.gpu import Replicas, gpu_copy
from indexing.store import Store
from indexing.vectors import CHUNKS, Vectors
from vlm.atomic import atomic_write_json, atomic_write_text, publish_dir
from vlm.processes import process_alive

LOG = logging.getLogger(__name__)

FORMAT = "vlm-collection"
FORMAT_VERSION = 1
CURRENT, LOCK, STAGING = "CURRENT", "LOCK", "staging"
MANIFEST, INDEX, STORE = "manifest.json", "index.faiss", "meta.sqlite"
KEEP_VERSIONS = 2  # the current one and the one before, for readers that opened it a moment ago
_VERSION = re.compile(r"^v(\d{6})$")
_TMP = re.compile(r"^\.tmp-v(\d{6})-\d+$")


def version_name(number: int) -> str:
    return f"v{number:06d}"


def _number(name: str) -> int:
    m = _VERSION.match(name)
    if m is None:
        raise IndexingError(f"not a version folder name: {name!r}")
    return int(m.group(1))


def _version_number(p: Path) -> int | None:
    m = _VERSION.match(p.name)
    return int(m.group(1)) if m and p.is_dir() else None


# ---------------------------------------------------------------------------------------------------------------
# Published versions.


@dataclass
class Version:
    """One published version, loaded: never changed once loaded (a write makes the next one)."""

    number: int
    folder: Path
    manifest: dict[str, Any]
    info: IndexInfo
    index: faiss.Index
    store: Store
    vectors: Vectors
    gpu_index: Replicas | None = None  # copies on the GPUs, searched under their locks

    @property
    def name(self) -> str:
        return self.folder.name


def load_version(root: Path, name: str, index: faiss.Index | None = None) -> Version:
    """Load version `name` and check that manifest, index, store and chunks agree on the count."""
    folder = root / name
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError) as e:
        raise IndexingError(f"cannot read {folder / MANIFEST}: {e}") from e
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise IndexingError(
            f"{folder} is not a {FORMAT} version {FORMAT_VERSION} (found {manifest.get('format')!r} "
            f"{manifest.get('format_version')!r}); rebuild it with `vlm index build`"
        )
    # Memory-mapped: opening reads no inverted list and no vector (tests/test_collection.py counts the bytes read).
    index = index if index is not None else faiss_index.read(str(folder / INDEX), mmap=manifest["index"]["kind"])
    store = Store.open_readonly(folder / STORE)
    vectors = Vectors(root / CHUNKS, [c["name"] for c in manifest["chunks"]], manifest["model"]["embed_dim"])
    count = manifest["count"]
    # The store's own count would read its whole table (SQLite counts rows by walking them): `verify` checks it.
    if not index.ntotal == count or vectors.rows < count:
        raise IndexingError(
            f"{folder} is inconsistent: manifest count {count}, index {index.ntotal}, "
            f"stored vectors {vectors.rows}; restore from a copy or rebuild with `vlm index build`"
        )
    info = IndexInfo(**manifest["index"])
    gpu = gpu_copy(index, info, manifest["model"]["embed_dim"])
    return Version(_number(name), folder, manifest, info, index, store, vectors, gpu)


def read_current(root: Path) -> str:
    try:
        name = (root / CURRENT).read_text().strip()
    except FileNotFoundError as e:
        raise IndexingError(f"{root} is not a collection (no {CURRENT} file); create one with `vlm index build`") from e
    _number(name)
    return name


def open_latest(root: Path) -> Version:
    """The version CURRENT names; read again if a writer replaced and deleted it between the two reads."""
    for _ in range(5):
        name = read_current(root)
        try:
            return load_version(root, name)
        except IndexingError:
            if read_current(root) == name:
                raise
    raise IndexingError(f"{root} changed five times while it was being opened; try again")


def publish(root: Path, number: int, write: Any) -> Path:
    """Write version `number` through `write(folder)` into a temporary folder, then move it into place. CURRENT
    is not touched: `set_current` is the commit point."""
    tmp = root / f".tmp-{version_name(number)}-{os.getpid()}"
    tmp.mkdir()
    try:
        write(tmp)
        publish_dir(tmp, root / version_name(number))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root / version_name(number)


def set_current(root: Path, number: int) -> None:
    atomic_write_text(root / CURRENT, version_name(number) + "\n")


def publish_empty(root: Path, manifest: dict[str, Any], dim: int) -> Version:
    """Version 0 of a new collection: no images, an exact index."""

    def write(folder: Path) -> None:
        index, info = faiss_index.empty_index(dim)
        faiss_index.write(index, str(folder / INDEX))
        Store.create(folder / STORE).close()
        atomic_write_json(folder / MANIFEST, {**manifest, "version": 0, "index": dataclasses.asdict(info)})

    (root / CHUNKS).mkdir(exist_ok=True)
    publish(root, 0, write)
    set_current(root, 0)
    return load_version(root, version_name(0))


def clear_unfinished_create(root: Path) -> None:
    """What a create that crashed before its first CURRENT left: an empty chunks folder, temporary and version
    folders. Raises if `root` holds anything else (it is not ours to delete)."""
    ours = [p for p in root.iterdir() if p.name in (LOCK, CHUNKS) or _TMP.match(p.name) or _VERSION.match(p.name)]
    others = [p.name for p in root.iterdir() if p not in ours]
    if others or any((root / CHUNKS).iterdir() if (root / CHUNKS).is_dir() else ()):
        raise IndexingError(f"{root} is not empty ({sorted(others)[:5]}); a new collection needs an empty folder")
    for p in ours:
        if p.is_dir():
            shutil.rmtree(p)


# ---------------------------------------------------------------------------------------------------------------
# The writer: lock, numbering, garbage collection.


# A writer SIGKILLed while embedding leaves its forked DataLoader workers holding the lock (they share its open file)
# until they notice their parent is gone, a few seconds later; the next writer waits for them this long.
DEAD_WRITER_WAIT_S = 30.0


def lock(root: Path, dead_writer_wait_s: float = DEAD_WRITER_WAIT_S) -> int:
    """Take the collection's writer lock (released when the returned descriptor is closed, or the process dies).

    A lock held by a live writer is refused at once. A lock whose writer (the pid written in it) is dead is held
    by processes that writer forked; it is waited for, up to `dead_writer_wait_s`, then taken over."""
    fd = os.open(root / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + dead_writer_wait_s
    waited = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError as e:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            dead = holder.isdigit() and not process_alive(int(holder))
            if dead and time.monotonic() < deadline:
                if not waited:
                    LOG.info("%s: its last writer (pid %s) died; waiting for the processes it started", root, holder)
                    waited = True
                time.sleep(0.1)
                continue
            os.close(fd)
            if dead:
                raise IndexingError(
                    f"{root} is still locked {dead_writer_wait_s:.0f} s after its writer (pid {holder}) died: a "
                    f"process it started holds {root / LOCK}; `fuser -v {root / LOCK}` names it"
                ) from e
            raise IndexingError(
                f"{root} is being changed by another writer (pid {holder or 'unknown'}); wait for it to finish"
            ) from e
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def next_number(root: Path, current: int) -> int:
    """Above every version and temporary folder present, so a new version never meets a dead writer's debris."""
    numbers = [current]
    for p in root.iterdir():
        m = _VERSION.match(p.name) or _TMP.match(p.name)
        if m:
            numbers.append(int(m.group(1)))
    return max(numbers) + 1


def collect_garbage(root: Path, current: Version) -> None:
    """Delete what no kept version needs: older versions, unpublished folders, unlisted chunks. Only the writer
    runs this, under the lock, so every temporary folder it finds is a dead writer's."""
    numbers = (_version_number(p) for p in root.iterdir())
    kept = sorted(n for n in numbers if n is not None and n <= current.number)[-KEEP_VERSIONS:]
    for p in root.iterdir():
        n = _version_number(p)
        if (n is not None and n not in kept) or _TMP.match(p.name):
            shutil.rmtree(p, ignore_errors=True)
    listed = {c["name"] for c in current.manifest["chunks"]}
    for n in kept:  # published versions always have a manifest
        listed |= {c["name"] for c in json.loads((root / version_name(n) / MANIFEST).read_text())["chunks"]}
    for p in (root / CHUNKS).iterdir() if (root / CHUNKS).is_dir() else ():
        if p.name not in listed:
            p.unlink(missing_ok=True)
