"""Building an IVF index with several processes: one shared coarse quantiser, shards filled apart, merged on disk.

    build(vectors, ids, cfg, folder)   -> (index, IndexInfo), equal to `faiss_index.build(vectors.get(ids), ids, cfg)`

The recipe of autofaiss and clip-retrieval (LAION-5B's index), with faiss's own parts:
1. Train once: the seeded sample `faiss_index.build` would draw, the same spherical k-means and code training, so
   the empty trained index is the one-process build's. It is written to `folder/build/trained.faiss`.
2. Fill: `cfg.build_workers` processes (`python -m indexing.parallel SHARD`) each read the trained index and a
   contiguous range of the (sorted) ids' vectors straight from the collection's memory-mapped chunks, add them and
   write their shard. A worker holds only its share of vectors and codes.
3. Merge on disk: the shards' lists, memory-mapped, are concatenated list by list into one `OnDiskInvertedLists`
   file, `folder/index.ivfdata` (faiss's `merge_from_multiple`, as `faiss.contrib.ondisk.merge_ondisk`, which is
   not called because it never releases the shards' mappings). Shards are merged in id order and each list of a
   shard keeps its ids in order, so every list equals the one-process build's, code for code: searches give the
   same ids and scores (`tests/test_index_parallel.py`). Then `folder/build/` is deleted.
   Fast-scan codes (`faiss_index.plan`'s compressed codes on the CPU) are kept by faiss in blocks of 32 codes that
   an `OnDiskInvertedLists` file cannot hold and faiss cannot memory-map: their shards are merged in memory
   (`IndexIVF.merge_from`, same order, so again code for code) and written as one `index.faiss`. The plan counts
   those codes in the memory budget, so the merged lists fit.
4. Tune, as `faiss_index.build` does, on the merged index read back memory-mapped and read-only.

`folder` is the version being written (`indexing.versions.publish`): everything happens inside it, so a crash
anywhere, the merge included, leaves the published version as it was, and the next writer deletes the debris. The
published version holds `index.faiss` (centroids, codes' parameters, list offsets) and `index.ivfdata` (the lists),
which `faiss_index.read` maps; a later add or remove copies the lists into memory and writes one file again.

Why plain processes, and not torchrun or multiprocessing: the index is built by whichever process writes the
collection (`add`, `sync`, the app, rank 0 of a torchrun build) under the collection's lock, so the fill is started
from there, and a worker needs nothing but file names (the trained index, the chunks, a range of ids). A fresh
`python -m indexing.parallel` imports only faiss, NumPy and this package's vector reader; multiprocessing's spawn
re-imports the caller's main module in every worker (torch and open_clip for `vlm` or a bench: 40 s of a 50 s build
under load), and fork would copy the writer's threads. Their output (faiss prints) goes to a log per worker, shown
when one fails. On one machine faiss's `add` already runs on every core (OpenMP): the workers split the cores
between them (`faiss.omp_set_num_threads`). The writer still reads every vector to tune, as the one-process build
does, so its peak memory drops only by the codes it no longer adds itself. On the 2-core development machine the
parallel build was slower (indexing/README.md): what it buys is the shape (shards filled apart, merged on disk).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import itertools
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import faiss
import numpy as np

from indexing import faiss_index
from indexing.errors import IndexingError
from indexing.faiss_index import IndexConfig, IndexInfo
from indexing.vectors import Vectors

LOG = logging.getLogger(__name__)

INDEX = "index.faiss"  # indexing.versions.INDEX (not imported: it pulls in the store and image readers)
SCRATCH = "build"  # inside the version folder being written; deleted once the lists are merged
PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # where the workers import `indexing` from


@dataclasses.dataclass(frozen=True)
class Shard:
    """What one worker fills: rows [start, stop) of the sorted ids saved in `ids`, their vectors read from the chunks
    `chunks` (file names in `folder`) of dimension `dim`, added to the index in `trained`, written to `out`."""

    trained: str
    folder: str
    chunks: list[str]
    dim: int
    ids: str
    start: int
    stop: int
    out: str
    threads: int


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask where there is one), which its workers inherit."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def ranges(n: int, parts: int) -> list[tuple[int, int]]:
    """[0, n) in `parts` contiguous ranges (fewer if n is small), none empty."""
    edges = np.linspace(0, n, max(1, min(parts, n)) + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in itertools.pairwise(edges.tolist()) if b > a]


def fill(shard: Shard) -> int:
    """Worker: the trained index + the shard's vectors, written to `shard.out`; returns how many were added."""
    faiss.omp_set_num_threads(shard.threads)
    index = faiss.read_index(shard.trained)
    ids = np.load(shard.ids, mmap_mode="r")[shard.start : shard.stop].copy()
    index.add_with_ids(Vectors(Path(shard.folder), shard.chunks, shard.dim).get(ids), ids)
    faiss.write_index(index, shard.out)
    return int(index.ntotal)


