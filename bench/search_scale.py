"""`python -m bench.search --scale N`: a collection larger than RAM would like, on disk, against autofaiss.

    nice -n 10 python -m bench.search --scale 5000000 --budget-gb 4        # the issue's size
    python -m bench.search --scale 200000 --budget-gb 0.05 --no-autofaiss  # a quick run

N vectors of the documented mixture (`bench.search.clustered`, d = 512) are generated block by block into a float32
`.npy` memmap under `--workdir`, with 1000 fresh queries. Three peers answer the same queries in one run:

- exact: brute force over the memmap, block by block (BLAS); its results are the truth for recall@10.
- auto: the project's plan for N vectors under the budget (`faiss_index.plan`/`build`: IVF + Flat or compressed codes,
  exact re-ranking from the memmap for compressed codes, nprobe and k_factor tuned to recall@10 0.95), written to
  disk and opened memory-mapped, as a collection opens it.
- `--also-codes C ...`: the auto plan's lists with other codes (e.g. PQ512x4fs, 4-bit fast-scan PQ), built,
  tuned and re-ranked by the library's own steps: what-ifs for the planner, each in its own row.
- autofaiss (PyPI) at the same `max_index_memory_usage`, run from its own virtual environment, which the bench
  creates (autofaiss pins numpy < 2); its index is built by `autofaiss.build_index` and opened with IO_FLAG_MMAP.

Per peer: build seconds, peak anonymous RSS of the build above the process's RssAnon before it (sampled every 50
ms; memory-mapped file pages are page cache, not counted), the index file's size, open milliseconds, recall@10,
queries/s one at a time (`--single`) and for the batch of 1000. Single queries are also timed in faiss's other
threading mode, interleaved: the auto index scans a query's lists on all threads (`parallel_mode` 1, how the project
serves) and is also timed in faiss's default (one thread per query); autofaiss serves in the default and is also
timed with its lists in parallel, so neither peer's figure hides a setting the other could use.

Threads: both peers run under the same settings (`thread_env`): `--threads` OpenMP and BLAS threads (default: all
cores) and passive OpenMP waiting. The bench re-executes itself under them before faiss
loads, and hands the same environment and `nb_cores` to autofaiss's process. Without passive waiting, autofaiss's
faiss-cpu 1.7.4 wheel (OpenBLAS on its own pthreads beside libgomp) trains its OPQ rotation 5x slower on 2 cores.

Each peer's row is printed and appended to `--workdir`/rows.jsonl as soon as it is measured, and autofaiss's own log
(its phases, timed) goes to `--workdir`/autofaiss.log, so a run stopped part-way still leaves its figures.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import faiss
import numpy as np

from bench.search import qps
from indexing import faiss_index
from indexing.faiss_index import IndexConfig

LOG = logging.getLogger(__name__)


def thread_env(threads: int) -> dict[str, str]:
    """The thread settings both peers run under: `threads` OpenMP and BLAS threads, and passive OpenMP waiting
    (idle threads sleep instead of spinning). faiss-cpu 1.7.4's wheel (autofaiss's) has OpenBLAS on its own pthreads
    beside libgomp: with spinning OpenMP threads, OPQ training on 20,000 vectors (2 of its 50 iterations) took 130 s
    on 2 cores, 24 s with passive waiting (88 s with BLAS on one thread instead)."""
    n = str(threads)
    return {"OMP_NUM_THREADS": n, "OPENBLAS_NUM_THREADS": n, "MKL_NUM_THREADS": n, "OMP_WAIT_POLICY": "PASSIVE"}


def ensure_thread_env(threads: int, argv: list[str] | None) -> None:
    """Re-execute this command under `thread_env(threads)` unless it already runs under it (OpenMP and BLAS read
    their settings when they load, before any argument is parsed). Called with explicit `argv` (a test, another
    program), only faiss's OpenMP threads are set."""
    wanted = thread_env(threads)
    if all(os.environ.get(k) == v for k, v in wanted.items()):
        return
    if argv is not None:
        LOG.warning("thread settings not applied in-process (%s); faiss threads set to %d", wanted, threads)
        faiss.omp_set_num_threads(threads)
        return
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, "-m", "bench.search", *sys.argv[1:]], {**os.environ, **wanted})


class PeakAnon:
    """Peak RssAnon of this process (or of `pid`) while in the block, sampled every 50 ms; `start` is its value
    on entry (`peak - start`: what the block added)."""

    def __init__(self, pid: int | None = None):
        self.path, self.peak, self._stop = f"/proc/{pid or 'self'}/status", 0, threading.Event()

    def sample(self) -> int:
        try:
            text = Path(self.path).read_text()
        except OSError:
            return 0
        return next((int(x.split()[1]) * 1024 for x in text.splitlines() if x.startswith("RssAnon:")), 0)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self.sample())

    def __enter__(self) -> PeakAnon:
        self.peak = self.start = self.sample()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.sample())


