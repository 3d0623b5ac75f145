"""`vlm eval retrieval DATA`: image<->text recall@K on a caption dataset (several captions per image)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from vlm.cli.options import add_model_options, add_report_options, load_model


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "retrieval",
        help="image->text and text->image recall@K on image-caption pairs",
        description="A hit when any of an image's captions is in its top K texts (text_retrieval_recall@K), or when a "
        "caption's image is in its top K images (image_retrieval_recall@K), as clip-benchmark counts them.",
    )
    p.add_argument("data", help="pairs: CSV/TSV/JSONL, caption folder, HF dataset or WebDataset shards")
    p.add_argument("--format", default="auto", choices=["auto", "csv", "tsv", "jsonl", "folder", "hf", "webdataset"])
    p.add_argument("--image-key", help="image column (default: detected)")
    p.add_argument("--caption-key", help="caption column (default: detected)")
    p.add_argument("--ks", type=int, nargs="+", default=[1, 5, 10], help="K values (default: 1 5 10)")
    add_model_options(p)
    add_report_options(p, "<out>/retrieval.json and retrieval.md")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from eval.report import metrics_markdown, write_report
    from eval.retrieval import evaluate_pairs
    from vlm.data import read_pairs
    from vlm.errors import ConfigError

    if any(k < 1 for k in args.ks):
        raise ConfigError(f"--ks must be positive, got {args.ks}")
    table = read_pairs(
        args.data, format=args.format, image_key=args.image_key, caption_key=args.caption_key,
        workers=args.workers, progress=True,
    )  # fmt: skip
    print(table.summary())
    encoders = load_model(args)
    metrics = evaluate_pairs(
        encoders, table.pairs, ks=args.ks, batch_size=args.batch_size, workers=args.workers, progress=True
    )
    record = {"model": encoders.source, "fingerprint": encoders.fingerprint, "data": table.source,
              "images": len(table.pairs), "captions": sum(len(p.captions) for p in table.pairs),
              "bad_rows": len(table.bad), "metrics": metrics}  # fmt: skip
    if args.out:
        files = write_report(Path(args.out), "retrieval", metrics, record)
        print(f"wrote {files.json}, {files.markdown}")
    if args.json:
        print(json.dumps(record, indent=2))
    else:
        print(metrics_markdown(metrics, title=f"retrieval: {encoders.source} on {table.source}"))
