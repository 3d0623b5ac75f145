"""indexing.faiss_index: exact search equals NumPy brute force; the approximate index reaches its recall target."""

from __future__ import annotations

import dataclasses

import faiss
import numpy as np
import pytest
from faiss.contrib.evaluation import check_ref_knn_with_draws

from indexing import batch, rerank
from indexing import faiss_index as fi
from indexing.errors import IndexingError


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def brute_force(queries: np.ndarray, vectors: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """NumPy reference: top-k inner products, ties broken by position."""
    scores = queries.astype(np.float64) @ vectors.astype(np.float64).T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1).astype(np.float32), ids[order]


def clustered(n: int, d: int, clusters: int, seed: int) -> np.ndarray:
    """Unit vectors around `clusters` random unit centres (noise norm ~0.8): a mixture on the sphere."""
    rng = np.random.default_rng(seed)
    centres = unit(rng.standard_normal((clusters, d)))
    labels = rng.integers(0, clusters, n)
    return unit(centres[labels] + rng.standard_normal((n, d)) * 0.8 / np.sqrt(d))


def test_exact_index_equals_numpy_brute_force():
    rng = np.random.default_rng(0)
    vectors = unit(rng.standard_normal((1003, 37)))
    vectors[500:510] = vectors[7]  # exact ties: ten copies of one vector
    ids = np.arange(1003, dtype=np.int64) * 7 + 3  # not positions
    index, info = fi.build(vectors, ids, fi.IndexConfig())
    assert info.kind == "flat"
    queries = np.concatenate([unit(rng.standard_normal((16, 37))), vectors[7:8]])  # 17: the last hits the ties
    scores, found = fi.search(index, info, queries, 13)
    ref_scores, ref_ids = brute_force(queries, vectors, ids, 13)
    check_ref_knn_with_draws(ref_scores, ref_ids, scores, found, rtol=1e-5)
    assert set(found[-1, :11]) == set(ids[[7, *range(500, 510)]])


def test_exact_index_with_selector_equals_brute_force_over_the_allowed_ids():
    rng = np.random.default_rng(1)
    vectors = unit(rng.standard_normal((500, 16)))
    ids = np.arange(500, dtype=np.int64)
    index, info = fi.build(vectors, ids, fi.IndexConfig())
    allowed = np.sort(rng.choice(500, 37, replace=False))
    queries = unit(rng.standard_normal((5, 16)))
    scores, found = fi.search(index, info, queries, 10, selector=fi.selector_for(allowed))
    ref_scores, ref_ids = brute_force(queries, vectors[allowed], allowed, 10)
    check_ref_knn_with_draws(ref_scores, ref_ids, scores, found)


def test_fewer_vectors_than_k_pads_with_minus_one():
    vectors = unit(np.random.default_rng(2).standard_normal((3, 8)))
    index, info = fi.build(vectors, np.array([5, 6, 7]), fi.IndexConfig())
    _, found = fi.search(index, info, vectors[:1], 5)
    assert sorted(found[0, :3]) == [5, 6, 7] and list(found[0, 3:]) == [-1, -1]
    empty, empty_info = fi.empty_index(8)
    _, found = fi.search(empty, empty_info, vectors, 4)
    assert found.shape == (3, 4) and (found == -1).all()


