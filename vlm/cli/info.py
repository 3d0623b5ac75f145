"""`vlm info MODEL`: load a model and describe it."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="load a model and describe it (source, size, fingerprint, provenance)")
    p.add_argument("model", help="open_clip name, checkpoint directory, hf-hub: id, or 'demo'")
    p.add_argument("--pretrained", help="pretrained tag or weights file")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from vlm.models import load

    print(json.dumps(load(args.model, args.pretrained).describe(), indent=2, default=str))
