"""`python -m bench.parallel_build`: an IVF index built by one process against the same index filled by several
processes and merged on disk (`indexing/parallel.py`), in one run.

    nice -n 10 python -m bench.parallel_build --n 200000 --workers 2

N vectors of the documented mixture (`bench.search.clustered`, d = 512) are written as one collection chunk under
`--workdir`. Rows, interleaved `--repeats` times (one process, then N processes, again):

- 1 process: `faiss_index.build` over the vectors read from the chunk (what `Collection.add` does by default).
- N processes: `parallel.build` with `build_workers = N` (train once, N spawned workers fill shards from the chunk,
  lists merged into one on-disk file, tuned the same way).

Per row: build seconds (training, filling, merging and tuning), peak anonymous RSS of this process (sampled; the
workers' own memory is not counted), the tuned nprobe, and whether every inverted list equals the one-process
build's (ids in order). The claim is the time ratio; on a machine whose cores faiss already uses (OpenMP), expect
little.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

from bench.common import report
from bench.search import clustered
from bench.search_scale import PeakAnon
from indexing import faiss_index, parallel
from indexing.faiss_index import IndexConfig
from indexing.vectors import CHUNKS, Vectors, write_chunk


def list_ids(index: faiss.Index) -> list[bytes]:
    ivf = faiss.extract_index_ivf(index)
    lists = ivf.invlists
    return [faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)).tobytes() for i in range(ivf.nlist)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200_000, help="vectors")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2, help="processes of the parallel build")
    parser.add_argument("--budget-gb", type=float, default=4.0, help="the plan's memory budget (codes)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "vlm-bench-parallel")
    args = parser.parse_args(argv)

    shutil.rmtree(args.workdir, ignore_errors=True)
    (args.workdir / CHUNKS).mkdir(parents=True)
    vectors, _ = clustered(args.n, args.dim, args.clusters, np.random.default_rng(0))
    ids = np.arange(args.n, dtype=np.int64)
    write_chunk(args.workdir, "c0.npy", ids, vectors, "float32")
    del vectors
    stored = Vectors(args.workdir / CHUNKS, ["c0.npy"], args.dim)
    cfg = IndexConfig(exact_threshold=0, memory_budget_gb=args.budget_gb)
    rows, reference = [], None
    for repeat in range(args.repeats):
        for workers in (1, args.workers):
            folder = args.workdir / f"v{repeat}_{workers}"
            folder.mkdir()
            start = time.perf_counter()
            with PeakAnon() as peak:
                if workers == 1:
                    index, info = faiss_index.build(stored.get(ids), ids, cfg)
                else:
                    index, info = parallel.build(stored, ids, dataclasses.replace(cfg, build_workers=workers), folder)
            seconds = time.perf_counter() - start
            lists = list_ids(index)
            reference = reference or lists
            rows.append(
                {
                    "processes": workers,
                    "repeat": repeat,
                    "factory": info.factory,
                    "build_s": round(seconds, 1),
                    "peak_anon_mb": round(peak.peak / 2**20),
                    "nprobe": info.nprobe,
                    "recall@10": info.recall_at_10,
                    "lists_equal": lists == reference,
                }
            )
            del index
            shutil.rmtree(folder)
    one = np.mean([r["build_s"] for r in rows if r["processes"] == 1])
    many = np.mean([r["build_s"] for r in rows if r["processes"] == args.workers])
    print(f"one process / {args.workers} processes, build time: {one / many:.2f}x")
    load = [round(x, 1) for x in os.getloadavg()]
    print(f"usable cores {parallel.usable_cores()}, load average {load}")
    report(
        "parallel_build", rows, n=args.n, dim=args.dim, workers=args.workers, speedup=round(one / many, 3),
        usable_cores=parallel.usable_cores(), load_average=load,
    )  # fmt: skip
    shutil.rmtree(args.workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
