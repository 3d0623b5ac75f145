"""Search speed and recall of the automatically chosen index versus exact `IndexFlatIP`, in the same run.

    python -m bench.search                                   # 100k and 1M vectors (d=512), crossover, real images
    python -m bench.search --sizes 20000 --crossover --real-model none     # a quick run
    python -m bench.search --scale 5000000 --budget-gb 4                   # on disk, against autofaiss

Claim (issue 5): at 1M vectors the auto index answers >= 10x more queries/s than exact search, at recall@10 >= 0.95.

Data. Uniform random vectors have no structure an index can use, so the vectors are a documented mixture on the
sphere, vMF-like: `--clusters` (1000) centres drawn uniformly on the unit sphere in d dimensions; cluster j has
weight proportional to 1/j (Zipf, s = 1), so a few clusters are large and many are small; a point of cluster j is
normalise(centre_j + s_j * g / sqrt(d)) with g ~ N(0, I_d) and s_j ~ U(0.6, 1.4), i.e. a cosine of 0.58 to 0.86 to
its centre (CLIP image embeddings of one concept sit at similar cosines). Queries are fresh draws from the same
mixture, never in the database. Seeded (--seed), so every run sees the same vectors.

Real embeddings: the images of ../shared/data embedded with `--real-model` (default "demo", the project's demo
model; skipped with a message while it is not built), 10% of them held out as queries; the index is forced to be
approximate (exact_threshold=0) so its recall on real embeddings is measured at a size where exact search would be
chosen.

Measured per size: build time of each index, memory (resident-set growth during the build, and the serialised index
size), queries/s for a batch of queries and one query at a time (`--repeats` interleaved repetitions, median), and
recall@10 of the auto index against the exact one. The crossover rows (`--crossover`) show where exact search stops
being fast enough, which sets `IndexConfig.exact_threshold`.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

from bench.common import SHARED_DATA, report
from indexing import faiss_index
from indexing.faiss_index import IndexConfig

LOG = logging.getLogger(__name__)


def clustered(n: int, d: int, clusters: int, rng: np.random.Generator, centres: np.ndarray | None = None):
    """(vectors (n, d) float32 unit rows, centres) from the mixture in the module docstring."""
    if centres is None:
        centres = rng.standard_normal((clusters, d), dtype=np.float32)
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    weights = 1.0 / np.arange(1, clusters + 1)
    spread = np.random.default_rng(0).uniform(0.6, 1.4, clusters).astype(np.float32)  # fixed per cluster
    labels = rng.choice(clusters, n, p=weights / weights.sum())
    out = np.empty((n, d), np.float32)
    for start in range(0, n, 100_000):
        lab = labels[start : start + 100_000]
        noise = rng.standard_normal((len(lab), d), dtype=np.float32)
        out[start : start + len(lab)] = centres[lab] + noise * (spread[lab, None] / np.sqrt(d))
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out, centres


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def index_bytes(index: faiss.Index) -> int:
    with tempfile.NamedTemporaryFile(dir=tempfile.gettempdir(), suffix=".faiss") as f:
        faiss.write_index(index, f.name)
        return os.path.getsize(f.name)


def timed_build(build):
    gc.collect()
    before, start = rss_bytes(), time.perf_counter()
    result = build()
    return result, time.perf_counter() - start, max(rss_bytes() - before, 0)


def qps(search, queries: np.ndarray, single: int) -> tuple[float, float]:
    """(queries/s for the whole batch at once, queries/s one query at a time over the first `single`)."""
    start = time.perf_counter()
    search(queries)
    batch = len(queries) / (time.perf_counter() - start)
    start = time.perf_counter()
    for i in range(single):
        search(queries[i : i + 1])
    return batch, single / (time.perf_counter() - start)


def compare(name: str, vectors: np.ndarray, queries: np.ndarray, cfg: IndexConfig, args) -> dict:
    """Exact IndexFlatIP and the auto index over `vectors`, measured side by side."""
    n, d = vectors.shape
    ids = np.arange(n, dtype=np.int64)
    LOG.info("%s: building exact and auto indexes over %d x %d", name, n, d)
    flat, flat_s, flat_rss = timed_build(lambda: _flat(vectors))
    (auto, info), auto_s, auto_rss = timed_build(lambda: faiss_index.build(vectors, ids, cfg))
    _, truth = flat.search(queries, 10)
    _, found = faiss_index.search(auto, info, queries, 10)
    recall = faiss_index.recall_at_k(found, truth)
    single = min(args.single, len(queries))
    exact_runs, auto_runs = [], []
    for _ in range(args.repeats):  # interleaved, so both see the same machine load
        exact_runs.append(qps(lambda q: flat.search(q, 10), queries, single))
        auto_runs.append(qps(lambda q: faiss_index.search(auto, info, q, 10), queries, single))
    exact_batch, exact_one = (statistics.median(r[i] for r in exact_runs) for i in (0, 1))
    auto_batch, auto_one = (statistics.median(r[i] for r in auto_runs) for i in (0, 1))
    return {
        "data": name,
        "n": n,
        "d": d,
        "index": info.factory,
        "nprobe": info.nprobe,
        "recall@10": round(recall, 4),
        "tuned_recall@10": round(info.recall_at_10, 4),
        "exact_qps_batch": round(exact_batch, 1),
        "auto_qps_batch": round(auto_batch, 1),
        "speedup_batch": round(auto_batch / exact_batch, 2),
        "exact_qps_single": round(exact_one, 1),
        "auto_qps_single": round(auto_one, 1),
        "speedup_single": round(auto_one / exact_one, 2),
        "exact_build_s": round(flat_s, 2),
        "auto_build_s": round(auto_s, 2),
        "exact_rss_mb": round(flat_rss / 2**20),
        "auto_rss_mb": round(auto_rss / 2**20),
        "auto_index_mb": round(index_bytes(auto) / 2**20),
    }


def _flat(vectors: np.ndarray) -> faiss.Index:
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    return index


def real_embeddings(model: str, args) -> tuple[np.ndarray, np.ndarray, str] | None:
    """Vectors of every image under ../shared/data (10% held out as queries), or None with a message."""
    from indexing import sources
    from indexing.embed import EmbedConfig, Job, collect, embed, prepare
    from vlm.errors import ModelError
    from vlm.models import load

    if not SHARED_DATA.is_dir():
        print(f"real embeddings skipped: {SHARED_DATA} is missing")
        return None
    try:
        encoders = load(model, device="cpu")
    except ModelError as e:
        print(f"real embeddings skipped: {e}")
        return None
    folders = sorted(p / "images" for p in SHARED_DATA.iterdir() if (p / "images").is_dir())
    items = sources.gather(folders).items
    with tempfile.TemporaryDirectory() as tmp:
        cfg = EmbedConfig(batch_size=256, workers=2, shard_size=4096)
        job = Job.for_items(items, encoders, dtype="float32", shard_size=cfg.shard_size)
        prepare(Path(tmp) / "staging", job)
        embed(encoders, items, Path(tmp) / "staging", job, cfg, progress=False)
        vectors = collect(Path(tmp) / "staging", job).vectors
    rng = np.random.default_rng(args.seed)
    held = rng.permutation(len(vectors))
    n_q = len(vectors) // 10
    return vectors[held[n_q:]], vectors[held[:n_q]], f"shared/data images, {model} ({encoders.source})"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--single", type=int, default=100, help="queries timed one at a time")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--crossover", type=int, nargs="*", default=[5_000, 10_000, 20_000, 50_000])
    parser.add_argument("--real-model", default="demo", help="model for the real embeddings ('none' to skip)")
    parser.add_argument("--seed", type=int, default=0)
    scale = parser.add_argument_group("scale mode (bench/search_scale.py): vectors on disk against autofaiss")
    scale.add_argument("--scale", type=int, default=0, help="N vectors generated to a disk memmap (0: off)")
    scale.add_argument("--budget-gb", type=float, default=4.0, help="RAM budget of the auto plan and autofaiss")
    scale.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "vlm-bench-scale")
    scale.add_argument("--build-memory-gb", type=float, default=4.0, help="autofaiss's current_memory_available")
    scale.add_argument("--no-autofaiss", dest="autofaiss", action="store_false", help="skip the autofaiss peer")
    scale.add_argument(
        "--also-codes", nargs="*", default=[], help="other codes on the auto plan's lists, e.g. PQ512x4fs (what-ifs)"
    )
    scale.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1, help="OpenMP threads of both peers (thread_env)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if args.scale:
        from bench.search_scale import ensure_thread_env, thread_env
        from bench.search_scale import scale as run_scale

        ensure_thread_env(args.threads, argv)
        rows = run_scale(args)
        report("search_scale", rows, clusters=args.clusters, seed=args.seed, threads=thread_env(args.threads))
        return
    rows = []
    for n in [*args.crossover, *args.sizes]:
        rng = np.random.default_rng(args.seed)
        vectors, centres = clustered(n, args.dim, args.clusters, rng)
        queries, _ = clustered(args.queries, args.dim, args.clusters, rng, centres)
        # Crossover rows force the approximate index below the default threshold, to compare it with exact.
        cfg = IndexConfig(exact_threshold=0 if n in args.crossover else IndexConfig().exact_threshold)
        rows.append(compare(f"mixture{' (crossover)' if n in args.crossover else ''}", vectors, queries, cfg, args))
        del vectors
        gc.collect()
    if args.real_model != "none":
        real = real_embeddings(args.real_model, args)
        if real is not None:
            rows.append(compare(real[2], real[0], real[1], IndexConfig(exact_threshold=0), args))
    report("search", rows, clusters=args.clusters, seed=args.seed, threads=faiss.omp_get_max_threads())


if __name__ == "__main__":
    main()
