"""Can segmentation say "not in this image"? Precision and recall of "absent" on fresh synthetic scenes.

Each scene's objects, named as phrases ("a red circle"), are present; as many colour-shape labels that are not in the
scene are absent (`vlm.segment.absent.phrase_set`, a seed the calibration never sees). A phrase is called absent
when its score (peak logit of the dense method) is below the model's threshold, measured by
`vlm.segment.absent.calibrate_absent` on its own scenes; this benchmark only applies it. Rows: all phrases, then the
recall on absent phrases sharing the colour of an object in the scene ("a red star" beside a red circle), its
shape, or neither. The peer row is the mask threshold alone (0.5 on the heat, the dense default): a phrase whose
mask would be empty counts as absent. `present_kept`: the share of present phrases not called absent.

    python -m bench.segment_absent                      # the demo model, 300 fresh 64 px scenes
    python -m bench.segment_absent --model runs/x/final --scenes 500
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

import numpy as np

from bench.common import report
from vlm import models
from vlm.cli import configure_logging
from vlm.segment import DenseConfig
from vlm.segment.absent import calibrate_absent, phrase_set, precision_recall, scores_of

LOG = logging.getLogger("bench.segment_absent")

FRESH_SEED = 2_000_000  # the calibration uses vlm.segment.absent.CALIBRATION_SEED


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="demo", help="model to measure (default: demo)")
    p.add_argument("--pretrained", help="weights for an open_clip model name")
    p.add_argument("--scenes", type=int, default=300, help="fresh synthetic scenes (default: 300)")
    p.add_argument(
        "--short-side",
        type=int,
        default=None,
        help="the dense method's compute size (short side, px; default: segment's, 2 x the model's input)",
    )
    p.add_argument("--device", default=None)
    args = p.parse_args(argv)
    configure_logging()
    encoders = models.load(args.model, args.pretrained, device=args.device, precision="fp32")
    start = time.perf_counter()
    tiling = DenseConfig(short_side=args.short_side)
    cal = calibrate_absent(encoders, dense_config=tiling)
    calibration_s = time.perf_counter() - start
    scenes = phrase_set(FRESH_SEED, args.scenes)
    scores = scores_of(encoders, scenes, dense_config=tiling)
    present = np.array([x for s in scenes for x in s.present])
    shares = np.array([x for s in scenes for x in s.shares])
    precision, recall = precision_recall(scores, present, cal.threshold)
    kept = float(np.mean(scores[present] >= cal.threshold))
    rows = [{"rule": "calibrated score", "phrases": "all", "count": len(scores), "precision": precision,
             "recall": recall, "present_kept": kept}]  # fmt: skip
    for kind in ("colour", "shape", "neither"):  # recall by how close the absent phrase is to the scene
        pick = shares == kind
        rows.append({"rule": "calibrated score", "phrases": f"absent sharing {kind} with an object",
                     "count": int(pick.sum()), "recall": float(np.mean(scores[pick] < cal.threshold))})  # fmt: skip
    # the peer: the mask alone decides (a heat of 0.5 at the best pixel of the compute grid = a peak logit of 0)
    precision, recall = precision_recall(scores, present, 0.0)
    rows.append({"rule": "mask threshold 0.5 alone", "phrases": "all", "count": len(scores), "precision": precision,
                 "recall": recall, "present_kept": float(np.mean(scores[present] >= 0.0))})  # fmt: skip
    meta = {
        "short_side": args.short_side,
        "threshold": cal.threshold,
        "calibration": cal.how,
        "calibration_s": calibration_s,
        "scenes": args.scenes,
    }
    report("segment_absent", rows, model=encoders.source, fingerprint=encoders.fingerprint, **meta)
    print(f"\n'absent' precision {rows[0]['precision']:.3f}, recall {rows[0]['recall']:.3f} (goal >= 0.9 both)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
