"""`vlm synth DIR`: make the seeded synthetic shapes dataset."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="make the seeded synthetic shapes dataset (images, captions, masks, phrases)")
    p.add_argument("out_dir", help="output directory (created; refuses a non-empty directory it did not make)")
    p.add_argument("--scenes", type=int, default=6000, help="number of scenes (default: 6000)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--size", type=int, default=128, help="image side in pixels (default: 128)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from vlm.synth import generate

    summary = generate(args.out_dir, args.scenes, args.seed, args.size, progress=True)
    print(
        f"wrote {summary.scenes} scenes, {summary.pairs} captions, {summary.objects} object masks to {summary.out_dir}"
    )