def generate(workdir: Path, n: int, d: int, clusters: int, seed: int, queries: int) -> tuple[Path, np.ndarray]:
    """The database as `workdir/emb/vectors.npy` (a memmap, written block by block) and the queries."""
    from bench.search import clustered

    path = workdir / "emb" / "vectors.npy"
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    _, centres = clustered(1, d, clusters, rng)
    q, _ = clustered(queries, d, clusters, np.random.default_rng(seed + 1), centres)
    done = workdir / "emb" / f"done-{n}-{d}-{clusters}-{seed}"
    if not done.exists():
        out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, d))
        for start in range(0, n, 500_000):
            block, _ = clustered(min(500_000, n - start), d, clusters, np.random.default_rng(seed + 2 + start), centres)
            out[start : start + len(block)] = block
        out.flush()
        del out
        done.touch()
    return path, q


def exact(vectors: np.ndarray, queries: np.ndarray, k: int = 10, block: int = 200_000):
    """(scores, ids) of brute force over a (memmapped) array, block by block."""
    best_s = np.full((len(queries), k), -np.inf, np.float32)
    best_i = np.full((len(queries), k), -1, np.int64)
    for start in range(0, len(vectors), block):
        s, i = faiss.knn(
            queries, np.ascontiguousarray(vectors[start : start + block]), k, metric=faiss.METRIC_INNER_PRODUCT
        )
        s_all, i_all = np.concatenate([best_s, s], 1), np.concatenate([best_i, i + start], 1)
        top = np.argsort(-s_all, axis=1, kind="stable")[:, :k]
        best_s, best_i = np.take_along_axis(s_all, top, 1), np.take_along_axis(i_all, top, 1)
    return best_s, best_i


def row(name: str, build_s: float, rss: int, open_ms: float, recall: float, qps: tuple[float, float], **extra):
    """One peer's figures; `rss` is what its build added to the process's RssAnon, `serve_rss` (in `extra`) what
    opening and searching added, `index_bytes` the size of the written index."""
    return {
        "peer": name,
        "build_s": round(build_s, 1),
        "build_anon_mb": round(rss / 2**20),
        "index_mb": round(extra.pop("index_bytes", 0) / 2**20),
        "serve_anon_mb": round(extra.pop("serve_rss", 0) / 2**20),
        "open_ms": round(open_ms, 1),
        "recall@10": round(recall, 4),
        "qps_single": round(qps[1], 1),
        "qps_batch": round(qps[0], 1),
        **extra,
    }


def run_exact(vectors: np.ndarray, queries: np.ndarray, args) -> tuple[dict, np.ndarray]:
    with PeakAnon() as mem:
        start = time.perf_counter()
        _, truth = exact(vectors, queries)
        batch_s = time.perf_counter() - start
    singles = max(1, min(3, args.single))
    start = time.perf_counter()
    for i in range(singles):
        exact(vectors, queries[i : i + 1])
    single_qps = singles / (time.perf_counter() - start)
    qps_pair = (len(queries) / batch_s, single_qps)
    return row("exact (memmap brute force)", 0.0, 0, 0.0, 1.0, qps_pair, serve_rss=mem.peak - mem.start), truth


def build_with_codes(vectors: np.ndarray, ids: np.ndarray, cfg: IndexConfig, codec: str):
    """What `faiss_index.build` does, with the plan's lists and quantizer but `codec` (e.g. "PQ512x4fs") as the
    codes instead of the plan's choice: a what-if the planner does not offer, trained, filled and tuned (re-ranking
    included) by the library's own steps."""
    n, d = vectors.shape
    chosen = faiss_index.plan(n, d, cfg)
    factory = chosen.factory.rsplit(",", 1)[0] + "," + codec
    index = faiss_index.scan_lists_in_parallel(faiss.index_factory(d, factory, faiss_index.METRIC))
    rows = faiss_index.training_rows(n, chosen.nlist, cfg)
    faiss_index.train(index, vectors[rows], cfg)
    index.add_with_ids(vectors, ids)
    tuned = faiss_index.tune(index, vectors, ids, cfg, exclude=rows)
    info = faiss_index.IndexInfo(factory, "ivf", nlist=chosen.nlist, nprobe=tuned.nprobe, ef_search=tuned.ef_search)
    info.recall_at_10, info.rerank = tuned.recall, tuned.rerank
    return index, info


