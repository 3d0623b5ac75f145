"""Near-duplicates: groups of images whose vectors are closer than a threshold (resized, re-encoded, cropped or
brightened copies of one photo), found exactly over a collection's stored vectors.

    groups = coll.duplicates(threshold=0.95)     # list[DuplicateGroup], largest group first
    groups[0].records[0]                         # the keeper: the member with the most pixels (then the largest file)

Groups are stars, not chains: images are taken in keeper order (the most pixels first), and each image not yet in a
group gathers those still free whose cosine with it is above the threshold; so every member is within the threshold
of its keeper, and a chain of merely similar images (A~B~C, A and C far apart) is not one group. The pairs are found
exactly: every vector against every other in blocks of `BLOCK` rows (N^2 D multiply-adds: about a minute for 50,000
images of D = 512 on 2 cores). Images with the same decoded pixels are never stored twice
(`add` and `sync` report them with their twin), so a group's members are different files; a member whose vector
equals the keeper's (cosine >= `SAME_PICTURE`) and whose size equals it too is marked `same_picture`: a re-encode that
changed no visible pixel. `DEFAULT_THRESHOLD` is measured by `bench/duplicates.py` (indexing/README.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from indexing.errors import IndexingError
from indexing.store import Filter, ImageRecord
from indexing.versions import Version

DEFAULT_THRESHOLD = 0.96  # measured: bench/duplicates.py (indexing/README.md)
SAME_PICTURE = 0.9995
BLOCK = 1024


@dataclass(frozen=True)
class DuplicateGroup:
    records: list[ImageRecord]  # the keeper first, then the others by decreasing similarity to it
    scores: list[float]  # cosine of each member to the keeper (1.0 for the keeper)
    same_picture: list[bool]  # same size and vector as the keeper: a re-encode with no visible change

    @property
    def ids(self) -> list[int]:
        return [r.id for r in self.records]


def check_threshold(threshold: float) -> float:
    t = float(threshold)
    if not 0.0 < t < 1.0:
        raise IndexingError(f"duplicate threshold must be a cosine between 0 and 1 (exclusive), got {threshold!r}")
    return t


def find(v: Version, threshold: float, *, filters: Filter | None = None) -> list[DuplicateGroup]:
    """Groups of images of `v` (those matching `filters`) joined by pairs with cosine above `threshold`."""
    t = check_threshold(threshold)
    ids = v.store.filter_ids(filters) if filters is not None and not filters.is_empty() else v.store.ids()
    if len(ids) < 2:
        return []
    x = v.vectors.get(ids)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    near: dict[int, dict[int, float]] = {}  # i -> {j: cosine} for the pairs above the threshold
    for start in range(0, len(ids), BLOCK):
        sims = x[start : start + BLOCK] @ x.T
        rows, cols = np.nonzero(sims > t)
        for a, b in zip(rows, cols, strict=True):
            if a + start != b:
                near.setdefault(int(a + start), {})[int(b)] = float(sims[a, b])
    if not near:
        return []
    records = v.store.get([int(ids[i]) for i in near])

    def rank(i: int) -> tuple:  # keepers first: the most pixels, then the largest file, then the oldest id
        r = records[int(ids[i])]
        return (-(r.width or 0) * (r.height or 0), -r.size, int(ids[i]))

    assigned: set[int] = set()
    groups = []
    for keeper in sorted(near, key=rank):
        if keeper in assigned:
            continue
        others = sorted((j for j in near[keeper] if j not in assigned), key=lambda j: (-near[keeper][j], ids[j]))
        if not others:
            continue
        assigned.update([keeper, *others])
        size = (records[int(ids[keeper])].width, records[int(ids[keeper])].height)
        members = [records[int(ids[i])] for i in [keeper, *others]]
        groups.append(
            DuplicateGroup(
                records=members,
                scores=[1.0] + [near[keeper][j] for j in others],
                same_picture=[False]
                + [
                    near[keeper][j] >= SAME_PICTURE and (r.width, r.height) == size
                    for j, r in zip(others, members[1:], strict=True)
                ],
            )
        )
    groups.sort(key=lambda g: (-len(g.records), g.records[0].id))
    return groups
