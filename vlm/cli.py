"""The `vlm` command line: each command parses its flags, calls one library function and prints the result.

vlm synth DIR --scenes N --seed S        make the synthetic shapes dataset
vlm train --train-data pairs.csv ...     train or fine-tune encoders (torchrun for several processes)
vlm info MODEL [--pretrained TAG]        load a model and describe it
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable

from vlm import config
from vlm.errors import VLMError

LOG = logging.getLogger("vlm")


# -- synth ------------------------------------------------------------------------------------------------------


def add_synth(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="make the seeded synthetic shapes dataset (images, captions, masks, phrases)")
    p.add_argument("out_dir", help="output directory (created; refuses a non-empty directory it did not make)")
    p.add_argument("--scenes", type=int, default=6000, help="number of scenes (default: 6000)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--size", type=int, default=128, help="image side in pixels (default: 128)")
    p.set_defaults(run=run_synth)


def run_synth(args: argparse.Namespace) -> None:
    from vlm.synth import generate

    summary = generate(args.out_dir, args.scenes, args.seed, args.size, progress=True)
    print(
        f"wrote {summary.scenes} scenes, {summary.pairs} captions, {summary.objects} object masks to {summary.out_dir}"
    )


# -- train ------------------------------------------------------------------------------------------------------


def add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train or fine-tune image and text encoders on image-text pairs",
        description="Contrastive training (symmetric InfoNCE or SigLIP). Several processes: "
        "torchrun --nproc_per_node N -m vlm train ...",
    )
    p.add_argument("--config", help="YAML or JSON file of settings; flags given here override it")
    config.add_arguments(p, config.TrainConfig)
    p.set_defaults(run=run_train)


def run_train(args: argparse.Namespace) -> None:
    from vlm.train import train

    cfg = config.resolve(config.TrainConfig, args, args.config)
    result = train(cfg)
    if result.metrics:
        print(json.dumps({"final_checkpoint": str(result.final_checkpoint), **result.metrics}, indent=2))
    else:
        print(f"final checkpoint: {result.final_checkpoint}")


# -- info -------------------------------------------------------------------------------------------------------


def add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="load a model and describe it (source, size, fingerprint, provenance)")
    p.add_argument("model", help="open_clip name, checkpoint directory, hf-hub: id, or 'demo'")
    p.add_argument("--pretrained", help="pretrained tag or weights file")
    p.set_defaults(run=run_info)


def run_info(args: argparse.Namespace) -> None:
    from vlm.models import load

    print(json.dumps(load(args.model, args.pretrained).describe(), indent=2, default=str))


# ---------------------------------------------------------------------------------------------------------------

COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [add_synth, add_train, add_info]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vlm", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        args.run(args)
    except VLMError as e:
        print(f"vlm {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"vlm {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0
