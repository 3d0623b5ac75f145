"""One query over an IVF index on every core: its probed lists split between threads.

faiss parallelises an IVF search over its queries (`parallel_mode` 0), so a single query scans its `nprobe` lists
on one core however many there are; at 5M vectors (`IVF4096_HNSW32,SQ8`, nprobe 103) that scan is most of a
query's time. Here the quantizer is searched once, the lists it returns are cut into one slice per thread, each
slice is scanned by `IndexIVF.search_preassigned` in its own thread (faiss releases the GIL; each slice gets its
own `SearchParametersIVF`, so the shared index is never changed), and the slices' results are merged by score.
The lists scanned and the scores are faiss's own, so the results equal a plain search at the same nprobe (up to
ties; `tests/test_index_faiss.py`). `faiss_index.search` takes this path for fewer queries than threads.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import faiss
import numpy as np

SPLIT_MIN_PROBES = 8  # fewer lists are scanned in well under a millisecond: not worth a thread hand-off

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def threads() -> int:
    return faiss.omp_get_max_threads()


def applies(index: faiss.Index, nq: int, nprobe: int) -> bool:
    """Whether a search of `nq` queries probing `nprobe` lists of `index` is better split: a plain CPU IVF index
    (no transform or id map in front) on inner products (the merge keeps the largest scores), fewer queries than
    threads, several threads and enough lists."""
    if not (0 < nq < threads() and threads() > 1 and nprobe >= SPLIT_MIN_PROBES):
        return False
    ivf = faiss.downcast_index(index)
    return isinstance(ivf, faiss.IndexIVF) and ivf.metric_type == faiss.METRIC_INNER_PRODUCT


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=threads(), thread_name_prefix="ivf-split")
        return _pool


def search(
    index: faiss.Index,
    queries: np.ndarray,
    k: int,
    nprobe: int,
    *,
    quantizer_params: faiss.SearchParameters | None = None,
    selector: faiss.IDSelector | None = None,
    parts: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(scores, ids), each (nq, k), of the IVF `index` (inner product) probing `nprobe` lists per query, the lists
    scanned in `parts` slices (default: one per thread) at once."""
    ivf = faiss.downcast_index(index)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    nq = len(queries)
    nprobe = min(nprobe, ivf.nlist)
    coarse_d, coarse_i = ivf.quantizer.search(queries, nprobe, params=quantizer_params)
    slices = [s for s in np.array_split(np.arange(nprobe), min(parts or threads(), nprobe)) if len(s)]

    def scan(cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        keys = np.ascontiguousarray(coarse_i[:, cols], dtype=np.int64)
        dis = np.ascontiguousarray(coarse_d[:, cols], dtype=np.float32)
        scores = np.empty((nq, k), np.float32)
        ids = np.empty((nq, k), np.int64)
        kwargs = {"nprobe": len(cols), "sel": selector} if selector is not None else {"nprobe": len(cols)}
        params = faiss.SearchParametersIVF(**kwargs)
        sp = faiss.swig_ptr
        ivf.search_preassigned_c(nq, sp(queries), k, sp(keys), sp(dis), sp(scores), sp(ids), False, params)
        return scores, ids

    results = list(_executor().map(scan, slices)) if len(slices) > 1 else [scan(slices[0])]
    scores = np.concatenate([r[0] for r in results], axis=1)
    ids = np.concatenate([r[1] for r in results], axis=1)
    scores = np.where(ids >= 0, scores, -np.inf).astype(np.float32)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(ids, order, axis=1)
