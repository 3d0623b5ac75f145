"""`vlm train-seg`: train the segmentation decoder over a frozen encoder on (image, phrase, mask) data."""

from __future__ import annotations

import argparse
import json

from vlm import config


def register(sub: argparse._SubParsersAction) -> None:
    from vlm.segment.train import SegTrainConfig

    p = sub.add_parser(
        "train-seg",
        help="train the referring-segmentation decoder (CLIPSeg-style) over a frozen encoder",
        description="Data: phrases.csv (path,mask_path,phrase, as `vlm synth` writes), a folder of images/ and "
        "masks/<stem>__<phrase>.png, or a COCO/RefCOCO-style JSON. Resume with --resume.",
    )
    p.add_argument("--config", help="YAML or JSON file of settings; flags given here override it")
    config.add_arguments(p, SegTrainConfig)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from eval.segmentation import validate_decoder
    from vlm.segment.train import SegTrainConfig, train_decoder

    cfg = config.resolve(SegTrainConfig, args, args.config)
    result = train_decoder(cfg, validate=validate_decoder)
    print(json.dumps({"final_checkpoint": str(result.final_checkpoint), "steps": result.steps, **result.metrics}))