def run_auto(vectors: np.ndarray, queries: np.ndarray, truth: np.ndarray, args, codec: str | None = None) -> dict:
    n, d = vectors.shape
    cfg = IndexConfig(exact_threshold=0, memory_budget_gb=args.budget_gb)
    chosen = faiss_index.plan(n, d, cfg)
    LOG.info("auto plan for %d x %d under %g GB: %s%s", n, d, args.budget_gb, chosen, f"; codes: {codec}" * bool(codec))
    ids = np.arange(n, dtype=np.int64)
    with PeakAnon() as mem:
        start = time.perf_counter()
        if codec:
            index, info = build_with_codes(vectors, ids, cfg, codec)
        else:
            index, info = faiss_index.build(vectors, ids, cfg)
        build_s = time.perf_counter() - start
    path = args.workdir / (f"auto-{codec}.faiss" if codec else "auto.faiss")
    faiss_index.write(index, str(path))
    del index
    with PeakAnon() as serve:
        start = time.perf_counter()
        mapped = faiss_index.read(str(path), mmap="ivf")
        table = np.load(args.workdir / "emb" / "vectors.npy", mmap_mode="r")
        open_ms = 1000 * (time.perf_counter() - start)

        def fetch(wanted: np.ndarray) -> np.ndarray:
            return np.asarray(table[wanted], dtype=np.float32)  # ids are row numbers here

        def search(q):
            return faiss_index.search(mapped, info, q, 10, fetch=fetch)

        recall = faiss_index.recall_at_k(search(queries)[1], truth)
        ivf = faiss.extract_index_ivf(mapped)
        speeds, default_mode = [], []
        for _ in range(args.repeats):  # interleaved: the project's setting, then faiss's default, each round
            speeds.append(qps(search, queries, args.single))
            ivf.parallel_mode = 0
            default_mode.append(qps(search, queries[: args.single], args.single)[1])
            ivf.parallel_mode = 1
    median = tuple(float(np.median([s[i] for s in speeds])) for i in (0, 1))
    extra = {
        "index": info.factory,
        "params": f"nprobe={info.nprobe},k_factor={info.rerank}",
        "qps_single_faiss_default_mode": round(float(np.median(default_mode)), 1),
        "ram_mb_planned": round(chosen.ram_bytes / 2**20),
        "index_bytes": path.stat().st_size,
        "serve_rss": serve.peak - serve.start,
    }
    name = f"auto, {codec} codes (what-if, not the plan)" if codec else "auto (this project)"
    return row(name, build_s, mem.peak - mem.start, open_ms, recall, median, **extra)


AUTOFAISS_SCRIPT = r"""
import json, logging, sys, time, threading, numpy as np, faiss
from autofaiss import build_index
emb, out, budget, queries, truth, single, repeats, build_memory, cores = sys.argv[1:10]
q = np.load(queries); truth = np.load(truth)
def anon():
    for x in open("/proc/self/status"):
        if x.startswith("RssAnon:"): return int(x.split()[1]) * 1024
def watch(box, stop):  # each phase has its own box and event: a reset cannot race with the sampler
    while not stop.wait(0.05): box[0] = max(box[0], anon())
def sampler():
    box, stop = [anon()], threading.Event()
    threading.Thread(target=watch, args=(box, stop), daemon=True).start()
    return box, stop
peak, stop = sampler()
base = peak[0]; t = time.perf_counter()
build_index(embeddings=emb, index_path=out + "/knn.index", index_infos_path=out + "/infos.json",
            max_index_memory_usage=budget, current_memory_available=build_memory, metric_type="ip", save_on_disk=True,
            nb_cores=int(cores), verbose=logging.INFO)
build_s = time.perf_counter() - t; stop.set(); build_rss = max(peak[0], anon()) - base
print("BUILT", json.dumps({"build_s": build_s, "rss": build_rss}), flush=True)
peak, stop = sampler()
base = peak[0]
t = time.perf_counter(); index = faiss.read_index(out + "/knn.index", faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
open_ms = 1000 * (time.perf_counter() - t)
infos = json.load(open(out + "/infos.json"))
params = infos.get("index_param", "")
if params: faiss.ParameterSpace().set_index_parameters(index, params)
_, found = index.search(q, 10)
recall = float(np.mean([len(set(f) & set(g)) / 10 for f, g in zip(found, truth)]))
def singles():
    t = time.perf_counter()
    for i in range(int(single)): index.search(q[i:i+1], 10)
    return int(single) / (time.perf_counter() - t)
ivf = faiss.extract_index_ivf(index)
runs, lists_parallel = [], []
for _ in range(int(repeats)):  # interleaved: autofaiss as it serves (faiss's default mode), then lists in parallel
    t = time.perf_counter(); index.search(q, 10); b = len(q) / (time.perf_counter() - t)
    runs.append((b, singles()))
    ivf.parallel_mode = 1; lists_parallel.append(singles()); ivf.parallel_mode = 0
stop.set()
print("RESULT", json.dumps({"build_s": build_s, "rss": build_rss, "serve_rss": max(peak[0], anon()) - base,
      "open_ms": open_ms, "recall": recall, "qps_batch": float(np.median([r[0] for r in runs])),
      "qps_single": float(np.median([r[1] for r in runs])),
      "qps_single_lists_parallel": float(np.median(lists_parallel)), "index": infos.get("index_key"),
      "params": params}),
      flush=True)
"""


