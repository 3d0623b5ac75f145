"""`vlm.segment.explain` (why an image matches a text) and the `vlm explain` command."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image

from vlm.cli import main
from vlm.segment import segment
from vlm.segment.absent import AbsentCalibration
from vlm.segment.explain import ALPHA, MAX_SIDE, MIN_SIDE, display_size, explain
from vlm.segment.overlay import HEAT_RAMP


@pytest.fixture()
def picture():
    rng = np.random.default_rng(0)
    array = rng.integers(0, 255, (48, 80, 3), dtype=np.uint8)
    array[10:30, 20:40] = (220, 30, 30)
    return Image.fromarray(array)


def test_explain_gives_the_cosine_and_the_dense_heat_map(tiny_encoders, picture):
    enc = tiny_encoders
    found = explain(enc, picture, "a red square")
    shown = display_size(picture)
    assert min(shown.size) == MIN_SIDE and found.picture.size == shown.size
    assert found.heat.shape == (shown.height, shown.width)
    assert found.heat.min() >= 0 and found.heat.max() <= 1
    np.testing.assert_allclose(found.heat, segment(enc, shown, ["a red square"], method="dense").heatmaps[0])
    # the cosine, computed from open_clip's own model with its own normalisation
    with torch.no_grad():
        image = enc.model.encode_image(enc.preprocess(picture)[None], normalize=True)
        text = enc.model.encode_text(enc.tokenizer(["a red square"]), normalize=True)
    assert found.similarity == pytest.approx(float(image @ text.T), abs=1e-5)
    assert "cosine similarity" in found.describe("a red square")


def blend_by_hand(image: Image.Image, heat: np.ndarray) -> np.ndarray:
    """The heat on HEAT_RAMP's colours (linear between its stops over [0, 1]) blended over the image."""
    stops = np.linspace(0, 1, len(HEAT_RAMP))
    colours = np.stack([np.interp(heat, stops, HEAT_RAMP[:, c]) for c in range(3)], axis=-1)
    return np.asarray(image, dtype=np.float64) * (1 - ALPHA) + np.rint(colours) * ALPHA


def test_the_figures_beside_the_map_are_the_maps_own(tiny_encoders, picture):
    enc = tiny_encoders
    shown = display_size(picture)
    result = segment(enc, shown, ["a red square"])
    found = explain(enc, picture, "a red square")
    assert found.score == pytest.approx(result.scores[0]) and found.peak == pytest.approx(result.heatmaps[0].max())
    # the peak is the heat at the best pixel, whose log-odds is the score (the map is upsampled: at most it)
    assert found.peak <= 1 / (1 + np.exp(-found.score)) + 1e-5
    text = found.describe("a red square")
    assert f"heat {result.heatmaps[0].max():.2f}, score {result.scores[0]:.2f}" in text
    assert f"{(result.heatmaps[0] >= 0.5).mean():.0%} of the image is above one half" in text
    assert "dark purple (no match) to yellow (the map's maximum" in text and "negative cosine" in text
    # the colours run up to the map's maximum
    by_hand = blend_by_hand(shown, result.heatmaps[0] / result.heatmaps[0].max())
    assert np.abs(np.asarray(found.picture, dtype=np.float64) - by_hand).max() <= 1.01


def test_a_text_below_the_models_threshold_is_not_found_and_shown_unscaled(tiny_encoders, picture):
    enc = tiny_encoders
    never = AbsentCalibration(enc.fingerprint, "dense", -np.inf, 0.9, 0.9, "by hand")
    score = explain(enc, picture, "a red square", never).presence  # the presence score decides, not the map's peak
    assert score == pytest.approx(segment(enc, display_size(picture), ["a red square"], absent_below=0).presence[0])
    above = dataclasses.replace(never, threshold=score + 1.0)
    found = explain(enc, picture, "a red square", above)
    assert found.not_found and not found.stretched and found.presence == pytest.approx(score)
    text = found.describe("a red square")
    assert "**a red square** is not found in this image" in text and f"threshold {score + 1.0:.2f}" in text
    assert f"presence score is {score:.2f}" in text and f"score {found.score:.2f} log-odds" in text
    by_hand = blend_by_hand(display_size(picture), found.heat)  # unscaled
    assert np.abs(np.asarray(found.picture, dtype=np.float64) - by_hand).max() <= 1.01
    below = explain(enc, picture, "a red square", dataclasses.replace(above, threshold=score - 1.0))
    assert not below.not_found and f"above this model's 'not here' threshold {score - 1.0:.2f}" in below.describe("x")


def test_display_size_bounds_both_sides():
    assert display_size(Image.new("RGB", (4000, 1000))).size == (MAX_SIDE, MAX_SIDE // 4)
    assert display_size(Image.new("RGB", (300, 400))).size == (300, 400)


def test_explain_command_writes_the_picture_and_prints_the_figures(tmp_path, picture, capsys):
    image = tmp_path / "in.png"
    picture.save(image)
    out = tmp_path / "heat.png"
    args = ["explain", str(image), "a red square", "--model", "vlm-tiny", "--device", "cpu", "--out", str(out)]
    assert main(args) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["out"] == str(out) and printed["text"] == "a red square"
    assert -1 <= printed["similarity"] <= 1 and 0 <= printed["share_above_half"] <= 1
    assert printed["not_found"] == (printed["presence"] < printed["absent_threshold"])
    assert Image.open(out).size == display_size(picture).size


def test_explain_command_refuses_bad_input(tmp_path, picture, capsys):
    image = tmp_path / "in.png"
    picture.save(image)
    assert main(["explain", str(tmp_path / "none.png"), "x", "--model", "vlm-tiny"]) == 2
    assert "missing file" in capsys.readouterr().err
    assert main(["explain", str(image), "  ", "--model", "vlm-tiny", "--out", str(tmp_path / "o.png")]) == 2
    assert not (tmp_path / "o.png").exists()
