"""Moving a FAISS collection into Milvus: `vlm index export-milvus COLL URI` (vectors and metadata, no embedding).

The target is created with the source's model record, or, when it exists, must hold vectors of the same model
(the fingerprints must match: `ModelMismatchError` otherwise). Images whose path or pixels the target already holds
are skipped, so an interrupted export completes when run again, and exporting twice copies nothing twice. An image
keeps its id unless the target already gives that id to another image; then it gets a fresh one (counted).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, replace
from pathlib import Path

from indexing.backend import Change
from indexing.collection import Collection
from indexing.errors import ModelMismatchError
from indexing.milvus import MilvusCollection
from indexing.milvus_client import MilvusConfig, connect, shown

LOG = logging.getLogger(__name__)


@dataclass
class ExportResult:
    uri: str
    name: str
    copied: int
    skipped: int  # already in the target (same path or same pixels)
    renumbered: int  # copied under a new id: the target used theirs
    count: int  # images in the target afterwards

    def summary(self) -> str:
        text = f"exported {self.copied:,} image(s) to Milvus collection {self.name!r} at {self.uri}"
        parts = [f"{self.skipped:,} already there"] if self.skipped else []
        parts += [f"{self.renumbered:,} given new ids"] if self.renumbered else []
        return text + (f" ({', '.join(parts)})" if parts else "") + f"; it holds {self.count:,}"


def default_name(source: Path) -> str:
    """A Milvus collection name from the collection folder's name ("photos.coll" -> "photos_coll")."""
    name = re.sub(r"[^A-Za-z0-9_]", "_", Path(source).resolve().name) or "collection"
    return name if not name[0].isdigit() else f"c_{name}"


def export(
    source: Collection,
    uri: str,
    name: str | None = None,
    *,
    token: str = "",
    config: MilvusConfig | None = None,
    batch: int = 4096,
) -> ExportResult:
    """Copy every image of `source` (its current version) into Milvus collection `name` at `uri`."""
    cfg = config or MilvusConfig()
    name = name or default_name(source.root)
    spec = source.model
    client = connect(uri, token=token, timeout_s=cfg.timeout_s)
    try:
        exists = client.has_collection(name, timeout=cfg.timeout_s)
    finally:
        client.close()
    if exists:
        target = MilvusCollection.open(uri, name, read_only=False, token=token, config=cfg)
        if target.model.fingerprint != spec.fingerprint:
            target.close()
            raise ModelMismatchError(
                f"{target.location} holds vectors of {target.model.source} (fingerprint {target.model.fingerprint}), "
                f"but {source.root} was built with {spec.source} (fingerprint {spec.fingerprint}); vectors of "
                f"different weights cannot be compared. Export into a new collection name (--name)"
            )
    else:
        root = source.root_dir
        target = MilvusCollection.create_empty(uri, name, spec, root=root, token=token, config=cfg)
    with target:
        copied, skipped, renumbered = _copy(source, target, batch)
        target.flush()  # sealed and indexed: searches no longer scan the copied rows one by one
        count = target.count
    result = ExportResult(shown(uri), name, copied, skipped, renumbered, count)
    LOG.info("%s", result.summary())
    return result


def _copy(source: Collection, target: MilvusCollection, batch: int) -> tuple[int, int, int]:
    view = target.records_view
    copied = skipped = renumbered = 0
    fresh = max(target.next_id, source.next_id)  # ids above both: free in the target, used by no source image
    target.reserve(source.next_id)  # ids of images removed from the source stay unused in the target too
    for records, vectors in source.rows(batch):
        present = view.by_paths([r.path for r in records])
        twins = view.by_hashes([r.sha256 for r in records])
        keep = [i for i, r in enumerate(records) if r.path not in present and r.sha256 not in twins]
        skipped += len(records) - len(keep)
        if not keep:
            continue
        taken = view.get([records[i].id for i in keep])
        moved = []
        for i in keep:
            r = records[i]
            if r.id in taken:
                r, fresh, renumbered = replace(r, id=fresh), fresh + 1, renumbered + 1
            moved.append(r)
        target.commit(Change(moved, vectors[keep]))
        copied += len(moved)
    return copied, skipped, renumbered
