"""`vlm eval segmentation --data phrases.csv`: mIoU, oIoU and precision@t; JSON, Markdown and example overlays."""

from __future__ import annotations

import argparse
import json

from vlm.cli.segment import add_segment_options


def register(tasks: argparse._SubParsersAction) -> None:
    p = tasks.add_parser(
        "segmentation",
        help="referring segmentation: mIoU, overall IoU, precision@0.5/0.7/0.9",
        description="Writes segmentation.json, segmentation.md and examples/*.png (truth | prediction | heat map).",
    )
    p.add_argument("--data", required=True, help="phrases.csv, a mask folder, or a COCO/RefCOCO-style JSON")
    p.add_argument("--data-format", default="auto", choices=["auto", "csv", "folder", "coco"])
    p.add_argument("--data-root", help="image paths are relative to this (default: the data file's folder)")
    p.add_argument("--split", help="RefCOCO-style refs: evaluate this split only")
    p.add_argument("--limit", type=int, help="evaluate the first N samples only")
    p.add_argument("--out", default="runs/eval/segmentation", help="report folder (default: runs/eval/segmentation)")
    p.add_argument("--examples", type=int, default=6, help="example pictures to write (default: 6)")
    add_segment_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from eval.segmentation import evaluate_segmentation, write_report
    from vlm.cli.segment import load_encoders_and_decoder, segment_kwargs
    from vlm.segment.data import read_segmentation

    table = read_segmentation(args.data, format=args.data_format, root=args.data_root, split=args.split)
    samples = table.samples[: args.limit] if args.limit else table.samples
    encoders, decoder = load_encoders_and_decoder(args)
    kwargs = segment_kwargs(args, decoder)
    result = evaluate_segmentation(
        encoders, samples, method=args.method, examples=args.examples, progress=True, **kwargs
    )
    if decoder is not None:
        result.settings["decoder"] = str(args.decoder)
    paths = write_report(result, args.out, data=str(args.data), model=encoders.describe())
    print(json.dumps({**result.metrics, "report": str(paths["markdown"]), "json": str(paths["json"])}, indent=2))