def autofaiss_python(workdir: Path) -> Path:
    """autofaiss's own virtual environment under `workdir` (created on first use; needs PyPI)."""
    venv = workdir / "autofaiss-venv"
    python = venv / "bin" / "python"
    if not python.exists() or subprocess.run([python, "-c", "import autofaiss"], capture_output=True).returncode:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        # autofaiss pins numpy<2; recent pyarrow (through embedding-reader) needs numpy 2; faiss-cpu 1.8+ changed
        # OPQMatrix arguments autofaiss 2.18 passes.
        subprocess.run([python, "-m", "pip", "install", "-q", "autofaiss", "pyarrow<18", "faiss-cpu<1.8"], check=True)
    return python


def run_autofaiss(queries: np.ndarray, truth: np.ndarray, args) -> dict:
    python = autofaiss_python(args.workdir)
    out = args.workdir / "autofaiss"
    out.mkdir(exist_ok=True)
    np.save(args.workdir / "queries.npy", queries)
    np.save(args.workdir / "truth.npy", truth)
    budget = f"{int(args.budget_gb * 1024)}MB"
    # autofaiss refuses to build unless the RAM it may use for building exceeds what the index may take; it gets
    # `--build-memory-gb` (the auto plan's build is not capped: both builds' peak RSS is reported).
    build_memory = f"{int(max(args.build_memory_gb, 2 * args.budget_gb) * 1024)}MB"
    cmd = [
        str(python),
        "-c",
        AUTOFAISS_SCRIPT,
        str(args.workdir / "emb"),
        str(out),
        budget,
        str(args.workdir / "queries.npy"),
        str(args.workdir / "truth.npy"),
        str(args.single),
        str(args.repeats),
        build_memory,
        str(args.threads),
    ]
    log = args.workdir / "autofaiss.log"
    LOG.info("autofaiss running (index budget %s, build memory %s); its log: %s", budget, build_memory, log)
    env = {**os.environ, **thread_env(args.threads), "PYTHONPATH": ""}
    with open(log, "w") as f:
        code = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env).returncode
    text = log.read_text()
    line = next((x for x in text.splitlines() if x.startswith("RESULT ")), None)
    if code or line is None:
        raise RuntimeError(f"autofaiss failed ({code}), see {log}: {text[-2000:]}")
    r = json.loads(line[7:])
    qps_pair = (r["qps_batch"], r["qps_single"])
    extra = {
        "index": r["index"],
        "params": r["params"],
        "qps_single_lists_parallel": round(r["qps_single_lists_parallel"], 1),
        "index_bytes": (out / "knn.index").stat().st_size,
        "serve_rss": r["serve_rss"],
    }
    return row("autofaiss", r["build_s"], r["rss"], r["open_ms"], r["recall"], qps_pair, **extra)


def scale(args) -> list[dict]:
    """The three peers' rows; each is printed and appended to `workdir/rows.jsonl` as soon as it is measured."""
    args.workdir.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []

    def keep(r: dict) -> None:
        r.update(n=args.scale, d=args.dim, budget_gb=args.budget_gb, threads=args.threads)
        rows.append(r)
        print("ROW", json.dumps(r), flush=True)
        with open(args.workdir / "rows.jsonl", "a") as f:
            f.write(json.dumps(r) + "\n")

    LOG.info("threads: faiss %d, environment %s", faiss.omp_get_max_threads(), thread_env(args.threads))
    start = time.perf_counter()
    path, queries = generate(args.workdir, args.scale, args.dim, args.clusters, args.seed, args.queries)
    vectors = np.load(path, mmap_mode="r")
    LOG.info("data %s ready in %.0f s", vectors.shape, time.perf_counter() - start)
    exact_row, truth = run_exact(vectors, queries, args)
    keep(exact_row)
    keep(run_auto(vectors, queries, truth, args))
    for codec in args.also_codes:
        keep(run_auto(vectors, queries, truth, args, codec))
    if args.autofaiss:
        try:
            keep(run_autofaiss(queries, truth, args))
        except (RuntimeError, OSError, subprocess.CalledProcessError) as e:  # the other rows still get reported
            keep({"peer": "autofaiss", "error": str(e).splitlines()[0][:200]})
    return rows
