"""indexing.gpu on the CPU: per-call parameters through replicas, serialised searches per copy, GPU feasibility,
and the CPU fallback. What only a GPU shows (copies, memory, speed) is measured by bench/gpu_check.sh."""

from __future__ import annotations

import logging
import threading
import time

import faiss
import numpy as np
import pytest

from indexing import faiss_index as fi
from indexing import gpu
from indexing.faiss_index import IndexInfo


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def ivf():
    rng = np.random.default_rng(0)
    vectors = unit(rng.standard_normal((3000, 16)))
    cfg = fi.IndexConfig(exact_threshold=100, nlist=32, tune_queries=200)
    index, info = fi.build(vectors, np.arange(3000, dtype=np.int64) * 3, cfg)
    return index, info, unit(rng.standard_normal((37, 16)))


def test_faiss_replicas_reject_parameters_and_ours_pass_them(ivf):
    index, info, queries = ivf
    params = faiss.SearchParametersIVF(nprobe=7)
    theirs = faiss.IndexReplicas()
    theirs.addIndex(index)
    with pytest.raises(RuntimeError, match="not supported"):
        theirs.search(queries, 5, params=params)  # what multi-GPU search hit on every IVF query

    ours = gpu.Replicas([faiss.clone_index(index), faiss.clone_index(index)])
    for nprobe in (1, 7, 32):  # the results change with nprobe, so each call's parameter must reach the copies
        want = fi.search(index, info, queries, 5, nprobe=nprobe)
        got = fi.search(ours, info, queries, 5, nprobe=nprobe)
        np.testing.assert_array_equal(got[1], want[1])
        np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
    one = fi.search(ours, info, queries[:1], 5, nprobe=7)  # fewer queries than copies: one copy answers
    np.testing.assert_array_equal(one[1], fi.search(index, info, queries[:1], 5, nprobe=7)[1])


class OverlapDetector:
    """A stand-in GPU index: records whether two searches were ever inside it at once."""

    d, ntotal = 4, 10

    def __init__(self):
        self.inside, self.overlapped, self.calls = 0, False, 0
        self.guard = threading.Lock()

    def search(self, queries, k, params=None):
        with self.guard:
            self.inside += 1
            self.calls += 1
            self.overlapped |= self.inside > 1
        time.sleep(0.01)  # the GIL is free here, as in faiss's search
        with self.guard:
            self.inside -= 1
        return np.zeros((len(queries), k), np.float32), np.zeros((len(queries), k), np.int64)


def _hammer(target, threads=8, calls=5, rows=1):
    def work():
        for _ in range(calls):
            target.search(np.zeros((rows, 4), np.float32), 3)

    pool = [threading.Thread(target=work) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()


def test_searches_never_overlap_on_one_copy():
    bare = OverlapDetector()
    _hammer(bare)
    assert bare.overlapped  # the detector sees overlap when nothing serialises the callers

    one = OverlapDetector()
    _hammer(gpu.Replicas([one]))
    assert not one.overlapped and one.calls == 40

    two = [OverlapDetector(), OverlapDetector()]
    _hammer(gpu.Replicas(two), rows=6)  # batches split over both copies
    assert not any(c.overlapped for c in two) and [c.calls for c in two] == [40, 40]


@pytest.mark.parametrize(
    ("factory", "d", "supported"),
    [
        ("IDMap2,Flat", 512, True),
        ("IVF4096_HNSW32,Flat", 512, True),
        ("IVF4096_HNSW32,SQ8", 512, True),
        ("IVF4096_HNSW32,PQ64x8", 512, True),  # 64 bytes, 8 dims each (float16 lookup tables)
        ("IVF4096_HNSW32,PQ32x8", 512, True),
        ("IVF4096_HNSW32,PQ128x8", 512, False),  # what the planner picks at ~10M vectors of d=512
        ("IVF4096_HNSW32,PQ256x8", 512, False),
        ("IVF4096_HNSW32,PQ16x4", 512, False),  # 4-bit codes
        ("IVF1024_HNSW32,PQ8x8", 384, False),  # 48 dims per sub-quantizer
        ("IVF4096_HNSW32,PQ512x4fs", 512, False),  # fast-scan: the CPU plan's compressed codes
    ],
)
def test_gpu_support(factory, d, supported):
    reason = gpu.gpu_support(factory, d)
    assert (reason is None) == supported
    if reason is not None:
        assert factory in reason and "GPU" in reason


def test_planner_choices_at_large_sizes_are_judged():
    """The default budget's plan for 10M vectors of d=512 is a PQ the GPU cannot hold; 1M fits."""
    cfg = fi.IndexConfig()
    assert gpu.gpu_support(fi.plan(10_000_000, 512, cfg).factory, 512) is not None
    assert gpu.gpu_support(fi.plan(1_000_000, 512, cfg).factory, 512) is None


def test_gpu_copy_falls_back_to_the_cpu_and_says_why(ivf, monkeypatch, caplog):
    index, info, _ = ivf
    assert gpu.gpu_copy(index, info, 16) is None  # no GPU here: no copy, no warning
    monkeypatch.setattr(gpu, "gpu_count", lambda: 1)
    with caplog.at_level(logging.WARNING, logger="indexing.gpu"):
        assert gpu.gpu_copy(index, IndexInfo(factory="IVF32_HNSW32,PQ128x8", kind="ivf"), 512) is None
    assert "searching on the CPU" in caplog.text and "128-byte PQ codes" in caplog.text

    def refuse(index, factory):
        raise RuntimeError("Error in GpuIndexIVF: out of memory\nmore")

    monkeypatch.setattr(gpu, "to_gpu", refuse)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="indexing.gpu"):
        assert gpu.gpu_copy(index, info, 16) is None
    assert "could not be copied to the GPU (Error in GpuIndexIVF: out of memory)" in caplog.text


