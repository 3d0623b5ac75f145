"""The Milvus side of `vlm index` (indexing/milvus.py): `--milvus NAME` makes COLLECTION a Milvus URI and NAME the
collection in it, for `build`, `add`, `sync`, `remove`, `search` and `info`; `export-milvus` copies a FAISS
collection over.

vlm index build runs/photos.db photos/ --milvus photos --model demo          Milvus Lite: a local .db file
MILVUS_TOKEN=user:pass vlm index search http://milvus:19530 --milvus photos --text "a beach" --folder 2024
vlm index export-milvus runs/photos.coll http://milvus:19530 --name photos   no re-embedding
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os

INDEX_TYPES = ("HNSW", "IVF_FLAT", "FLAT")  # as indexing.milvus_client.INDEX_TYPES (kept torch-free here)


def add_options(parser: argparse.ArgumentParser, *, new: bool = False) -> None:
    """`--milvus NAME` (and, for a command that may create one, the index type) plus the token and timeout."""
    g = parser.add_argument_group("Milvus (COLLECTION is then a URI: http://HOST:19530, or FILE.db for Milvus Lite)")
    g.add_argument("--milvus", metavar="NAME", help="the collection NAME in the Milvus at COLLECTION")
    add_connection_options(g)
    if new:
        g.add_argument("--index-type", default="HNSW", choices=INDEX_TYPES, help="a new Milvus collection's index")


def add_connection_options(g) -> None:
    g.add_argument("--token-env", default="MILVUS_TOKEN", help="environment variable holding the token (user:password)")
    g.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for each Milvus call (and to connect)")


def config(args: argparse.Namespace):
    from indexing.milvus_client import MilvusConfig

    return MilvusConfig(index_type=getattr(args, "index_type", "HNSW"), timeout_s=args.timeout)


def token(args: argparse.Namespace) -> str:
    return os.environ.get(args.token_env, "")


def open_collection(args: argparse.Namespace, *, read_only: bool, **kwargs):
    """The collection the arguments name: a Milvus collection with `--milvus`, else the FAISS collection folder."""
    if getattr(args, "milvus", None):
        from indexing.milvus import MilvusCollection

        return MilvusCollection.open(
            args.collection, args.milvus, read_only=read_only, token=token(args), config=config(args), **kwargs
        )
    from indexing.collection import Collection

    return Collection.open(args.collection, read_only=read_only, **kwargs)


def create(args: argparse.Namespace, model: str, **kwargs):
    """`vlm index build --milvus NAME`: the Milvus collection, created or (same model) continued."""
    from indexing.milvus import MilvusCollection

    return MilvusCollection.create(
        args.collection, args.milvus, model, token=token(args), config=config(args), exist_ok=True, **kwargs
    )


def info(coll) -> dict:
    return {
        "location": coll.location,
        "count": coll.count,
        "version": coll.version,
        "next_id": coll.next_id,
        "root": str(coll.root_dir) if coll.root_dir else None,
        "model": dataclasses.asdict(coll.model),
        "index": coll.config.index_type,
        "index_params": coll.config.index_params(),
    }


def register_export(actions) -> None:
    m = actions.add_parser(
        "export-milvus",
        help="copy a collection's vectors and metadata into a Milvus collection (server, cluster or Milvus Lite file)",
    )
    m.add_argument("collection")
    m.add_argument("uri", help="http://HOST:19530 (a server or cluster) or FILE.db (Milvus Lite, embedded)")
    m.add_argument("--name", help="the Milvus collection (default: from the collection folder's name)")
    m.add_argument("--index-type", default="HNSW", choices=INDEX_TYPES, help="for a new collection")
    add_connection_options(m)
    m.set_defaults(run=run_export)


def run_export(args: argparse.Namespace) -> None:
    from indexing.collection import Collection
    from indexing.milvus_export import export

    source = Collection.open(args.collection)
    print(export(source, args.uri, args.name, token=token(args), config=config(args)).summary())


def print_info(coll) -> None:
    print(json.dumps(info(coll), indent=2, default=str))
