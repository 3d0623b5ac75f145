"""`vlm serve`: the web app, as `python app.py` starts it (the same options; see ui/serve.py)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from ui.serve import add_arguments

    p = sub.add_parser("serve", help="serve the web app (classify, search, segment, train) in the browser")
    add_arguments(p)
    p.set_defaults(run=run, parser=p)


def run(args: argparse.Namespace) -> None:
    from ui.serve import serve, serve_config

    serve(serve_config(args.parser, args))
