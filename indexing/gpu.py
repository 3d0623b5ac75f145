"""faiss on the GPU: which indexes can go there, one copy per GPU, and searches that never overlap on one copy.

    gpu_support(factory, d)      None if faiss can hold this index on a GPU, else why not (a pure function)
    gpu_copy(index, info, d)     a `Replicas` on every GPU, or None (no GPU, an index the GPU cannot hold, or a copy
                                 that failed: then the CPU index serves, and a warning says why)
    Replicas.search(q, k, params)  as `faiss.Index.search`, with per-call search parameters

Why not `faiss.IndexReplicas` (what `index_cpu_to_all_gpus` returns for several GPUs): it rejects search parameters
("search params not supported for this index"), and every IVF search here passes its own nprobe. Why the locks: faiss
GPU indexes are not thread-safe, not even for search (each device's `StandardGpuResources` has one temporary-memory
stack and one stream), while Gradio runs several listeners at once on the same index. Each copy has its own lock, so
two GPUs serve two searches at once and one GPU serves them one after the other.
"""

from __future__ import annotations

import itertools
import logging
import re
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import faiss
import numpy as np

from indexing.faiss_index import IndexInfo, gpu_count

LOG = logging.getLogger(__name__)

# faiss gpu/impl/IVFPQ.cu: the code sizes (bytes per vector, one byte per sub-quantizer at 8 bits) its kernels are
# built for, and the sub-quantizer widths it supports without precomputed tables.
GPU_PQ_CODE_BYTES = frozenset({1, 2, 3, 4, 8, 12, 16, 20, 24, 28, 32, 40, 48, 56, 64, 96})
GPU_PQ_SUB_DIMS = frozenset({1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 28, 32})
# Above this many sub-quantizers a float32 lookup table (M x 256 x 4 bytes) overflows the 48 KiB of shared memory
# faiss asks for per block; float16 tables fit up to 96.
FLOAT32_LUT_MAX_SUBQUANTIZERS = 48


def _pq(factory: str) -> tuple[int, int] | None:
    """(sub-quantizers, bits) of a factory string's PQ codec, or None."""
    match = re.fullmatch(r"PQ(\d+)(?:x(\d+))?(fs)?", factory.split(",")[-1])
    return (int(match[1]), int(match[2] or 8)) if match else None


def _fast_scan(factory: str) -> bool:
    return factory.split(",")[-1].endswith("fs")


def gpu_support(factory: str, d: int) -> str | None:
    """None if faiss can hold the index `factory` over dimension `d` on a GPU; else the reason, for people.

    The planner's large collections (above ~8M vectors at d=512 under the default budget) get PQ codes of d/4 or
    d/2 bytes, which the GPU kernels do not support, so such a collection is searched on the CPU."""
    if _fast_scan(factory):
        return f"{factory}: faiss has no GPU kernel for fast-scan PQ codes (IndexConfig.fast_scan=False avoids them)"
    pq = _pq(factory)
    if pq is None:
        return None
    m, bits = pq
    if bits != 8:
        return f"{factory}: the GPU holds only 8-bit PQ codes"
    if m not in GPU_PQ_CODE_BYTES:
        return (
            f"{factory}: {m}-byte PQ codes are not supported on the GPU (faiss supports "
            f"{', '.join(map(str, sorted(GPU_PQ_CODE_BYTES)))} bytes)"
        )
    if d % m or d // m not in GPU_PQ_SUB_DIMS:
        return f"{factory}: {d / m:g} dimensions per PQ sub-quantizer are not supported on the GPU"
    return None


