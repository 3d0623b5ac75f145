"""`segment()`: shapes at the input resolution, input checks, long phrases, memory cap, exclusive masks, overlays."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vlm.errors import ConfigError, DataError
from vlm.segment import DenseConfig, SegmentationResult, overlay, segment
from vlm.segment import decoder as dec
from vlm.segment.api import embed_phrases


def _image(rows, cols, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (rows, cols, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def tiny_decoder(tiny_encoders):
    torch.manual_seed(0)
    return dec.SegDecoder(dec.make_spec(tiny_encoders, input_size=40))  # 5 x 5 patches of 8 px


@pytest.mark.parametrize("rows, cols", [(37, 211), (1, 1), (3000, 200), (5, 3), (7, 7), (211, 37)])
@pytest.mark.parametrize("method", ["dense", "decoder"])
def test_masks_come_back_at_the_input_resolution(tiny_encoders, tiny_decoder, rows, cols, method):
    result = segment(tiny_encoders, _image(rows, cols), ["the red circle", "a blue square"], method=method,
                     decoder=tiny_decoder)  # fmt: skip
    assert isinstance(result, SegmentationResult)
    assert result.masks.shape == result.heatmaps.shape == (2, rows, cols)
    assert result.masks.dtype == np.bool_ and result.heatmaps.dtype == np.float32
    assert np.isfinite(result.heatmaps).all() and (result.heatmaps >= 0).all() and (result.heatmaps <= 1).all()
    np.testing.assert_array_equal(result.masks, result.heatmaps >= 0.5)
    assert result.phrases == ("the red circle", "a blue square")


def test_compute_resolution_follows_the_config(tiny_encoders):
    # short side 64 (2 x the 32 px window); 3000 x 200 would be 960 x 64, within max_side
    assert segment(tiny_encoders, _image(3000, 200), "x").compute_size == (960, 64)
    capped = segment(tiny_encoders, _image(3000, 200), "x", dense_config=DenseConfig(max_side=320))
    assert capped.compute_size == (320, 21)  # the long side is capped; the short side shrinks with it
    assert segment(tiny_encoders, _image(1, 1), "x").compute_size == (64, 64)  # tiny images are upsampled


def test_inputs_are_accepted_as_pil_path_and_arrays(tiny_encoders, tmp_path):
    rgb = _image(20, 30)
    path = tmp_path / "a.png"
    Image.fromarray(rgb).save(path)
    want = segment(tiny_encoders, rgb, "a red circle").heatmaps
    for image in (Image.fromarray(rgb), path, str(path)):
        np.testing.assert_allclose(segment(tiny_encoders, image, "a red circle").heatmaps, want, atol=1e-6)
    grey = segment(tiny_encoders, rgb[..., 0], "a red circle")  # (H, W) grey
    rgba = segment(tiny_encoders, np.dstack([rgb, np.full((20, 30), 255, np.uint8)]), "a red circle")
    assert grey.masks.shape == rgba.masks.shape == (1, 20, 30)
    np.testing.assert_allclose(rgba.heatmaps, want, atol=1e-6)  # opaque alpha changes nothing


@pytest.mark.parametrize(
    "phrases, match",
    [([], "no phrases"), ([""], "phrase 0 is empty"), (["ok", "   \t"], "phrase 1 is empty"), ([3], "not a string")],
)
def test_empty_and_malformed_phrases_are_clear_errors(tiny_encoders, phrases, match):
    with pytest.raises(DataError, match=match):
        segment(tiny_encoders, _image(8, 8), phrases)


def test_bad_images_and_settings_are_clear_errors(tiny_encoders, tmp_path):
    with pytest.raises(DataError, match="empty"):
        segment(tiny_encoders, np.zeros((0, 5, 3), np.uint8), "x")
    with pytest.raises(DataError, match="uint8"):
        segment(tiny_encoders, np.zeros((4, 5, 3), np.float32), "x")
    with pytest.raises(DataError, match="missing file"):
        segment(tiny_encoders, tmp_path / "nope.png", "x")
    with pytest.raises(ConfigError, match="unknown segmentation method"):
        segment(tiny_encoders, _image(8, 8), "x", method="magic")
    with pytest.raises(ConfigError, match="needs a trained decoder"):
        segment(tiny_encoders, _image(8, 8), "x", method="decoder")
    with pytest.raises(ConfigError, match="threshold"):
        segment(tiny_encoders, _image(8, 8), "x", threshold=1.5)
    with pytest.raises(ConfigError, match="background prompts"):
        segment(tiny_encoders, _image(8, 8), "x", background=())


def test_huge_outputs_are_refused_before_any_work(tiny_encoders):
    # 20 000 x 6 000 would need 120 M mask values per phrase; the check comes before the image is even read
    huge = Image.new("RGB", (20_000, 6_000))
    with pytest.raises(DataError, match="above the limit"):
        segment(tiny_encoders, huge, ["a", "b"])
    ok = segment(tiny_encoders, _image(40, 30), ["a", "b"], max_output_pixels=2 * 40 * 30)
    assert ok.masks.shape == (2, 40, 30)
    with pytest.raises(DataError, match="above the limit"):
        segment(tiny_encoders, _image(40, 30), ["a", "b"], max_output_pixels=2 * 40 * 30 - 1)


def test_long_phrases_are_truncated_and_flagged(tiny_encoders, caplog):
    long = " ".join(["very"] * 100) + " red circle"  # vlm-tiny's context is 32 tokens
    result = segment(tiny_encoders, _image(16, 16), ["red circle", long])
    assert result.truncated == (False, True)
    assert "truncated" in caplog.text
    # what the model saw is the first 30 words (+ start and end tokens): the same embedding as that prefix
    emb, _ = embed_phrases(tiny_encoders, [long, " ".join(["very"] * 30)])
    torch.testing.assert_close(emb[0], emb[1])


def test_exclusive_masks_do_not_overlap(tiny_encoders, tiny_decoder):
    phrases = ["a red circle", "a blue square", "a green star"]
    for method in ("dense", "decoder"):
        result = segment(tiny_encoders, _image(50, 70), phrases, method=method, decoder=tiny_decoder,
                         exclusive=True, threshold=0.0)  # fmt: skip
        assert (result.masks.sum(axis=0) <= 1).all()
        assert (result.masks.sum(axis=0) == 1).all()  # threshold 0: every pixel goes to its best phrase
        np.testing.assert_array_equal(result.masks.argmax(axis=0), result.heatmaps.argmax(axis=0))
    # dense + exclusive: the heat maps are one softmax over phrases and background, so they sum to at most 1
    joint = segment(tiny_encoders, _image(50, 70), phrases, exclusive=True)
    assert (joint.heatmaps.sum(axis=0) <= 1 + 1e-5).all()
    no_bg = segment(tiny_encoders, _image(50, 70), phrases, exclusive=True, background=())
    np.testing.assert_allclose(no_bg.heatmaps.sum(axis=0), 1.0, atol=1e-5)


def test_duplicate_phrases_give_identical_masks(tiny_encoders):
    result = segment(tiny_encoders, _image(30, 45), ["a red  circle", "a red circle"])
    assert result.phrases == ("a red circle", "a red circle")  # whitespace normalised
    np.testing.assert_array_equal(result.heatmaps[0], result.heatmaps[1])


def test_overlay_tints_masks_and_keeps_the_rest(tiny_encoders):
    rgb = _image(80, 100)
    masks = np.zeros((2, 80, 100), bool)
    masks[0, 10:30, 10:40] = True
    masks[1, 50:70, 60:90] = True
    picture = np.asarray(overlay(Image.fromarray(rgb), masks))  # no labels: no legend
    assert picture.shape == (80, 100, 3)
    untouched = ~masks.any(axis=0)
    np.testing.assert_array_equal(picture[untouched], rgb[untouched])
    assert (picture[12:28, 12:38] != rgb[12:28, 12:38]).any(axis=-1).all()
    result = segment(tiny_encoders, rgb, ["a", "b"])
    assert result.overlay(Image.fromarray(rgb)).size == (100, 80)
    with pytest.raises(ValueError, match="do not match"):
        overlay(Image.fromarray(rgb), masks[:, :10])
