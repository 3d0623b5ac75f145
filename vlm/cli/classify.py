"""`vlm classify IMAGE --labels "cat, dog"`: zero-shot probabilities of any labels for one or more images."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from vlm.cli.options import add_model_options, load_model
from vlm.errors import ConfigError
from vlm.printable import printable


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "classify",
        help="zero-shot classify images with any labels",
        description="Labels are split on commas (or read one per line from --labels-file); whitespace is tidied, "
        "empty entries and case-insensitive duplicates are dropped. Probabilities are a softmax over all labels.",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--labels", help='comma-separated labels, e.g. "cat, dog, bird"')
    group.add_argument("--labels-file", help="a text file with one label per line")
    p.add_argument("--templates", help="template set name, JSON file, or one template with {c} (default: generic)")
    p.add_argument("--top-k", type=int, default=5, help="labels to print per image (default: 5)")
    add_model_options(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=run)


def _labels(args: argparse.Namespace) -> str:
    if args.labels is not None:
        return args.labels
    path = Path(args.labels_file)
    if not path.is_file():
        raise ConfigError(f"labels file not found: {path}")
    return path.read_text(encoding="utf-8")


def run(args: argparse.Namespace) -> None:
    from vlm.readers.images import ImageRef
    from vlm.templates import resolve
    from vlm.zeroshot import build_classifier, clean_labels, embed_images, top_k

    if args.top_k < 1:
        raise ConfigError(f"--top-k must be >= 1, got {args.top_k}")
    clean = clean_labels(_labels(args))
    if len(clean.labels) < 2:
        raise ConfigError(
            f"one label given ({clean.labels[0]!r}): a probability over one label is always 100 %. Give at least two "
            f'labels to choose between (e.g. --labels "{clean.labels[0]}, something else")'
        )
    templates = resolve(args.templates)  # checked before the model loads
    if clean.duplicates or clean.empty:
        print(f"note: dropped {len(clean.duplicates)} duplicate and {clean.empty} empty label(s)")
    images = [ImageRef("file", path).open() for path in args.images]  # a DataError names a bad file
    encoders = load_model(args)
    clf = build_classifier(encoders, clean.labels, templates)
    predictions = top_k(clf.probs(embed_images(encoders, images)), clf.labels, args.top_k)
    if clf.truncated:
        print(f"note: {len(clf.truncated)} label(s) were too long for the text encoder and were cut")
    if args.json:
        out = [{"image": path, "labels": list(p.labels), "probs": list(p.probs)}
               for path, p in zip(args.images, predictions, strict=True)]  # fmt: skip
        print(json.dumps(out, indent=2))
        return
    for path, p in zip(args.images, predictions, strict=True):
        print(printable(path))
        for label, prob in zip(p.labels, p.probs, strict=True):
            print(f"  {prob:7.2%}  {printable(label)}")