def test_plan_follows_size_and_memory_budget():
    cfg = fi.IndexConfig(exact_threshold=1000, memory_budget_gb=1.0)
    assert fi.plan(999, 512, cfg).kind == "flat"
    n, d, gb = 1_000_000, 512, 2**30
    nlist = fi.default_nlist(n)
    assert nlist == 2048  # 2 * sqrt(1e6) = 2000, nearest power of two
    fixed = nlist * (4 * d + 8 * 32)

    def codec(budget_gb: float, fast_scan: bool = False) -> str:
        cfg = fi.IndexConfig(exact_threshold=1000, memory_budget_gb=budget_gb, fast_scan=fast_scan)
        return fi.plan(n, d, cfg).factory.split(",")[1]

    table = 16  # compressed codes keep an id -> row table in memory to re-rank from the vectors on disk
    assert codec((fixed + n * (4 * d + 8)) / gb) == "Flat"  # exactly fits
    assert codec((fixed + n * (4 * d + 8)) / gb - 0.01) == "SQ8"
    assert codec((fixed + n * (d + 8 + table)) / gb - 0.01) == "PQ256x8"
    assert codec((fixed + n * (32 + 8 + table)) / gb) == "PQ32x8"
    smallest = f"{(fixed + n * (32 + 8 + table)) / gb:.3g}"  # the error names the smallest feasible budget
    with pytest.raises(IndexingError, match=f"need at least {smallest} GB even as PQ32x8"):
        codec((fixed + n * (32 + 8 + table)) / gb - 0.01)

    # Re-ranked codes on the CPU: 4-bit fast-scan PQ, d/2 bytes down to d/16, each list's last block of 32 padded.
    def fast(code_bytes: int) -> float:
        return (fixed + nlist * 32 * code_bytes + n * (code_bytes + 8 + table)) / gb

    assert codec((fixed + n * (4 * d + 8)) / gb, fast_scan=True) == "Flat"
    assert codec((fixed + n * (4 * d + 8)) / gb - 0.01, fast_scan=True) == "PQ512x4fs"
    assert codec(fast(256) - 0.01, fast_scan=True) == "PQ256x4fs"
    assert codec(fast(32), fast_scan=True) == "PQ64x4fs"
    with pytest.raises(IndexingError, match=f"need at least {fast(32):.3g} GB even as PQ64x4fs"):
        codec(fast(32) - 0.01, fast_scan=True)
    # The default: fast-scan unless faiss sees a GPU (which has no kernel for it); never without re-ranking.
    default = fi.plan(n, d, fi.IndexConfig(exact_threshold=1000, memory_budget_gb=0.5)).factory
    assert default.endswith("x4fs") == (fi.gpu_count() == 0)
    chosen = fi.plan(n, d, fi.IndexConfig(exact_threshold=1000, memory_budget_gb=0.5, fast_scan=False))
    assert chosen.rerank and chosen.ram_bytes == fixed + n * (chosen.code_bytes + 8 + table) <= 0.5 * gb
    assert chosen.disk_bytes == n * (8 + 4 * d)  # the full vectors, read only to re-rank
    no_rerank = fi.plan(n, d, fi.IndexConfig(exact_threshold=1000, memory_budget_gb=0.5, rerank=False, fast_scan=True))
    assert not no_rerank.rerank and no_rerank.ram_bytes == fixed + n * (no_rerank.code_bytes + 8)
    assert "fs" not in no_rerank.factory


def test_approximate_index_reaches_target_recall_on_fresh_queries():
    d = 64
    data = clustered(20_000 + 500, d, clusters=200, seed=3)
    vectors, queries = data[:20_000], data[20_000:]  # queries never seen by tuning
    ids = np.arange(len(vectors), dtype=np.int64) * 3
    cfg = fi.IndexConfig(exact_threshold=1000, target_recall=0.95)
    index, info = fi.build(vectors, ids, cfg)
    assert info.kind == "ivf" and info.factory.startswith("IVF256_HNSW32")
    assert 1 <= info.nprobe < info.nlist and info.recall_at_10 >= 0.95
    _, found = fi.search(index, info, queries, 10)
    _, truth = brute_force(queries, vectors, ids, 10)
    hits = [len(set(f) & set(t)) for f, t in zip(found, truth, strict=True)]
    assert np.mean(hits) / 10 >= 0.95
    # Probing every list is exact for Flat codes, and the call's nprobe does not stick to the shared index.
    _, all_lists = fi.search(index, info, queries[:50], 10, nprobe=info.nlist)
    assert np.array_equal(np.sort(all_lists, axis=1), np.sort(truth[:50], axis=1))
    assert faiss.extract_index_ivf(index).nprobe == 1  # faiss's default, untouched


def test_tuning_picks_the_smallest_nprobe_that_reaches_the_target():
    d = 32
    vectors = clustered(6000, d, clusters=60, seed=4)
    ids = np.arange(6000, dtype=np.int64)
    cfg = fi.IndexConfig(exact_threshold=100, target_recall=0.9, tune_queries=400)
    index, info = fi.build(vectors, ids, cfg)
    tuned = fi.tune(index, vectors, ids, cfg)  # queries drawn from all vectors (build draws outside its sample)
    rng = np.random.default_rng(cfg.seed + 1)
    pick = np.sort(rng.choice(6000, 400, replace=False))
    _, truth = brute_force(vectors[pick], vectors, ids, 11)
    truth = fi.drop_self(truth, ids[pick], 10)

    def lower_bound(nprobe: int) -> float:  # measured independently of `tune`, the same way
        _, found = fi.search(index, info, vectors[pick], 11, nprobe=nprobe, batched=False)
        per_query = fi.recall_per_query(fi.drop_self(found, ids[pick], 10), truth)
        return per_query.mean() - 2 * per_query.std() / np.sqrt(400)

    assert lower_bound(tuned.nprobe) >= 0.9
    assert tuned.nprobe == 1 or lower_bound(tuned.nprobe - 1) < 0.9


