"""How well does the best label fit? A softmax over the labels always sums to 1, so "a cat 100 %" can be said of a
picture of a pizza when neither label fits. The cosine similarity between the image and a label's prompt embedding
says how well it fits, but its scale differs from model to model; this module calibrates it per model.

`reference_fit(encoders)` measures, on the model's reference data, the cosine between images and their own label
(the synthetic world's single-object scenes, one per colour-shape label and seed, against the label's prompt
ensemble): a label's **fit** is the share of those true matches with a lower cosine (0: below every true match,
0.5: a typical true match), and "none of the labels fits well" is said when the best label's cosine is below the
`quantile` (5 %) of the true matches. The record says how it was measured (`how`).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from vlm import measured
from vlm.models import Encoders
from vlm.synth import LABELS
from vlm.synth.scenes import single_object_scene
from vlm.zeroshot import build_classifier, embed_images

NONE_FITS_QUANTILE = 0.05  # a best label below 95 % of the true matches on the reference data: "none fits well"
REFERENCE_SEEDS = 4  # scenes per label: 48 labels x 4 = 192 reference images
REFERENCE_SIZE = 64  # pixels; the demo collection's scenes are 128, the training scenes 64
REFERENCE_TEMPLATES = "generic"


@dataclass(frozen=True)
class FitCalibration:
    fingerprint: str  # the weights it was measured with
    matched: np.ndarray  # sorted cosines of the reference images with their own label
    threshold: float  # the cosine below which no label fits well
    quantile: float
    how: str  # for people: what was measured, on what

    def fit(self, cosine: float) -> float:
        """The share of reference true matches whose cosine is below `cosine` (in [0, 1])."""
        return float(np.searchsorted(self.matched, cosine, side="left") / len(self.matched))

    def fits(self, cosine: float) -> bool:
        return cosine >= self.threshold


def calibrate(
    encoders: Encoders,
    images: list,
    label_ids: list[int],
    labels: list[str],
    *,
    templates: str = REFERENCE_TEMPLATES,
    quantile: float = NONE_FITS_QUANTILE,
    what: str = "reference images",
) -> FitCalibration:
    """Measure the cosines of `images` (PIL) with their own label (`labels[label_ids[i]]`) and put the threshold at
    their `quantile`."""
    clf = build_classifier(encoders, labels, templates)
    cos = clf.similarity(embed_images(encoders, images)).numpy()
    matched = np.sort(cos[np.arange(len(images)), np.asarray(label_ids)])
    threshold = float(np.quantile(matched, quantile))
    how = (
        f"threshold cosine {threshold:.3f} = the {quantile:.0%} quantile of the cosine between {len(images)} {what} "
        f"and their own label ({len(labels)} labels, '{templates}' prompt templates); true matches ranged "
        f"{matched[0]:.3f} to {matched[-1]:.3f}, median {float(np.median(matched)):.3f}"
    )
    return FitCalibration(encoders.fingerprint, matched, threshold, quantile, how)


def reference_images(seeds: int = REFERENCE_SEEDS, size: int = REFERENCE_SIZE) -> tuple[list, list[int]]:
    """The synthetic world's single-object scenes: each colour-shape label on `seeds` random backgrounds."""
    images, ids = [], []
    for i, label in enumerate(LABELS):
        colour, shape = label.split(" ")
        for seed in range(seeds):
            images.append(single_object_scene(shape, colour, size, seed=1000 + seed))
            ids.append(i)
    return images, ids


MEASUREMENT = "classify-fit"  # the kind of figure kept by vlm.measured
MEASUREMENT_VERSION = 1  # bump when what `reference_fit` measures changes: files of other versions are measured again

_CACHE: dict[str, FitCalibration] = {}
_LOCK = threading.Lock()


def _measure(encoders: Encoders) -> dict:
    images, ids = reference_images()
    made = calibrate(
        encoders, images, ids, list(LABELS), what=f"synthetic single-object scenes ({REFERENCE_SIZE} px, seeds 1000+)"
    )
    return {"matched": made.matched.tolist(), "threshold": made.threshold, "quantile": made.quantile, "how": made.how}


def _parse(fingerprint: str):
    def parse(value: dict) -> FitCalibration:
        matched = np.asarray(value["matched"], dtype=np.float64)
        if matched.ndim != 1 or not len(matched) or not np.all(np.isfinite(matched)):
            raise ValueError("matched must be a non-empty list of numbers")
        return FitCalibration(
            fingerprint, np.sort(matched), float(value["threshold"]), float(value["quantile"]), str(value["how"])
        )

    return parse


def reference_fit(encoders: Encoders) -> FitCalibration:
    """`calibrate` on the synthetic world's single-object scenes (`reference_images`), once per set of weights: kept
    in memory, and on disk by `vlm.measured` (a restart reads it instead of measuring again)."""
    with _LOCK:
        found = _CACHE.get(encoders.fingerprint)
    if found is not None:
        return found
    made = measured.remember(
        MEASUREMENT, MEASUREMENT_VERSION, encoders.fingerprint, lambda: _measure(encoders), _parse(encoders.fingerprint)
    )
    with _LOCK:
        return _CACHE.setdefault(encoders.fingerprint, made)
