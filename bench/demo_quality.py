"""Issue 18's figures for demo models, side by side in one run: the shipped one and (once trained) the new one.

On the held-out parts of a `vlm demo corpus` folder (vlm/README.md), none of which any model here trains on:
- held-out style (OpenMoji, never trained on), its English names as captions: text->image R@1 and R@5 (target 0.50);
- 10-way emoji-category zero-shot on OpenMoji (target 0.50);
- held-out icons (a seeded 5 % of every icon set): text->image R@1 and R@5;
- shapes zero-shot: 48-way top-1 on held-out synthetic scenes, as `bench.shapes_zeroshot` (target 0.90);
- per-language text->image R@5 on OpenMoji with its CLDR names in en, de, fr, es, zh, ja;
- with --style-gap, where the unseen-style gap sits (`eval.demo.style_gap`): per trained emoji style, its English
  names against its own (trained) images, and OpenMoji images against its images (the image tower alone).

    python -m bench.demo_quality                                          # the shipped demo model
    python -m bench.demo_quality --model demo --model runs/demo-corpus-train/final    # current and new, one table
    python -m bench.demo_quality --model demo --style-gap     # + the style-gap diagnostic rows
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from bench.common import report
from eval.demo import SHAPES_FIGURE, corpus_figures, shapes_zeroshot, style_gap
from vlm import models
from vlm.cli import configure_logging

LOG = logging.getLogger("bench.demo_quality")
TARGETS = {
    "held-out style text->image R@5": 0.5,
    "emoji category zero-shot top-1": 0.5,
    SHAPES_FIGURE: 0.9,
}


def figures(model: str, corpus: str, per_label: int, gap: bool = False) -> dict[str, object]:
    start = time.perf_counter()
    encoders = models.load(model, device="cpu", precision="fp32")
    row: dict[str, object] = {"model": model, "fingerprint": encoders.fingerprint}
    row.update(corpus_figures(encoders, corpus))
    row[SHAPES_FIGURE] = shapes_zeroshot(encoders, per_label)
    if gap:
        row.update(style_gap(encoders, corpus))
    row["seconds"] = time.perf_counter() - start
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", help="a model to evaluate; repeat for several (default: demo)")
    p.add_argument("--corpus", default="runs/demo-corpus", help="a `vlm demo corpus` folder (default: %(default)s)")
    p.add_argument("--per-label", type=int, default=10, help="shape scenes per label (default: 10, so 480)")
    p.add_argument("--style-gap", action="store_true", help="also the style-gap diagnostic (eval.demo.style_gap)")
    args = p.parse_args(argv)
    configure_logging()
    logging.getLogger("bench").setLevel(logging.INFO)
    rows = [figures(m, args.corpus, args.per_label, args.style_gap) for m in args.model or ["demo"]]
    # one line per figure, one column per model: the models side by side
    names = [k for k in rows[0] if k not in ("model", "fingerprint")]
    table = [{"figure": k, **{f"[{i}] {r['model']}": r[k] for i, r in enumerate(rows)}, "target": TARGETS.get(k)}
             for k in names]  # fmt: skip
    report("demo_quality", table, corpus=args.corpus, per_label=args.per_label, style_gap=args.style_gap, models=rows)
    for r in rows:
        met = [k for k, t in TARGETS.items() if r[k] >= t]  # type: ignore[operator]
        print(f"{r['model']}: {len(met)} of {len(TARGETS)} targets met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
