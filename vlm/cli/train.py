"""`vlm train`: train or fine-tune image and text encoders on image-text pairs."""

from __future__ import annotations

import argparse
import json
import signal

from vlm import config
from vlm.cli import is_main_process


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train or fine-tune image and text encoders on image-text pairs",
        description="Contrastive training (symmetric InfoNCE or SigLIP). Several processes: "
        "torchrun --nproc_per_node N -m vlm train ...",
    )
    p.add_argument("--config", help="YAML or JSON file of settings; flags given here override it")
    config.add_arguments(p, config.TrainConfig)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from eval.retrieval import evaluate_pairs
    from vlm.train import train

    cfg = config.resolve(config.TrainConfig, args, args.config)
    # SIGINT (Ctrl-C, or the app's Stop) saves a checkpoint and exits. A shell starts background jobs with SIGINT
    # ignored and Python then keeps it ignored, so a run started with `&` would not stop: take it back explicitly.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    result = train(cfg, validate=evaluate_pairs)
    if is_main_process():
        print(
            json.dumps(
                {"final_checkpoint": str(result.final_checkpoint), "steps": result.steps, **result.metrics}, indent=2
            )
        )
