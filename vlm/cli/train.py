"""`vlm train`: train or fine-tune image and text encoders on image-text pairs."""

from __future__ import annotations

import argparse
import json
import signal
import sys

from vlm import config
from vlm.cli import is_main_process
from vlm.lifeline import die_with_parent


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train or fine-tune image and text encoders on image-text pairs",
        description="Contrastive training (symmetric InfoNCE or SigLIP). Several processes: "
        "torchrun --nproc_per_node N -m vlm train ...",
    )
    p.add_argument("--config", help="YAML or JSON file of settings; flags given here override it")
    p.add_argument("--die-with-parent", type=int, metavar="PID",
                   help="stop (saving a checkpoint) when process PID ends; the web app passes its own pid")  # fmt: skip
    config.add_arguments(p, config.TrainConfig)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    # SIGINT (Ctrl-C, or the app's Stop) saves a checkpoint and exits. A shell starts background jobs with SIGINT
    # ignored and Python then keeps it ignored, so a run started with `&` would not stop: take it back explicitly,
    # first thing (a Stop during the imports below is then not lost; the stop file covers the moments before).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if args.die_with_parent is not None:
        die_with_parent(args.die_with_parent)
    from eval import reference
    from eval.retrieval import evaluate_pairs
    from vlm import finetune
    from vlm.train import train

    cfg = config.resolve(config.TrainConfig, args, args.config)
    # Fine-tune or from-scratch defaults for what was left unset, and the model's own reference set; said up front.
    cfg, notes = finetune.resolve(cfg)
    cfg, reference_notes = finetune.with_reference(cfg)
    if is_main_process():
        for note in notes + reference_notes:
            print(f"vlm train: {note}", file=sys.stderr)
    # Every reference set is read now: one that cannot be read stops the run before the model is even built.
    scorer = reference.load(cfg.data.reference, workers=max(1, cfg.data.workers)) if cfg.data.reference else None
    result = train(cfg, validate=evaluate_pairs, reference=scorer)
    if is_main_process():
        print(
            json.dumps(
                {"final_checkpoint": str(result.final_checkpoint), "steps": result.steps, **result.metrics}, indent=2
            )
        )
