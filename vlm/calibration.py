"""How well does a label fit? A softmax over the labels always sums to 1, so "a cat 100 %" can be said of a picture
of a pizza when neither label fits. The cosine similarity between the image and a label's prompt embedding says how
well it fits, but its scale differs from model to model, and within one model from domain to domain (the shipped
demo model's true matches score about 0.82 on its synthetic shapes, about 0.5 on emoji and icons), so it is
calibrated per model and per domain of the model's reference data.

`reference_fit(encoders)` measures, on each reference set of the model (`reference_sets`), the cosine between every
image and its own label or caption (the 'generic' prompt ensemble, at most `MAX_PER_SET` images a set). Each set is a
**domain**:

- a labelled set (the synthetic shape scenes, labelled with 48 "colour shape" names) judges exactly its own labels;
- every other label is judged by the caption sets together (the demo model: Twemoji and the held-out icons, a
  caption per image), or, for a model with labelled sets only, by all its sets together.

A label's **fit** is the share of its domain's true matches with a lower cosine (0: below every true match, 0.5: a
typical one), and it fits when its cosine reaches its domain's `quantile` (5 %) of the true matches; "none of the
labels fits well" is said when no label does. A model without reference data is measured on the synthetic world's
single-object scenes (192 images, one domain for every label), as before. The record says how it was measured
(`how`) and is kept on disk by `vlm.measured` (a restart reads it instead of measuring again).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from vlm import checkpoint, demo, measured
from vlm.data import read_pairs
from vlm.errors import VLMError
from vlm.models import Encoders
from vlm.synth import LABELS
from vlm.synth.scenes import single_object_scene
from vlm.templates import bare_label
from vlm.zeroshot import build_classifier, embed_images

LOG = logging.getLogger(__name__)

NONE_FITS_QUANTILE = 0.05  # a label below 95 % of its domain's true matches on the reference data does not fit
WEAK_FIT = 0.25  # a fitting label below 75 % of its domain's true matches fits only weakly (said so, for people)
REFERENCE_SEEDS = 4  # scenes per label for a model without reference data: 48 labels x 4 = 192 images
REFERENCE_SIZE = 64  # pixels; the demo collection's scenes are 128, the training scenes 64
REFERENCE_TEMPLATES = "generic"
MAX_PER_SET = 256  # images a reference set contributes (evenly spaced rows): the first measurement stays ~10-20 s
# The demo model's reference sets: the fine-tune reference (`demo.REFERENCE`: shapes, Twemoji) and the corpus's
# held-out icons (`vlm demo collection`; never trained on), which the card's "icons" figures are measured on.
DEMO_ICONS = f"retrieval:{demo.ICONS / 'pairs.csv'}"
MEASUREMENT = "classify-fit"  # the kind of figure kept by vlm.measured
MEASUREMENT_VERSION = 2  # bump when what `reference_fit` measures changes: files of other versions are measured again
ANY_LABEL = "any other label"


@dataclass(frozen=True)
class Domain:
    name: str  # for people: what it was measured on
    vocabulary: frozenset[str]  # the labels it judges (case-folded); empty: every label no other domain judges
    matched: np.ndarray  # sorted cosines of the reference images with their own label
    threshold: float  # the cosine below which a label of this domain does not fit
    how: str

    def fit(self, cosine: float) -> float:
        """The share of this domain's true matches whose cosine is below `cosine` (in [0, 1])."""
        return float(np.searchsorted(self.matched, cosine, side="left") / len(self.matched))

    def fits(self, cosine: float) -> bool:
        return cosine >= self.threshold


@dataclass(frozen=True)
class FitCalibration:
    fingerprint: str  # the weights it was measured with
    domains: tuple[Domain, ...]  # labelled sets first; the last one judges every other label
    quantile: float
    how: str  # for people: what was measured, on what

    def domain(self, label: str) -> Domain:
        """The domain that judges `label`: the labelled set holding it (case-folded, with or without a leading
        article: "a red circle" is "red circle"), else the last one."""
        key = label.strip().casefold()
        keys = {key, bare_label(key)}
        return next((d for d in self.domains if keys & d.vocabulary), self.domains[-1])

    def threshold(self, label: str) -> float:
        return self.domain(label).threshold

    def fit(self, cosine: float, label: str) -> float:
        return self.domain(label).fit(cosine)

    def fits(self, cosine: float, label: str) -> bool:
        return self.domain(label).fits(cosine)


