"""indexing.collection, what is FAISS-only: the single writer's lock, IVF filtered search, re-ranking, memory-mapped
opens, index lifecycle, thread safety while versions are published, crash safety (in-process faults and SIGKILL at
random points). What every backend does (round trips, filters, duplicates, model mismatch, sync, lookups):
tests/test_collection_api.py, run against FAISS and Milvus. Text queries on a trained model: test_index_colour.py."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from collection_backends import (  # noqa: F401 (fixtures)
    FAST,
    brute_force,
    image_files,
    model_dir_fixture,
    reference_vectors,
    shape_vectors_fixture,
    shapes_fixture,
)
from faiss.contrib.evaluation import check_ref_knn_with_draws

from indexing import collection as collection_module
from indexing import commit, versions
from indexing.backend import Change
from indexing.collection import Collection
from indexing.errors import IndexingError
from indexing.faiss_index import IndexConfig
from indexing.store import Filter, ImageRecord

ROOT = Path(__file__).resolve().parents[1]


def test_read_only_and_single_writer(tmp_path, tiny_encoders):
    writer = Collection.create(tmp_path / "c", tiny_encoders)
    with pytest.raises(IndexingError, match="another writer"):
        Collection.open(tmp_path / "c", read_only=False, encoders=tiny_encoders)
    reader = Collection.open(tmp_path / "c", encoders=tiny_encoders)
    with pytest.raises(IndexingError, match="read-only"):
        reader.remove(ids=[1])
    writer.close()
    Collection.open(tmp_path / "c", read_only=False, encoders=tiny_encoders).close()
    with pytest.raises(IndexingError, match="already holds"):
        Collection.create(tmp_path / "c", tiny_encoders)
    with pytest.raises(IndexingError, match="not a collection"):
        Collection.open(tmp_path)


def test_filtered_search_through_an_ivf_index_equals_brute_force(tmp_path, shapes, tiny_encoders, shape_vectors):
    """The IVF paths (exact over few allowed vectors, else a selector with nprobe raised); the exact index's:
    tests/test_collection_api.py."""
    cfg = IndexConfig(exact_threshold=40, exact_filter_limit=30, tune_queries=100)
    coll = Collection.create(tmp_path / "c", tiny_encoders, root=shapes, index=cfg)
    coll.add(shapes / "pairs.csv", embed=FAST, progress=False)
    assert coll.stats().index.kind == "ivf"
    vectors = shape_vectors
    captions = {r.id: r.caption for r in coll.records(range(150)).values()}
    queries = tiny_encoders.encode_text(["a red circle", "a green cross"]).numpy()
    for where in [Filter(path_prefix="images/00001"), Filter(caption_contains="RED"), Filter(path_contains="0")]:
        allowed = np.array(
            [
                i
                for i in range(150)
                if (not where.path_prefix or f"images/{i:06d}.png".startswith(where.path_prefix))
                and (not where.path_contains or where.path_contains in f"images/{i:06d}.png")
                and (not where.caption_contains or "red" in captions[i].lower())
            ]
        )
        hits = coll.search_vector(queries, k=8, filters=where, nprobe=coll.stats().index.nlist or None)
        check_ref_knn_with_draws(*brute_force(queries, vectors[allowed], allowed, 8), hits.scores, hits.ids, rtol=1e-4)
    none = coll.search_vector(queries, k=3, filters=Filter(path_prefix="nothing/"))
    assert (none.ids == -1).all() and np.isneginf(none.scores).all() and none.records == [[], []]


@pytest.mark.parametrize("fast_scan", [False, True])
def test_compressed_codes_are_reranked_from_the_stored_vectors(
    tmp_path, shapes, tiny_encoders, shape_vectors, fast_scan
):
    """A budget that SQ8 codes (or, on the CPU's ladder, fast-scan PQ codes) fit, Flat not: searches (plain,
    through a filter's selector, after reopening) return exact inner products read from the chunks, and the true
    neighbours."""
    d, nlist = shape_vectors.shape[1], 16
    budget = (nlist * (4 * d + 8 * 32) + 150 * (d + 8 + 16)) / 2**30  # SQ8 codes and the re-ranking table fit
    cfg = IndexConfig(
        exact_threshold=40, nlist=nlist, memory_budget_gb=budget, tune_queries=100, exact_filter_limit=30,
        fast_scan=fast_scan,
    )  # fmt: skip
    coll = Collection.create(tmp_path / "c", tiny_encoders, root=shapes, index=cfg)
    coll.add(shapes / "pairs.csv", embed=FAST, progress=False)
    info = coll.stats().index
    assert info.factory.endswith("x4fs" if fast_scan else ",SQ8") and info.rerank >= 1
    queries = tiny_encoders.encode_text(["a red circle", "a green cross", "a blue square"]).numpy()
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    truth = brute_force(queries, shape_vectors, np.arange(150), 8)[1]
    for searcher in (coll, Collection.open(tmp_path / "c")):
        for where in (None, Filter(path_contains="0")):  # every path has a 0: 150 > 30, the selector path
            hits = searcher.search_vector(queries, k=8, filters=where, nprobe=nlist)
            exact = np.einsum("qd,qkd->qk", queries, shape_vectors[hits.ids])
            np.testing.assert_allclose(hits.scores, exact, rtol=0, atol=2e-5)  # the codes' scores are off ~1e-3
            assert np.mean([len(set(f) & set(t)) for f, t in zip(hits.ids, truth, strict=True)]) / 8 >= 0.9


def bytes_read() -> int:
    """Bytes this process has read through read()/pread() (/proc/self/io): memory-mapped pages are not counted."""
    return int(next(x for x in Path("/proc/self/io").read_text().splitlines() if x.startswith("rchar:")).split()[1])


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="counts bytes read through Linux /proc/self/io")
def test_a_collection_opens_without_reading_its_lists_or_vectors(tmp_path, tiny_encoders):
    """The index's inverted lists and the chunks are memory-mapped: opening reads a small part of the files, and
    the opened collection searches as exactly as brute force over every list; a writer still updates it."""
    n, d = 8000, tiny_encoders.embed_dim
    vectors = np.random.default_rng(0).standard_normal((n, d)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    cfg = IndexConfig(exact_threshold=1000, tune_queries=200)
    writer = Collection.create(tmp_path / "c", tiny_encoders, index=cfg)
    records = [
        ImageRecord(
            id=i, path=f"{i}.png", kind="file", ref=None, caption=None, sha256=f"{i:064x}", size=1, mtime=0.0, added=0.0
        )
        for i in range(n)
    ]
    writer.commit(Change(records, vectors))
    info = writer.stats().index
    assert info.kind == "ivf"
    folder = tmp_path / "c" / (tmp_path / "c" / "CURRENT").read_text().strip()
    mapped = (folder / "index.faiss").stat().st_size + sum(p.stat().st_size for p in (tmp_path / "c").rglob("*.npy"))
    before = bytes_read()
    reader = Collection.open(tmp_path / "c")
    # The index file and the chunks, half of it each here, are mapped, not read; the store's open probe reads one
    # row's pages (indexing/store.py; a row count read 676 KB of its 1.5 MB here).
    assert bytes_read() - before < 0.05 * (mapped + (folder / "meta.sqlite").stat().st_size)
    ids = np.arange(n)
    hits = reader.search_vector(vectors[:5], k=10, nprobe=info.nlist)
    check_ref_knn_with_draws(*brute_force(vectors[:5], vectors, ids, 10), hits.scores, hits.ids, rtol=1e-4)
    writer.remove(ids=list(range(0, n, 2)))  # the writer's update reads the file; readers keep their mapping
    assert reader.refresh() and reader.stats().count == n // 2
    reader.verify()
    hits = reader.search_vector(vectors[:5], k=10, nprobe=info.nlist)
    check_ref_knn_with_draws(*brute_force(vectors[:5], vectors[1::2], ids[1::2], 10), hits.scores, hits.ids, rtol=1e-4)


def test_approximate_index_lifecycle(tmp_path, shapes, tiny_encoders, shape_vectors, monkeypatch):
    monkeypatch.setattr(commit, "COMPACT_MIN_DEAD", 0)
    cfg = IndexConfig(exact_threshold=100, tune_queries=100)
    coll = Collection.create(tmp_path / "c", tiny_encoders, root=shapes, index=cfg, dtype="float16")
    coll.add([shapes / "images" / f"{i:06d}.png" for i in range(60)], embed=FAST, progress=False)
    assert coll.stats().index.kind == "flat"
    coll.add(shapes / "images", embed=FAST, progress=False)  # 150 >= 100: rebuilt as IVF
    info = coll.stats().index
    assert info.kind == "ivf" and info.trained_count == 150 and info.nprobe >= 1
    coll.remove(ids=list(range(0, 150, 10)))  # 135 left: incremental removal, same trained index
    assert coll.stats().index.trained_count == 150
    coll.verify()
    vectors = shape_vectors.astype(np.float16).astype(np.float32)
    keep = np.setdiff1d(np.arange(150), np.arange(0, 150, 10))
    queries = tiny_encoders.encode_text(["a yellow star"]).numpy()
    hits = coll.search_vector(queries, k=10, nprobe=info.nlist)  # all lists: exact over the fp16 vectors
    check_ref_knn_with_draws(*brute_force(queries, vectors[keep], keep, 10), hits.scores, hits.ids, rtol=1e-3)
    coll.remove(ids=keep[:100].tolist())  # 35 left, below the threshold: back to exact
    assert coll.stats().index.kind == "flat" and coll.stats().count == 35
    assert coll.stats().chunk_rows == 35  # most stored vectors were dead: compacted
    coll.verify()
    assert collection_module.faiss_index.gpu_count() or coll._v.gpu_index is None


def test_concurrent_searches_equal_sequential_ones_while_a_writer_publishes(tmp_path, shapes, tiny_encoders):
    writer = Collection.create(tmp_path / "c", tiny_encoders, root=shapes)
    writer.add([shapes / "images" / f"{i:06d}.png" for i in range(100)], embed=FAST, progress=False)
    reader = Collection.open(tmp_path / "c", encoders=tiny_encoders)
    texts = [f"a {c} {s}" for c in ("red", "blue", "green", "white") for s in ("circle", "square", "star")]
    queries = tiny_encoders.encode_text(texts).numpy()
    where = Filter(path_contains="1")
    expected = [reader.search_vector(q, k=7).ids for q in queries]
    expected_filtered = [reader.search_vector(q, k=7, filters=where).ids for q in queries]
    errors, outcomes = [], []

    def searcher(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(40):
                i = rng.randrange(len(queries))
                if rng.random() < 0.5:
                    outcomes.append(np.array_equal(reader.search_vector(queries[i], k=7).ids, expected[i]))
                else:
                    got = reader.search_vector(queries[i], k=7, filters=where).ids
                    outcomes.append(np.array_equal(got, expected_filtered[i]))
                assert (writer.search_vector(queries[i], k=7).ids >= 0).all()  # the writer's own snapshot
        except Exception as e:  # re-raised below: an exception in a thread would otherwise vanish
            errors.append(e)

    threads = [threading.Thread(target=searcher, args=(s,)) for s in range(6)]
    for t in threads:
        t.start()
    # Meanwhile the writer publishes four versions; the reader's own version folder is deleted under it.
    for _ in range(2):
        added = writer.add([shapes / "images" / f"{i:06d}.png" for i in range(100, 150)], embed=FAST, progress=False)
        writer.remove(ids=added.ids.tolist())
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert len(outcomes) == 240 and all(outcomes)
    assert not (tmp_path / "c" / "v000001").exists()
    assert reader.refresh() and reader.stats().version == writer.stats().version == 5
    assert reader.stats().count == 100


def test_a_failed_commit_leaves_the_previous_version_and_the_next_writer_cleans_up(
    tmp_path, shapes, tiny_encoders, monkeypatch
):
    inputs = [shapes / "images" / f"{i:06d}.png" for i in range(40)]
    clean = Collection.create(tmp_path / "clean", tiny_encoders, root=shapes)
    clean.add(inputs, embed=FAST, progress=False)
    coll = Collection.create(tmp_path / "c", tiny_encoders, root=shapes)
    coll.add(inputs[:10], embed=FAST, progress=False)
    coll.close()

    def boom(*args, **kwargs):
        raise OSError("disk full (injected)")

    # Fail while moving the version folder into place, then after it is in place but before CURRENT names it.
    for step in ("publish_dir", "set_current"):
        coll = Collection.open(tmp_path / "c", read_only=False, encoders=tiny_encoders)
        with monkeypatch.context() as patch:
            patch.setattr(versions, step, boom)
            with pytest.raises(OSError, match="injected"):
                coll.add(inputs, embed=FAST, progress=False)
        coll.close()
        reader = Collection.open(tmp_path / "c", encoders=tiny_encoders)
        assert reader.stats().version == 1 and reader.stats().count == 10
        reader.verify()
        assert (tmp_path / "c" / "staging" / "shard_00001.npz").exists()  # embedded work is kept for the retry
    assert (tmp_path / "c" / "v000002").exists()  # complete, but never named by CURRENT
    coll = Collection.open(tmp_path / "c", read_only=False, encoders=tiny_encoders)  # clears the debris
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == [
        "CURRENT",
        "LOCK",
        "chunks",
        "staging",
        "v000000",
        "v000001",
    ]
    coll.add(inputs, embed=FAST, progress=False)
    assert_same_collection(tmp_path / "c", tmp_path / "clean")
    assert not (tmp_path / "c" / "staging").exists()


def test_a_create_that_failed_half_way_can_be_done_again(tmp_path, tiny_encoders, monkeypatch):
    with monkeypatch.context() as patch:
        patch.setattr(versions, "set_current", lambda *a: (_ for _ in ()).throw(OSError("injected")))
        with pytest.raises(OSError, match="injected"):
            Collection.create(tmp_path / "c", tiny_encoders)
    assert (tmp_path / "c" / "v000000").exists() and not (tmp_path / "c" / "CURRENT").exists()
    Collection.create(tmp_path / "c", tiny_encoders).close()
    assert Collection.open(tmp_path / "c").stats().version == 0
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(IndexingError, match="not empty"):
        Collection.create(tmp_path / "other", tiny_encoders)


def assert_same_collection(a: Path, b: Path) -> None:
    ca, cb = Collection.open(a), Collection.open(b)
    ca.verify()
    cb.verify()
    ids = ca._v.store.ids()
    assert np.array_equal(ids, cb._v.store.ids())
    ra, rb = ca.records(ids.tolist()), cb.records(ids.tolist())
    assert [(r.path, r.sha256, r.caption) for r in ra.values()] == [(r.path, r.sha256, r.caption) for r in rb.values()]
    np.testing.assert_allclose(ca._v.vectors.get(ids), cb._v.vectors.get(ids), atol=1e-6)
    assert ca.stats().index.factory == cb.stats().index.factory


BUILD_SCRIPT = """
import sys
from indexing.collection import Collection
from indexing.embed import EmbedConfig
from indexing.faiss_index import IndexConfig
from vlm import models


def build(path, data, encoders):
    coll = Collection.create(path, encoders, root=data, index=IndexConfig(exact_threshold=100, tune_queries=60),
                             exist_ok=True)
    cfg = EmbedConfig(batch_size=8, workers=1, shard_size=16)
    coll.add(data + "/first.csv", embed=cfg, progress=False)      # 90 images: exact index
    coll.add(data + "/pairs.csv", embed=cfg, progress=False)      # 60 more, with captions: rebuilt as IVF
    coll.close()


if __name__ == "__main__":
    import time

    encoders = models.load(sys.argv[4], device="cpu")
    start = time.perf_counter()
    build(sys.argv[1], sys.argv[3], encoders)  # uninterrupted, to time it
    print("ready", time.perf_counter() - start, flush=True)
    build(sys.argv[2], sys.argv[3], encoders)  # killed at a random moment
    print("done", flush=True)
"""


def kill_mid_build(cmd: list[str], env: dict[str, str], seed: int) -> tuple[float, bool]:
    """Run the script: once straight (timed), then again, SIGKILLed (with its DataLoader worker) at a random
    moment of that second build. Returns (the delay, whether the kill came before the end)."""
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True
    )
    word, seconds = proc.stdout.readline().split()
    assert word == "ready"
    delay = random.Random(seed).uniform(0.0, float(seconds))
    time.sleep(delay)
    os.killpg(proc.pid, signal.SIGKILL)
    out, _ = proc.communicate()
    return delay, "done" not in out


@pytest.mark.parametrize("seeds", [[0], pytest.param([1, 2, 3, 4, 5], marks=pytest.mark.slow)], ids=["seed0", "more"])
def test_sigkill_at_random_points_reopens_consistent_and_resumes_to_the_same_result(
    tmp_path, shapes, model_dir, tiny_encoders, seeds
):
    import runpy

    (shapes / "first.csv").write_text("image\n" + "".join(f"images/{i:06d}.png\n" for i in range(90)))
    script = tmp_path / "build.py"
    script.write_text(BUILD_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    seen = {}
    for seed in seeds:
        straight, killed = tmp_path / f"straight{seed}", tmp_path / f"killed{seed}"
        cmd = [sys.executable, str(script), str(straight), str(killed), str(shapes), str(model_dir)]
        delay, mid_way = kill_mid_build(cmd, env, seed)
        count = None
        if (killed / "CURRENT").exists():
            reader = Collection.open(killed, encoders=tiny_encoders)  # checks index, store and manifest counts
            reader.verify()
            count = reader.stats().count
            assert count in (0, 90, 150), "a commit was half-applied"
        seen[seed] = (round(delay, 2), mid_way, count, len(list((killed / "staging").glob("shard_*"))))
        runpy.run_path(str(script))["build"](str(killed), str(shapes), tiny_encoders)  # resume, in this process
        assert_same_collection(killed, straight)
        assert_same_collection(straight, tmp_path / f"straight{seeds[0]}")
        assert not (killed / "staging").exists()
        assert sorted(p.name for p in killed.iterdir() if p.name.startswith("v")) == ["v000001", "v000002"]
    print(f"killed after (s, before the end, committed images, staged shards): {seen}")


def test_a_change_with_records_and_no_vectors_is_refused_before_anything_is_written():
    record = ImageRecord(id=0, path="a.png", kind="file", ref=None, caption=None, sha256="0" * 64, size=1, mtime=0.0,
                         added=0.0)  # fmt: skip
    with pytest.raises(ValueError, match="1 new records comes with 0 vectors"):
        Change([record])
    with pytest.raises(ValueError, match="0 new records comes with 2 vectors"):
        Change([], np.zeros((2, 4)))
    assert Change().empty and not Change(unexclude=["a.png"]).empty and not Change([record], np.zeros((1, 4))).empty
