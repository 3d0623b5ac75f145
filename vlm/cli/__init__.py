"""The `vlm` command line. One module per command; each parses its flags, calls one library function and prints
the result, so everything the CLI does is also a library call.

    vlm synth DIR --scenes N --seed S        make the synthetic shapes dataset
    vlm train --train-data pairs.csv ...     train or fine-tune encoders (torchrun for several processes)
    vlm info MODEL [--pretrained TAG]        load a model and describe it
    vlm explain IMAGE TEXT --out heat.png   where in the image a text matches, and how well
    vlm serve [--model M] [--images DIR]     the web app (as `python app.py`)
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from vlm.cli.parsing import Parser
from vlm.errors import VLMError
from vlm.printable import printable

# Command modules under vlm/cli/, in the order `vlm --help` lists them. Each has `register(subparsers)`.
COMMANDS = [
    *("synth", "train", "info", "evaluate", "classify", "explain", "segment", "train_seg", "index", "export"),
    *("demo", "serve"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="vlm", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"vlm.cli.{name}").register(sub)
    return parser


def configure_logging(verbose: bool = False) -> None:
    """Our packages log at INFO (DEBUG with -v); libraries only warn. Under torchrun, ranks other than 0 only warn."""
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    level = (logging.DEBUG if verbose else logging.INFO) if is_main_process() else logging.WARNING
    for name in ("vlm", "eval", "indexing", "ui"):
        logging.getLogger(name).setLevel(level)


def is_main_process() -> bool:
    return os.environ.get("RANK", "0") == "0"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    try:
        args.run(args)
    except VLMError as e:
        print(f"vlm {args.command}: error: {printable(e, lines=True)}", file=sys.stderr)  # file names may hold escapes
        return 2
    except KeyboardInterrupt:
        print(f"vlm {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0
