"""A collection's cache of the pixel signatures that find near-duplicates, kept across processes and restarts.

    cache = SignatureCache(coll_folder / SIGNATURES, "coarse", (3, 192), np.float32)
    found = cache.get(["3f1a...", ...])          # {pixel sha256: array} for the hashes it holds
    cache.put({"3f1a...": array})                # one transaction
    cache.prune(keep={...})                      # drop the entries of images no longer in the collection

`indexing.duplicates` decodes every image of a collection to make its coarse thumbnails (~30 ms per 12 MP JPEG),
and the images with a candidate again for their 32 px thumbnails; this keeps both (one table each) in a SQLite file
beside the collection's versions, so a later call, in this process or another, decodes only the images it has never
seen. The key is the image's pixel SHA-256 (`ImageRecord.sha256`), so an entry
can never describe other pixels than the record's: an edited file gets a new hash and a new entry, and an entry whose
image has left the collection is only wasted space (`prune`). The file is not part of any version: deleting it costs
one full decode at the next call. It is written one transaction at a time (SQLite), so a crash loses at most the
last batch. Nothing here is trusted: a file that is not a readable database is deleted and started afresh, an entry
of the wrong size is ignored, and a cache that cannot be written (a read-only folder, another process holding the
lock) only logs, so the worst a bad cache costs is the decoding it was meant to save.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

LOG = logging.getLogger(__name__)

SIGNATURES = "signatures.sqlite"  # in a FAISS collection's folder, beside its versions
_BATCH = 500  # hashes per IN (...) query, below SQLite's variable limit
_TIMEOUT_S = 5.0  # how long a write waits for another process's transaction
STALE_SHARE, STALE_SPARE = 0.1, 100  # stale entries tolerated: this share of the collection's images, plus this many


class SignatureCache:
    """Arrays of one `shape` and `dtype`, by pixel SHA-256, in table `table` of the SQLite file `path` (module
    docstring). Each call opens its own connection, so one cache may be used from any thread."""

    def __init__(self, path: Path, table: str, shape: tuple[int, ...], dtype):
        if not table.isidentifier():
            raise ValueError(f"bad table name {table!r}")
        self.path = Path(path)
        self.table = table
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)
        self._bytes = int(np.prod(shape)) * self.dtype.itemsize

    @contextlib.contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(self.path, timeout=_TIMEOUT_S)
        try:
            conn.execute(f"CREATE TABLE IF NOT EXISTS {self.table} (sha256 TEXT PRIMARY KEY, signature BLOB NOT NULL)")
            yield conn
        finally:
            conn.close()

    def _broken(self, e: sqlite3.Error, doing: str) -> None:
        """A failed call: a file that is not a sound database is deleted (the next call starts a new one); other
        failures (locked, read-only, unopenable) leave it as it is. Either way the caller goes on without it."""
        if isinstance(e, sqlite3.OperationalError):
            LOG.warning("signature cache %s: could not %s (%s); going on without it", self.path, doing, e)
            return
        LOG.warning("signature cache %s is damaged (%s); deleting it, its signatures will be recomputed", self.path, e)
        for p in (self.path, self.path.with_name(self.path.name + "-journal")):
            with contextlib.suppress(OSError):
                p.unlink(missing_ok=True)

    def get(self, hashes: Iterable[str]) -> dict[str, np.ndarray]:
        """The stored signatures of those `hashes` it holds (entries of another size are skipped, so recomputed)."""
        hashes, found, wrong = list(hashes), {}, 0
        if not hashes or not self.path.exists():
            return found
        try:
            with self._connection() as conn:
                for start in range(0, len(hashes), _BATCH):
                    chunk = hashes[start : start + _BATCH]
                    marks = ",".join("?" * len(chunk))
                    rows = conn.execute(f"SELECT sha256, signature FROM {self.table} WHERE sha256 IN ({marks})", chunk)
                    for sha, blob in rows:
                        if isinstance(blob, bytes) and len(blob) == self._bytes:
                            found[sha] = np.frombuffer(blob, self.dtype).reshape(self.shape)
                        else:
                            wrong += 1
        except sqlite3.Error as e:
            self._broken(e, "read it")
            return {}
        if wrong:
            LOG.warning("signature cache %s: %d entr(ies) of the wrong size ignored, recomputed", self.path, wrong)
        return found

    def put(self, signatures: dict[str, np.ndarray]) -> None:
        """Store `signatures` (by pixel SHA-256) in one transaction, replacing entries of the same hash."""
        if any(np.shape(s) != self.shape for s in signatures.values()):
            raise ValueError(f"signatures must have shape {self.shape}")
        rows = [(sha, np.ascontiguousarray(s, self.dtype).tobytes()) for sha, s in signatures.items()]
        if not rows:
            return
        try:
            with self._connection() as conn, conn:
                conn.executemany(f"INSERT OR REPLACE INTO {self.table} (sha256, signature) VALUES (?, ?)", rows)
        except sqlite3.Error as e:
            self._broken(e, "write it")

    def stale(self, count: int) -> bool:
        """Whether the cache holds more entries than a collection of `count` images leaves room for (`prune`)."""
        return len(self) > (1 + STALE_SHARE) * count + STALE_SPARE

    def prune(self, keep: set[str]) -> int:
        """Delete the entries whose hash is not in `keep` (the collection's images), when they are more than
        `STALE_SHARE` of `keep`'s size plus `STALE_SPARE` (so a call does not rewrite the file for a few stale
        entries); returns how many went."""
        if not self.path.exists():
            return 0
        try:
            with self._connection() as conn, conn:
                stored = [row[0] for row in conn.execute(f"SELECT sha256 FROM {self.table}")]
                stale = [(sha,) for sha in stored if sha not in keep]
                if len(stale) <= STALE_SHARE * len(keep) + STALE_SPARE:
                    return 0
                conn.executemany(f"DELETE FROM {self.table} WHERE sha256 = ?", stale)
        except sqlite3.Error as e:
            self._broken(e, "prune it")
            return 0
        LOG.info(
            "signature cache %s: dropped %d entr(ies) of images no longer in the collection",
            self.path,
            len(stale),
        )
        return len(stale)

    def __len__(self) -> int:
        if not self.path.exists():
            return 0
        try:
            with self._connection() as conn:
                return int(conn.execute(f"SELECT count(*) FROM {self.table}").fetchone()[0])
        except sqlite3.Error as e:
            self._broken(e, "count it")
            return 0
