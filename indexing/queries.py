"""Searching one published version of a collection: query checks, filtered search, exact top-k.

A search takes one `Version` as a snapshot, so it needs no lock whatever a writer publishes meanwhile; search
parameters (k, nprobe, filters) travel with each call.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from indexing import faiss_index
from indexing.errors import IndexingError
from indexing.faiss_index import IndexConfig
from indexing.results import Hits
from indexing.store import Filter
from indexing.versions import Version


def search(
    v: Version, queries: np.ndarray, k: int, *, filters: Filter | None, nprobe: int | None, cfg: IndexConfig
) -> Hits:
    """The k nearest images of `v` to each normalised query (nq, D), with their records."""
    if filters is not None and not filters.is_empty():
        scores, ids = filtered(v, queries, k, v.store.filter_ids(filters), nprobe, cfg)
    else:
        index = v.gpu_index if v.gpu_index is not None else v.index
        gpu = v.gpu_index is not None
        scores, ids = faiss_index.search(index, v.info, queries, k, nprobe=nprobe, gpu=gpu, fetch=v.vectors.get)
    scores = np.where(ids >= 0, scores, -np.inf).astype(np.float32)
    found = v.store.get(np.unique(ids[ids >= 0]).tolist())
    return Hits(ids, scores, [[found[int(i)] for i in row if i >= 0] for row in ids])


def filtered(
    v: Version, queries: np.ndarray, k: int, allowed: np.ndarray, nprobe: int | None, cfg: IndexConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Search among `allowed` ids only: through an id selector on the exact index; exactly over those vectors
    when they are few; else through the IVF index with nprobe raised by the share filtered out."""
    if v.info.kind == "flat" or len(allowed) > cfg.exact_filter_limit:
        probe = nprobe or v.info.nprobe
        if v.info.kind == "ivf" and len(allowed):
            probe = min(v.info.nlist, math.ceil(probe * v.index.ntotal / len(allowed)))
        selector = faiss_index.selector_for(allowed)
        return faiss_index.search(v.index, v.info, queries, k, selector=selector, nprobe=probe, fetch=v.vectors.get)
    return exact_topk(queries, v.vectors.get(allowed), allowed, k)


def as_queries(vectors: np.ndarray | torch.Tensor, dim: int) -> np.ndarray:
    """(nq, dim) or (dim,) vectors -> (nq, dim) contiguous float32, L2-normalised; `IndexingError` on a wrong shape."""
    q = vectors.detach().cpu().numpy() if isinstance(vectors, torch.Tensor) else np.asarray(vectors)
    q = np.atleast_2d(q).astype(np.float32)
    if q.ndim != 2 or q.shape[1] != dim:
        raise IndexingError(f"query vectors must be (nq, {dim}) or ({dim},), got {np.shape(vectors)}")
    norms = np.linalg.norm(q, axis=1, keepdims=True)
    return np.ascontiguousarray(q / np.maximum(norms, 1e-12))


def exact_topk(queries: np.ndarray, vectors: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force top-k of `queries` (nq, D) over `vectors` (m, D) with `ids` (m,): (scores, ids) (nq, k)."""
    scores = queries @ vectors.T  # (nq, m)
    top = min(k, len(ids))
    out_ids = np.full((len(queries), k), -1, dtype=np.int64)
    out_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    if top:
        part = np.argpartition(-scores, top - 1, axis=1)[:, :top]
        order = np.take_along_axis(-scores, part, axis=1).argsort(axis=1, kind="stable")
        best = np.take_along_axis(part, order, axis=1)
        out_ids[:, :top] = ids[best]
        out_scores[:, :top] = np.take_along_axis(scores, best, axis=1)
    return out_scores, out_ids
