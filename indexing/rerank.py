"""Exact re-ranking of approximate candidates from the full vectors.

A compressed index (SQ8 or PQ codes) scans fast in little memory but ranks by approximate scores: PQ16 codes alone
stop near recall@10 0.75 on 512-d embeddings. The fix, as in faiss's `IndexRefine` and in LAION's memory-mapped
serving, is to ask the index for `factor * k` candidates and rank those again by the exact inner product with their
full vectors. Here the full vectors are the collection's chunks (memory-mapped `.npy` files, float32 or float16:
`indexing.vectors.Vectors`), so nothing is duplicated into the index and an add writes only its new vectors.
`fetch(ids)` returns the (len(ids), d) float32 vectors of stored ids; only the unique candidates of a block of
queries are read, and blocks bound the memory one call uses.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Fetch = Callable[[np.ndarray], np.ndarray]

BLOCK_CANDIDATES = 1 << 14  # (query, candidate) pairs per block: 32 MiB of float32 vectors at d = 512


def refine(queries: np.ndarray, candidates: np.ndarray, fetch: Fetch, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, ids), each (nq, k): the `candidates` (nq, K) int64 (-1 = none) of each query ranked by the exact
    inner product with their vectors, best first; -1 / -inf pad rows with fewer than k candidates. Ties keep the
    candidates' order."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    nq, width = candidates.shape
    out_ids = np.full((nq, k), -1, np.int64)
    out_scores = np.full((nq, k), -np.inf, np.float32)
    if not nq or not width or k <= 0:
        return out_scores, out_ids
    block = max(1, BLOCK_CANDIDATES // width)
    for start in range(0, nq, block):
        cand = candidates[start : start + block]
        valid = cand >= 0
        unique = np.unique(cand[valid])
        if not len(unique):
            continue
        vectors = fetch(unique)  # (u, d): each candidate read once per block
        pos = np.searchsorted(unique, np.where(valid, cand, unique[0]))
        exact = np.matmul(vectors[pos], queries[start : start + block, :, None])[..., 0]  # (b, K)
        scores = np.where(valid, exact, -np.inf).astype(np.float32)
        top = min(k, width)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :top]
        out_scores[start : start + block, :top] = np.take_along_axis(scores, order, axis=1)
        out_ids[start : start + block, :top] = np.where(
            np.isfinite(out_scores[start : start + block, :top]), np.take_along_axis(cand, order, axis=1), -1
        )
    return out_scores, out_ids


def array_fetch(vectors: np.ndarray, ids: np.ndarray) -> Fetch:
    """`fetch` over in-memory `vectors` (n, d) stored under `ids` (n,) (any order)."""
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]

    def fetch(wanted: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(vectors[order[np.searchsorted(sorted_ids, wanted)]], dtype=np.float32)

    return fetch
