"""`vlm eval TASK`: evaluate a model; each task lives in its own module `vlm/cli/eval_<task>.py`."""

from __future__ import annotations

import argparse
import importlib

# Task modules under vlm/cli/, each with `register(subparsers)`.
TASKS = ["zeroshot", "retrieval", "segmentation"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a model: zero-shot classification, retrieval, segmentation")
    tasks = p.add_subparsers(dest="task", required=True, metavar="TASK")
    for name in TASKS:
        importlib.import_module(f"vlm.cli.eval_{name}").register(tasks)
