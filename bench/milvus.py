"""Recall and speed of the Milvus backend (Milvus Lite) against the FAISS collection index, on the same data.

    python -m bench.milvus                          # 20,000 vectors, d = 512, HNSW at several ef
    python -m bench.milvus --n 100000 --ef 32,64,128 --index-type IVF_FLAT   # IVF_FLAT: --ef is nprobe

Data: the Zipf mixture of `bench.search` (`clustered`: 1000 clusters on the sphere), fresh queries from the same
mixture. Truth: exact top 10 by one NumPy product. Peers, in one run:
    exact        brute force over the vectors (NumPy), the truth and the floor
    faiss auto   this project's index (`faiss_index.build`: IVF tuned to recall@10 0.95 on held-out queries),
                 searched alone: no metadata is fetched, so its queries/s are an upper bound for the collection
    milvus       a `MilvusCollection` on Milvus Lite (a temporary .db file), its index at each search breadth --ef;
                 searched through `search_vector`, so each hit's metadata comes back with it (as in the app)
Per peer: build (insert + flush) seconds, recall@10, queries/s for one batch and one query at a time. Milvus Lite is
the embedded engine (Python, single process): its figures say what the tests and a laptop see, not what a Milvus
server or cluster does.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import report
from bench.search import clustered, qps
from indexing import faiss_index
from indexing.backend import Change
from indexing.faiss_index import IndexConfig
from indexing.results import ModelSpec
from indexing.store import ImageRecord

LOG = logging.getLogger(__name__)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth, strict=True)]))


def exact_top10(vectors: np.ndarray, queries: np.ndarray) -> np.ndarray:
    scores = queries @ vectors.T
    part = np.argpartition(-scores, 9, axis=1)[:, :10]
    return np.take_along_axis(part, np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1), axis=1)


def milvus_rows(args, vectors: np.ndarray, queries: np.ndarray, truth: np.ndarray, folder: Path) -> list[dict]:
    from indexing.milvus import MilvusCollection
    from indexing.milvus_client import MilvusConfig

    n, d = vectors.shape
    spec = ModelSpec(model=None, pretrained=None, source="bench vectors", fingerprint="bench", embed_dim=d)
    cfg = MilvusConfig(index_type=args.index_type, flush_rows=n + 1, timeout_s=600)
    start = time.perf_counter()
    coll = MilvusCollection.create_empty(folder / "bench.db", "bench", spec, config=cfg)
    records = [ImageRecord(i, f"{i}.png", "file", None, None, f"{i:064x}", 1, 0.0, 0.0) for i in range(n)]
    for s in range(0, n, 10_000):
        coll.commit(Change(records[s : s + 10_000], vectors[s : s + 10_000]))
    coll.flush()
    # Milvus Lite builds the index of a flushed segment in a background thread (its describe_index says "Finished"
    # at once), searching it by brute force meanwhile; loading the collection again builds what is missing first.
    coll.client.release_collection(coll.name)
    coll.client.load_collection(coll.name, timeout=3600)
    build = time.perf_counter() - start
    rows = []
    for ef in args.ef:
        found = coll.search_vector(queries, k=10, nprobe=ef).ids
        batch, one = qps(lambda q, ef=ef: coll.search_vector(q, k=10, nprobe=ef), queries, args.single)
        rows.append(
            {
                "peer": f"milvus lite {args.index_type}",
                "breadth": f"{'ef' if args.index_type == 'HNSW' else 'nprobe'} {ef}",
                "build_s": round(build, 1),
                "recall@10": round(recall(found, truth), 4),
                "qps_batch": round(batch, 1),
                "qps_single": round(one, 1),
            }
        )
    coll.close()
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=20_000, help="database vectors (default 20,000)")
    p.add_argument("--d", type=int, default=512)
    p.add_argument("--clusters", type=int, default=1000)
    p.add_argument("--queries", type=int, default=200, help="fresh queries (recall and batch QPS)")
    p.add_argument("--single", type=int, default=50, help="queries timed one at a time")
    p.add_argument("--ef", default="16,32,64,128,256", help="Milvus search breadths (HNSW ef, IVF_FLAT nprobe)")
    p.add_argument("--index-type", default="HNSW", choices=["HNSW", "IVF_FLAT", "FLAT"])
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.ef = [int(x) for x in args.ef.split(",")]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    rng = np.random.default_rng(args.seed)
    vectors, centres = clustered(args.n, args.d, args.clusters, rng)
    queries, _ = clustered(args.queries, args.d, args.clusters, rng, centres)
    truth = exact_top10(vectors, queries)
    batch, one = qps(lambda q: exact_top10(vectors, q), queries, args.single)
    rows = [{"peer": "exact (NumPy)", "breadth": "-", "build_s": 0, "recall@10": 1.0, "qps_batch": round(batch, 1),
             "qps_single": round(one, 1)}]  # fmt: skip
    start = time.perf_counter()
    index, info = faiss_index.build(vectors, np.arange(args.n, dtype=np.int64), IndexConfig(exact_threshold=1000))
    build = time.perf_counter() - start
    _, found = faiss_index.search(index, info, queries, 10)
    batch, one = qps(lambda q: faiss_index.search(index, info, q, 10), queries, args.single)
    rows.append(
        {"peer": f"faiss auto {info.factory}", "breadth": f"nprobe {info.nprobe}", "build_s": round(build, 1),
         "recall@10": round(recall(found, truth), 4), "qps_batch": round(batch, 1), "qps_single": round(one, 1)}
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as folder:
        rows += milvus_rows(args, vectors, queries, truth, Path(folder))
    report("milvus", rows, n=args.n, d=args.d, queries=args.queries, index_type=args.index_type)


if __name__ == "__main__":
    main()
