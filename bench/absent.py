"""Can the classifier say "none of these labels fits"? The rate of "none fits well" (`vlm.calibration`) on
out-of-domain images (Fashion-MNIST clothes from ../shared/data) against the 48 shape labels, beside the same rate on
fresh in-domain images (synthetic single-object scenes from their own seeds, not the calibration's).

The threshold is measured by `vlm.calibration.reference_fit` on the model's reference data (the 5 % quantile of the
cosine between 192 synthetic single-object scenes and their own label); this benchmark only applies it. A good
model says "none fits" on nearly every clothing image and on few shape scenes.

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
from vlm import models
from vlm.calibration import REFERENCE_SIZE, REFERENCE_TEMPLATES, reference_fit
from vlm.cli import configure_logging
from vlm.synth import LABELS, single_object_scene
from vlm.zeroshot import build_classifier, embed_images

LOG = logging.getLogger("bench.absent")

FIRST_SEED = 2_000_000  # in-domain scenes: seeds far from the calibration's (1000+)


def best_cosines(encoders, images: list[Image.Image]) -> np.ndarray:
    clf = build_classifier(encoders, list(LABELS), REFERENCE_TEMPLATES)
    return clf.similarity(embed_images(encoders, images)).max(dim=1).values.numpy()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="demo", help="model to measure (default: demo)")
    p.add_argument("--pretrained", help="weights for an open_clip model name")
    p.add_argument("--images", type=int, default=500, help="Fashion-MNIST images (default: 500)")
    p.add_argument("--per-label", type=int, default=5, help="in-domain scenes per shape label (default: 5)")
    p.add_argument("--device", default=None)
    args = p.parse_args(argv)
    configure_logging()
    encoders = models.load(args.model, args.pretrained, device=args.device, precision="fp32")
    cal = reference_fit(encoders)
    fashion = shared_data("fashion_mnist_train5k")
    with open(fashion / "labels.csv", newline="", encoding="utf-8") as f:
        paths = [fashion / row["path"] for row in csv.DictReader(f)][: args.images]
    outside = best_cosines(encoders, [Image.open(path).convert("RGB") for path in paths])
    scenes = [
        single_object_scene(label.split(" ")[1], label.split(" ")[0], REFERENCE_SIZE, seed=FIRST_SEED + i)
        for i, label in enumerate(label for label in LABELS for _ in range(args.per_label))
    ]
    inside = best_cosines(encoders, scenes)
    rows = [
        {"images": what, "count": len(best), "none_fits_rate": float(np.mean(best < cal.threshold)),
         "median_best_cosine": float(np.median(best))}
        for what, best in (("Fashion-MNIST (out of domain)", outside), ("synthetic shapes (in domain)", inside))
    ]  # fmt: skip
    ratio = rows[0]["none_fits_rate"] / max(rows[1]["none_fits_rate"], 1e-9)
    report("absent", rows, model=encoders.source, fingerprint=encoders.fingerprint, threshold=cal.threshold,
           calibration=cal.how, out_of_domain_over_in_domain=ratio)  # fmt: skip
    clothes, shapes = rows[0]["none_fits_rate"], rows[1]["none_fits_rate"]
    print(f"\n'none fits well' on {clothes:.1%} of the clothes, {shapes:.1%} of the shapes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
