"""The learned decoder and its trainer: shapes, save/load, encoder check, loss formula, exact resume, learning."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from eval.segmentation import validate_decoder
from vlm import synth
from vlm.config import from_leaves
from vlm.errors import CheckpointError, ConfigError
from vlm.segment import decoder as dec
from vlm.segment import segment, towers
from vlm.segment.train import SegTrainConfig, seg_loss, train_decoder


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    out = tmp_path_factory.mktemp("seg") / "data"
    synth.generate(out, scenes=40, seed=0, image_size=64, progress=False)
    return out


def test_layer_choice_and_spec(tiny_encoders):
    assert towers.evenly_spaced_layers(12) == (3, 7, 11)
    assert towers.evenly_spaced_layers(4) == (0, 2, 3)
    assert towers.evenly_spaced_layers(2) == (0, 1)
    spec = dec.make_spec(tiny_encoders)
    assert (spec.layers, spec.input_size, spec.patch_size, spec.encoder_width) == ((0, 1), 32, 8, 64)
    with pytest.raises(ConfigError, match="multiple of the patch size"):
        dec.make_spec(tiny_encoders, input_size=36)
    with pytest.raises(ConfigError, match="do not exist"):
        dec.make_spec(tiny_encoders, layers=(0, 5))


def test_decoder_output_is_one_logit_per_input_pixel(tiny_encoders):
    torch.manual_seed(0)
    d = dec.SegDecoder(dec.make_spec(tiny_encoders, input_size=40))
    pixels = torch.randn(3, 3, 40, 40)
    text = F.normalize(torch.randn(3, tiny_encoders.embed_dim), dim=-1)
    logits = dec.predict_logits(tiny_encoders, d, pixels, text)
    assert logits.shape == (3, 40, 40)
    # the text conditions the output: another phrase, another map; the same phrase, the same map
    other = dec.predict_logits(tiny_encoders, d, pixels, text.roll(1, dims=0))
    assert not torch.allclose(logits, other)
    torch.testing.assert_close(dec.predict_logits(tiny_encoders, d, pixels[:1], text[:1]), logits[:1])
    # the encoder's activations are what open_clip's own forward_intermediates gives at the native size
    acts, grid = dec.encoder_activations(tiny_encoders.model.visual, pixels[:, :, :32, :32], (0, 1))
    ref = tiny_encoders.model.visual.forward_intermediates(
        pixels[:, :, :32, :32], indices=[0, 1], output_fmt="NLC", output_extra_tokens=True, intermediates_only=True
    )
    assert grid == (4, 4)
    for a, r, cls in zip(acts, ref["image_intermediates"], ref["image_intermediates_prefix"], strict=True):
        torch.testing.assert_close(a, torch.cat([cls, r], dim=1))


def test_save_load_round_trip_and_encoder_check(tiny_encoders, tmp_path):
    torch.manual_seed(1)
    d = dec.SegDecoder(dec.make_spec(tiny_encoders))
    record = dec.encoder_record(tiny_encoders, "vlm-tiny", None)
    path = dec.save_decoder(tmp_path / "d", d, record, provenance={"note": "x"})
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "decoder.safetensors"]
    loaded = dec.load_decoder(path, tiny_encoders)
    for k, v in d.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v)
    other = dataclass_replace(tiny_encoders, fingerprint="0000")
    with pytest.raises(CheckpointError, match="--model vlm-tiny"):
        dec.load_decoder(path, other)
    with pytest.raises(CheckpointError, match="not a segmentation decoder"):
        dec.load_decoder(tmp_path, tiny_encoders)
    (path / "config.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(CheckpointError, match="not a vlm-seg-decoder"):
        dec.load_decoder(path)


def dataclass_replace(obj, **kw):
    import dataclasses

    return dataclasses.replace(obj, **kw)


def test_loss_is_bce_plus_soft_dice():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 7, generator=g)
    target = (torch.rand(3, 5, 7, generator=g) > 0.6).float()
    target[2] = 0.0  # an empty mask: the +1 smoothing keeps it finite
    p = 1 / (1 + np.exp(-logits.double().numpy()))
    t = target.double().numpy()
    bce = -(t * np.log(p) + (1 - t) * np.log(1 - p)).mean()
    inter = (p * t).reshape(3, -1).sum(1)
    dice = 1 - (2 * inter + 1) / (p.reshape(3, -1).sum(1) + t.reshape(3, -1).sum(1) + 1)
    assert float(seg_loss(logits, target, 0.0)) == pytest.approx(bce, rel=1e-5)
    assert float(seg_loss(logits, target, 0.5)) == pytest.approx(bce + 0.5 * dice.mean(), rel=1e-5)


def _cfg(shapes, out, **kw):
    base = dict(train_data=str(shapes / "phrases.csv"), model="vlm-tiny", input_size=32, batch_size=8, steps=6)
    base |= dict(warmup_steps=2, save_every=3, val_every=0, log_every=1, workers=0, val_limit=8, output_dir=str(out))
    return from_leaves(SegTrainConfig, **{**base, **kw})


def test_train_writes_checkpoints_metrics_and_resumes_exactly(shapes, tmp_path):
    full = train_decoder(_cfg(shapes, tmp_path / "full"), progress=False, validate=validate_decoder)
    assert full.steps == 6 and set(full.metrics) >= {"mIoU", "oIoU", "precision@0.5"}
    run = tmp_path / "full"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_00000003", "step_00000006"]
    assert sorted(p.name for p in (run / "checkpoints" / "step_00000003").iterdir()) == [
        "config.json",
        "decoder.safetensors",
        "train_state.pt",
    ]
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if "train/loss" in r] == [1, 2, 3, 4, 5, 6]
    # a run cut after step 3 (its later checkpoints never written) and resumed ends with the same weights
    cut = tmp_path / "cut"
    shutil.copytree(run, cut)
    shutil.rmtree(cut / "final")
    shutil.rmtree(cut / "checkpoints" / "step_00000006")
    with pytest.raises(CheckpointError, match="--resume"):
        train_decoder(_cfg(shapes, cut), progress=False)
    resumed = train_decoder(_cfg(shapes, cut, resume=True), progress=False, validate=validate_decoder)
    a = load_file(str(full.final_checkpoint / "decoder.safetensors"))
    b = load_file(str(resumed.final_checkpoint / "decoder.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=0, rtol=0)
    lines = [json.loads(line) for line in (cut / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if "train/loss" in r] == [1, 2, 3, 4, 5, 6]
    with pytest.raises(CheckpointError, match="lr"):
        train_decoder(_cfg(shapes, cut, resume=True, lr=0.5), progress=False)


def test_training_lowers_the_loss_and_the_decoder_segments(shapes, tmp_path):
    result = train_decoder(_cfg(shapes, tmp_path / "r", steps=30, save_every=0, lr=3e-3), progress=False)
    losses = [json.loads(line)["train/loss"] for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()
              if "train/loss" in line]  # fmt: skip
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])
    image = shapes / "images" / "000000.png"
    from vlm import models

    torch.manual_seed(0)  # the trainer built vlm-tiny from seed 0
    enc = models.load("vlm-tiny", device="cpu")
    out = segment(enc, image, ["the red circle"], method="decoder", decoder=result.final_checkpoint)
    assert out.masks.shape == (1, 64, 64)