def fill_all(shards: list[Shard], logs: Path) -> None:
    """Run one worker process per shard (`python -m indexing.parallel SHARD_JSON`) and wait for all; raise with the
    log of a worker that failed. Workers still running when this is interrupted are killed."""
    path = [str(PACKAGE_ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    running: list[subprocess.Popen] = []
    try:
        for i, shard in enumerate(shards):
            with open(logs / f"worker_{i:03d}.log", "wb") as log:  # the child keeps its own descriptor
                command = [sys.executable, "-m", "indexing.parallel", json.dumps(dataclasses.asdict(shard))]
                running.append(subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log))
        codes = [p.wait() for p in running]
    finally:
        for p in running:
            if p.poll() is None:
                p.kill()
                p.wait()
    for i, code in enumerate(codes):
        if code != 0:
            tail = (logs / f"worker_{i:03d}.log").read_text(errors="replace")[-2000:]
            raise IndexingError(f"index shard worker {i} exited with status {code}:\n{tail}")


@contextlib.contextmanager
def c_stdout_to_log(logger: logging.Logger = LOG) -> Iterator[None]:
    """Send what compiled code prints to this process's standard output meanwhile to `logger` (INFO), not to the
    terminal: faiss's merge `printf`s "resizing FILE to N bytes", which would land in the CLI's output (a table, JSON).
    File descriptor 1 points at a temporary file until the block ends (C's buffers flushed on both sides); anything
    else written to standard output meanwhile, from any thread, is logged too."""
    libc = ctypes.CDLL(None)
    sys.stdout.flush()
    libc.fflush(None)
    saved = os.dup(1)
    try:
        with tempfile.TemporaryFile() as caught:
            os.dup2(caught.fileno(), 1)
            try:
                yield
            finally:
                sys.stdout.flush()
                libc.fflush(None)
                os.dup2(saved, 1)
                caught.seek(0)
                for line in caught.read().decode(errors="replace").splitlines():
                    logger.info("faiss: %s", line)
    finally:
        os.close(saved)


def merge_on_disk(trained: faiss.Index, shard_paths: list[str], lists_path: Path) -> None:
    """Concatenate the shards' inverted lists, list by list in shard order, into `lists_path` (an
    `OnDiskInvertedLists` file) and make it the lists of the empty `trained` index. faiss's prints go to the log."""
    shards = [faiss.read_index(p, faiss.IO_FLAG_MMAP) for p in shard_paths]  # mapped: RAM need not hold them
    pointers = faiss.InvertedListsPtrVector()
    for shard in shards:
        pointers.push_back(faiss.extract_index_ivf(shard).invlists)
    ivf = faiss.extract_index_ivf(trained)
    merged = faiss.OnDiskInvertedLists(ivf.nlist, ivf.code_size, str(lists_path))
    with c_stdout_to_log():
        total = merged.merge_from_multiple(pointers.data(), pointers.size(), False)
    ivf.replace_invlists(merged, True)
    merged.this.disown()  # the index's now
    trained.ntotal = ivf.ntotal = total
    del pointers, shards  # unmaps the shard files


def merge_in_memory(trained: faiss.Index, shard_paths: list[str]) -> None:
    """Append the shards' inverted lists, list by list in shard order, to the empty `trained` index in memory."""
    for path in shard_paths:
        shard = faiss.read_index(path)
        trained.merge_from(shard, 0)
        del shard


def build(vectors: Vectors, ids: np.ndarray, cfg: IndexConfig, folder: Path) -> tuple[faiss.Index, IndexInfo]:
    """The IVF index `faiss_index.build` makes of `vectors.get(ids)` under `ids`, built by `cfg.build_workers`
    processes into `folder` (its `index.faiss` and, but for fast-scan codes, `index.ivfdata`); returned memory-mapped,
    read-only. The plan for len(ids) vectors must be IVF (an exact index is built in-process: `faiss_index.build`)."""
    ids = np.sort(np.asarray(ids, dtype=np.int64))
    n, d = len(ids), vectors.dim
    chosen = faiss_index.plan(n, d, cfg)
    if chosen.kind != "ivf":
        raise IndexingError(f"{n:,} vectors get an exact index ({chosen.factory}), which is not built in parallel")
    start = time.perf_counter()
    scratch = folder / SCRATCH
    scratch.mkdir()
    try:
        index = faiss.index_factory(d, chosen.factory, faiss_index.METRIC)
        rows = faiss_index.training_rows(n, chosen.nlist, cfg)
        faiss_index.train(index, vectors.get(ids[rows]), cfg)
        faiss_index.write(index, str(scratch / "trained.faiss"))
        np.save(scratch / "ids.npy", ids)
        parts = ranges(n, cfg.build_workers)
        threads = max(1, usable_cores() // len(parts))
        shards = [
            Shard(str(scratch / "trained.faiss"), str(vectors.folder), vectors.names, d, str(scratch / "ids.npy"),
                  start, stop, str(scratch / f"shard_{i:03d}.faiss"), threads)
            for i, (start, stop) in enumerate(parts)
        ]  # fmt: skip
        LOG.info("filling %d IVF shards of %s in %d processes", len(shards), chosen.factory, len(shards))
        fill_all(shards, scratch)
        if faiss_index.fast_scan(index):
            merge_in_memory(index, [s.out for s in shards])
        else:
            merge_on_disk(index, [s.out for s in shards], folder / faiss_index.IVFDATA)
        if index.ntotal != n:
            raise IndexingError(f"the merged shards hold {index.ntotal} vectors, not {n}")
        faiss_index.write(index, str(folder / INDEX))
        del index  # its lists were mapped writable; the index is read again read-only
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    index = faiss_index.read(str(folder / INDEX), mmap="ivf")
    info = IndexInfo(chosen.factory, "ivf", nlist=chosen.nlist, trained_count=n, tuned_count=n)
    tuned = faiss_index.tune(index, vectors.get(ids), ids, cfg, exclude=rows)
    info.nprobe, info.ef_search, info.recall_at_10 = tuned.nprobe, tuned.ef_search, tuned.recall
    info.rerank = tuned.rerank
    info.build_seconds = round(time.perf_counter() - start, 3)
    LOG.info("built %s over %d vectors with %d processes in %.1f s", chosen.factory, n, len(shards), info.build_seconds)
    return index, info


if __name__ == "__main__":  # a worker of `fill_all`
    fill(Shard(**json.loads(sys.argv[1])))
