"""`vlm.segment.explain` (why an image matches a text) and the `vlm explain` command."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from vlm.cli import main
from vlm.segment import segment
from vlm.segment.explain import MAX_SIDE, MIN_SIDE, display_size, explain


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
    assert Image.open(out).size == display_size(picture).size


def test_explain_command_refuses_bad_input(tmp_path, picture, capsys):
    image = tmp_path / "in.png"
    picture.save(image)
    assert main(["explain", str(tmp_path / "none.png"), "x", "--model", "vlm-tiny"]) == 2
    assert "missing file" in capsys.readouterr().err
    assert main(["explain", str(image), "  ", "--model", "vlm-tiny", "--out", str(tmp_path / "o.png")]) == 2
    assert not (tmp_path / "o.png").exists()
