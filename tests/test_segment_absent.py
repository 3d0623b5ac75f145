"""vlm.segment.absent and `segment(absent_below=)`: the synthetic phrase set against its scenes, the score against
the heat map, the presence score against a re-computation from the dense scores, empty masks below the threshold,
the threshold against a brute-force search, and the threshold kept on disk."""

import numpy as np
import pytest
import torch

from vlm import measured
from vlm.segment import absent, dense, segment, towers
from vlm.segment.absent import (
    AbsentCalibration,
    absent_threshold,
    best_threshold,
    calibrate_absent,
    phrase_set,
    precision_recall,
    scores_of,
)
from vlm.segment.api import ATTRIBUTE_PROMPTS, BACKGROUND_PROMPTS, Pixels, embed_phrases, load_image
from vlm.synth import LABELS, render_scene, scene_rng


def test_phrase_set_names_the_objects_and_as_many_labels_not_there():
    for i, s in enumerate(phrase_set(seed=9, scenes=12, size=32)):
        objects = render_scene(scene_rng(9, i), 32).spec.objects
        inside = {f"a {o.colour} {o.shape}" for o in objects}
        present = [p for p, here in zip(s.phrases, s.present, strict=True) if here]
        absent = [p for p, here in zip(s.phrases, s.present, strict=True) if not here]
        assert set(present) == inside and len(absent) == len(present) and not set(absent) & inside
        assert all(p[2:] in LABELS for p in absent)
        for p, share in zip(s.phrases, s.shares, strict=True):
            if p in inside:
                assert share == ""
                continue
            colour, shape = p[2:].split(" ")
            colours, shapes = {o.colour for o in objects}, {o.shape for o in objects}
            assert share == ("colour" if colour in colours else "shape" if shape in shapes else "neither")


def test_best_threshold_is_the_brute_force_best():
    rng = np.random.default_rng(3)
    present = rng.random(60) < 0.5
    scores = np.where(present, rng.normal(2, 1, 60), rng.normal(0, 1, 60))
    cut = best_threshold(scores, present)
    values = np.sort(scores)
    by_hand = []
    for c in (values[:-1] + values[1:]) / 2:
        said = scores < c
        hits = np.sum(said & ~present)
        by_hand.append(min(hits / max(said.sum(), 1), hits / np.sum(~present)))
    p, r = precision_recall(scores, present, cut)
    assert min(p, r) == pytest.approx(max(by_hand))
    assert np.sum(scores < cut) == np.sum(scores <= cut)  # between two scores, not on one
    with pytest.raises(ValueError, match="both present and absent"):
        best_threshold(scores, np.ones(60, bool))


def presence_by_hand(enc, image, phrases, competitors):
    """Peak log-odds of each phrase against `competitors` over the image resized to short side 1.25 x the window."""
    visual = enc.model.visual
    window = towers.default_input_size(visual)
    image = load_image(image)
    tile = dense.tiling((image.height, image.width), visual, dense.DenseConfig(short_side=round(1.25 * window)))
    assert tile.size == (40, 40)  # vlm-tiny: 32 px windows; the mask pass would use 64
    emb = embed_phrases(enc, [*phrases, *competitors])[0]
    s = dense.dense_scores(visual, Pixels.of(enc)(image, tile.size), emb, tile) * enc.logit_scale
    return [float((s[i] - torch.logsumexp(s[len(phrases) :], dim=0)).max()) for i in range(len(phrases))]


def test_absent_phrases_get_empty_masks_and_keep_their_heat(tiny_encoders):
    image = render_scene(scene_rng(4, 0), 32).image
    phrases = ["a red circle", "a blue star", "a green cross"]
    plain = segment(tiny_encoders, image, phrases, threshold=0.0)
    assert plain.masks.all() and plain.absent == (False, False, False) and plain.presence == ()
    # the score is the peak log-odds: the heat's best pixel is at most its sigmoid
    assert (plain.heatmaps.max(axis=(1, 2)) <= 1 / (1 + np.exp(-np.array(plain.scores))) + 1e-5).all()
    kept = segment(tiny_encoders, image, phrases, threshold=0.0, absent_below=-np.inf)
    competitors = [*BACKGROUND_PROMPTS, *ATTRIBUTE_PROMPTS]
    np.testing.assert_allclose(kept.presence, presence_by_hand(tiny_encoders, image, phrases, competitors), atol=1e-3)
    cut = float(np.median(kept.presence))
    judged = segment(tiny_encoders, image, phrases, threshold=0.0, absent_below=cut)
    for i, presence in enumerate(kept.presence):
        assert judged.absent[i] == (presence < cut)
        assert judged.masks[i].any() == (presence >= cut)
    np.testing.assert_array_equal(judged.heatmaps, plain.heatmaps)
    assert judged.absent_below == cut and judged.scores == plain.scores and judged.presence == kept.presence