def test_ivf_removal_and_index_ids():
    vectors = clustered(3000, 16, clusters=20, seed=5)
    ids = np.arange(3000, dtype=np.int64) + 10_000
    index, info = fi.build(vectors, ids, fi.IndexConfig(exact_threshold=100, tune_queries=200))
    assert np.array_equal(fi.index_ids(index), ids)
    gone = ids[::3]
    index.remove_ids(fi.selector_for(gone))
    assert np.array_equal(fi.index_ids(index), np.setdiff1d(ids, gone))
    _, found = fi.search(index, info, vectors[:20], 10, nprobe=info.nlist)
    assert not np.isin(found, gone).any()


def test_recall_helpers_against_hand_computed_values():
    truth = np.array([[1, 2, 3], [4, 5, 6]])
    found = np.array([[3, 9, 1], [-1, -1, 4]])
    assert fi.recall_at_k(found, truth) == pytest.approx((2 / 3 + 1 / 3) / 2)
    assert fi.drop_self(np.array([[7, 1, 2], [1, 2, 3]]), np.array([7, 9]), 2).tolist() == [[1, 2], [1, 2]]


def test_gpu_path_not_taken_without_a_gpu():
    if fi.gpu_count():
        pytest.skip("a GPU is visible: the GPU path is taken here")
    assert not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() == 0


@pytest.mark.parametrize("codec", ["Flat", "PQ"])
def test_ivf_training_gives_faiss_own_centroids_and_owns_no_clustering_index(codec):
    """k-means runs through `faiss.Kmeans` (which frees its GPU assignment index); the centroids equal those of
    faiss's own IVF training with the same parameters, and the IVF keeps no `clustering_index` (a GPU one given to
    it was never freed)."""
    vectors = clustered(3000, 32, 20, seed=4)
    ids = np.arange(3000, dtype=np.int64)
    budget = 1e-4 if codec != "Flat" else 4.0
    cfg = fi.IndexConfig(exact_threshold=100, nlist=16, memory_budget_gb=budget, fast_scan=False)
    index, info = fi.build(vectors, ids, cfg)
    assert info.factory.split(",")[1].startswith(codec)
    ivf = faiss.extract_index_ivf(index)
    assert ivf.clustering_index is None

    reference = faiss.index_factory(32, info.factory, fi.METRIC)
    ref_ivf = faiss.extract_index_ivf(reference)
    ref_ivf.cp.niter, ref_ivf.cp.seed, ref_ivf.cp.spherical = cfg.kmeans_iters, cfg.seed, True
    ref_ivf.cp.max_points_per_centroid = max(cfg.train_per_list, 39)
    ref_ivf.clustering_index = faiss.IndexFlatL2(32)  # the old path, on the CPU where owning it is harmless
    if codec == "PQ":
        faiss.downcast_index(ref_ivf).do_polysemous_training = False  # slow, and no part of the centroids
    rows = np.sort(np.random.default_rng(cfg.seed).choice(3000, cfg.train_per_list * 16, replace=False))
    reference.train(vectors[rows])
    np.testing.assert_allclose(
        ivf.quantizer.reconstruct_n(0, 16), ref_ivf.quantizer.reconstruct_n(0, 16), rtol=0, atol=1e-6
    )


def test_refine_ranks_candidates_exactly():
    rng = np.random.default_rng(8)
    vectors = unit(rng.standard_normal((300, 24)))
    ids = rng.permutation(300).astype(np.int64) * 5 + 1  # any order, not positions
    queries = unit(rng.standard_normal((7, 24)))
    candidates = np.stack([rng.choice(ids, 40, replace=False) for _ in range(7)])
    candidates[3, 5:] = -1  # a query with only five candidates
    scores, found = rerank.refine(queries, candidates, rerank.array_fetch(vectors, ids), 10)
    for q in range(7):
        own = candidates[q][candidates[q] >= 0]
        rows = [int(np.flatnonzero(ids == i)[0]) for i in own]
        ref_scores, ref_ids = brute_force(queries[q : q + 1], vectors[rows], own, min(10, len(own)))
        check_ref_knn_with_draws(ref_scores, ref_ids, scores[q : q + 1, : len(own)], found[q : q + 1, : len(own)])
    assert list(found[3, 5:]) == [-1] * 5 and np.isneginf(scores[3, 5:]).all()


