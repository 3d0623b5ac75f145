"""FAISS indexes for L2-normalised vectors: choice, build, recall tuning, per-call search parameters, GPU.

    plan(n, d, cfg)                      which index: exact "IDMap2,Flat" below `cfg.exact_threshold` vectors; above
                                         it IVF with an HNSW coarse quantizer storing Flat codes where they fit
                                         `cfg.memory_budget_gb`, else compressed codes re-ranked exactly (below)
    build(vectors, ids, cfg)             -> (index, IndexInfo): IVF is trained on a seeded sample, then `tune`d
    tune(index, vectors, ids, cfg)       the smallest nprobe whose recall@10 against exact search reaches
                                         `cfg.target_recall`, on held-out queries
    search(index, info, queries, k, …)   -> (scores, ids), shaped (nq, k) as in faiss; -1 = no result

The idea follows autofaiss (criteo/autofaiss): choose the index from the collection size and a memory budget,
train on a sample, tune the search parameters against exact search. The similarity is the inner product, which is
the cosine for unit vectors. Search parameters (nprobe, the quantizer's efSearch, an id selector) are passed with
every call as `faiss.SearchParameters`, never set on the shared index, so concurrent searches cannot race (the race
clip-retrieval's `KnnService` has). faiss releases the GIL while it searches.

Compressed codes: with re-ranking (`cfg.rerank`, the default) the codes only have to bring the true neighbours into
the candidates, and the exact inner product with the full vectors ranks them. So the plan takes the codes that scan
fastest, 4-bit PQ in faiss's fast-scan layout (SIMD lookups over blocks of 32 codes), one sub-quantizer per
dimension (`PQ512x4fs`: d/2 bytes a vector) or fewer where the budget demands. At 5M vectors of d = 512 under 4 GB
(`bench.search --scale`, indexing/README.md), against the SQ8 codes (d bytes) this replaced: recall@10 0.958 both,
single queries 279 vs 96/s, batches 624 vs 116/s, an index of 1.3 vs 2.5 GB; the costs are 32 candidates re-ranked
per result instead of 2 and lists read into memory when a collection opens (1.3 GB, 0.5-1.4 s; faiss keeps
fast-scan lists in blocks it cannot memory-map). Coarser fast-scan codes (PQ256x4fs there) stop near recall 0.86,
as 8-bit PQ did before re-ranking. faiss has no GPU kernel for fast-scan codes, so where faiss sees a GPU (or with
`fast_scan=False`, or without re-ranking) the ladder is the precision ladder SQ8, then PQ with 8-bit codes.

Held-out queries: `tune` draws database vectors as queries and leaves each query's own id out of both the exact and
the approximate top-k, so recall counts only true neighbours (a query always finds itself, which would flatter the
approximate index by one in k).

Size (~515 lines, over the ~400 guide): plan, build, tune, search and read share the index-string grammar and
`IndexInfo`; re-ranking (`indexing/rerank.py`), batched scans (`indexing/batch.py`) and GPU copies
(`indexing/gpu.py`) already live apart.

Threads: every IVF index this module builds or reads scans a query's probed lists on all threads (faiss
`parallel_mode` 1, `scan_lists_in_parallel`). faiss's default, one thread per query, leaves a single query (the app's
every search) on one core: at 1M vectors (SQ8, nprobe 64, 2 cores) 400 queries/s against 742 in mode 1, and 526
for our own earlier split of the lists over Python threads, which this replaces. Batches: at 1M a batch of 300 ran
as fast in either mode (845 vs 844/s); at 5M fast-scan codes (the CPU plan) too (650 vs 650/s for 1000 queries),
while SQ8 codes lose about a sixth in mode 1 (131 vs 158/s; single queries 99 vs 67/s). Single queries are what the
app and the CLI send, so mode 1 it is. It is set once, before the index is shared, never per call.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from typing import NamedTuple

import faiss
import numpy as np

from indexing import batch, rerank
from indexing.errors import IndexingError

LOG = logging.getLogger(__name__)

METRIC = faiss.METRIC_INNER_PRODUCT


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class IndexConfig:
    """How a collection's index is chosen and tuned (saved in the collection's manifest)."""

    exact_threshold: int = field(
        default=20_000, metadata=_help("below this many vectors the index is exact (bench/search.py: crossover)")
    )
    target_recall: float = field(default=0.95, metadata=_help("recall@10 against exact search that tuning reaches"))
    memory_budget_gb: float = field(
        default=4.0, metadata=_help("memory for IVF codes: Flat if they fit, else compressed")
    )
    nlist: int | None = field(default=None, metadata=_help("IVF lists; none: a power of two near 2 sqrt(n)"))
    hnsw_m: int = field(default=32, metadata=_help("neighbours per node of the HNSW coarse quantizer"))
    train_per_list: int = field(default=40, metadata=_help("IVF training vectors per list (faiss warns below 39)"))
    kmeans_iters: int = field(default=12, metadata=_help("k-means iterations for the IVF centroids"))
    tune_queries: int = field(default=1000, metadata=_help("held-out queries for recall tuning"))
    rerank: bool = field(
        default=True, metadata=_help("re-rank SQ8/PQ candidates exactly from the stored vectors (kept on disk)")
    )
    rerank_max_factor: int = field(
        default=32, metadata=_help("most candidates per wanted result that tuning may re-rank (k_factor)")
    )
    fast_scan: bool | None = field(
        default=None,
        metadata=_help(
            "re-ranked compressed codes as 4-bit fast-scan PQ (CPU); none: unless faiss sees a GPU, which cannot "
            "scan them (then SQ8 / 8-bit PQ)"
        ),
    )
    exact_filter_limit: int = field(
        default=50_000, metadata=_help("filtered searches over at most this many images are exact over them")
    )
    seed: int = field(default=0, metadata=_help("seed of the training sample, k-means and tuning queries"))
    build_workers: int = field(
        default=1,
        metadata=_help(
            "processes filling an IVF rebuild's shards, merged on disk (indexing/parallel.py); 1: in-process"
        ),
    )

    def __post_init__(self) -> None:
        if isinstance(self.build_workers, bool) or not isinstance(self.build_workers, int) or self.build_workers < 1:
            raise IndexingError(
                f"build_workers must be a whole number of processes, 1 or more; got {self.build_workers!r}"
            )


@dataclass
class IndexInfo:
    """What was built and how it searches; JSON-ready for the manifest."""

    factory: str  # faiss index_factory string
    kind: str  # "flat" or "ivf"
    nlist: int = 0
    nprobe: int = 0  # tuned default; a search may pass its own
    ef_search: int = 0  # efSearch of the HNSW quantizer for `nprobe`
    recall_at_10: float = 1.0  # measured at `nprobe` on held-out queries, against exact search
    rerank: int = 0  # k_factor: k * rerank candidates re-ranked exactly from the stored vectors; 0: none
    trained_count: int = 0  # vectors in the index when it was built (and IVF trained)
    tuned_count: int = 0  # vectors in the index when nprobe was last tuned
    build_seconds: float = 0.0


class IndexPlan(NamedTuple):
    factory: str
    kind: str
    nlist: int
    code_bytes: int  # per vector, ids excluded
    rerank: bool = False  # compressed codes, re-ranked from the full vectors on disk
    ram_bytes: int = 0  # what stays in memory: codes, ids, centroids and HNSW links, the re-ranking id table
    disk_bytes: int = 0  # the full float32 vectors (chunks) that stay on disk, read for re-ranking


LOOKUP_BYTES = 16  # per vector: the id -> (chunk, row) table re-ranking reads the full vectors through
FAST_SCAN_BLOCK = 32  # fast-scan codes are stored in blocks of 32 vectors; a list's last block is padded


class TuneResult(NamedTuple):
    nprobe: int
    ef_search: int
    recall: float
    curve: dict[int, float]  # nprobe -> recall@k measured (with the most candidates re-ranked, if any)
    rerank: int = 0  # candidates per result re-ranked exactly (k_factor); 0: no re-ranking


# ---------------------------------------------------------------------------------------------------------------
# Choice.


def default_nlist(n: int) -> int:
    """A power of two near 2 * sqrt(n), between 16 and 65536: lists of a few hundred to a few thousand vectors."""
    return int(min(65536, max(16, 2 ** round(math.log2(max(2.0 * math.sqrt(n), 1.0))))))


def plan(n: int, d: int, cfg: IndexConfig) -> IndexPlan:
    """The index for `n` vectors of dimension `d` under `cfg` (see the module docstring): the most precise codes
    whose memory (codes, ids, centroids, HNSW links and, for compressed codes, the re-ranking table) fits the
    budget; the full vectors stay on disk."""
    disk = n * (8 + 4 * d)
    if n < cfg.exact_threshold:
        return IndexPlan("IDMap2,Flat", "flat", 0, 4 * d, False, n * (4 * d + 16), disk)
    nlist = cfg.nlist or default_nlist(n)
    budget = cfg.memory_budget_gb * 2**30
    quantizer = f"IVF{nlist}_HNSW{cfg.hnsw_m}"
    fixed = nlist * (4 * d + 8 * cfg.hnsw_m)  # centroids and HNSW links
    codecs = [("Flat", 4 * d)]
    if cfg.rerank and (cfg.fast_scan if cfg.fast_scan is not None else gpu_count() == 0):
        codecs += [(f"PQ{m}x4fs", m // 2) for m in (d, d // 2, d // 4, d // 8) if m >= 8 and m % 2 == 0 and d % m == 0]
    else:
        codecs += [("SQ8", d)]
        codecs += [(f"PQ{m}x8", m) for m in (d // 2, d // 4, d // 8, d // 16) if m >= 4 and d % m == 0]

    def ram(codec: str, code_bytes: int) -> int:
        blocks = nlist * FAST_SCAN_BLOCK * code_bytes if codec.endswith("fs") else 0  # each list's last block
        return fixed + blocks + n * (code_bytes + 8 + (LOOKUP_BYTES if codec != "Flat" and cfg.rerank else 0))

    for codec, code_bytes in codecs:
        if ram(codec, code_bytes) <= budget:
            rerank = codec != "Flat" and cfg.rerank
            return IndexPlan(f"{quantizer},{codec}", "ivf", nlist, code_bytes, rerank, ram(codec, code_bytes), disk)
    smallest = ram(*codecs[-1])
    raise IndexingError(
        f"{n:,} vectors of dimension {d} need at least {smallest / 2**30:.3g} GB even as {codecs[-1][0]} codes, "
        f"over the memory budget of {cfg.memory_budget_gb} GB; raise memory_budget_gb (--memory-budget-gb)"
    )


# ---------------------------------------------------------------------------------------------------------------
# GPU (taken when faiss sees a GPU; the CPU wheel has no GPU symbols). Copies and locks: indexing/gpu.py.


def gpu_count() -> int:
    return faiss.get_num_gpus() if hasattr(faiss, "StandardGpuResources") else 0


# ---------------------------------------------------------------------------------------------------------------
# Build and tune.


def empty_index(d: int) -> tuple[faiss.Index, IndexInfo]:
    return faiss.index_factory(d, "IDMap2,Flat", METRIC), IndexInfo(factory="IDMap2,Flat", kind="flat")


def build(vectors: np.ndarray, ids: np.ndarray, cfg: IndexConfig) -> tuple[faiss.Index, IndexInfo]:
    """An index holding `vectors` (n, d) float32 unit rows under `ids` (n,) int64, chosen by `plan`."""
    vectors, ids = _check(vectors, ids)
    n, d = vectors.shape
    chosen = plan(n, d, cfg)
    start = time.perf_counter()
    index = scan_lists_in_parallel(faiss.index_factory(d, chosen.factory, METRIC))
    info = IndexInfo(chosen.factory, chosen.kind, nlist=chosen.nlist, trained_count=n, tuned_count=n)
    trained_on = training_rows(n, chosen.nlist, cfg) if chosen.kind == "ivf" else None
    if trained_on is not None:
        train(index, vectors[trained_on], cfg)
    index.add_with_ids(vectors, ids)
    if chosen.kind == "ivf":
        result = tune(index, vectors, ids, cfg, exclude=trained_on)
        info.nprobe, info.ef_search, info.recall_at_10 = result.nprobe, result.ef_search, result.recall
        info.rerank = result.rerank
    info.build_seconds = round(time.perf_counter() - start, 3)
    LOG.info("built %s over %d vectors in %.1f s", chosen.factory, n, info.build_seconds)
    return index, info


def scan_lists_in_parallel(index: faiss.Index) -> faiss.Index:
    """`index`, its IVF part (if any) set to scan each query's probed lists on all threads (faiss `parallel_mode`
    1; the module docstring has the figures). faiss does not save the setting, so `build` and `read` apply it."""
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.parallel_mode = 1
    return index


def _check(vectors: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    if vectors.ndim != 2 or ids.shape != (vectors.shape[0],):
        raise IndexingError(f"expected vectors (n, d) and ids (n,), got {vectors.shape} and {ids.shape}")
    return vectors, ids


def training_rows(n: int, nlist: int, cfg: IndexConfig) -> np.ndarray:
    """The sorted row numbers (of n) of the seeded training sample: `cfg.train_per_list` per list, at most n."""
    size = min(n, cfg.train_per_list * nlist)
    return np.sort(np.random.default_rng(cfg.seed).choice(n, size, replace=False)) if size < n else np.arange(n)


def train(index: faiss.Index, sample: np.ndarray, cfg: IndexConfig) -> None:
    """Train the empty IVF `index` on `sample`: spherical k-means for the coarse centroids, then the SQ/PQ codes
    on the same sample."""
    ivf = faiss.extract_index_ivf(index)
    sample = np.ascontiguousarray(sample, dtype=np.float32)
    LOG.info("training %d IVF lists on %d vectors", ivf.nlist, len(sample))
    ivf.quantizer.add(kmeans_centroids(sample, ivf.nlist, cfg))
    ivf = faiss.downcast_index(ivf)
    if isinstance(ivf, faiss.IndexIVFPQ):
        ivf.do_polysemous_training = False  # index_factory turns it on; unused here, and 20x the PQ training time
    # The quantizer now holds nlist centroids, so faiss skips its own k-means and trains only the codes (SQ/PQ on
    # the residuals), on the same sample.
    index.train(sample)


def kmeans_centroids(sample: np.ndarray, k: int, cfg: IndexConfig) -> np.ndarray:
    """(k, d) unit centroids of spherical k-means over `sample`, by exact assignment (BLAS, or the GPUs).

    Through `faiss.Kmeans`, which owns its GPU assignment index and frees it with itself. Handing a GPU index to
    `IndexIVF.clustering_index` instead gives it to faiss, which never frees it: about 1.5 GiB per GPU leaked on
    every IVF build in a long-lived app."""
    kmeans = faiss.Kmeans(
        sample.shape[1],
        k,
        niter=cfg.kmeans_iters,
        seed=cfg.seed,
        spherical=True,  # unit centroids, so the inner product ranks lists as it ranks vectors
        max_points_per_centroid=max(cfg.train_per_list, 39),
        gpu=gpu_count() > 0,
    )
    kmeans.train(sample)
    return kmeans.centroids


def ef_for(nprobe: int) -> int:
    """efSearch of the HNSW quantizer: the graph search must return at least nprobe lists, with slack."""
    return max(32, 2 * nprobe)


def fast_scan(index: faiss.Index) -> bool:
    """Whether an IVF index keeps its codes in faiss's fast-scan blocks (which cannot be memory-mapped)."""
    ivf = faiss.try_extract_index_ivf(index)
    return ivf is not None and isinstance(faiss.downcast_index(ivf), faiss.IndexIVFFastScan)