def test_a_phrase_does_not_compete_with_itself(tiny_encoders):
    image = render_scene(scene_rng(4, 1), 32).image
    found = segment(tiny_encoders, image, ["A star", "the red shape"], absent_below=-np.inf).presence
    others = [c for c in [*BACKGROUND_PROMPTS, *ATTRIBUTE_PROMPTS] if c != "a star"]
    assert found[0] == pytest.approx(presence_by_hand(tiny_encoders, image, ["A star"], others)[0], abs=1e-3)
    others = [c for c in [*BACKGROUND_PROMPTS, *ATTRIBUTE_PROMPTS] if c != "a red shape"]
    assert found[1] == pytest.approx(presence_by_hand(tiny_encoders, image, ["the red shape"], others)[0], abs=1e-3)


def test_calibration_scores_are_segments_scores_and_its_threshold_their_best_cut(tiny_encoders):
    found = phrase_set(seed=5, scenes=6, size=32)
    fast = scores_of(tiny_encoders, found)
    slow = [v for s in found for v in segment(tiny_encoders, s.image, list(s.phrases), absent_below=0.0).presence]
    np.testing.assert_allclose(fast, slow, atol=1e-4)
    peaks = [v for s in found for v in segment(tiny_encoders, s.image, list(s.phrases)).scores]
    np.testing.assert_allclose(scores_of(tiny_encoders, found, score="peak"), peaks, atol=1e-4)
    cal = calibrate_absent(tiny_encoders, seed=5, scenes=6, size=32)
    present = np.array([p for s in found for p in s.present])
    assert cal.threshold == pytest.approx(best_threshold(fast, present), abs=1e-4)
    assert (cal.precision, cal.recall) == pytest.approx(precision_recall(fast, present, cal.threshold))
    assert cal.fingerprint == tiny_encoders.fingerprint and "6 synthetic scenes (32 px, seed 5)" in cal.how
    assert cal.is_absent(cal.threshold - 1e-3) and not cal.is_absent(cal.threshold)


def test_the_threshold_is_measured_once_and_read_back_from_disk_after_a_restart(tiny_encoders, monkeypatch, tmp_path):
    monkeypatch.setenv("VLM_MEASURED_DIR", str(tmp_path))
    made = AbsentCalibration(tiny_encoders.fingerprint, "dense", 1.25, 0.9, 0.8, "by hand")
    calls = []
    monkeypatch.setattr(absent, "calibrate_absent", lambda enc, method, decoder: calls.append(method) or made)
    monkeypatch.setattr(absent, "_CACHE", {})
    assert absent_threshold(tiny_encoders) == made and calls == ["dense"]
    extra = {"method": "dense", "decoder": ""}
    kept = measured.load(absent.MEASUREMENT, absent.MEASUREMENT_VERSION, tiny_encoders.fingerprint, extra)
    assert kept == made.to_dict()
    monkeypatch.setattr(absent, "_CACHE", {})  # a restart: nothing in memory
    assert absent_threshold(tiny_encoders) == made and calls == ["dense"]  # read back, not measured again
    # a record of other weights, or one that is not a calibration, is measured again
    other = made.to_dict() | {"fingerprint": "0123456789abcdef"}
    measured.save(absent.MEASUREMENT, absent.MEASUREMENT_VERSION, tiny_encoders.fingerprint, other, extra)
    monkeypatch.setattr(absent, "_CACHE", {})
    assert absent_threshold(tiny_encoders) == made and calls == ["dense", "dense"]
    with pytest.raises((KeyError, TypeError, ValueError)):
        AbsentCalibration.from_dict(made.to_dict() | {"threshold": "high"})
