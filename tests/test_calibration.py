"""vlm.calibration: the cosine of images with their own label, its quantile as the "none fits" threshold, and the fit
as the empirical distribution of true matches, per domain of the model's reference data; compared with a hand
computation through open_clip's model."""

import csv
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from vlm import calibration, templates
from vlm.calibration import calibrate, measure, read_reference, reference_images
from vlm.synth import LABELS
from vlm.synth.scenes import single_object_scene


@torch.no_grad()
def hand_cosines(encoders, images, labels):
    model = encoders.model.eval()
    pixels = torch.stack([encoders.preprocess(im) for im in images])
    img = F.normalize(model.encode_image(pixels), dim=-1)
    rows = []
    for label in labels:
        prompts = [t.format(c=label) for t in templates.load("generic")]
        rows.append(F.normalize(F.normalize(model.encode_text(encoders.tokenize(prompts)), dim=-1).mean(0), dim=-1))
    return (img @ torch.stack(rows).T).numpy()


def test_threshold_and_fit_follow_the_true_matches(tiny_encoders):
    images, ids = reference_images(seeds=1, size=32)
    assert len(images) == len(LABELS) and ids == list(range(len(LABELS)))
    cal = calibrate(tiny_encoders, images, ids, list(LABELS), quantile=0.25)
    matched = np.sort(hand_cosines(tiny_encoders, images, LABELS)[np.arange(len(ids)), ids])
    assert np.allclose(cal.matched, matched, atol=1e-5)
    assert cal.threshold == pytest.approx(np.quantile(matched, 0.25), abs=1e-5)
    assert cal.fit(matched[0] - 1) == 0.0 and cal.fit(matched[-1] + 1) == 1.0
    for x in (matched[:-1] + matched[1:]) / 2:  # between true matches: the share below, by hand
        assert cal.fit(x) == pytest.approx(np.mean(matched < x), abs=1.5 / len(matched))
    assert cal.fits(cal.threshold) and not cal.fits(cal.threshold - 1e-4)
    assert "25% quantile" in cal.how and f"{len(images)} reference images" in cal.how


