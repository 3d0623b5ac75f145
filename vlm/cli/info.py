"""`vlm info MODEL`: load a model and describe it."""

from __future__ import annotations

import argparse
import json

from vlm.cli.options import add_model_options, model_options


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="load a model and describe it (source, size, fingerprint, provenance)")
    p.add_argument("model", help="open_clip name, checkpoint directory, hf-hub: id, or 'demo'")
    add_model_options(p, exclude=("model",))
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from vlm.models import load

    opts = model_options(args)
    encoders = load(args.model, opts.pretrained, device=opts.device, precision=opts.precision)
    print(json.dumps(encoders.describe(), indent=2, default=str))
