"""Can segmentation say "not in this image"? Precision and recall of "absent" on fresh synthetic scenes.

Each scene's objects, named as phrases ("a red circle"), are present; as many colour-shape labels that are not in the
scene are absent (`vlm.segment.absent.phrase_set`, a seed the calibration never sees). A phrase is called absent
when its score is below the model's threshold, measured by `vlm.segment.absent.calibrate_absent` on its own scenes;
this benchmark only applies it, through `segment(absent_below=...)`. Two rules, each calibrated the same way, in the
same run: the presence score (the default: a coarser second pass against background and colour/shape words) and the
previous rule (the mask pass's peak log-odds against the background prompts). Rows per rule: all phrases, then the
recall on absent phrases sharing the colour of an object in the scene ("a red star" beside a red circle), its shape,
or neither. The peer row is the mask threshold alone (0.5 on the heat, the dense default): a phrase whose mask would
be empty counts as absent. `present_kept`: the share of present phrases not called absent.

Masks: `mask_mIoU` is the mean IoU of the present phrases' masks (heat >= 0.5 at the scene's 64 px, empty when the
rule calls the phrase absent) with their objects' pixels (all objects of that colour and shape), the measure of
`eval.segmentation`; the "no absent decision" row is the mask alone. The presence pass does not change the masks of
the phrases it keeps, so it can only lower their mIoU by calling present phrases absent.

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
from vlm.segment import DenseConfig, segment
from vlm.segment.absent import SCENE_SIZE, calibrate_absent, phrase_set, precision_recall
from vlm.synth import render_scene, scene_rng

LOG = logging.getLogger("bench.segment_absent")

FRESH_SEED = 2_000_000  # the calibration uses vlm.segment.absent.CALIBRATION_SEED
RULES = {"presence": "presence score (default)", "peak": "mask-pass peak (previous rule)"}


def iou(pred: np.ndarray, truth: np.ndarray) -> float:
    union = int((pred | truth).sum())
    return int((pred & truth).sum()) / union if union else 1.0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="demo", help="model to measure (default: demo)")
    p.add_argument("--pretrained", help="weights for an open_clip model name")
    p.add_argument("--scenes", type=int, default=300, help="fresh synthetic scenes (default: 300)")
    p.add_argument(
        "--short-side",
        type=int,
        default=None,
        help="the dense method's compute size for the masks (short side, px; default: segment's, 2 x the model's "
        "input); the presence pass is always at 1.25 x the input",
    )
    p.add_argument("--device", default=None)
    args = p.parse_args(argv)
    configure_logging()
    encoders = models.load(args.model, args.pretrained, device=args.device, precision="fp32")
    tiling = DenseConfig(short_side=args.short_side)
    cals, seconds = {}, {}
    for rule in RULES:
        start = time.perf_counter()
        cals[rule] = calibrate_absent(encoders, dense_config=tiling, score=rule)
        seconds[rule] = time.perf_counter() - start
    scenes = phrase_set(FRESH_SEED, args.scenes)
    found: dict[str, list[float]] = {rule: [] for rule in RULES}
    ious: dict[str, list[float]] = {"none": [], **{rule: [] for rule in RULES}}
    start = time.perf_counter()
    for i, s in enumerate(scenes):
        cut = cals["presence"].threshold
        result = segment(encoders, s.image, list(s.phrases), dense_config=tiling, absent_below=cut)
        found["presence"].extend(result.presence)
        found["peak"].extend(result.scores)
        drawn = render_scene(scene_rng(FRESH_SEED, i), SCENE_SIZE)  # the scene phrase_set drew, with its masks
        labels = [f"a {o.colour} {o.shape}" for o in drawn.spec.objects]
        for k, (phrase, here) in enumerate(zip(s.phrases, s.present, strict=True)):
            if not here:
                continue
            truth = np.logical_or.reduce([m for label, m in zip(labels, drawn.masks, strict=True) if label == phrase])
            mask = result.heatmaps[k] >= 0.5
            ious["none"].append(iou(mask, truth))
            ious["presence"].append(iou(mask, truth) if not result.absent[k] else 0.0)
            ious["peak"].append(iou(mask, truth) if result.scores[k] >= cals["peak"].threshold else 0.0)
    scoring_s = time.perf_counter() - start
    present = np.array([x for s in scenes for x in s.present])
    shares = np.array([x for s in scenes for x in s.shares])
    rows = []
    for rule, name in RULES.items():
        scores, cut = np.array(found[rule]), cals[rule].threshold
        precision, recall = precision_recall(scores, present, cut)
        rows.append({"rule": name, "phrases": "all", "count": len(scores), "precision": precision, "recall": recall,
                     "present_kept": float(np.mean(scores[present] >= cut)), "threshold": cut,
                     "mask_mIoU": float(np.mean(ious[rule]))})  # fmt: skip
        for kind in ("colour", "shape", "neither"):  # recall by how close the absent phrase is to the scene
            pick = shares == kind
            rows.append({"rule": name, "phrases": f"absent sharing {kind} with an object",
                         "count": int(pick.sum()), "recall": float(np.mean(scores[pick] < cut))})  # fmt: skip
    # the peer: the mask alone decides (a heat of 0.5 at the best pixel of the compute grid = a peak logit of 0)
    peaks = np.array(found["peak"])
    precision, recall = precision_recall(peaks, present, 0.0)
    rows.append({"rule": "mask threshold 0.5 alone", "phrases": "all", "count": len(peaks), "precision": precision,
                 "recall": recall, "present_kept": float(np.mean(peaks[present] >= 0.0))})  # fmt: skip
    rows.append({"rule": "no absent decision", "phrases": "present", "count": int(present.sum()),
                 "mask_mIoU": float(np.mean(ious["none"]))})  # fmt: skip
    meta = {
        "short_side": args.short_side,
        "calibration": {rule: cal.how for rule, cal in cals.items()},
        "calibration_s": seconds,
        "scoring_s": scoring_s,
        "scenes": args.scenes,
    }
    report("segment_absent", rows, model=encoders.source, fingerprint=encoders.fingerprint, **meta)
    first = rows[0]
    print(
        f"\n'absent' precision {first['precision']:.3f}, recall {first['recall']:.3f} (goal >= 0.9 both); "
        f"mask mIoU of present phrases {first['mask_mIoU']:.3f} (no decision: {rows[-1]['mask_mIoU']:.3f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