def mixture_for_compressed_codes():
    """(d, n, nlist, vectors, queries, ids, fetch): 10,000 mixture vectors of d = 32 under odd ids, 500 fresh
    queries, and a fetch of the full vectors for re-ranking."""
    d, n = 32, 10_000
    data = clustered(n + 500, d, clusters=100, seed=9)
    vectors, queries = data[:n], data[n:]
    ids = np.arange(n, dtype=np.int64) * 2 + 1
    fetch = rerank.array_fetch(vectors, ids)
    nlist = fi.default_nlist(n)
    return d, n, nlist, vectors, queries, ids, fetch


def test_fast_scan_plan_reaches_the_target_recall_on_fresh_queries():
    """Where Flat codes do not fit, the CPU plan's 4-bit fast-scan codes rank far below the target alone; the tuned
    number of candidates re-ranked from the full vectors reaches it on queries tuning never saw, and a search with
    an id selector stays inside it."""
    d, n, nlist, vectors, queries, ids, fetch = mixture_for_compressed_codes()
    budget_gb = (nlist * (4 * d + 8 * 32) + n * (4 * d + 8)) / 2**30 - 1e-6  # Flat just does not fit
    cfg = fi.IndexConfig(
        exact_threshold=1000, target_recall=0.95, memory_budget_gb=budget_gb, tune_queries=500, fast_scan=True
    )
    index, info = fi.build(vectors, ids, cfg)
    assert info.factory == f"IVF{nlist}_HNSW32,PQ32x4fs" and fi.fast_scan(index) and info.rerank >= 1
    _, truth = brute_force(queries, vectors, ids, 10)
    _, found = fi.search(index, info, queries, 10, fetch=fetch)
    assert fi.recall_at_k(found, truth) >= 0.95
    _, by_codes = fi.search(index, dataclasses.replace(info, rerank=0), queries, 10)
    assert fi.recall_at_k(by_codes, truth) < 0.9
    allowed = ids[::4]
    _, kept = fi.search(index, info, queries, 10, fetch=fetch, selector=fi.selector_for(allowed))
    assert np.isin(kept[kept >= 0], allowed).all()
    _, truth_kept = brute_force(queries, vectors[::4], allowed, 10)
    assert fi.recall_at_k(kept, truth_kept) >= 0.9


def test_pq_plan_reaches_the_target_recall_on_fresh_queries():
    """The memory budget forces PQ8 codes, which alone rank far below the target; re-ranking the tuned number of
    candidates from the full vectors reaches it on queries tuning never saw."""
    d, n, nlist, vectors, queries, ids, fetch = mixture_for_compressed_codes()
    budget_gb = (nlist * (4 * d + 8 * 32) + n * (4 + 8 + fi.LOOKUP_BYTES)) / 2**30  # PQ4x8 exactly fits
    cfg = fi.IndexConfig(
        exact_threshold=1000, target_recall=0.95, memory_budget_gb=budget_gb, tune_queries=500, fast_scan=False
    )
    index, info = fi.build(vectors, ids, cfg)
    assert info.factory == f"IVF{nlist}_HNSW32,PQ4x8" and 1 <= info.rerank <= cfg.rerank_max_factor
    assert info.recall_at_10 >= 0.95
    _, truth = brute_force(queries, vectors, ids, 10)
    _, found = fi.search(index, info, queries, 10, fetch=fetch)
    assert fi.recall_at_k(found, truth) >= 0.95
    codes_only = dataclasses.replace(info, rerank=0)
    _, by_codes = fi.search(index, codes_only, queries, 10)
    assert fi.recall_at_k(by_codes, truth) < 0.9  # what the collection served before re-ranking
    with pytest.raises(IndexingError, match="fetch"):
        fi.search(index, info, queries, 10)  # a re-ranking index never silently serves its codes
    # The tuned factor is the smallest that reaches the target at the tuned nprobe, measured independently.
    tuned = fi.tune(index, vectors, ids, cfg)  # queries drawn from all vectors, as in the nprobe test above
    pick = np.sort(np.random.default_rng(cfg.seed + 1).choice(n, cfg.tune_queries, replace=False))
    _, truth = brute_force(vectors[pick], vectors, ids, 11)
    truth = fi.drop_self(truth, ids[pick], 10)

    def lower_bound(factor: int) -> float:
        _, found = fi.search(
            index, dataclasses.replace(info, rerank=factor), vectors[pick], 11, nprobe=tuned.nprobe, fetch=fetch
        )
        per_query = fi.recall_per_query(fi.drop_self(found, ids[pick], 10), truth)
        return per_query.mean() - 2 * per_query.std() / np.sqrt(len(pick))

    assert lower_bound(tuned.rerank) >= 0.95
    assert tuned.rerank == 1 or lower_bound(tuned.rerank - 1) < 0.95


