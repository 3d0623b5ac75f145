"""The Milvus backend's connection and reads: `MilvusConfig` (index type, search breadth, timeout), `connect` (a
client, or `MilvusUnavailableError` within the timeout), `MilvusRecords` (metadata reads as Milvus queries).
`indexing.milvus` has the collection."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from indexing import milvus_expr
from indexing.errors import IndexingError
from indexing.store import ImageRecord, RecordLookups

MAX_K = 16384  # Milvus's limit on results per query
BATCH = 512  # ids or paths per `in [...]` query
INDEX_TYPES = ("HNSW", "IVF_FLAT", "FLAT")  # all three run on Milvus Lite 3.2 as on a server
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,254}")


class MilvusUnavailableError(IndexingError):
    """The Milvus URI did not answer (nothing listening, wrong port, or no answer within the timeout)."""


@dataclass(frozen=True)
class MilvusConfig:
    """The Milvus index a new collection gets, the search breadth, and the timeout of every call."""

    index_type: str = "HNSW"  # HNSW: graph, high recall at low latency; IVF_FLAT: less memory; FLAT: exact
    hnsw_m: int = 16  # HNSW links per node
    ef_construction: int = 200
    ef: int = 128  # HNSW search breadth (raised to k); `search_vector(nprobe=)` overrides it per call
    nlist: int = 1024  # IVF_FLAT lists
    nprobe: int = 32  # IVF_FLAT lists searched per query
    timeout_s: float = 10.0  # per call, and to connect
    insert_batch: int = 1000  # rows per insert call
    # A write inserting at least this many rows flushes them: Milvus indexes sealed segments only and searches the
    # growing one by brute force (on Milvus Lite 3.2, 50 queries over 20k unflushed vectors: 4.5 s; flushed: 0.7 s).
    flush_rows: int = 10_000
    flush_timeout_s: float = 600.0  # a flush builds the index of what it seals

    def __post_init__(self) -> None:
        if self.index_type not in INDEX_TYPES:
            raise IndexingError(f"Milvus index_type {self.index_type!r}: choose one of {', '.join(INDEX_TYPES)}")
        if not self.timeout_s > 0:
            raise IndexingError(f"Milvus timeout_s must be > 0, got {self.timeout_s}")

    def index_params(self) -> dict:
        return {
            "HNSW": {"M": self.hnsw_m, "efConstruction": self.ef_construction},
            "IVF_FLAT": {"nlist": self.nlist},
        }.get(self.index_type, {})

    def search_params(self, k: int, breadth: int | None) -> dict:
        if self.index_type == "HNSW":
            return {"metric_type": "IP", "params": {"ef": max(k, breadth or self.ef)}}
        if self.index_type == "IVF_FLAT":
            return {"metric_type": "IP", "params": {"nprobe": breadth or self.nprobe}}
        return {"metric_type": "IP", "params": {}}


def is_local(uri: str) -> bool:
    return "://" not in uri


def connect(uri: str, *, token: str = "", timeout_s: float = 10.0):
    """A `pymilvus.MilvusClient` for `uri`; `MilvusUnavailableError` when it does not answer within `timeout_s`."""
    try:
        from pymilvus import MilvusClient
    except ImportError as e:
        raise IndexingError(
            "the Milvus backend needs pymilvus, and milvus-lite for a local .db file: pip install -e '.[milvus]'"
        ) from e
    if is_local(uri):
        if not uri.endswith(".db"):
            raise IndexingError(f"{uri}: a Milvus Lite file must end in .db (or give http://HOST:19530 for a server)")
        Path(uri).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)
        uri = str(Path(uri).expanduser().resolve())
    try:
        return MilvusClient(uri=uri, token=token, timeout=timeout_s)
    except Exception as e:  # pymilvus raises MilvusException, grpc errors or ConnectionError depending on the failure
        raise MilvusUnavailableError(
            f"Milvus at {shown(uri)} did not answer within {timeout_s:g} s: {e}. Check that the server runs and that "
            f"the URI names its gRPC port (default http://HOST:19530), or give a local .db file for Milvus Lite"
        ) from e


def shown(uri: str) -> str:
    """`uri` for messages: a password in it (https://user:password@host) is masked."""
    return re.sub(r"://[^/@]*@", "://***@", str(uri))


class MilvusRecords(RecordLookups):
    """The metadata reads `ImageCollection` needs (`get`, `by_paths`, `by_hashes` over `select`; `files`), as Milvus
    queries."""

    def __init__(self, client, name: str, timeout_s: float):
        self._client, self._name, self._timeout = client, name, timeout_s

    def query(self, expr: str, fields: Sequence[str] = milvus_expr.FIELDS, limit: int | None = None) -> list[dict]:
        kwargs = {"limit": limit} if limit is not None else {}
        return self._client.query(
            self._name, filter=expr, output_fields=list(fields), timeout=self._timeout, **kwargs
        )  # fmt: skip

    def scan(self, expr: str, fields: Sequence[str] = milvus_expr.FIELDS, batch: int = 2000):
        """Every row matching `expr` (all rows for ""), in batches: Milvus caps a plain query's result window."""
        it = self._client.query_iterator(
            self._name, batch_size=batch, filter=expr or "id >= 0", output_fields=list(fields), timeout=self._timeout
        )
        try:
            while rows := it.next():
                yield from rows
        finally:
            it.close()

    def select(self, column: str, values: list) -> list[ImageRecord]:
        column = self.key_column(column)
        out = []
        for start in range(0, len(values), BATCH):
            chunk = values[start : start + BATCH]
            out += [milvus_expr.to_record(r) for r in self.query(milvus_expr.in_list(column, chunk), limit=len(chunk))]
        return out

    def files(self) -> list[ImageRecord]:
        return sorted((milvus_expr.to_record(r) for r in self.scan('kind == "file"')), key=lambda r: r.id)

    def vectors(self, ids: Sequence[int]) -> dict[int, list[float]]:
        out = {}
        for start in range(0, len(ids), BATCH):
            chunk = [int(i) for i in ids[start : start + BATCH]]
            out.update({r["id"]: r["vector"] for r in self.query(milvus_expr.in_list("id", chunk), ["id", "vector"])})
        return out
