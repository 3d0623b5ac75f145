"""`vlm segment` and `vlm train-seg` smoke tests on tiny models and on-the-fly data."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from vlm import synth
from vlm.cli import main


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    out = tmp_path_factory.mktemp("segcli") / "data"
    synth.generate(out, scenes=24, seed=4, image_size=64, progress=False)
    return out


def test_segment_writes_an_overlay_and_masks(shapes, tmp_path, capsys):
    image = shapes / "images" / "000000.png"
    out, masks = tmp_path / "o.png", tmp_path / "masks"
    args = ["segment", str(image), "the red circle", "a blue square", "--model", "vlm-tiny", "--out", str(out)]
    assert main([*args, "--masks-dir", str(masks), "--device", "cpu", "--threshold", "0.4"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert [p["phrase"] for p in summary["phrases"]] == ["the red circle", "a blue square"]
    assert Image.open(out).size == Image.open(image).size
    for entry in summary["phrases"]:
        mask = np.asarray(Image.open(entry["mask"]))
        assert mask.shape == (64, 64) and set(np.unique(mask)) <= {0, 255}
        assert entry["mask_fraction"] == pytest.approx((mask > 0).mean(), abs=1e-4)
    assert sorted(p.name for p in masks.iterdir()) == [
        "00_the_red_circle_heat.png",
        "00_the_red_circle_mask.png",
        "01_a_blue_square_heat.png",
        "01_a_blue_square_mask.png",
    ]


def test_segment_errors_exit_2_with_a_message(shapes, tmp_path, capsys):
    image = str(shapes / "images" / "000000.png")
    assert main(["segment", image, "  ", "--model", "vlm-tiny", "--out", str(tmp_path / "o.png")]) == 2
    assert "phrase 0 is empty" in capsys.readouterr().err
    assert main(["segment", str(tmp_path / "none.png"), "x", "--model", "vlm-tiny"]) == 2
    assert "missing file" in capsys.readouterr().err
    # ResNet towers segment now (MaskCLIP); a timm tower still has no feature maps this code reads
    assert main(["segment", image, "x", "--model", "convnext_tiny", "--out", str(tmp_path / "o.png")]) == 2
    assert "TimmModel" in capsys.readouterr().err
    assert not (tmp_path / "o.png").exists()


def test_train_seg_then_segment_with_its_decoder(shapes, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train-seg", "--train-data", str(shapes / "phrases.csv"), "--model", "vlm-tiny", "--steps", "4"]
    args += ["--batch-size", "8", "--output-dir", str(run), "--workers", "0", "--val-limit", "6", "--warmup-steps", "1"]
    assert main([*args, "--cache-activations"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["steps"] == 4 and "mIoU" in printed
    # the random encoder was kept beside the run, so the decoder alone is enough to segment
    assert (run / "encoder" / "model.safetensors").is_file()
    image = str(shapes / "images" / "000001.png")
    out = tmp_path / "o.png"
    assert main(["segment", image, "the green star", "--method", "decoder", "--decoder", str(run / "final"),
                 "--out", str(out), "--device", "cpu"]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out)["method"] == "decoder"
    assert main([*args]) == 2  # the run exists: refuses without --resume
    assert "--resume" in capsys.readouterr().err
