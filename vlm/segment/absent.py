"""Is a phrase in the image at all? A heat map always has a brightest spot, and a mask threshold on the heat alone
paints something for a phrase that names nothing in the image. Each phrase gets a **presence score**
(`SegmentationResult.presence`); below a per-model threshold the phrase is "not in the image" and its mask is empty.

The score (dense method, `api.presence_scores`): the phrase's peak log-odds on a **second, coarser pass** (the image
at short side 1.25 x the model's window, where the mask pass uses 2 x), against the background prompts **and words
that name one attribute alone** ("a red shape", "a star": `api.ATTRIBUTE_PROMPTS`). The mask is still painted from
the normal pass; only the yes/no comes from the presence pass. Why: the errors of the plain score (the mask pass's
peak against the background prompts) are absent phrases that share a colour with an object in the scene ("a red
star" beside a red circle): the background words do not explain red, so the colour alone wins the pixel. An
attribute word takes that evidence away (the phrase must beat "a red shape" and "a star" to count), and the coarser
pass gives each cell more of the object around it, so shape weighs more. Measured with the demo model shipped then
(`vlm-rn-wide`), threshold from 100 calibration scenes (now `CALIBRATION_SCENES`), "absent" precision / recall on 300
other scenes (seed 31337, a development seed that neither the calibration nor `bench/segment_absent.py` uses):

    mask-pass peak vs background (the previous rule)      0.848 / 0.841   same-colour absent phrases caught 0.50
    the same on a coarser pass (short side 80 px)          0.844 / 0.887
    mask pass vs background + attribute words              0.922 / 0.867
    coarser pass vs background + attribute words (this)    0.905 / 0.909   same-colour 0.65
    (also tried: the other 47 labels as competitors 0.903 / 0.906 at 80 px, a closed vocabulary; short side 64 or
    96 px instead of 80: 0.888 / 0.874, 0.906 / 0.903; the mean of the two passes: 0.904 / 0.912; none better)

The presence pass costs about half a mask pass again (4 windows instead of 9 for a 64 px model), and only when the
decision is asked for (`segment(absent_below=...)`). The decoder method's score stays its peak logit.

The scale of the score differs from model to model, so the threshold is measured per model on the synthetic
world's scenes, whose objects are known: each scene's objects named as phrases ("a red circle") are **present**,
as many colour-shape labels that are not in the scene are **absent** (`phrase_set`). The threshold is the score
that best separates the two (the largest min(precision, recall) of "absent", ties to the middle of the gap), and
the record says how it was measured (`how`). `absent_threshold(encoders)` measures it once per set of weights (and
method / decoder) and keeps it on disk (`vlm.measured`), so a restart does not measure it again;
`bench/segment_absent.py` scores it on fresh scenes, beside the previous rule.
"""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass

import numpy as np
import torch

from vlm import measured
from vlm.fingerprint import state_fingerprint
from vlm.models import Encoders
from vlm.segment import dense
from vlm.segment.api import (
    ATTRIBUTE_PROMPTS,
    BACKGROUND_PROMPTS,
    dense_logits,
    embed_phrases,
    load_image,
    presence_scores,
    segment,
)
from vlm.segment.decoder import SegDecoder
from vlm.synth import LABELS, render_scene, scene_rng