class Replicas:
    """Copies of one index, one per GPU, each searched by one thread at a time; see the module docstring.

    A batch of queries is split by rows over the copies; a batch smaller than the number of copies goes to one copy,
    taken in turn. `keep` holds what the copies need alive (their GPU resources)."""

    def __init__(self, copies: Sequence[faiss.Index], keep: Sequence[object] = ()):
        if not copies:
            raise ValueError("Replicas needs at least one copy")
        self.copies = list(copies)
        self.locks = [threading.Lock() for _ in self.copies]
        self.keep = list(keep)
        self.d, self.ntotal = self.copies[0].d, self.copies[0].ntotal
        self._turn = itertools.count()
        self._pool = ThreadPoolExecutor(len(self.copies), "faiss-gpu") if len(self.copies) > 1 else None

    def _search_one(self, i: int, queries: np.ndarray, k: int, params) -> tuple[np.ndarray, np.ndarray]:
        with self.locks[i]:
            return self.copies[i].search(queries, k, params=params)

    def search(self, queries: np.ndarray, k: int, params: faiss.SearchParameters | None = None):
        """(scores, ids), each (nq, k), as `faiss.Index.search`; `params` go to every copy searched."""
        if self._pool is None or len(queries) < len(self.copies):
            return self._search_one(next(self._turn) % len(self.copies), queries, k, params)
        parts = np.array_split(np.arange(len(queries)), len(self.copies))
        futures = [
            self._pool.submit(self._search_one, i, np.ascontiguousarray(queries[rows]), k, params)
            for i, rows in enumerate(parts)
        ]
        results = [f.result() for f in futures]
        return np.concatenate([r[0] for r in results]), np.concatenate([r[1] for r in results])


def _flat_quantizer(index: faiss.Index) -> faiss.Index:
    """`index`, or a copy whose IVF coarse quantizer is an `IndexFlatIP` over the same centroids: GPU IVF wants a
    flat quantizer (HNSW is a CPU-side speed-up of the same assignment). The copy shares `index`'s inverted lists:
    a version's lists are memory-mapped (`OnDiskInvertedLists`), which faiss cannot clone, so they are detached
    while the rest is cloned. Keep `index` alive while the copy is used."""
    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:  # not an IVF index
        return index
    if isinstance(faiss.downcast_index(ivf.quantizer), faiss.IndexFlat):
        return index
    lists, owned = ivf.invlists, ivf.own_invlists
    placeholder = faiss.ArrayInvertedLists(ivf.nlist, ivf.code_size)
    ivf.own_invlists = False  # or replace_invlists would free the lists
    ivf.replace_invlists(placeholder, False)
    try:
        copy = faiss.clone_index(index)
    finally:
        ivf.replace_invlists(lists, owned)
    copied = faiss.extract_index_ivf(copy)
    copied.replace_invlists(lists, False)  # shared, not owned: freed with `index`
    copied.ntotal = copy.ntotal = index.ntotal
    flat = faiss.IndexFlatIP(copied.d)
    flat.add(copied.quantizer.reconstruct_n(0, copied.nlist))
    cloned_quantizer = copied.quantizer
    copied.quantizer = flat
    copied.own_fields = True
    flat.this.disown()  # now owned by the IVF copy, freed with it
    cloned_quantizer.this.own(True)  # the HNSW clone nothing points to any more: freed by Python
    return copy


def to_gpu(index: faiss.Index, factory: str) -> Replicas:
    """A copy of CPU `index` on every GPU (raises faiss's RuntimeError if a copy fails)."""
    source = _flat_quantizer(index)
    options = faiss.GpuClonerOptions()
    pq = _pq(factory)
    options.useFloat16 = pq is not None and pq[0] > FLOAT32_LUT_MAX_SUBQUANTIZERS  # float16 lookup tables
    resources = [faiss.StandardGpuResources() for _ in range(gpu_count())]
    copies = [faiss.index_cpu_to_gpu(res, device, source, options) for device, res in enumerate(resources)]
    return Replicas(copies, keep=resources)


def gpu_copy(index: faiss.Index, info: IndexInfo, d: int) -> Replicas | None:
    """`index` on every GPU, or None where there is no GPU, nothing to search, or a GPU cannot hold it (then the
    CPU index serves, with a warning saying so)."""
    if not gpu_count() or index.ntotal == 0:
        return None
    reason = gpu_support(info.factory, d)
    if reason is not None:
        LOG.warning("searching on the CPU: %s", reason)
        return None
    try:
        return to_gpu(index, info.factory)
    except RuntimeError as e:  # out of GPU memory, or a case faiss refuses
        LOG.warning("searching on the CPU: the index could not be copied to the GPU (%s)", str(e).splitlines()[0])
        return None