def calibrate(
    encoders: Encoders,
    images: list,
    label_ids: list[int],
    labels: list[str],
    *,
    templates: str = REFERENCE_TEMPLATES,
    quantile: float = NONE_FITS_QUANTILE,
    what: str = "reference images",
    vocabulary: frozenset[str] = frozenset(),
) -> Domain:
    """Measure the cosines of `images` (PIL) with their own label (`labels[label_ids[i]]`) and put the threshold at
    their `quantile`: one domain, judging `vocabulary` (empty: any label)."""
    clf = build_classifier(encoders, labels, templates)
    cos = clf.similarity(embed_images(encoders, images)).numpy()
    matched = np.sort(cos[np.arange(len(images)), np.asarray(label_ids)])
    return make_domain(what, vocabulary, matched, quantile, f"{len(labels)} labels, '{templates}' prompt templates")


def make_domain(
    name: str, vocabulary: frozenset[str], matched: np.ndarray, quantile: float, detail: str = ""
) -> Domain:
    """A domain judging `vocabulary` by its true-match cosines `matched` (sorted), threshold at their `quantile`."""
    threshold = float(np.quantile(matched, quantile))
    how = (
        f"threshold cosine {threshold:.3f} = the {quantile:.0%} quantile of the cosine between {len(matched)} {name} "
        f"and their own label{f' ({detail})' if detail else ''}; true matches ranged {matched[0]:.3f} to "
        f"{matched[-1]:.3f}, median {float(np.median(matched)):.3f}"
    )
    return Domain(name, vocabulary, matched, threshold, how)


def reference_images(seeds: int = REFERENCE_SEEDS, size: int = REFERENCE_SIZE) -> tuple[list, list[int]]:
    """The synthetic world's single-object scenes: each colour-shape label on `seeds` random backgrounds."""
    images, ids = [], []
    for i, label in enumerate(LABELS):
        colour, shape = label.split(" ")
        for seed in range(seeds):
            images.append(single_object_scene(shape, colour, size, seed=1000 + seed))
            ids.append(i)
    return images, ids


def reference_sets(encoders: Encoders) -> tuple[str, ...]:
    """The reference sets (specs `zeroshot:PATH` or `retrieval:PATH`, as `vlm train --reference` takes) of these
    weights: the shipped demo model's (`demo.REFERENCE` and the held-out icons), else those a checkpoint written by
    `vlm train` was scored on, where they still exist; () when it has none."""
    specs: tuple[str, ...] = ()
    try:
        # "<fingerprint>-int8": the same weights run quantised (vlm.onnx_export), measured on their own
        if encoders.fingerprint.split("-")[0] == checkpoint.read_config(demo.DEMO_MODEL).get("fingerprint"):
            specs = (*demo.REFERENCE, DEMO_ICONS)
    except VLMError:
        pass  # no shipped demo model here: nothing to compare with
    if not specs:
        data = encoders.provenance.get("config", {}).get("data", {}) if isinstance(encoders.provenance, dict) else {}
        specs = tuple(str(s) for s in (data.get("reference") or []) if isinstance(s, str))
    return tuple(s for s in specs if Path(s.split(":", 1)[1] if ":" in s else s).exists())


def read_reference(spec: str, limit: int = MAX_PER_SET) -> tuple[str, str, list[tuple[str, str]]]:
    """(name, "labels" or "captions", up to `limit` evenly spaced (image path, label) rows) of one reference set: a
    labelled folder (`labels.csv`: path,label) or file, or image-caption pairs (their first caption)."""
    task, _, path = spec.partition(":") if spec.startswith(("zeroshot:", "retrieval:")) else ("", "", spec)
    source = Path(path)
    kind = "labels" if task == "zeroshot" or (source / "labels.csv").is_file() else "captions"
    file = source / "labels.csv" if source.is_dir() else source
    table = read_pairs(file, caption_key="label" if kind == "labels" else None, workers=1, progress=False,
                       verify_images=False)  # fmt: skip
    rows = [(p.image.path, p.captions[0]) for p in table.pairs if p.image.kind == "file"]
    if len(rows) > limit:
        rows = [rows[i] for i in np.linspace(0, len(rows) - 1, limit).round().astype(int)]
    name = source.parent.name if source.is_file() and source.stem in ("labels", "pairs") else source.stem
    return name, kind, rows


