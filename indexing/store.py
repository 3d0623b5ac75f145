"""The metadata of a collection: one SQLite file per collection version.

A version's `meta.sqlite` is never changed once published: a write copies it into the new version's folder (the
SQLite backup API), changes the copy, and the copy is published with the index (see `indexing.collection`). So
readers open it `immutable=1` (no locks, no journal), and a crash mid-write can only leave an unpublished copy.

Table `images`, one row per image in the collection:
    id       INTEGER PRIMARY KEY   the vector's id in the faiss index (stable, never reused)
    path     TEXT UNIQUE           relative to the collection root where possible (see `indexing.sources`)
    kind     TEXT                  "file", "tar" or "hf" (`vlm.readers.images.ImageRef.kind`)
    ref      TEXT                  the ImageRef as JSON for "tar"/"hf" images; NULL for files
    caption  TEXT                  caption(s) joined by newlines, or NULL
    sha256   TEXT UNIQUE           of the decoded RGB pixels and the image size: a duplicate is not added twice
    size     INTEGER               bytes of the file (of the member for tar/hf)
    mtime    REAL                  modification time of the file (of the shard/dataset file), seconds since epoch
    added    REAL                  when it joined the collection
    taken    TEXT                  EXIF DateTimeOriginal, "YYYY-MM-DDTHH:MM:SS" (local wall-clock), or NULL
    camera   TEXT                  EXIF make and model, or NULL
    width    INTEGER               upright width in pixels (NULL in stores made before it was kept)
    height   INTEGER               upright height in pixels (likewise)

Table `excluded`, one row per image removed with `exclude=True` (`Collection.remove`): a sync or an add leaves
these paths out, and new files with the same pixels too (a removed photo that comes back under another name), until
`Collection.unexclude` takes them off the list:
    path     TEXT PRIMARY KEY      as `images.path`
    sha256   TEXT                  the removed image's pixel hash
    since    REAL                  when it was excluded

Table `twins`, one row per file left out because its pixels equal an image's in the collection (an exact copy):
what a sync needs to pass it by unchanged instead of decoding and embedding it again, and what lists exact copies:
    path     TEXT PRIMARY KEY      the copy's key, as `images.path`
    sha256   TEXT                  its pixel hash (that of the image in the collection)
    size     INTEGER, mtime REAL   the file's, when it was last looked at

The date of an image (`DATE_SQL`, `ImageRecord.date`) is `taken`, else the file's mtime in the local time zone.

Stores made before `taken`/`camera`/`width`/`height` existed still open: reads give NULL for them (dates fall back
to the mtime; a dimension filter does not match an image whose dimensions are unknown); the first write adds the
columns to its copy (`copy_to`), and `Collection.sync` fills them for the files it looks at, from their headers.
"""

from __future__ import annotations

import abc
import dataclasses
import json
import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from indexing.errors import IndexingError
from indexing.filters import Filter
from indexing.photo import ISO
from vlm.readers.images import ImageRef

SCHEMA = """
CREATE TABLE images (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    ref TEXT,
    caption TEXT,
    sha256 TEXT NOT NULL UNIQUE,
    size INTEGER NOT NULL,
    mtime REAL NOT NULL,
    added REAL NOT NULL,
    taken TEXT,
    camera TEXT,
    width INTEGER,
    height INTEGER
);
CREATE TABLE excluded (
    path TEXT PRIMARY KEY,
    sha256 TEXT NOT NULL,
    since REAL NOT NULL
);
CREATE TABLE twins (
    path TEXT PRIMARY KEY,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime REAL NOT NULL
);
"""
TWINS_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS twins (path TEXT PRIMARY KEY, sha256 TEXT NOT NULL, size INTEGER NOT NULL, "
    "mtime REAL NOT NULL)"
)
# Older stores lack it: read as empty, created in the first write's copy (`copy_to`).
EXCLUDED_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS excluded (path TEXT PRIMARY KEY, sha256 TEXT NOT NULL, since REAL NOT NULL)"
)
COLUMNS = (
    "id",
    "path",
    "kind",
    "ref",
    "caption",
    "sha256",
    "size",
    "mtime",
    "added",
    "taken",
    "camera",
    "width",
    "height",
)
LATER_COLUMNS = {"taken": "TEXT", "camera": "TEXT", "width": "INTEGER", "height": "INTEGER"}  # added since format 1
# The date of an image: EXIF DateTimeOriginal, else the file's mtime as local wall-clock time (as `ImageRecord.date`).
DATE_SQL = "coalesce(taken, strftime('%Y-%m-%dT%H:%M:%S', mtime, 'unixepoch', 'localtime'))"
_BATCH = 500  # values per IN (...) query, below SQLite's variable limit
KEY_COLUMNS = ("id", "path", "sha256")  # the columns `RecordLookups.select` looks records up by


