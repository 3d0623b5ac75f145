"""`vlm eval zeroshot DATA`: zero-shot classification accuracy on a labelled image dataset."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from vlm.cli.options import add_model_options, add_report_options, load_model


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "zeroshot",
        help="zero-shot classification: top-1/top-5 accuracy, mean per-class recall, confusion matrix",
        description="Prompts every class name with the templates, averages the prompt embeddings per class and "
        "classifies each image by cosine similarity (clip-benchmark's definitions).",
    )
    p.add_argument("data", help="class folder, CSV/TSV (path,label), Hugging Face dataset folder/file, or CIFAR folder")
    p.add_argument("--format", default="auto", choices=["auto", "folder", "csv", "tsv", "hf", "cifar"])
    p.add_argument("--image-key", help="image column (CSV/HF; default: detected)")
    p.add_argument("--label-key", help="label column (default: detected)")
    p.add_argument("--split", help="Hugging Face split, or CIFAR 'train'/'test' (default: test)")
    p.add_argument("--class-names", help="comma-separated class names by class id, overriding the dataset's")
    p.add_argument("--templates", help="template set name, JSON file, or one template with {c} (default: generic)")
    add_model_options(p)
    add_report_options(p, "<out>/zeroshot.json, zeroshot.md and zeroshot_confusion.png")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from eval.datasets import read_labelled
    from eval.report import metrics_markdown, write_report
    from eval.zeroshot import evaluate_zeroshot
    from vlm.templates import resolve
    from vlm.zeroshot import parse_labels

    templates = resolve(args.templates)  # checked before the data and the model load
    names = [n.strip() for n in parse_labels(args.class_names)] if args.class_names else None
    data = read_labelled(
        args.data, format=args.format, image_key=args.image_key, label_key=args.label_key, class_names=names,
        split=args.split, workers=args.workers, progress=True,
    )  # fmt: skip
    encoders = load_model(args)
    result = evaluate_zeroshot(
        encoders, data, templates, batch_size=args.batch_size, workers=args.workers, progress=True
    )
    record = {"model": encoders.source, "fingerprint": encoders.fingerprint, "data": data.source,
              "bad_rows": len(data.bad), **result.to_dict()}  # fmt: skip
    if args.out:
        files = write_report(
            Path(args.out), "zeroshot", result.metrics, record, confusion=result.confusion, classes=result.classes
        )
        print(f"wrote {files.json}, {files.markdown}, {files.confusion}")
    if args.json:
        print(json.dumps(record, indent=2))
    else:
        print(
            metrics_markdown(
                result.metrics, title=f"zero-shot: {encoders.source} on {data.source} ({len(data)} images)"
            )
        )
    if result.truncated:
        print(f"note: prompts for {len(result.truncated)} class name(s) exceeded the text context and were cut")