@pytest.fixture(scope="module")
def reference_data(tmp_path_factory):
    """A labelled folder (3 shape labels x 2 scenes) and a caption file (4 scenes, other captions), as a model's
    `--reference` sets."""
    root = tmp_path_factory.mktemp("reference")
    labelled = root / "shapes"
    (labelled / "images").mkdir(parents=True)
    rows = []
    for i, label in enumerate(["red circle", "blue square", "green star"] * 2):
        colour, shape = label.split(" ")
        single_object_scene(shape, colour, 32, seed=i).save(labelled / "images" / f"{i}.png")
        rows.append((f"images/{i}.png", label))
    with open(labelled / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows([("path", "label"), *rows])
    captions = []
    drawn = [("triangle", "yellow", "a warning sign"), ("cross", "red", "love"), ("star", "purple", "a night sky"),
             ("circle", "orange", "the sun")]  # fmt: skip
    for i, (shape, colour, text) in enumerate(drawn):
        single_object_scene(shape, colour, 32, seed=100 + i).save(root / f"c{i}.png")
        captions.append((f"c{i}.png", text))
    with open(root / "pairs.csv", "w", newline="") as f:
        csv.writer(f).writerows([("path", "caption"), *captions])
    return labelled, root / "pairs.csv"


def test_each_domain_judges_its_labels_with_its_own_true_matches(tiny_encoders, reference_data):
    labelled, pairs = reference_data
    cal = measure(tiny_encoders, (f"zeroshot:{labelled}", f"retrieval:{pairs}"), quantile=0.25)
    assert len(cal.domains) == 2
    for spec, domain in ((str(labelled), cal.domains[0]), (str(pairs), cal.domains[1])):
        _, _, rows = read_reference(spec)
        texts = sorted({t for _, t in rows})
        images = [Image.open(p).convert("RGB") for p, _ in rows]
        cos = hand_cosines(tiny_encoders, images, texts)
        own = np.sort(cos[np.arange(len(rows)), [texts.index(t) for _, t in rows]])
        assert np.allclose(domain.matched, own, atol=1e-5)
        assert domain.threshold == pytest.approx(np.quantile(own, 0.25), abs=1e-5)
    shapes, rest = cal.domains
    assert shapes.vocabulary == {"red circle", "blue square", "green star"} and rest.vocabulary == frozenset()
    assert cal.domain(" Red Circle") is shapes and cal.domain("hindu temple") is rest and cal.domain("love") is rest
    assert cal.domain("a red circle") is shapes and cal.domain("The Green Star") is shapes
    assert cal.domain("another red circle") is rest and cal.domain("red circles") is rest
    t = shapes.threshold
    assert cal.fits(t, "red circle") and not cal.fits(t - 1e-4, "red circle")
    assert cal.fit(rest.matched[-1] + 1, "a cat") == 1.0 and cal.threshold("a cat") == rest.threshold
    assert (
        "the 3 labels of shapes" in cal.how
        and "any other label" in cal.how
        and f"4 {pairs.parent.name} images" in cal.how
    )


def test_labelled_sets_only_judge_other_labels_all_together(tiny_encoders, reference_data):
    labelled, _ = reference_data
    cal = measure(tiny_encoders, (f"zeroshot:{labelled}",))
    assert len(cal.domains) == 2 and np.array_equal(cal.domains[0].matched, cal.domains[1].matched)


def test_a_model_without_reference_data_keeps_the_synthetic_scenes(tiny_encoders, tmp_path):
    (tmp_path / "labels.csv").write_text("path,label\nmissing.png,x\n")
    cal = measure(tiny_encoders, (f"zeroshot:{tmp_path / 'nowhere'}",))
    assert len(cal.domains) == 1 and len(cal.domains[0].matched) == len(LABELS) * calibration.REFERENCE_SEEDS
    assert cal.how.startswith("no reference data with this model") and "not used" in cal.how
    assert cal.domain("red circle") is cal.domain("anything") is cal.domains[0]


def test_reference_sets_of_a_checkpoint_are_those_it_was_scored_on(tiny_encoders, reference_data, monkeypatch):
    labelled, pairs = reference_data
    assert calibration.reference_sets(tiny_encoders) == ()  # random weights: none
    config = {"config": {"data": {"reference": [f"zeroshot:{labelled}", f"retrieval:{pairs}", "zeroshot:/gone"]}}}
    monkeypatch.setattr(tiny_encoders, "provenance", json.loads(json.dumps(config)), raising=False)
    assert calibration.reference_sets(tiny_encoders) == (f"zeroshot:{labelled}", f"retrieval:{pairs}")


def test_the_demo_model_is_calibrated_on_its_shipped_sets():
    from vlm import checkpoint, demo

    class Weights:  # only the fingerprint decides
        fingerprint = checkpoint.read_config(demo.DEMO_MODEL)["fingerprint"]
        provenance = None

    assert calibration.reference_sets(Weights()) == (*demo.REFERENCE, calibration.DEMO_ICONS)
    Weights.fingerprint += "-int8"  # the same weights run by ONNX Runtime in int8
    assert calibration.reference_sets(Weights()) == (*demo.REFERENCE, calibration.DEMO_ICONS)
    Weights.fingerprint = "0" * 16
    assert calibration.reference_sets(Weights()) == ()


def test_the_app_says_fits_fits_weakly_or_none_fits_by_each_labels_own_domain(monkeypatch):
    import ui.classify

    shapes = calibration.make_domain("shape scenes", frozenset({"red circle"}), np.linspace(0.70, 0.90, 21), 0.05)
    icons = calibration.make_domain("icons", frozenset(), np.linspace(0.20, 0.80, 61), 0.05)
    cal = calibration.FitCalibration("0" * 16, (shapes, icons), 0.05, "by hand")
    monkeypatch.setattr(ui.classify, "reference_fit", lambda encoders: cal)

    class Cosines:  # the classifier's cosines for one image, chosen by hand
        def __init__(self, values):
            self.labels = list(values)
            self.values = torch.tensor([list(values.values())])

        def similarity(self, embedding):
            return self.values

    def notes(values):
        return ui.classify.fit_notes(None, Cosines(values), None, list(values))

    # 0.605 is below every shape true match but above 41 of the 61 icons': the icon label fits, the shape one not.
    text = notes({"red circle": 0.605, "hindu temple": 0.605})
    assert "The best label fits: 'hindu temple'" in text and "| red circle | 0.605 | 0.710 | 0% |" in text
    assert "| hindu temple | 0.605 | 0.230 | 67% |" in text
    # Above the icons' threshold (5 % quantile, 0.23) but below their lower quartile (0.35): fits only weakly.
    text = notes({"red circle": 0.305, "hindu temple": 0.305})
    assert "fits only weakly: 'hindu temple'" in text and "below 82% of the true matches" in text
    text = notes({"red circle": 0.69, "hindu temple": 0.22})
    assert "None of the labels fits well" in text and "0.690 for 'red circle', is below 0.710" in text