def measure(encoders: Encoders, specs: tuple[str, ...], quantile: float = NONE_FITS_QUANTILE) -> FitCalibration:
    """The domains of `specs` (see the module docstring), or of the synthetic single-object scenes when no set can
    be read."""
    labelled, captioned, notes = [], [], []
    for spec in specs:
        try:
            name, kind, rows = read_reference(spec)
        except (VLMError, OSError) as e:
            notes.append(f"reference set {spec} not used: {e}")
            continue
        texts = sorted({t for _, t in rows})
        index = {t: i for i, t in enumerate(texts)}
        images = []
        for path, _ in rows:
            with Image.open(path) as im:
                images.append(im.convert("RGB"))
        found = calibrate(encoders, images, [index[t] for _, t in rows], texts, quantile=quantile)
        vocabulary = frozenset(t.casefold() for t in texts) if kind == "labels" else frozenset()
        (labelled if kind == "labels" else captioned).append((name, vocabulary, found.matched))
    if not labelled and not captioned:
        images, ids = reference_images()
        what = f"synthetic single-object scenes ({REFERENCE_SIZE} px, seeds 1000+)"
        domain = calibrate(encoders, images, ids, list(LABELS), quantile=quantile, what=what)
        how = f"no reference data with this model: every label is judged by one {domain.how}"
        return FitCalibration(encoders.fingerprint, (domain,), quantile, "; ".join([how, *notes]))
    domains = [make_domain(f"{name} images", vocab, m, quantile) for name, vocab, m in labelled]
    rest = captioned or labelled  # every other label: the caption sets together, else all sets together
    pooled = np.sort(np.concatenate([m for _, _, m in rest]))
    domains.append(make_domain(f"{' + '.join(name for name, _, _ in rest)} images", frozenset(), pooled, quantile))
    parts = [f"the {len(d.vocabulary)} labels of {d.name.removesuffix(' images')}: {d.how}" for d in domains[:-1]]
    parts.append(f"{ANY_LABEL}: {domains[-1].how}")
    parts.append(f"'{REFERENCE_TEMPLATES}' prompt templates, at most {MAX_PER_SET} images a set")
    return FitCalibration(encoders.fingerprint, tuple(domains), quantile, "; ".join(parts + notes))


_CACHE: dict[str, FitCalibration] = {}
_LOCK = threading.Lock()


def _to_dict(cal: FitCalibration) -> dict:
    domains = [{"name": d.name, "vocabulary": sorted(d.vocabulary), "matched": d.matched.tolist(),
                "threshold": d.threshold, "how": d.how} for d in cal.domains]  # fmt: skip
    return {"domains": domains, "quantile": cal.quantile, "how": cal.how}


def _parse(fingerprint: str):
    def parse(value: dict) -> FitCalibration:
        domains = []
        for d in value["domains"]:
            matched = np.asarray(d["matched"], dtype=np.float64)
            if matched.ndim != 1 or not len(matched) or not np.all(np.isfinite(matched)):
                raise ValueError("matched must be a non-empty list of numbers")
            vocabulary = frozenset(str(x) for x in d["vocabulary"])
            domains.append(Domain(str(d["name"]), vocabulary, np.sort(matched), float(d["threshold"]), str(d["how"])))
        if not domains:
            raise ValueError("no domain")
        return FitCalibration(fingerprint, tuple(domains), float(value["quantile"]), str(value["how"]))

    return parse


def reference_fit(encoders: Encoders) -> FitCalibration:
    """`measure` on the model's reference sets, once per set of weights: kept in memory, and on disk by
    `vlm.measured` (a restart reads it instead of measuring again)."""
    with _LOCK:
        found = _CACHE.get(encoders.fingerprint)
    if found is not None:
        return found
    specs = reference_sets(encoders)
    made = measured.remember(
        MEASUREMENT,
        MEASUREMENT_VERSION,
        encoders.fingerprint,
        lambda: _to_dict(measure(encoders, specs)),
        _parse(encoders.fingerprint),
        extra={"sets": list(specs)},
    )
    with _LOCK:
        return _CACHE.setdefault(encoders.fingerprint, made)