@dataclass(frozen=True)
class ImageRecord:
    id: int
    path: str
    kind: str
    ref: str | None
    caption: str | None
    sha256: str
    size: int
    mtime: float
    added: float
    taken: str | None = None
    camera: str | None = None
    width: int | None = None
    height: int | None = None

    @property
    def date(self) -> str:
        """EXIF date taken, else the file's mtime (local time): "YYYY-MM-DDTHH:MM:SS", as `DATE_SQL` computes it."""
        return self.taken or datetime.fromtimestamp(int(self.mtime)).strftime(ISO)

    def image_ref(self, root: Path | None) -> ImageRef:
        """Where to read the image: the stored ref, or the file at `path` (joined to `root` when relative)."""
        if self.ref is not None:
            return ImageRef(**json.loads(self.ref))
        path = Path(self.path)
        return ImageRef("file", str(path if path.is_absolute() or root is None else root / path))


def ref_json(ref: ImageRef) -> str | None:
    return None if ref.kind == "file" else json.dumps(dataclasses.asdict(ref), sort_keys=True)


class RecordLookups(abc.ABC):
    """The keyed reads of a collection's records, shared by its backends (`Store` here, `MilvusRecords` for Milvus):
    each implements `select` and gets `get`, `by_paths` and `by_hashes` from it."""

    @abc.abstractmethod
    def select(self, column: str, values: list) -> list[ImageRecord]:
        """The records whose `column` (one of `KEY_COLUMNS`) is one of `values` (any number of them; values that match
        no record are skipped). Implementations check the column with `key_column`."""

    @staticmethod
    def key_column(column: str) -> str:
        """`column`, if records can be looked up by it; a clear error otherwise (it is written into a query)."""
        if column not in KEY_COLUMNS:
            raise IndexingError(f"records are looked up by one of {', '.join(KEY_COLUMNS)}, not by {column!r}")
        return column

    def get(self, ids: Sequence[int]) -> dict[int, ImageRecord]:
        return {r.id: r for r in self.select("id", [int(i) for i in ids])}

    def by_paths(self, paths: Sequence[str]) -> dict[str, ImageRecord]:
        return {r.path: r for r in self.select("path", list(paths))}

    def by_hashes(self, hashes: Sequence[str]) -> dict[str, ImageRecord]:
        return {r.sha256: r for r in self.select("sha256", list(hashes))}


