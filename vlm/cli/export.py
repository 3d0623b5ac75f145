"""`vlm export onnx MODEL [--out DIR] [--quantize]`: the model's image and text towers as ONNX files (dynamic batch),
which `vlm index` and the app then run through ONNX Runtime on a CPU (vlm/onnx_export.py, vlm/onnx_runtime.py).

    vlm export onnx runs/x/final                          # into runs/x/final/onnx/, found there automatically
    vlm export onnx ViT-B-32 --pretrained w.bin           # into w-onnx/ beside the weights file
    vlm export onnx ViT-B-32 --pretrained TAG --out DIR   # a model without a folder: name DIR later with --onnx DIR
"""

from __future__ import annotations

import argparse
import json

from vlm.cli.options import add_model_options, model_options


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a model for another runtime (ONNX)", description=__doc__)
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    formats = p.add_subparsers(dest="format", required=True, metavar="FORMAT")
    o = formats.add_parser("onnx", help="image and text towers as ONNX files, checked against PyTorch")
    o.add_argument("model", help="open_clip name, checkpoint directory, hf-hub: id, or 'demo'")
    add_model_options(o, exclude=("model", "device", "precision"))  # exported from the CPU in fp32
    o.add_argument("--out", help="the export folder (default: next to the model: MODEL/onnx for a checkpoint folder)")
    o.add_argument(
        "--quantize", action="store_true",
        help="also write int8 (dynamically quantised) towers, used only with --runtime onnx-int8",
    )  # fmt: skip
    o.set_defaults(run=run_onnx)


def run_onnx(args: argparse.Namespace) -> None:
    from vlm.errors import ModelError
    from vlm.models import load
    from vlm.onnx_export import default_folder, export, read_manifest

    pretrained = model_options(args).pretrained
    out = args.out or default_folder(args.model, pretrained)
    if out is None:
        raise ModelError(f"{args.model} has no folder of its own to export next to; pass --out DIR")
    folder = export(load(args.model, pretrained, device="cpu", precision="fp32"), out, quantize=args.quantize)
    manifest = read_manifest(folder)
    print(
        json.dumps(
            {"folder": str(folder), **{k: manifest[k] for k in ("fingerprint", "int8_fingerprint", "checked")}},
            indent=2,
        )
    )
