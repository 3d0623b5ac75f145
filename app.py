"""Start the web app: `python app.py` serves the embedded demo at http://127.0.0.1:7860 (offline).

    python app.py                                                   the demo model and demo collection
    python app.py --model ViT-B-32 --pretrained laion2b_s34b_b79k --images ~/Pictures
    python app.py --model runs/train/final --collection runs/photos.coll
    python app.py --host 0.0.0.0 --auth alice:secret                reachable from other machines, with a password

Only parses arguments and launches (`vlm serve` is the same); everything else is in `ui/` (see ui/README.md).
"""

from __future__ import annotations

import argparse
import sys

from ui.serve import ServeConfig, add_arguments, serve, serve_config
from vlm.cli import configure_logging
from vlm.cli.parsing import Parser
from vlm.errors import VLMError


def parse_args(argv: list[str] | None = None) -> tuple[ServeConfig, bool]:
    """The app's options and whether to log verbosely."""
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    return serve_config(p, args), args.verbose


def main(argv: list[str] | None = None) -> int:
    cfg, verbose = parse_args(argv)
    configure_logging(verbose)
    try:
        serve(cfg)
    except VLMError as e:
        print(f"app: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
