"""Is a phrase in the image at all? A heat map always has a brightest spot, and a mask threshold on the heat alone
paints something for a phrase that names nothing in the image. Each phrase gets a **score**, its peak logit
(`SegmentationResult.scores`: for the dense method the log-odds of the phrase against the background prompts at its
best pixel); below a per-model threshold the phrase is "not in the image" and its mask is empty.

The scale of that score differs from model to model, so the threshold is measured per model on the synthetic
world's scenes, whose objects are known: each scene's objects named as phrases ("a red circle") are **present**,
as many colour-shape labels that are not in the scene are **absent** (`phrase_set`). The threshold is the score
that best separates the two (the largest min(precision, recall) of "absent", ties to the middle of the gap), and
the record says how it was measured (`how`). `absent_threshold(encoders)` measures it once per set of weights (and
method / decoder); `bench/segment_absent.py` scores it on fresh scenes.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import torch

from vlm.fingerprint import state_fingerprint
from vlm.models import Encoders
from vlm.segment import dense
from vlm.segment.api import BACKGROUND_PROMPTS, dense_logits, embed_phrases, load_image, segment
from vlm.segment.decoder import SegDecoder
from vlm.synth import LABELS, render_scene, scene_rng

CALIBRATION_SEED = 515  # the benchmark draws its scenes from another seed
CALIBRATION_SCENES = 100  # 1-4 objects each: ~200 present and as many absent phrases
SCENE_SIZE = 64  # pixels; the demo model's input size (the dense method resizes every image the same way)
PHRASE = "a {}"  # how a label becomes a phrase ("a red circle"), as a person types it in the app


@dataclass(frozen=True)
class PhraseScene:
    image: object  # PIL RGB image
    phrases: tuple[str, ...]
    present: tuple[bool, ...]  # per phrase: an object of that colour and shape is in the scene
    shares: tuple[str, ...]  # per absent phrase: "colour", "shape" or "neither" with a present object ("" if present)


def phrase_set(seed: int, scenes: int, size: int = SCENE_SIZE) -> list[PhraseScene]:
    """Synthetic scenes with their objects' phrases (present) and as many phrases of labels not in them (absent),
    the absent labels drawn uniformly from the 48 colour-shape labels (scene i from `scene_rng(seed, i)`)."""
    out = []
    for i in range(scenes):
        rng = scene_rng(seed, i)
        scene = render_scene(rng, size)
        objects = scene.spec.objects
        present = sorted({f"{o.colour} {o.shape}" for o in objects})
        others = [label for label in LABELS if label not in present]
        absent = [others[j] for j in rng.choice(len(others), size=len(present), replace=False)]
        shares = []
        for label in absent:
            colour, shape = label.split(" ")
            same_colour, same_shape = any(o.colour == colour for o in objects), any(o.shape == shape for o in objects)
            shares.append("colour" if same_colour else "shape" if same_shape else "neither")
        out.append(
            PhraseScene(
                scene.image,
                tuple(PHRASE.format(label) for label in present + absent),
                (True,) * len(present) + (False,) * len(absent),
                ("",) * len(present) + tuple(shares),
            )
        )
    return out


def scores_of(
    encoders: Encoders,
    scenes: list[PhraseScene],
    method: str = "dense",
    decoder: SegDecoder | None = None,
    dense_config: dense.DenseConfig | None = None,
) -> np.ndarray:
    """Every phrase's score (`SegmentationResult.scores` of `segment` with its defaults), scene after scene. The
    dense method embeds each distinct phrase and the background prompts once (the same numbers, several times
    faster than calling `segment` per scene). `dense_config`: the dense method's tiling (default: `segment`'s)."""
    found = []
    if method != "dense":
        for s in scenes:
            found.extend(segment(encoders, s.image, list(s.phrases), method=method, decoder=decoder).scores)
        return np.asarray(found, dtype=np.float64)
    distinct = sorted({p for s in scenes for p in s.phrases})
    text = dict(zip(distinct, embed_phrases(encoders, distinct)[0], strict=True))
    background = embed_phrases(encoders, list(BACKGROUND_PROMPTS))[0]
    cfg = dense_config or dense.DenseConfig()
    for s in scenes:
        rows = torch.stack([text[p] for p in s.phrases])
        logits, _ = dense_logits(encoders, load_image(s.image), rows, background, cfg, False, encoders.logit_scale)
        found.extend(logits.flatten(1).amax(dim=1).tolist())
    return np.asarray(found, dtype=np.float64)


def precision_recall(scores: np.ndarray, present: np.ndarray, threshold: float) -> tuple[float, float]:
    """Precision and recall of "absent" (score below `threshold`) against the truth (`present` False)."""
    said, truth = scores < threshold, ~present
    hits = int(np.sum(said & truth))
    return hits / max(int(said.sum()), 1), hits / max(int(truth.sum()), 1)


def best_threshold(scores: np.ndarray, present: np.ndarray) -> float:
    """The threshold with the largest min(precision, recall) of "absent" (then the largest balanced accuracy), at
    the middle of the gap between the two scores around it."""
    values = np.unique(scores)
    if len(values) < 2 or present.all() or not present.any():
        raise ValueError("the threshold needs scores of both present and absent phrases, not all equal")
    cuts = (values[:-1] + values[1:]) / 2
    best, best_key = cuts[0], (-1.0, -1.0)
    for cut in cuts:
        p, r = precision_recall(scores, present, cut)
        kept = float(np.mean(scores[present] >= cut))
        key = (min(p, r), (r + kept) / 2)
        if key > best_key:
            best, best_key = cut, key
    return float(best)


@dataclass(frozen=True)
class AbsentCalibration:
    fingerprint: str  # the weights it was measured with
    method: str
    threshold: float  # a phrase scoring below this is not in the image
    precision: float  # of "absent" on the calibration phrases, at the threshold
    recall: float
    how: str  # for people: what was measured, on what

    def is_absent(self, score: float) -> bool:
        return score < self.threshold


def calibrate_absent(
    encoders: Encoders,
    method: str = "dense",
    decoder: SegDecoder | None = None,
    *,
    seed: int = CALIBRATION_SEED,
    scenes: int = CALIBRATION_SCENES,
    size: int = SCENE_SIZE,
    dense_config: dense.DenseConfig | None = None,
) -> AbsentCalibration:
    """Measure the "absent" threshold of `encoders` (and `method`/`decoder`, or the dense method's tiling
    `dense_config`: the threshold holds for `segment` with the same one) on `phrase_set(seed, scenes, size)`."""
    found = phrase_set(seed, scenes, size)
    scores = scores_of(encoders, found, method, decoder, dense_config)
    present = np.array([p for s in found for p in s.present])
    threshold = best_threshold(scores, present)
    precision, recall = precision_recall(scores, present, threshold)
    how = (
        f"threshold {threshold:.2f} (peak logit of the phrase, {method} method) = the best separation of "
        f"{int(present.sum())} present and {int((~present).sum())} absent phrases on {scenes} synthetic scenes "
        f"({size} px, seed {seed}): 'absent' precision {precision:.3f}, recall {recall:.3f} there; present phrases "
        f"scored median {float(np.median(scores[present])):.2f}, absent ones {float(np.median(scores[~present])):.2f}"
    )
    return AbsentCalibration(encoders.fingerprint, method, threshold, precision, recall, how)


_CACHE: dict[tuple[str, str, str], AbsentCalibration] = {}
_LOCK = threading.Lock()


def absent_threshold(encoders: Encoders, method: str = "dense", decoder: SegDecoder | None = None) -> AbsentCalibration:
    """`calibrate_absent` with the defaults, once per set of weights, method and decoder (kept in memory)."""
    key = (encoders.fingerprint, method, state_fingerprint(decoder.state_dict()) if decoder is not None else "")
    with _LOCK:
        found = _CACHE.get(key)
    if found is not None:
        return found
    made = calibrate_absent(encoders, method, decoder)
    with _LOCK:
        return _CACHE.setdefault(key, made)
