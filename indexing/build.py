"""Building a collection across torchrun ranks: every rank embeds a share of the shards, rank 0 plans and commits.

torchrun --nproc-per-node 4 -m vlm index build COLLECTION INPUTS ...   (the CLI calls `add_distributed`)
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

from indexing import embed as embedding
from indexing.collection import Collection
from indexing.results import AddResult
from indexing.versions import STAGING
from vlm import distributed
from vlm.models import Encoders


def add_distributed(
    path: str | Path,
    inputs: str | Path | Sequence[str | Path],
    encoders: Encoders,
    info: distributed.DistInfo,
    *,
    embed: embedding.EmbedConfig | None = None,
    progress: bool = True,
) -> AddResult | None:
    """`Collection.add` across torchrun ranks (the collection must exist). Rank 0 returns the result, others None."""
    cfg = embed or embedding.EmbedConfig()
    coll = Collection.open(path, read_only=False, encoders=encoders) if info.is_main else None
    try:
        planned = None
        if coll is not None:
            todo, gathered, present = coll.plan_add(inputs)
            job = embedding.Job.for_items(todo, encoders, dtype=coll.dtype, shard_size=cfg.shard_size)
            embedding.prepare(Path(path) / STAGING, job)
            planned = (todo, job)
        todo, job = distributed.broadcast_object(planned, info)
        staging = Path(path) / STAGING
        stats = embedding.embed(
            encoders, todo, staging, job, cfg, rank=info.rank, world_size=info.world_size, progress=progress
        )
        distributed.barrier(info)
        if coll is None:
            return None
        result = coll.commit_staged(todo, job, gathered, present, stats)
        shutil.rmtree(staging)
        return result
    finally:
        if coll is not None:
            coll.close()
