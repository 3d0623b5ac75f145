"""Searching one published version of a collection: query checks, filtered search, exact top-k.

A search takes one `Version` as a snapshot, so it needs no lock whatever a writer publishes meanwhile; search
parameters (k, nprobe, filters) travel with each call.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from indexing import faiss_index
from indexing.errors import IndexingError
from indexing.faiss_index import IndexConfig
from indexing.results import Hits, ModelSpec
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


# Relevance cut-offs of a date-sorted search, measured by `python -m bench.sort_cutoff --model M` (the cut-off with
# the best F1 of "score >= cut" against the relevant images, on a tuning half; indexing/README.md). By the weights'
# fingerprint first (the shipped demo model changed on 2026-12-05 and the name stayed), then by the model name a
# collection records (`ModelSpec.model`). Demo models, on synthetic scenes with the 48 queries "a <colour> <shape>":
# the demo shipped 2026-12-06 05:00 UTC (seven emoji styles, 9,000 bf16 steps) 0.64 (test half: precision 0.55, recall
# 0.20); the fp32 seven-style one before it 0.66 (0.56, 0.19); the six-style one before that 0.63 (0.50, 0.24); the
# one before that 0.59 (0.31, 0.25); the first 0.8 (0.93, 0.16).
# Others: 0.2, not measured here (no pretrained weights offline): matching text-image pairs of CLIP models score
# about 0.25-0.35 in cosine, unrelated ones about 0.1-0.2. Image queries score higher; set min_score for them.
MIN_SCORE_BY_FINGERPRINT = {
    "8fef5c2a334afc58": 0.64,
    "4250793a429872ef": 0.66,
    "cb9d1abf0b0a1b30": 0.63,
    "2e8a087393b745e5": 0.59,
    "da4233a040ab4a86": 0.8,
}
DEFAULT_MIN_SCORE = {"demo": 0.64}
OTHER_MODELS_MIN_SCORE = 0.2
MAX_CANDIDATES = 10_000  # a date-sorted search sorts at most this many of the best-scoring images per query


def default_min_score(model: ModelSpec) -> float:
    if model.fingerprint in MIN_SCORE_BY_FINGERPRINT:
        return MIN_SCORE_BY_FINGERPRINT[model.fingerprint]
    return DEFAULT_MIN_SCORE.get(model.model or "", OTHER_MODELS_MIN_SCORE)


def cut_off(model: ModelSpec, min_score: float | None) -> float:
    """The relevance cut-off a date-sorted search applies: `min_score` when given, else the model's default."""
    return default_min_score(model) if min_score is None else float(min_score)


def newest_first(
    v: Version, queries: np.ndarray, k: int, *, min_score: float, filters: Filter | None, nprobe: int | None,
    cfg: IndexConfig,
) -> Hits:  # fmt: skip
    """Of the images scoring at least `min_score` (the relevance cut-off), the k newest by date (EXIF date taken,
    else mtime; ties by score), per query. Candidates are fetched best first, 4x more each round, until one scores
    below the cut-off, so nothing above it is missed (up to `MAX_CANDIDATES`)."""

    def fetch(want: int) -> Hits:
        return search(v, queries, want, filters=filters, nprobe=nprobe, cfg=cfg)

    return newest_among(fetch, int(v.manifest["count"]), len(queries), k, min_score=min_score, dates=v.store.dates)


def newest_among(
    fetch: Callable[[int], Hits],
    total: int,
    nq: int,
    k: int,
    *,
    min_score: float,
    dates: Callable[[list[int]], dict[int, str]] | None = None,
) -> Hits:
    """`newest_first` over any search: `fetch(n)` returns the best n hits per query of a collection of `total`
    images; `dates(ids)` gives their dates (default: `ImageRecord.date` of the hits' records)."""
    want = min(total, max(4 * k, 256), MAX_CANDIDATES)
    while True:
        hits = fetch(max(want, 1))
        if want >= min(total, MAX_CANDIDATES) or bool((hits.scores[:, -1] < min_score).all()):
            break
        want = min(total, want * 4, MAX_CANDIDATES)
    ids = np.full((nq, k), -1, dtype=np.int64)
    scores = np.full((nq, k), -np.inf, dtype=np.float32)
    records = []
    for qi in range(nq):
        good = [
            (int(i), float(s)) for i, s in zip(hits.ids[qi], hits.scores[qi], strict=True) if i >= 0 and s >= min_score
        ]
        if dates is None:
            known = {r.id: r.date for r in hits.records[qi]}
            day = {i: known[i] for i, _ in good}
        else:
            day = dates([i for i, _ in good])
        best = sorted(good, key=lambda pair: (day[pair[0]], pair[1]), reverse=True)[:k]
        ids[qi, : len(best)] = [i for i, _ in best]
        scores[qi, : len(best)] = [s for _, s in best]
        found = {r.id: r for r in hits.records[qi]}
        records.append([found[i] for i, _ in best])
    return Hits(ids, scores, records)
