"""indexing.parallel: an IVF index filled by 2 processes and merged on disk equals the one-process build (lists code
for code, searches on fresh queries); a collection SIGKILLed during the merge reopens on its previous version and
the next writer finishes the same index. The reference is `faiss_index.build`, the in-process path."""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import faiss
import numpy as np
import pytest

from indexing import faiss_index as fi
from indexing import parallel
from indexing import vectors as vectors_module
from indexing.backend import Change
from indexing.collection import Collection
from indexing.errors import IndexingError
from indexing.faiss_index import IndexConfig
from indexing.store import ImageRecord

ROOT = Path(__file__).resolve().parents[1]


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def clustered(n: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = unit(rng.standard_normal((60, d)))
    return unit(centres[rng.integers(0, 60, n)] + rng.standard_normal((n, d)) * 0.8 / np.sqrt(d))


def lists(index: faiss.Index) -> list[tuple[np.ndarray, bytes]]:
    """Every inverted list's ids and codes, in order."""
    ivf = faiss.extract_index_ivf(index)
    out = []
    for i in range(ivf.nlist):
        size = ivf.invlists.list_size(i)
        ids = faiss.rev_swig_ptr(ivf.invlists.get_ids(i), size).copy()
        if fi.fast_scan(index) and size:  # blocks of 32 codes, interleaved: each code unpacked (not the padding)
            packer = ivf.get_CodePacker()
            blocks = faiss.rev_swig_ptr(ivf.invlists.get_codes(i), -(-size // 32) * packer.block_size)
            blocks = blocks.reshape(-1, packer.block_size)
            codes = b"".join(packer.unpack_1(blocks, j).tobytes() for j in range(size))
        else:
            codes = faiss.rev_swig_ptr(ivf.invlists.get_codes(i), size * ivf.code_size).tobytes()
        out.append((ids, codes))
    return out


def test_two_process_build_equals_the_one_process_build(tmp_path, capfd, caplog):
    """SQ8 codes, re-ranked from the chunks (Flat lists: the collection test below). Nothing reaches standard output
    (a CLI's table or JSON): faiss's merge prints go to the log."""
    n, d, nlist = 6000, 32, 32
    data = clustered(n + 200, d, seed=4)
    vectors, fresh = data[:n], data[n:]
    ids = np.arange(n, dtype=np.int64) * 3 + 1  # not row numbers
    budget = (nlist * (4 * d + 8 * 32) + n * (d + 8 + fi.LOOKUP_BYTES)) / 2**30  # SQ8 fits, Flat does not
    cfg = IndexConfig(exact_threshold=1000, nlist=nlist, tune_queries=200, memory_budget_gb=budget, fast_scan=False)
    (tmp_path / "chunks").mkdir()
    for name, part in (("a.npy", slice(0, 2500)), ("b.npy", slice(2500, n))):  # two chunk files, like a collection
        vectors_module.write_chunk(tmp_path, name, ids[part], vectors[part], "float32")
    stored = vectors_module.Vectors(tmp_path / "chunks", ["a.npy", "b.npy"], d)

    one, one_info = fi.build(vectors, ids, cfg)
    folder = tmp_path / "v"
    folder.mkdir()
    capfd.readouterr()
    with caplog.at_level(logging.INFO, logger="indexing.parallel"):
        two, two_info = parallel.build(stored, ids[::-1], dataclasses.replace(cfg, build_workers=2), folder)
    ctypes.CDLL(None).fflush(None)  # what C code printed, out of its buffer
    assert capfd.readouterr().out == ""
    assert f"faiss: resizing {folder / 'index.ivfdata'} to" in caplog.text

    assert one_info.factory.endswith("SQ8") and one_info.rerank and two_info.factory == one_info.factory
    assert sorted(p.name for p in folder.iterdir()) == ["index.faiss", "index.ivfdata"]  # scratch shards gone
    ivf = faiss.extract_index_ivf(two)
    assert isinstance(faiss.downcast_InvertedLists(ivf.invlists), faiss.OnDiskInvertedLists)  # mapped, not read
    assert [(a.tolist(), b) for a, b in lists(two)] == [(a.tolist(), b) for a, b in lists(one)]
    assert (two_info.nprobe, two_info.recall_at_10, two_info.rerank) == (
        one_info.nprobe,
        one_info.recall_at_10,
        one_info.rerank,
    )
    fetch = stored.get
    for nprobe in (1, two_info.nprobe, nlist):
        want = fi.search(one, one_info, fresh, 10, nprobe=nprobe, fetch=fetch, batched=False)
        got = fi.search(two, two_info, fresh, 10, nprobe=nprobe, fetch=fetch, batched=False)
        np.testing.assert_array_equal(got[1], want[1])
        np.testing.assert_array_equal(got[0], want[0])
    reopened = fi.read(str(folder / "index.faiss"), mmap="ivf")  # as a reader opens a published version
    np.testing.assert_array_equal(
        fi.search(reopened, two_info, fresh, 10, fetch=fetch)[1], fi.search(one, one_info, fresh, 10, fetch=fetch)[1]
    )
    writable = fi.read(str(folder / "index.faiss"))  # as the next writer reads it: the lists copied into memory
    writable.remove_ids(fi.selector_for(ids[:100]))
    assert writable.ntotal == n - 100 and reopened.ntotal == n  # the file's lists are untouched


def test_two_process_fast_scan_build_equals_the_one_process_build(tmp_path):
    """Fast-scan codes (the CPU plan's compressed codes) cannot live in an on-disk lists file: the shards are
    merged in memory, into one index file, and the lists equal the one-process build's, code for code."""
    n, d, nlist = 6000, 32, 32
    data = clustered(n + 200, d, seed=5)
    vectors, fresh = data[:n], data[n:]
    ids = np.arange(n, dtype=np.int64) * 3 + 1
    budget = (nlist * (4 * d + 8 * 32) + n * (4 * d + 8)) / 2**30 - 1e-6  # Flat just does not fit
    cfg = IndexConfig(exact_threshold=1000, nlist=nlist, tune_queries=200, memory_budget_gb=budget, fast_scan=True)
    (tmp_path / "chunks").mkdir()
    vectors_module.write_chunk(tmp_path, "a.npy", ids, vectors, "float32")
    stored = vectors_module.Vectors(tmp_path / "chunks", ["a.npy"], d)
    one, one_info = fi.build(vectors, ids, cfg)
    folder = tmp_path / "v"
    folder.mkdir()
    two, two_info = parallel.build(stored, ids[::-1], dataclasses.replace(cfg, build_workers=2), folder)
    assert one_info.factory.endswith("x4fs") and fi.fast_scan(two) and two_info.factory == one_info.factory
    assert sorted(p.name for p in folder.iterdir()) == ["index.faiss"]
    assert [(a.tolist(), b) for a, b in lists(two)] == [(a.tolist(), b) for a, b in lists(one)]
    assert (two_info.nprobe, two_info.rerank) == (one_info.nprobe, one_info.rerank)
    want = fi.search(one, one_info, fresh, 10, fetch=stored.get)
    got = fi.search(fi.read(str(folder / "index.faiss"), mmap="ivf"), two_info, fresh, 10, fetch=stored.get)
    np.testing.assert_array_equal(got[1], want[1])


def test_a_failing_worker_is_reported_with_its_error_and_leaves_no_shards(tmp_path):
    n, d = 2000, 16
    vectors = clustered(n, d, seed=7)
    (tmp_path / "chunks").mkdir()
    vectors_module.write_chunk(tmp_path, "a.npy", np.arange(n), vectors, "float32")
    stored = vectors_module.Vectors(tmp_path / "chunks", ["a.npy"], d)  # mapped here, so this process can train
    (tmp_path / "chunks" / "a.npy").unlink()  # but the workers, which open the chunk by name, cannot read it
    folder = tmp_path / "v"
    folder.mkdir()
    cfg = IndexConfig(exact_threshold=100, nlist=16, build_workers=2)
    with pytest.raises(IndexingError, match=r"(?s)index shard worker 0 exited with status 1:.*a\.npy"):
        parallel.build(stored, np.arange(n), cfg, folder)
    assert not list(folder.iterdir())


@pytest.mark.parametrize("workers", [0, -2, 1.5])
def test_a_worker_count_below_one_is_refused(workers):
    with pytest.raises(IndexingError, match="build_workers must be a whole number of processes, 1 or more"):
        IndexConfig(build_workers=workers)


KILL_SCRIPT = """
import sys
import time


def merge_then_wait(*args):
    REAL_MERGE(*args)  # the lists file is complete; the index file is not written, the version not published
    print("merging", flush=True)
    time.sleep(120)


if __name__ == "__main__":  # the spawned shard workers import this file too: nothing heavy above
    import numpy as np
    from indexing import parallel
    from indexing.backend import Change
    from indexing.collection import Collection
    from indexing.store import ImageRecord

    REAL_MERGE, parallel.merge_on_disk = parallel.merge_on_disk, merge_then_wait
    coll = Collection.open(sys.argv[1], read_only=False)
    vectors = np.load(sys.argv[2])
    records = [
        ImageRecord(id=i, path=f"{i}.png", kind="file", ref=None, caption=None, sha256=f"{i:064x}", size=1,
                    mtime=0.0, added=0.0)
        for i in range(300, len(vectors))
    ]  # as records() in the test
    coll.commit(Change(records, vectors[300:]))
    print("committed", flush=True)
"""


def records(start: int, stop: int) -> list[ImageRecord]:
    return [
        ImageRecord(
            id=i, path=f"{i}.png", kind="file", ref=None, caption=None, sha256=f"{i:064x}", size=1, mtime=0.0, added=0.0
        )
        for i in range(start, stop)
    ]


def test_sigkill_during_the_merge_keeps_the_previous_version(tmp_path, tiny_encoders):
    n, d = 3000, tiny_encoders.embed_dim
    vectors = clustered(n, d, seed=5)
    np.save(tmp_path / "vectors.npy", vectors)
    cfg = IndexConfig(exact_threshold=1000, nlist=16, tune_queries=150, build_workers=2)
    path = tmp_path / "c"
    writer = Collection.create(path, tiny_encoders, index=cfg)
    writer.commit(Change(records(0, 300), vectors[:300]))
    writer.close()  # 300 images: exact
    script = tmp_path / "kill.py"
    script.write_text(KILL_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, str(script), str(path), str(tmp_path / "vectors.npy")]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        lines = iter(proc.stdout.readline, "")
        assert "merging" in (line.strip() for line in lines)  # 3000 images: rebuilt as IVF, by 2 processes
        pending = [p for p in path.iterdir() if p.name.startswith(".tmp-v")]
        assert len(pending) == 1 and (pending[0] / "index.ivfdata").stat().st_size > 0
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()

    reader = Collection.open(path, encoders=tiny_encoders)
    assert reader.count == 300 and reader.stats().index.kind == "flat"  # the previous version, whole
    reader.verify()

    writer = Collection.open(path, read_only=False, encoders=tiny_encoders)  # clears the dead writer's folder
    assert not [p for p in path.iterdir() if p.name.startswith(".tmp-v")]
    writer.commit(Change(records(300, n), vectors[300:]))
    assert reader.refresh() and reader.count == n
    reader.verify()
    info = reader.stats().index
    folder = path / (path / "CURRENT").read_text().strip()
    assert info.kind == "ivf" and (folder / "index.ivfdata").exists()
    one, one_info = fi.build(vectors, np.arange(n), dataclasses.replace(cfg, build_workers=1))
    queries = clustered(50, d, seed=6)
    assert (info.nprobe, info.recall_at_10) == (one_info.nprobe, one_info.recall_at_10)
    np.testing.assert_array_equal(reader.search_vector(queries, k=10).ids, fi.search(one, one_info, queries, 10)[1])
    writer.remove(ids=list(range(0, n, 2)))  # an update of a parallel build's version: lists copied, one file
    assert reader.refresh() and reader.count == n // 2
    reader.verify()
    writer.close()