CALIBRATION_SEED = 515  # the benchmark draws its scenes from another seed
# 1-4 objects each: ~600 present and as many absent phrases. 100 scenes were too few: the best separation moved with
# the draw (the 9,000-step demo model: threshold -2.20 on the first 100 scenes, -2.88 on the first 200, 300 and 400).
CALIBRATION_SCENES = 300
SCENE_SIZE = 64  # pixels; the demo model's input size (the dense method resizes every image the same way)
PHRASE = "a {}"  # how a label becomes a phrase ("a red circle"), as a person types it in the app
SCORES = ("presence", "peak")  # the rule (module docstring), and the previous one (the mask pass's peak, for the bench)
MEASUREMENT = "segment-absent"  # vlm.measured's kind
MEASUREMENT_VERSION = 3  # bump when what `calibrate_absent` measures changes (1: peak; 2: presence; 3: 300 scenes)


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
    score: str = "presence",
) -> np.ndarray:
    """Every phrase's score, scene after scene: `score="presence"` is what `segment(absent_below=...)` compares
    (`SegmentationResult.presence`), "peak" the mask pass's peak logit (`SegmentationResult.scores`; the previous
    rule). The dense method embeds each distinct phrase and the competing prompts once (the same numbers, several
    times faster than calling `segment` per scene). `dense_config`: the dense method's tiling (default: `segment`'s)."""
    if score not in SCORES:
        raise ValueError(f"score must be one of {SCORES}, got {score!r}")
    found = []
    if method != "dense":
        for s in scenes:
            found.extend(segment(encoders, s.image, list(s.phrases), method=method, decoder=decoder).scores)
        return np.asarray(found, dtype=np.float64)
    distinct = sorted({p for s in scenes for p in s.phrases})
    text = dict(zip(distinct, embed_phrases(encoders, distinct)[0], strict=True))
    background = embed_phrases(encoders, list(BACKGROUND_PROMPTS))[0]
    competitors = [*BACKGROUND_PROMPTS, *ATTRIBUTE_PROMPTS]
    competing = torch.cat([background, embed_phrases(encoders, list(ATTRIBUTE_PROMPTS))[0]])
    cfg = dense_config or dense.DenseConfig()
    for s in scenes:
        rows, image = torch.stack([text[p] for p in s.phrases]), load_image(s.image)
        if score == "presence":
            found.extend(
                presence_scores(encoders, image, s.phrases, rows, competitors, competing, cfg, encoders.logit_scale)
            )
            continue
        logits, _ = dense_logits(encoders, image, rows, background, cfg, False, encoders.logit_scale)
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

    def to_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, value: dict[str, object]) -> AbsentCalibration:
        """The record `to_dict` wrote (KeyError / TypeError / ValueError for anything else)."""
        made = cls(**value)
        if not all(isinstance(v, str) for v in (made.fingerprint, made.method, made.how)):
            raise TypeError(f"not an absent calibration: {value!r}")
        numbers = (made.threshold, made.precision, made.recall)
        if not all(isinstance(v, int | float) and np.isfinite(v) for v in numbers):
            raise ValueError(f"not an absent calibration: {value!r}")
        return made


def calibrate_absent(
    encoders: Encoders,
    method: str = "dense",
    decoder: SegDecoder | None = None,
    *,
    seed: int = CALIBRATION_SEED,
    scenes: int = CALIBRATION_SCENES,
    size: int = SCENE_SIZE,
    dense_config: dense.DenseConfig | None = None,
    score: str = "presence",
) -> AbsentCalibration:
    """Measure the "absent" threshold of `encoders` (and `method`/`decoder`, or the dense method's tiling
    `dense_config`: the threshold holds for `segment` with the same one) on `phrase_set(seed, scenes, size)`, for
    the presence score (or `score="peak"`, the previous rule: `scores_of`)."""
    found = phrase_set(seed, scenes, size)
    scores = scores_of(encoders, found, method, decoder, dense_config, score)
    present = np.array([p for s in found for p in s.present])
    threshold = best_threshold(scores, present)
    precision, recall = precision_recall(scores, present, threshold)
    what = WHAT[score] if method == "dense" else "peak logit of the decoder"
    how = (
        f"threshold {threshold:.2f} ({what}) = the best separation of {int(present.sum())} present and "
        f"{int((~present).sum())} absent phrases on {scenes} synthetic scenes "
        f"({size} px, seed {seed}): 'absent' precision {precision:.3f}, recall {recall:.3f} there; present phrases "
        f"scored median {float(np.median(scores[present])):.2f}, absent ones {float(np.median(scores[~present])):.2f}"
    )
    return AbsentCalibration(encoders.fingerprint, method, threshold, precision, recall, how)


WHAT = {
    "presence": "the phrase's peak log-odds against background and colour/shape words, on a coarser pass",
    "peak": "the phrase's peak log-odds against the background prompts, on the mask pass",
}
_CACHE: dict[tuple[str, str, str], AbsentCalibration] = {}
_LOCK = threading.Lock()


def absent_threshold(encoders: Encoders, method: str = "dense", decoder: SegDecoder | None = None) -> AbsentCalibration:
    """`calibrate_absent` with the defaults, once per set of weights, method and decoder: kept in memory, and on
    disk by `vlm.measured` (a restart reads it back instead of measuring again)."""
    key = (encoders.fingerprint, method, state_fingerprint(decoder.state_dict()) if decoder is not None else "")
    with _LOCK:
        found = _CACHE.get(key)
    if found is not None:
        return found
    made = measured.remember(
        MEASUREMENT,
        MEASUREMENT_VERSION,
        encoders.fingerprint,
        lambda: calibrate_absent(encoders, method, decoder).to_dict(),
        _parse(encoders.fingerprint, method),
        extra={"method": method, "decoder": key[2]},
    )
    with _LOCK:
        return _CACHE.setdefault(key, made)


def _parse(fingerprint: str, method: str):
    def parse(value: dict[str, object]) -> AbsentCalibration:
        made = AbsentCalibration.from_dict(value)
        if (made.fingerprint, made.method) != (fingerprint, method):
            raise ValueError(f"measured for {made.fingerprint} / {made.method}, not {fingerprint} / {method}")
        return made

    return parse