class Store(RecordLookups):
    """One `meta.sqlite`. Thread-safe: one connection, used under a lock (queries take microseconds)."""

    def __init__(self, path: Path, conn: sqlite3.Connection, writable: bool):
        self.path = path
        self._conn = conn
        self._lock = threading.Lock()
        self.writable = writable
        self._has = {row[1] for row in conn.execute("PRAGMA table_info(images)")}
        # An older store lacks the later columns: a view of the table with NULL in their place.
        select = ", ".join(c if c in self._has else f"NULL AS {c}" for c in COLUMNS)
        self._table = "images" if not self.missing_columns else f"(SELECT {select} FROM images)"
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        self._has_excluded = "excluded" in tables
        self._has_twins = "twins" in tables

    @classmethod
    def create(cls, path: Path) -> Store:
        conn = _connect_writable(path)
        conn.executescript(SCHEMA)
        conn.commit()
        return cls(path, conn, True)

    @classmethod
    def open_readonly(cls, path: Path) -> Store:
        if not path.is_file():
            raise IndexingError(f"metadata store missing: {path}")
        uri = f"{path.resolve().as_uri()}?mode=ro&immutable=1"
        try:
            conn = sqlite3.connect(uri, uri=True, check_same_thread=False)
            # A probe that reads the schema and one row's pages, whatever the size (count(*) would read a whole
            # index): the file is SQLite and holds the table, else the error is raised here.
            conn.execute("SELECT id FROM images LIMIT 1").fetchone()
        except sqlite3.Error as e:
            raise IndexingError(f"cannot read the metadata store {path}: {e}") from e
        return cls(path, conn, False)

    def copy_to(self, path: Path) -> Store:
        """A writable copy at `path` (an unpublished version folder)."""
        conn = _connect_writable(path)
        with self._lock:
            self._conn.backup(conn)
        for column in self.missing_columns:  # an older store: the copy gets the current schema (values NULL)
            conn.execute(f"ALTER TABLE images ADD COLUMN {column} {LATER_COLUMNS[column]}")
        conn.execute(EXCLUDED_SCHEMA)
        conn.execute(TWINS_SCHEMA)
        return Store(path, conn, True)

    def close(self) -> None:
        with self._lock:
            if self.writable:
                self._conn.commit()
            self._conn.close()

    # Reads.

    def count(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT count(*) FROM images").fetchone()[0])

    def ids(self) -> np.ndarray:
        """Every id, sorted, int64."""
        with self._lock:
            rows = self._conn.execute("SELECT id FROM images ORDER BY id").fetchall()
        return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))

    def files(self) -> list[ImageRecord]:
        """Every record of an image file (kind "file"), by id: what a sync compares with the folders on disk."""
        with self._lock:
            rows = self._conn.execute(f"SELECT {', '.join(COLUMNS)} FROM {self._table} WHERE kind = 'file' ORDER BY id")
            return [ImageRecord(*row) for row in rows]

    def select(self, column: str, values: list) -> list[ImageRecord]:
        column = self.key_column(column)
        out = []
        with self._lock:
            for start in range(0, len(values), _BATCH):
                chunk = values[start : start + _BATCH]
                sql = (
                    f"SELECT {', '.join(COLUMNS)} FROM {self._table} WHERE {column} IN ({', '.join('?' * len(chunk))})"
                )
                out += [ImageRecord(*row) for row in self._conn.execute(sql, chunk)]
        return out

    def filter_ids(self, where: Filter) -> np.ndarray:
        """Sorted int64 ids of the rows matching `where`."""
        clauses, args = where.sql(DATE_SQL)
        sql = f"SELECT id FROM {self._table}" + (f" WHERE {' AND '.join(clauses)}" if clauses else "") + " ORDER BY id"
        with self._lock:
            rows = self._conn.execute(sql, args).fetchall()
        return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))

    def dates(self, ids: Sequence[int]) -> dict[int, str]:
        """id -> the image's date (`DATE_SQL`) for those of `ids` in the store."""
        out: dict[int, str] = {}
        values = [int(i) for i in ids]
        with self._lock:
            for start in range(0, len(values), _BATCH):
                chunk = values[start : start + _BATCH]
                sql = f"SELECT id, {DATE_SQL} FROM {self._table} WHERE id IN ({', '.join('?' * len(chunk))})"
                out.update(self._conn.execute(sql, chunk).fetchall())
        return out

    def excluded(self) -> dict[str, tuple[str, float]]:
        """path -> (pixel hash, since when) of the images kept out of the collection (`Collection.remove`)."""
        if not self._has_excluded:
            return {}
        with self._lock:
            rows = self._conn.execute("SELECT path, sha256, since FROM excluded ORDER BY path").fetchall()
        return {path: (sha, since) for path, sha, since in rows}

    def twins(self) -> dict[str, tuple[str, int, float]]:
        """path -> (pixel hash, size, mtime) of the exact copies left out (table `twins`)."""
        if not self._has_twins:
            return {}
        with self._lock:
            rows = self._conn.execute("SELECT path, sha256, size, mtime FROM twins ORDER BY path").fetchall()
        return {path: (sha, size, mtime) for path, sha, size, mtime in rows}

    @property
    def missing_columns(self) -> list[str]:
        """Columns of the current schema this (older) store lacks: read as NULL."""
        return [c for c in LATER_COLUMNS if c not in self._has]

    # Writes (only on an unpublished copy).

    def insert(self, records: Sequence[ImageRecord]) -> None:
        self._check_writable()
        with self._lock:
            self._conn.executemany(
                f"INSERT INTO images ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
                [dataclasses.astuple(r) for r in records],
            )

    def delete(self, ids: Sequence[int]) -> None:
        self._check_writable()
        with self._lock:
            self._conn.executemany("DELETE FROM images WHERE id = ?", [(int(i),) for i in ids])

    def exclude(self, entries: Sequence[tuple[str, str]], since: float) -> None:
        """Keep (path, pixel hash) `entries` out of later syncs and adds; an entry already there is renewed."""
        self._check_writable()
        with self._lock:
            self._conn.executemany(
                "INSERT OR REPLACE INTO excluded (path, sha256, since) VALUES (?, ?, ?)",
                [(path, sha, since) for path, sha in entries],
            )

    def unexclude(self, paths: Sequence[str]) -> None:
        self._check_writable()
        with self._lock:
            self._conn.executemany("DELETE FROM excluded WHERE path = ?", [(p,) for p in paths])

    def set_twins(self, add: Sequence[tuple[str, str, int, float]], drop: Sequence[str]) -> None:
        """Forget the twins at `drop`, then record (path, pixel hash, size, mtime) `add` (replacing any)."""
        self._check_writable()
        with self._lock:
            self._conn.executemany("DELETE FROM twins WHERE path = ?", [(p,) for p in drop])
            self._conn.executemany("INSERT OR REPLACE INTO twins (path, sha256, size, mtime) VALUES (?, ?, ?, ?)", add)

    def _check_writable(self) -> None:
        if not self.writable:
            raise IndexingError(f"{self.path} is a published version and is never changed; write to a copy")


def _connect_writable(path: Path) -> sqlite3.Connection:
    if path.exists():
        raise IndexingError(f"refusing to overwrite {path}: a new version always starts from a fresh file")
    conn = sqlite3.connect(str(path), check_same_thread=False)
    # The file is unpublished until its version folder is renamed into place, so it needs no journal: a crash
    # leaves a folder nobody reads. The publish step fsyncs it.
    conn.execute("PRAGMA journal_mode = OFF")
    conn.execute("PRAGMA synchronous = OFF")
    return conn