def test_batched_scan_equals_brute_force_over_the_probed_lists(monkeypatch):
    """A batch scans each probed list once; its results are the exact top-k over the members of each query's
    `nprobe` nearest lists (computed here from the centroids and list memberships, not through faiss's search)."""
    vectors = clustered(4000, 16, clusters=40, seed=10)
    ids = np.arange(4000, dtype=np.int64) * 3 + 2
    index, info = fi.build(vectors, ids, fi.IndexConfig(exact_threshold=100, nlist=32, tune_queries=200))
    queries = clustered(batch.BATCH_MIN + 36, 16, clusters=40, seed=11)
    ivf = faiss.extract_index_ivf(index)
    centroids = ivf.quantizer.reconstruct_n(0, 32)
    members = [faiss.rev_swig_ptr(ivf.invlists.get_ids(i), ivf.invlists.list_size(i)).copy() for i in range(32)]
    position = {int(i): row for row, i in enumerate(ids)}
    monkeypatch.setattr(batch, "BLOCK_RESULTS", 4 * 10 * 7)  # blocks of 7 queries: the last one shorter
    scores, found = fi.search(index, info, queries, 10, nprobe=4)
    for q in range(len(queries)):
        probed = np.argsort(-(centroids @ queries[q]), kind="stable")[:4]
        allowed = np.sort(np.concatenate([members[p] for p in probed]))
        rows = [position[int(i)] for i in allowed]
        ref_scores, ref_ids = brute_force(queries[q : q + 1], vectors[rows], allowed, 10)
        check_ref_knn_with_draws(ref_scores, ref_ids, scores[q : q + 1], found[q : q + 1], rtol=1e-5)


def test_built_and_read_indexes_scan_a_querys_lists_on_every_thread_with_faiss_default_results(tmp_path):
    """`build` and `read` (plain and memory-mapped) set faiss's list-parallel mode, which faiss does not save; a
    single query's results, with and without an id selector, equal those of faiss's default per-query mode."""
    vectors = clustered(4000, 16, clusters=40, seed=12)
    ids = np.arange(4000, dtype=np.int64) * 5 + 1
    cfg = fi.IndexConfig(exact_threshold=100, nlist=32, rerank=False)
    index, info = fi.build(vectors, ids, cfg)
    fi.write(index, str(tmp_path / "index.faiss"))
    queries = clustered(6, 16, clusters=40, seed=13)
    allowed = fi.selector_for(ids[::3])
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(4)  # the lists really are shared out, whatever the machine (or OMP_NUM_THREADS) has
    try:
        _compare_modes(index, info, tmp_path / "index.faiss", queries, allowed, ids[::3])
    finally:
        faiss.omp_set_num_threads(threads)


def _compare_modes(index, info, path, queries, allowed, allowed_ids):
    for opened in (index, fi.read(str(path)), fi.read(str(path), mmap="ivf")):
        assert faiss.extract_index_ivf(opened).parallel_mode == 1
        default = faiss.clone_index(opened) if opened is index else fi.read(str(path))
        faiss.extract_index_ivf(default).parallel_mode = 0
        for selector in (None, allowed):
            for q in range(len(queries)):
                one = queries[q : q + 1]
                scores, found = fi.search(opened, info, one, 10, nprobe=11, selector=selector)
                ref = fi.search(default, info, one, 10, nprobe=11, selector=selector)
                check_ref_knn_with_draws(*ref, scores, found, rtol=1e-5)
                if selector is not None:
                    assert np.isin(found[found >= 0], allowed_ids).all()