def test_flat_quantizer_keeps_the_centroids(ivf):
    index, _, _ = ivf
    moved = gpu._flat_quantizer(index)
    q_before, q_after = faiss.extract_index_ivf(index).quantizer, faiss.extract_index_ivf(moved).quantizer
    assert isinstance(faiss.downcast_index(q_after), faiss.IndexFlat)
    np.testing.assert_array_equal(q_after.reconstruct_n(0, 32), q_before.reconstruct_n(0, 32))


def test_a_memory_mapped_version_goes_to_the_gpu_at_its_tuned_recall(tmp_path, monkeypatch):
    """A published version's lists are memory-mapped (`OnDiskInvertedLists`), which faiss cannot clone: the copy
    handed to `index_cpu_to_gpu` shares them, with an exact coarse quantizer over the same centroids. The GPU calls
    are faked (the CPU wheel has none): the copy they receive is searched as the GPU would search it, at the
    nprobe tuned on the CPU, and must reach the target recall on fresh queries."""
    d, n = 32, 8000
    rng = np.random.default_rng(5)
    centres = unit(rng.standard_normal((80, d)))
    data = unit(centres[rng.integers(0, 80, n + 300)] + rng.standard_normal((n + 300, d)) * 0.8 / np.sqrt(d))
    vectors, fresh = data[:n], data[n:]
    cfg = fi.IndexConfig(exact_threshold=1000, nlist=64, tune_queries=300, target_recall=0.95)
    index, info = fi.build(vectors, np.arange(n), cfg)
    fi.write(index, str(tmp_path / "index.faiss"))
    mapped = fi.read(str(tmp_path / "index.faiss"), mmap="ivf")  # as indexing.versions.load_version opens it
    with pytest.raises(RuntimeError, match="clone not supported"):
        faiss.clone_index(mapped)  # why the copy cannot simply be cloned

    received = []
    monkeypatch.setattr(gpu, "gpu_count", lambda: 1)
    monkeypatch.setattr(faiss, "StandardGpuResources", object, raising=False)
    monkeypatch.setattr(faiss, "GpuClonerOptions", lambda: type("Options", (), {})(), raising=False)
    monkeypatch.setattr(
        faiss, "index_cpu_to_gpu", lambda res, dev, idx, opt: received.append(idx) or idx, raising=False
    )
    replicas = gpu.gpu_copy(mapped, info, d)
    assert replicas is not None and len(received) == 1
    assert isinstance(faiss.downcast_index(faiss.extract_index_ivf(received[0]).quantizer), faiss.IndexFlat)

    _, found = fi.search(replicas, info, fresh, 10, gpu=True)
    truth = np.argsort(-(fresh @ vectors.T), axis=1)[:, :10]
    assert fi.recall_at_k(found, truth) >= cfg.target_recall
    _, every_list = fi.search(replicas, info, fresh[:20], 10, nprobe=info.nlist, gpu=True)
    np.testing.assert_array_equal(np.sort(every_list, axis=1), np.sort(truth[:20], axis=1))  # Flat: exact
    np.testing.assert_array_equal(fi.search(mapped, info, fresh, 10)[1], fi.search(index, info, fresh, 10)[1])
