"""Publishing the next version of a collection: its store, vector chunks (compacted when mostly dead) and index.

The index is updated in place of a rebuild where faiss allows (ids removed and added), rebuilt when the data has
outgrown its kind, and re-tuned when it has grown enough; `indexing.versions` owns the folder layout and the
commit point. `Collection.add` and `Collection.remove` call `publish_next` under the writer's lock.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from indexing import faiss_index, parallel, versions
from indexing.backend import Change
from indexing.faiss_index import IndexConfig, IndexInfo
from indexing.vectors import Vectors, write_chunk
from indexing.versions import CHUNKS, INDEX, MANIFEST, STORE, Version
from vlm.atomic import atomic_write_json

LOG = logging.getLogger(__name__)

COMPACT_MIN_DEAD = 1000  # chunks are compacted once they hold more vectors of removed images than this and than live


def publish_next(root: Path, old: Version, change: Change) -> Version:
    """Publish the version after `old` with `change` applied (the exclusion list and exact copies in its store);
    return it."""
    dim, dtype = int(old.manifest["model"]["embed_dim"]), old.manifest["dtype"]
    cfg = IndexConfig(**old.manifest["config"])
    number = versions.next_number(root, old.number)
    ids = np.array([r.id for r in change.records], dtype=np.int64)
    chunks = list(old.manifest["chunks"])
    if len(ids):
        chunks.append(write_chunk(root, f"c{number:06d}_0.npy", ids, change.vectors, dtype))
    built: list = []

    def write(folder: Path) -> None:
        store = old.store.copy_to(folder / STORE)
        # Updates are deleted and inserted again rather than UPDATEd: two files that swapped paths would break
        # the UNIQUE path constraint half-way through a row-by-row update.
        store.delete([*change.remove_ids.tolist(), *(r.id for r in change.updates)])
        store.insert([*change.updates, *change.records])
        store.unexclude(change.unexclude)
        store.exclude(change.exclude, since=time.time())
        store.set_twins(change.twins, change.untwin)
        live = store.ids()
        store.close()
        kept = _compact(root, chunks, live, number, dim, dtype)
        vectors = Vectors(root / CHUNKS, [c["name"] for c in kept], dim)
        index, info = _next_index(old, vectors, live, dim, cfg, folder)
        if not (folder / INDEX).exists():  # a parallel build wrote its own (and the lists' file beside it)
            faiss_index.write(index, str(folder / INDEX))
        manifest = {
            **old.manifest,
            "version": number,
            "updated": time.time(),
            "count": len(live),
            "next_id": int(max(old.manifest["next_id"], (ids.max() + 1) if len(ids) else 0)),
            "chunks": kept,
            "index": dataclasses.asdict(info),
        }
        atomic_write_json(folder / MANIFEST, manifest)
        built.append(index)

    versions.publish(root, number, write)
    versions.set_current(root, number)  # the commit point
    new = versions.load_version(root, versions.version_name(number), index=built[0])
    versions.collect_garbage(root, new)
    return new


def _compact(
    root: Path, chunks: list[dict[str, Any]], live: np.ndarray, number: int, dim: int, dtype: str
) -> list[dict[str, Any]]:
    """Once most stored vectors belong to removed images, rewrite the live ones into one chunk."""
    rows = sum(c["rows"] for c in chunks)
    if rows - len(live) <= max(len(live), COMPACT_MIN_DEAD):
        return chunks
    vectors = Vectors(root / CHUNKS, [c["name"] for c in chunks], dim).get(live)
    LOG.info("compacting %d stored vectors into the %d live ones", rows, len(live))
    return [write_chunk(root, f"c{number:06d}_1.npy", live, vectors, dtype)] if len(live) else []


def _next_index(
    old: Version, vectors: Vectors, live: np.ndarray, dim: int, cfg: IndexConfig, folder: Path
) -> tuple[faiss.Index, IndexInfo]:
    if faiss_index.rebuild_needed(old.info, len(live), dim, cfg):
        if not len(live):
            return faiss_index.empty_index(dim)
        if cfg.build_workers > 1 and faiss_index.plan(len(live), dim, cfg).kind == "ivf":
            return parallel.build(vectors, live, cfg, folder)  # writes folder's index files itself
        return faiss_index.build(vectors.get(live), live, cfg)
    index = faiss_index.read(str(old.folder / INDEX))  # into memory: a reader's memory-mapped index is read-only
    old_ids = faiss_index.index_ids(old.index)
    gone = np.setdiff1d(old_ids, live, assume_unique=True)
    new = np.setdiff1d(live, old_ids, assume_unique=True)
    if len(gone):
        index.remove_ids(faiss_index.selector_for(gone))
    if len(new):
        index.add_with_ids(vectors.get(new), new)
    info = dataclasses.replace(old.info)
    if faiss_index.retune_needed(info, len(live)):
        tuned = faiss_index.tune(index, vectors.get(live), live, cfg)
        info.nprobe, info.ef_search, info.recall_at_10 = tuned.nprobe, tuned.ef_search, tuned.recall
        info.rerank = tuned.rerank
        info.tuned_count = len(live)
    return index, info