def compressed(index: faiss.Index) -> bool:
    """Whether an IVF index ranks by approximate codes (SQ, PQ) rather than the vectors themselves."""
    return not isinstance(faiss.downcast_index(faiss.extract_index_ivf(index)), faiss.IndexIVFFlat)


def tune(
    index: faiss.Index,
    vectors: np.ndarray,
    ids: np.ndarray,
    cfg: IndexConfig,
    *,
    k: int = 10,
    exclude: np.ndarray | None = None,
) -> TuneResult:
    """The smallest nprobe whose recall@k against exact search reaches `cfg.target_recall` (doubling, then
    bisecting), judged by the lower end of its estimate (mean - 2 standard errors over the queries) so that a fresh
    query set meets the target too. Compressed codes (with `cfg.rerank`) are judged after exact re-ranking of
    `factor * k` candidates: nprobe at the largest factor, then the smallest factor that still reaches the target
    at that nprobe (one search gives every factor: a shorter candidate list is a prefix of a longer one). If the
    target is out of reach, the smallest nprobe within 0.005 of the best recall, with a warning."""
    vectors, ids = _check(vectors, ids)
    nlist = faiss.extract_index_ivf(index).nlist
    rng = np.random.default_rng(cfg.seed + 1)
    # Queries come from outside the k-means sample (`exclude`) where there is enough left: centroids fit the
    # points they were trained on better than new ones, which would flatter the recall.
    pool = np.setdiff1d(np.arange(len(ids)), exclude) if exclude is not None else np.arange(len(ids))
    if len(pool) < min(cfg.tune_queries, len(ids)):
        pool = np.arange(len(ids))
    pick = np.sort(rng.choice(pool, min(cfg.tune_queries, len(pool)), replace=False))
    queries, self_ids = vectors[pick], ids[pick]
    _, rows = faiss.knn(queries, vectors, k + 1, metric=METRIC)
    truth = drop_self(ids[rows], self_ids, k)
    max_factor = max(1, cfg.rerank_max_factor) if cfg.rerank and compressed(index) else 0
    fetch = rerank.array_fetch(vectors, ids) if max_factor else None
    found_at: dict[int, np.ndarray] = {}  # nprobe -> candidates (nq, max_factor * k + 1), or results (nq, k + 1)
    curve: dict[int, float] = {}
    lower: dict[int, float] = {}

    def measure(nprobe: int, factor: int) -> tuple[float, float]:
        found = found_at[nprobe]
        if factor:
            found = rerank.refine(queries, found[:, : factor * k + 1], fetch, k + 1)[1]
        per_query = recall_per_query(drop_self(found, self_ids, k), truth)
        return float(per_query.mean()), float(per_query.mean() - 2 * per_query.std() / np.sqrt(len(per_query)))

    def reaches(nprobe: int) -> bool:
        if nprobe not in curve:
            info = IndexInfo(factory="", kind="ivf", nlist=nlist, nprobe=nprobe, ef_search=ef_for(nprobe))
            # Tuned on the per-query path (its HNSW quantizer approximates the batch path's exact one).
            found_at[nprobe] = search(index, info, queries, max_factor * k + 1 if max_factor else k + 1, batched=False)[
                1
            ]
            curve[nprobe], lower[nprobe] = measure(nprobe, max_factor)
        return lower[nprobe] >= cfg.target_recall

    nprobe = 1
    while not reaches(nprobe) and nprobe < nlist:
        nprobe = min(2 * nprobe, nlist)
    if reaches(nprobe):
        low = max(1, nprobe // 2)  # fails the target, unless nprobe == 1
        while nprobe - low > 1:
            mid = (low + nprobe) // 2
            low, nprobe = (low, mid) if reaches(mid) else (mid, nprobe)
    else:
        best = max(curve.values())
        nprobe = min(p for p, r in curve.items() if r >= best - 0.005)
        LOG.warning(
            "recall@%d %.3f is the best this index reaches (target %.3f): its codes are too coarse; raise the "
            "memory budget for finer codes%s",
            k,
            best,
            cfg.target_recall,
            ", or re-rank more candidates (rerank_max_factor)" if max_factor else ", or re-rank (IndexConfig.rerank)",
        )
    factor, recall = max_factor, curve[nprobe]
    if max_factor and lower[nprobe] >= cfg.target_recall:
        low = 0  # recall grows with the factor (more candidates, ranked exactly): bisect for the smallest
        while factor - low > 1:
            mid = (low + factor) // 2
            mean, bound = measure(nprobe, mid)
            low, factor, recall = (low, mid, mean) if bound >= cfg.target_recall else (mid, factor, recall)
    LOG.info(
        "tuned nprobe=%d of %d lists, %d candidates re-ranked per result: recall@%d %.3f on %d queries",
        *(nprobe, nlist, factor, k, recall, len(pick)),
    )
    return TuneResult(nprobe, ef_for(nprobe), recall, dict(sorted(curve.items())), factor)


def drop_self(found: np.ndarray, self_ids: np.ndarray, k: int) -> np.ndarray:
    """(nq, k+1) ids -> (nq, k): each row without its query's own id (or without its last id if absent)."""
    out = np.empty((found.shape[0], k), dtype=np.int64)
    for i, (row, own) in enumerate(zip(found, self_ids, strict=True)):
        hit = np.flatnonzero(row == own)
        out[i] = np.delete(row, hit[0])[:k] if hit.size else row[:k]
    return out


def recall_per_query(found: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """(nq,) |found ∩ truth| / k for (nq, k) id tables (-1 never counts)."""
    k = truth.shape[1]
    hits = [len(np.intersect1d(f[f >= 0], t[t >= 0])) for f, t in zip(found, truth, strict=True)]
    return np.asarray(hits, dtype=np.float64) / k


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean over queries of |found ∩ truth| / k."""
    return float(recall_per_query(found, truth).mean())


# ---------------------------------------------------------------------------------------------------------------
# Search.


def search(
    index: faiss.Index,
    info: IndexInfo,
    queries: np.ndarray,
    k: int,
    *,
    selector: faiss.IDSelector | None = None,
    nprobe: int | None = None,
    gpu: bool = False,
    fetch: rerank.Fetch | None = None,
    batched: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """(scores (nq, k) float32, ids (nq, k) int64) for unit `queries` (nq, d); -1 ids where fewer than k exist.

    Parameters go with this call only. `selector` restricts the search to some ids (CPU only). `gpu` says
    `index` lives on a GPU, where the HNSW quantizer parameters do not apply. An index tuned with re-ranking
    (`info.rerank`) needs `fetch` (ids -> full vectors): its `info.rerank * k` candidates are ranked exactly.
    Batches of `batch.BATCH_MIN` queries or more over Flat lists scan each probed list once (`batch.py`) unless
    `batched` is False.
    """
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if index.ntotal == 0 or k <= 0:
        return np.full((len(queries), max(k, 0)), -np.inf, np.float32), np.full((len(queries), max(k, 0)), -1)
    if info.kind == "flat":
        params = faiss.SearchParameters(sel=selector) if selector is not None else None
    else:
        probe = min(nprobe or info.nprobe or 1, info.nlist)
        if batched and not gpu and selector is None and len(queries) >= batch.BATCH_MIN and batch.flat_lists(index):
            return batch.search(index, queries, k, probe)
        kwargs = {"nprobe": probe, "sel": selector} if selector is not None else {"nprobe": probe}
        if not gpu:
            kwargs["quantizer_params"] = faiss.SearchParametersHNSW(efSearch=ef_for(probe))
        params = faiss.SearchParametersIVF(**kwargs)

    if info.rerank:
        if fetch is None:
            raise IndexingError("this index re-ranks its candidates: pass `fetch` (the stored vectors)")
        _, candidates = index.search(queries, info.rerank * k, params=params)
        return rerank.refine(queries, candidates, fetch, k)
    return index.search(queries, k, params=params)


def selector_for(ids: np.ndarray) -> faiss.IDSelector:
    """An id selector (hash set with a Bloom filter in front) over sorted or unsorted int64 ids."""
    return faiss.IDSelectorBatch(np.ascontiguousarray(ids, dtype=np.int64))


def index_ids(index: faiss.Index) -> np.ndarray:
    """Every id stored in `index` (IDMap2 or IVF), sorted."""
    if isinstance(index, faiss.IndexIDMap2 | faiss.IndexIDMap):
        return np.sort(faiss.vector_to_array(index.id_map))
    ivf = faiss.extract_index_ivf(index)
    lists = ivf.invlists
    parts = [faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)).copy() for i in range(ivf.nlist)]
    return np.sort(np.concatenate(parts)) if parts else np.empty(0, np.int64)


def retune_needed(info: IndexInfo, count: int) -> bool:
    """IVF tuning is redone when the collection changed by more than 10% since it was tuned."""
    return info.kind == "ivf" and abs(count - info.tuned_count) > 0.1 * max(info.tuned_count, 1)


def rebuild_needed(info: IndexInfo, count: int, d: int, cfg: IndexConfig) -> bool:
    """A flat index is rebuilt once the plan is no longer flat; an IVF one when the collection has doubled or
    halved since training (its centroids then describe another distribution of list sizes), or shrunk below the
    exact threshold."""
    chosen = plan(count, d, cfg)
    if info.kind == "flat":
        return chosen.kind != "flat"
    return chosen.kind == "flat" or not 0.5 * info.trained_count <= count <= 2 * info.trained_count


# IVF lists as OnDiskInvertedLists; a flat index's codes mapped. Not both: IFC wraps the file, and IVF then fails.
MMAP_FLAGS = {"ivf": faiss.IO_FLAG_MMAP, "flat": faiss.IO_FLAG_MMAP_IFC}
# A parallel build's lists are in a second file beside the index file (`indexing/parallel.py`), which faiss maps
# itself. The path it recorded is the version's temporary folder, so the index is read without mapping it, and the
# file beside the index is mapped, read-only (faiss would map it writable). Not IO_FLAG_ONDISK_SAME_DIR: it says so
# on stdout (which `vlm index search --json` writes to).
IVFDATA = "index.ivfdata"


def read(path: str, *, mmap: str | None = None) -> faiss.Index:
    """The index in `path`; with `mmap` (its kind, "ivf" or "flat"), its inverted lists or flat codes
    memory-mapped, read-only: opening reads only the small parts (centroids, HNSW graph, a flat index's ids). A
    memory-mapped index cannot be changed or cloned: a writer reads the file without `mmap` (lists kept in a
    separate file by a parallel build are then copied into memory, so that the writer's changes stay its own)."""
    lists_file = os.path.join(os.path.dirname(path), IVFDATA)
    ondisk = os.path.exists(lists_file)
    flags = faiss.IO_FLAG_SKIP_IVF_DATA | faiss.IO_FLAG_READ_ONLY if ondisk else MMAP_FLAGS[mmap] if mmap else 0
    try:
        index = faiss.read_index(path, flags)
        if ondisk:
            ivf = faiss.extract_index_ivf(index)
            mapped = faiss.downcast_InvertedLists(ivf.invlists)
            mapped.filename = lists_file
            mapped.do_mmap()
    except RuntimeError as e:
        raise IndexingError(f"cannot read the faiss index {path}: {e}") from e
    if ondisk and not mmap:
        lists = faiss.ArrayInvertedLists(ivf.nlist, ivf.code_size)
        ivf.invlists.copy_subset_to(lists, faiss.InvertedLists.SUBSET_TYPE_INVLIST, 0, ivf.nlist)
        ivf.replace_invlists(lists, True)
        lists.this.disown()  # now the index's
    return scan_lists_in_parallel(index)


def write(index: faiss.Index, path: str) -> None:
    faiss.write_index(index, path)
