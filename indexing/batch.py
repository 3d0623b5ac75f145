"""Large query batches over an IVF index with Flat codes: each probed list is read once for the whole batch.

faiss searches an IVF index query by query: a batch of 1000 queries probing 50 of 2048 lists streams ~50 lists'
vectors from memory per query, and exact search (one matrix product, which reads every vector once) is then only
~2x slower at 1M vectors (`bench/search.py`). Here the batch's probes are inverted: the queries that probe list l
are scored against l's vectors in one BLAS product, and each query keeps the top k of every list it probed. The
lists probed are those faiss would probe (the same quantizer search), so the results equal faiss's at the same
nprobe (up to ties); only the order of the work changes. `faiss_index.search` takes this path for batches of at
least `BATCH_MIN` queries without a selector (`tests/test_index_faiss.py` compares the two).
"""

from __future__ import annotations

import faiss
import numpy as np

BATCH_MIN = 64  # below this faiss's own per-query scan is as fast (bench/search.py)
BLOCK_RESULTS = 1 << 22  # (query, probed list, rank) results held at once: 48 MiB of scores and ids


def flat_lists(index: faiss.Index) -> bool:
    """Whether `index` is an IVF index whose lists hold the float32 vectors themselves (IndexIVFFlat)."""
    try:
        return isinstance(faiss.downcast_index(faiss.extract_index_ivf(index)), faiss.IndexIVFFlat)
    except RuntimeError:  # not an IVF index
        return False


def centroids(index: faiss.Index) -> np.ndarray:
    """(nlist, d) float32: the coarse centroids of an IVF index (any quantizer that stores its vectors)."""
    ivf = faiss.extract_index_ivf(index)
    return ivf.quantizer.reconstruct_n(0, ivf.nlist)


def search(index: faiss.Index, queries: np.ndarray, k: int, nprobe: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, ids), each (nq, k), of an IVF-Flat `index` (inner product) probing, for each query, the `nprobe`
    lists whose centroids are nearest (exactly: one matrix product, where the HNSW quantizer approximates).
    Queries go in blocks whose per-list results (nq * nprobe * k) stay under `BLOCK_RESULTS`."""
    nprobe = min(nprobe, faiss.extract_index_ivf(index).nlist)
    middle = centroids(index)
    block = max(1, BLOCK_RESULTS // max(nprobe * k, 1))
    parts = [_search(index, middle, queries[s : s + block], k, nprobe) for s in range(0, len(queries), block)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _search(
    index: faiss.Index, middle: np.ndarray, queries: np.ndarray, k: int, nprobe: int
) -> tuple[np.ndarray, np.ndarray]:
    ivf = faiss.extract_index_ivf(index)
    nq, d = queries.shape
    _, probes = faiss.knn(queries, middle, nprobe, metric=faiss.METRIC_INNER_PRODUCT)  # (nq, nprobe)
    best_scores = np.full((nq, nprobe * k), -np.inf, np.float32)
    best_ids = np.full((nq, nprobe * k), -1, np.int64)
    flat = probes.ravel()
    order = np.argsort(flat, kind="stable")  # (query, slot) pairs grouped by list
    lists, starts = np.unique(flat[order], return_index=True)
    ends = np.append(starts[1:], len(order))
    invlists = ivf.invlists
    for lst, start, end in zip(lists.tolist(), starts.tolist(), ends.tolist(), strict=True):
        size = invlists.list_size(lst) if lst >= 0 else 0
        if not size:
            continue
        pairs = order[start:end]
        who, slot = pairs // nprobe, pairs % nprobe
        vectors = faiss.rev_swig_ptr(invlists.get_codes(lst), size * d * 4).view(np.float32).reshape(size, d)
        ids = faiss.rev_swig_ptr(invlists.get_ids(lst), size)
        scores = queries[who] @ vectors.T  # (queries probing lst, size)
        top = min(k, size)
        part = (
            np.argpartition(-scores, top - 1, axis=1)[:, :top]
            if top < size
            else np.arange(size)[None].repeat(len(who), 0)
        )
        columns = slot[:, None] * k + np.arange(top)[None]
        best_scores[who[:, None], columns] = np.take_along_axis(scores, part, axis=1)
        best_ids[who[:, None], columns] = ids[part]
    top = min(k, best_scores.shape[1])
    part = np.argpartition(-best_scores, top - 1, axis=1)[:, :top]
    part_scores = np.take_along_axis(best_scores, part, axis=1)
    rank = np.argsort(-part_scores, axis=1, kind="stable")
    out_scores = np.full((nq, k), -np.inf, np.float32)
    out_ids = np.full((nq, k), -1, np.int64)
    out_scores[:, :top] = np.take_along_axis(part_scores, rank, axis=1)
    out_ids[:, :top] = np.take_along_axis(np.take_along_axis(best_ids, part, axis=1), rank, axis=1)
    return out_scores, out_ids
