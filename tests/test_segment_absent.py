"""vlm.segment.absent and `segment(absent_below=)`: the synthetic phrase set against its scenes, the score against
the heat map, empty masks below the threshold, and the threshold against a brute-force search."""

import numpy as np
import pytest

from vlm.segment import segment
from vlm.segment.absent import best_threshold, calibrate_absent, phrase_set, precision_recall, scores_of
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


def test_absent_phrases_get_empty_masks_and_keep_their_heat(tiny_encoders):
    image = render_scene(scene_rng(4, 0), 32).image
    phrases = ["a red circle", "a blue star", "a green cross"]
    plain = segment(tiny_encoders, image, phrases, threshold=0.0)
    assert plain.masks.all() and plain.absent == (False, False, False)
    # the score is the peak log-odds: the heat's best pixel is at most its sigmoid
    assert (plain.heatmaps.max(axis=(1, 2)) <= 1 / (1 + np.exp(-np.array(plain.scores))) + 1e-5).all()
    cut = float(np.median(plain.scores))
    judged = segment(tiny_encoders, image, phrases, threshold=0.0, absent_below=cut)
    for i, score in enumerate(plain.scores):
        assert judged.absent[i] == (score < cut)
        assert judged.masks[i].any() == (score >= cut)
    np.testing.assert_array_equal(judged.heatmaps, plain.heatmaps)
    assert judged.absent_below == cut and judged.scores == plain.scores


def test_calibration_scores_are_segments_scores_and_its_threshold_their_best_cut(tiny_encoders):
    found = phrase_set(seed=5, scenes=6, size=32)
    fast = scores_of(tiny_encoders, found)
    slow = [v for s in found for v in segment(tiny_encoders, s.image, list(s.phrases)).scores]
    np.testing.assert_allclose(fast, slow, atol=1e-4)
    cal = calibrate_absent(tiny_encoders, seed=5, scenes=6, size=32)
    present = np.array([p for s in found for p in s.present])
    assert cal.threshold == pytest.approx(best_threshold(fast, present), abs=1e-4)
    assert (cal.precision, cal.recall) == pytest.approx(precision_recall(fast, present, cal.threshold))
    assert cal.fingerprint == tiny_encoders.fingerprint and "6 synthetic scenes (32 px, seed 5)" in cal.how
    assert cal.is_absent(cal.threshold - 1e-3) and not cal.is_absent(cal.threshold)
