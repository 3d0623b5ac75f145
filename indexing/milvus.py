"""`MilvusCollection`: the collection API (`indexing.backend.ImageCollection`) on Milvus, through `pymilvus`.

    coll = MilvusCollection.create("runs/photos.db", "photos", "demo", root="photos/")   # Milvus Lite: a local file
    coll = MilvusCollection.open("http://milvus:19530", "photos", token=os.environ["MILVUS_TOKEN"])  # a server
    coll.add("photos/"); coll.sync("photos/"); coll.remove(ids=[3]); coll.search_text("a beach", k=10, filters=...)
    export(Collection.open("runs/photos.coll"), "http://milvus:19530")   # `vlm index export-milvus COLL URI`

A URI that is a path (ending in .db) runs Milvus Lite embedded in this process (the `milvus-lite` package); an
http(s) URI reaches a Milvus server or cluster (a `token` "user:password" or an API key where it asks for one).
Every call carries a timeout (`MilvusConfig.timeout_s`): a URI that does not answer raises `MilvusUnavailableError`.

One Milvus collection holds one row per image: its id (the primary key), its vector (FLOAT_VECTOR, inner product
over L2-normalised vectors: cosine) and its metadata (`indexing.milvus_expr`). The model that embedded it and the
collection's bookkeeping (root, next_id, a write counter) are a JSON collection property ("vlm.manifest").
Differences from the FAISS backend (indexing/README.md, "Milvus"): the index and its recall are Milvus's (HNSW,
IVF_FLAT or FLAT, with the search breadth `ef`/`nprobe` set here per call, not tuned to a target recall); a write is
several Milvus calls, not one atomic version (ids are reserved in the manifest before rows are inserted, so a crash
never reuses an id, and an interrupted add or export completes when run again); one writer at a time is the
caller's rule (no lock spans machines); `stats`, `verify` and `duplicates` are FAISS-only.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from indexing import milvus_expr, queries
from indexing.backend import Change, ImageCollection, load_model, model_spec
from indexing.errors import IndexingError
from indexing.milvus_client import BATCH, MAX_K, NAME, MilvusConfig, MilvusRecords, connect, is_local, shown
from indexing.results import Hits, ModelSpec
from indexing.store import Filter
from vlm.models import Encoders

MANIFEST_KEY = "vlm.manifest"
FORMAT = "vlm-milvus-collection"


class MilvusCollection(ImageCollection):
    """A collection in one Milvus collection. Create with `MilvusCollection.create`, open with `.open`."""

    def __init__(
        self, client, uri: str, name: str, *, read_only: bool, config: MilvusConfig, encoders, device, runtime
    ):
        self.uri, self.name, self._client, self._read_only, self.config = uri, name, client, read_only, config
        self._records = MilvusRecords(client, name, config.timeout_s)
        self._closed = False
        self._manifest = self._read_manifest()
        built = self._manifest["index"]["type"]  # search parameters follow the index the collection has
        if built != config.index_type:
            self.config = replace(config, index_type=built)
        self._init_model(encoders, device, runtime)

    @classmethod
    def create(
        cls,
        uri: str | Path,
        name: str,
        model: str | Encoders,
        *,
        pretrained: str | None = None,
        root: str | Path | None = None,
        token: str = "",
        config: MilvusConfig | None = None,
        exist_ok: bool = False,
        encoders: Encoders | None = None,
        device: str | torch.device | None = None,
        runtime: str = "auto",
        onnx: str | Path | None = None,
    ) -> MilvusCollection:
        """A new empty collection `name` at `uri` for images embedded by `model` (as `Collection.create`); with
        `exist_ok`, an existing one built by the same model is opened for writing instead."""
        if isinstance(model, Encoders):
            encoders = model
        elif encoders is None:
            encoders = load_model(model, pretrained, device, runtime, onnx)
        spec = model_spec(model, pretrained, encoders)
        return cls.create_empty(
            uri, name, spec, root=root, token=token, config=config, exist_ok=exist_ok, encoders=encoders,
            device=device, runtime=(runtime, onnx),
        )  # fmt: skip

    @classmethod
    def create_empty(
        cls, uri, name: str, spec: ModelSpec, *, root=None, token: str = "", config: MilvusConfig | None = None,
        exist_ok: bool = False, encoders: Encoders | None = None, device=None, runtime=("auto", None),
    ) -> MilvusCollection:  # fmt: skip
        """A new empty collection recording `spec` (no model is loaded: `export` uses it)."""
        cfg = config or MilvusConfig()
        _check_name(name)
        client = connect(str(uri), token=token, timeout_s=cfg.timeout_s)
        try:
            if client.has_collection(name, timeout=cfg.timeout_s):
                if not exist_ok:
                    raise IndexingError(f"{shown(uri)} already holds {name!r}; open it, or pick another name")
            else:
                _create(client, name, spec, root, cfg)
            return cls._attach(client, uri, name, read_only=False, config=cfg, encoders=encoders, device=device,
                               runtime=runtime)  # fmt: skip
        except BaseException:
            client.close()
            raise

    @classmethod
    def open(
        cls,
        uri: str | Path,
        name: str,
        *,
        read_only: bool = True,
        token: str = "",
        config: MilvusConfig | None = None,
        encoders: Encoders | None = None,
        device: str | torch.device | None = None,
        runtime: str = "auto",
        onnx: str | Path | None = None,
    ) -> MilvusCollection:
        """Open collection `name` at `uri` (loaded into Milvus's memory if it was not). Searches see every write
        (strong consistency), so `refresh` only reports whether there were any."""
        cfg = config or MilvusConfig()
        client = connect(str(uri), token=token, timeout_s=cfg.timeout_s)
        try:
            if not client.has_collection(name, timeout=cfg.timeout_s):
                raise IndexingError(f"{shown(uri)} holds no collection {name!r} (it has: {client.list_collections()})")
            return cls._attach(client, uri, name, read_only=read_only, config=cfg, encoders=encoders, device=device,
                               runtime=(runtime, onnx))  # fmt: skip
        except BaseException:
            client.close()
            raise

    @classmethod
    def _attach(cls, client, uri, name: str, *, read_only: bool, config: MilvusConfig, encoders, device, runtime):
        client.load_collection(name, timeout=config.timeout_s)
        return cls(client, str(uri), name, read_only=read_only, config=config, encoders=encoders, device=device,
                   runtime=runtime)  # fmt: skip

    def close(self) -> None:
        """Release the connection (pymilvus shares one per URI between clients, counting them)."""
        if not self._closed:
            self._closed, self._read_only = True, True
            self._client.close()

    def refresh(self) -> bool:
        before = self._manifest["writes"]
        self._manifest = self._read_manifest()
        return self._manifest["writes"] != before

    def _read_manifest(self) -> dict:
        info = self._client.describe_collection(self.name, timeout=self.config.timeout_s)
        text = (info.get("properties") or {}).get(MANIFEST_KEY)
        manifest = json.loads(text) if text else None
        if not manifest or manifest.get("format") != FORMAT:
            raise IndexingError(f"{self.location} is a Milvus collection this project did not make (no {MANIFEST_KEY})")
        return manifest

    def _write_manifest(self, **changes) -> None:
        self._manifest = {**self._manifest, **changes}
        self._client.alter_collection_properties(
            self.name, properties={MANIFEST_KEY: json.dumps(self._manifest)}, timeout=self.config.timeout_s
        )

    # What `ImageCollection` asks of a backend.

    @property
    def location(self) -> str:
        return f"Milvus collection {self.name!r} at {shown(self.uri)}"

    @property
    def model(self) -> ModelSpec:
        return ModelSpec(**self._manifest["model"])

    @property
    def root_dir(self) -> Path | None:
        root = self._manifest["root"]
        return Path(root) if root is not None else None

    @property
    def dtype(self) -> str:
        return self._manifest["dtype"]

    @property
    def count(self) -> int:
        rows = self._client.query(self.name, filter="", output_fields=["count(*)"], timeout=self.config.timeout_s)
        return int(rows[0]["count(*)"])

    @property
    def version(self) -> int:
        return int(self._manifest["writes"])

    @property
    def writable(self) -> bool:
        return not self._read_only

    @property
    def staging_dir(self) -> Path:
        if is_local(self.uri):
            db = Path(self.uri).expanduser().resolve()
            return db.parent / f"{db.name}.{self.name}.staging"
        host = re.sub(r"[^A-Za-z0-9.-]+", "_", self.uri.split("://", 1)[1])
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        return cache / "vlm" / "milvus-staging" / host / self.name

    @property
    def records_view(self) -> MilvusRecords:
        return self._records

    @property
    def next_id(self) -> int:
        return int(self._manifest["next_id"])

    def commit(self, change: Change) -> None:
        """Remove, rewrite and insert rows. Not atomic (see the module docstring): the ids are reserved first, so a
        crash leaves a gap, never a reused id. The exclusion list lives in the manifest (a collection property),
        written with the final write count. Exact copies (`twins`) are not kept: a sync finds them again each time."""
        records, vectors, remove_ids, updates = change.records, change.vectors, change.remove_ids, change.updates
        timeout, step = self.config.timeout_s, self.config.insert_batch
        new = [milvus_expr.to_row(r, v) for r, v in zip(records, np.asarray(vectors), strict=True)] if records else []
        kept = self._records.vectors([r.id for r in updates]) if updates else {}
        rewritten = [milvus_expr.to_row(r, kept[r.id]) for r in updates]
        _check_lengths(new + rewritten)  # refused before anything is written
        top = max([self.next_id, *(r.id + 1 for r in records)])
        if top != self.next_id:
            self._write_manifest(next_id=top)
        for start in range(0, len(remove_ids), BATCH):
            chunk = [int(i) for i in remove_ids[start : start + BATCH]]
            self._client.delete(self.name, filter=milvus_expr.in_list("id", chunk), timeout=timeout)
        for start in range(0, len(rewritten), step):
            self._client.upsert(self.name, rewritten[start : start + step], timeout=timeout)
        for start in range(0, len(new), step):
            self._client.insert(self.name, new[start : start + step], timeout=timeout)
        if len(records) >= self.config.flush_rows:
            self.flush()
        listed = {p: list(v) for p, v in self._manifest.get("excluded", {}).items() if p not in set(change.unexclude)}
        listed.update({path: [sha, time.time()] for path, sha in change.exclude})
        self._write_manifest(writes=self.version + 1, excluded=listed)

    def excluded_view(self) -> dict[str, tuple[str, float]]:
        return {path: (sha, since) for path, (sha, since) in self._manifest.get("excluded", {}).items()}

    @property
    def client(self):
        """The `pymilvus.MilvusClient`, for what this API does not cover (the Milvus collection is `name`)."""
        return self._client

    def flush(self) -> None:
        """Seal what was inserted so that Milvus indexes it (`MilvusConfig.flush_rows`; `export` flushes at its end)."""
        self._client.flush(self.name, timeout=self.config.flush_timeout_s)

    def reserve(self, next_id: int) -> None:
        """Never give ids below `next_id` to new images."""
        if next_id > self.next_id:
            self._write_manifest(next_id=int(next_id))

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
        """As `Collection.search_vector`; `nprobe` sets the index's search breadth for this call (HNSW `ef`,
        IVF_FLAT `nprobe`; default `MilvusConfig.ef` / `.nprobe`)."""
        if fingerprint is not None:
            self._check_model(fingerprint, "the model that made the query vectors")
        q = queries.as_queries(vectors, self.dim)
        if not 1 <= k <= MAX_K:
            raise IndexingError(f"k must be between 1 and {MAX_K} (Milvus's limit per query), got {k}")
        expr, residual = milvus_expr.expression(filters)
        if sort == "relevance":
            return self._search(q, k, expr, residual, nprobe)
        if sort != "date":
            raise IndexingError(f"unknown sort {sort!r}; choose 'relevance' or 'date' (newest first)")
        cut = queries.cut_off(self.model, min_score)
        return queries.newest_among(
            lambda want: self._search(q, want, expr, residual, nprobe), self.count, len(q), k, min_score=cut
        )

    def _search(self, q: np.ndarray, k: int, expr: str, residual, breadth: int | None) -> Hits:
        if residual is not None:
            return self._post_filtered(q, k, expr, residual)
        found = self._client.search(
            self.name,
            data=q.tolist(),
            limit=k,
            filter=expr,
            search_params=self.config.search_params(k, breadth),
            output_fields=list(milvus_expr.FIELDS),
            timeout=self.config.timeout_s,
        )
        ids = np.full((len(q), k), -1, dtype=np.int64)
        scores = np.full((len(q), k), -np.inf, dtype=np.float32)
        records = []
        for qi, hits in enumerate(found):
            hits = list(hits)[:k]
            ids[qi, : len(hits)] = [h["id"] for h in hits]
            scores[qi, : len(hits)] = [h["distance"] for h in hits]
            records.append([milvus_expr.to_record({**h["entity"], "id": h["id"]}) for h in hits])
        return Hits(ids, scores, records)

    def _post_filtered(self, q: np.ndarray, k: int, expr: str, residual) -> Hits:
        """Exact search over the rows `expr` selects that pass `residual` (read here with their vectors)."""
        rows = [r for r in self._records.scan(expr, [*milvus_expr.FIELDS, "vector"]) if residual(r)]
        ids = np.array([r["id"] for r in rows], dtype=np.int64)
        vectors = np.array([r["vector"] for r in rows], dtype=np.float32).reshape(len(rows), self.dim)
        scores, top = queries.exact_topk(q, vectors, ids, k)
        by_id = {r["id"]: milvus_expr.to_record(r) for r in rows}
        return Hits(top, scores, [[by_id[int(i)] for i in row if i >= 0] for row in top])


def _create(client, name: str, spec: ModelSpec, root, cfg: MilvusConfig) -> None:
    """Create the Milvus collection: its schema (`indexing.milvus_expr`), vector index and manifest."""
    from pymilvus import DataType, MilvusClient

    types = {"size": DataType.INT64, "width": DataType.INT64, "height": DataType.INT64, "mtime": DataType.DOUBLE}
    types["added"] = DataType.DOUBLE
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=int(spec.embed_dim))
    for field in milvus_expr.FIELDS[1:]:
        extra = {"max_length": milvus_expr.VARCHAR[field]} if field in milvus_expr.VARCHAR else {}
        nullable = field in milvus_expr.NULLABLE
        schema.add_field(field, types.get(field, DataType.VARCHAR), nullable=nullable, **extra)
    index = client.prepare_index_params()
    index.add_index("vector", index_type=cfg.index_type, metric_type="IP", params=cfg.index_params())
    manifest = {
        "format": FORMAT,
        "format_version": 1,
        "created": time.time(),
        "model": asdict(spec),
        "root": str(Path(root).resolve()) if root is not None else None,
        "dtype": "float32",
        "index": {"type": cfg.index_type, "params": cfg.index_params()},
        "next_id": 0,
        "writes": 0,
    }
    properties = {MANIFEST_KEY: json.dumps(manifest)}  # with the collection: none exists without its manifest
    client.create_collection(
        name,
        schema=schema,
        index_params=index,
        consistency_level="Strong",
        properties=properties,
        timeout=cfg.timeout_s,
    )


def _check_name(name: str) -> None:
    if not NAME.fullmatch(name):
        raise IndexingError(
            f"Milvus collection name {name!r}: letters, digits and underscores, not starting with a digit (<= 255)"
        )


def _check_lengths(rows: list[dict]) -> None:
    for row in rows:
        for field, cap in milvus_expr.VARCHAR.items():
            value = row.get(field)
            if value is not None and len(value.encode()) > cap:
                raise IndexingError(f"{row['path'][:200]}: its {field} is longer than Milvus's {cap} bytes for it")
