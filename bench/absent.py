"""Can the classifier say "none of these labels fits"? The rate of "none fits well" (`vlm.calibration`: no label
reaches the threshold of its domain) on out-of-domain images (Fashion-MNIST clothes from ../shared/data) against
labels the model knows, beside the same rate on in-domain images with their own label among the labels:

- Fashion-MNIST against the 48 shape labels, and fresh synthetic single-object scenes (their own seeds, not the
  calibration's) against the same labels;
- held-out icons that the calibration did not sample (`vlm/demo_data/icons`), each against its own name and 6 other
  icon names, and Fashion-MNIST against 7 icon names (seeded draws);
- for the demo model, Fashion-MNIST against the Classify labels of its card (the app's first-visit labels).

The thresholds are measured by `vlm.calibration.reference_fit` on the model's reference data (per domain: the 5 %
quantile of the cosine between its images and their own label); this benchmark only applies them. It also counts
the app's "fits only weakly" (the best fitting label below the lower quartile of its domain's true matches). A good
model says "none fits" on nearly every clothing image and on few in-domain images (about 5 % by construction).

    python -m bench.absent                      # the demo model, 500 Fashion-MNIST images, 5 scenes per label
    python -m bench.absent --model runs/x/final --images 1000
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys

import numpy as np
from PIL import Image

from bench.common import report, shared_data
from vlm import demo, models
from vlm.calibration import DEMO_ICONS, REFERENCE_SIZE, REFERENCE_TEMPLATES, WEAK_FIT, read_reference, reference_fit
from vlm.cli import configure_logging
from vlm.synth import LABELS, single_object_scene
from vlm.zeroshot import build_classifier, embed_images

LOG = logging.getLogger("bench.absent")

FIRST_SEED = 2_000_000  # in-domain scenes: seeds far from the calibration's (1000+)
OTHERS = 6  # other labels beside an icon's own name; Fashion-MNIST gets OTHERS + 1 icon names


def none_fits(cal, labels: list[str], cosines: np.ndarray) -> np.ndarray:
    """Per image (row of `cosines`, one column per label): 0 when no label reaches its domain's threshold, 1 when
    the best fitting label fits only weakly (fit below `WEAK_FIT`), 2 when it fits (what the app says)."""
    fits = np.array([[cal.fit(c, label) for c, label in zip(r, labels, strict=True)] for r in cosines])
    reach = cosines >= np.array([cal.threshold(label) for label in labels])
    best = np.where(reach, fits, -1.0).max(axis=1)
    return np.where(best < 0, 0, np.where(best < WEAK_FIT, 1, 2))


def row(what: str, labels: str, verdicts: np.ndarray, best: np.ndarray) -> dict:
    return {"images": what, "labels": labels, "count": len(verdicts),
            "none_fits_rate": float(np.mean(verdicts == 0)), "none_or_weak_rate": float(np.mean(verdicts < 2)),
            "median_best_cosine": float(np.median(best))}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="demo", help="model to measure (default: demo)")
    p.add_argument("--pretrained", help="weights for an open_clip model name")
    p.add_argument("--images", type=int, default=500, help="Fashion-MNIST images (default: 500)")
    p.add_argument("--per-label", type=int, default=5, help="in-domain scenes per shape label (default: 5)")
    p.add_argument("--icons", type=int, default=300, help="held-out icons not used by the calibration (default: 300)")
    p.add_argument("--seed", type=int, default=0, help="seed of the label draws (default: 0)")
    p.add_argument("--device", default=None)
    args = p.parse_args(argv)
    configure_logging()
    encoders = models.load(args.model, args.pretrained, device=args.device, precision="fp32")
    cal = reference_fit(encoders)
    rng = np.random.default_rng(args.seed)
    fashion = shared_data("fashion_mnist_train5k")
    with open(fashion / "labels.csv", newline="", encoding="utf-8") as f:
        paths = [fashion / r["path"] for r in csv.DictReader(f)][: args.images]
    outside = embed_images(encoders, [Image.open(path).convert("RGB") for path in paths])
    scenes = [
        single_object_scene(label.split(" ")[1], label.split(" ")[0], REFERENCE_SIZE, seed=FIRST_SEED + i)
        for i, label in enumerate(label for label in LABELS for _ in range(args.per_label))
    ]
    shapes = build_classifier(encoders, list(LABELS), REFERENCE_TEMPLATES)
    rows = []
    for what, emb in (("Fashion-MNIST (out of domain)", outside), ("synthetic shapes (in domain)", None)):
        cos = shapes.similarity(emb if emb is not None else embed_images(encoders, scenes)).numpy()
        rows.append(row(what, "48 shape labels", none_fits(cal, shapes.labels, cos), cos.max(1)))
    # Held-out icons the calibration did not sample, with their own name among OTHERS drawn from the rest.
    sampled = {path for path, _ in read_reference(DEMO_ICONS)[2]} if demo.ICONS.is_dir() else set()
    icons = [r for r in (read_reference(DEMO_ICONS, limit=10**6)[2] if sampled else []) if r[0] not in sampled]
    if icons:
        icons = [icons[i] for i in sorted(rng.choice(len(icons), min(args.icons, len(icons)), replace=False))]
        names = sorted({c for _, c in icons})
        clf = build_classifier(encoders, names, REFERENCE_TEMPLATES)
        index = {c: i for i, c in enumerate(clf.labels)}
        cos = clf.similarity(embed_images(encoders, [Image.open(p).convert("RGB") for p, _ in icons])).numpy()
        verdicts, best = [], []
        for i, (_, own) in enumerate(icons):
            others = [c for c in rng.choice(names, OTHERS + 1, replace=False) if c != own][:OTHERS]
            chosen = [own, *others]
            c = cos[i, [index[x] for x in chosen]][None]
            verdicts.append(none_fits(cal, chosen, c)[0])
            best.append(c.max())
        rows.append(
            row("held-out icons (in domain)", f"own name + {OTHERS} icon names", np.array(verdicts), np.array(best))
        )
        drawn = [list(rng.choice(names, OTHERS + 1, replace=False)) for _ in paths]
        all_cos = clf.similarity(outside).numpy()
        picked = [all_cos[i, [index[x] for x in d]] for i, d in enumerate(drawn)]
        verdicts = np.array([none_fits(cal, d, c[None])[0] for d, c in zip(drawn, picked, strict=True)])
        best = np.array([c.max() for c in picked])
        rows.append(row("Fashion-MNIST (out of domain)", f"{OTHERS + 1} icon names", verdicts, best))
    card = list(demo.describe(encoders.provenance).labels)
    if card:
        clf = build_classifier(encoders, card, REFERENCE_TEMPLATES)
        cos = clf.similarity(outside).numpy()
        rows.append(row("Fashion-MNIST (out of domain)", f"the card's {len(card)} Classify labels",
                        none_fits(cal, clf.labels, cos), cos.max(1)))  # fmt: skip
    report("absent", rows, model=encoders.source, fingerprint=encoders.fingerprint, calibration=cal.how,
           thresholds={d.name: d.threshold for d in cal.domains})  # fmt: skip
    for r in rows:
        print(f"'none fits well' on {r['none_fits_rate']:.1%} (or 'fits only weakly': {r['none_or_weak_rate']:.1%}) "
              f"of {r['count']} {r['images']} against {r['labels']}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
