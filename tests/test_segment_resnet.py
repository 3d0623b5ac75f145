"""Segmentation over open_clip ModifiedResNet towers (vlm-rn): MaskCLIP dense features, the decoder's stage
activations, `segment` at odd sizes, and the decoder's shapes, format and training.

References are independent of the code under test: NumPy float64 matmuls on the attention pool's raw weights, NumPy
bicubic/bilinear resampling matrices (PyTorch's align_corners=False conventions written out), open_clip's own
`AttentionPool2d.forward` and `forward_intermediates`. Only the stage outputs x come from the tower's own modules.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from open_clip.modified_resnet import ModifiedResNet
from open_clip.transformer import VisionTransformer
from PIL import Image

from eval.segmentation import validate_decoder
from vlm import models, synth
from vlm.config import from_leaves
from vlm.errors import CheckpointError, ConfigError, ModelError
from vlm.segment import decoder as dec
from vlm.segment import dense, resnet, segment, towers
from vlm.segment.api import Pixels
from vlm.segment.train import SegTrainConfig, train_decoder


@pytest.fixture(scope="module")
def rn_encoders():
    torch.manual_seed(0)
    return models.load("vlm-rn", device="cpu")


@pytest.fixture(scope="module")
def rn_visual(rn_encoders):
    """vlm-rn's tower with its batch norms randomised: at initialisation open_clip zeroes every block's last norm,
    which would leave the residual branches out of every check."""
    visual = copy.deepcopy(rn_encoders.model.visual).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in visual.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g))
                m.bias.copy_(0.2 * torch.rand(m.bias.shape, generator=g) - 0.1)
                m.running_mean.copy_(0.2 * torch.rand(m.running_mean.shape, generator=g) - 0.1)
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
    return visual


def _pixels(shape, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).standard_normal(shape).astype(np.float32))


# -- independent references ----------------------------------------------------------------------------------------


def bilinear_matrix(n_in, n_out):
    """(n_out, n_in) matrix of 1-D bilinear resampling, align_corners=False."""
    m = np.zeros((n_out, n_in))
    for i in range(n_out):
        x = max((i + 0.5) * n_in / n_out - 0.5, 0.0)
        x0 = min(int(x), n_in - 1)
        x1, t = min(x0 + 1, n_in - 1), x - x0
        m[i, x0] += 1 - t
        m[i, x1] += t
    return m


def _layer4(visual, pixels):
    with torch.no_grad():
        x = visual.stem(pixels)
        for layer in (visual.layer1, visual.layer2, visual.layer3, visual.layer4):
            x = layer(x)
    return x.double().numpy()  # (B, C, h, w)


def reference_maskclip(visual, pixels):
    """(B, 3, H, W) -> (B, h, w, D) float64: c_proj(v_proj(x)) with NumPy matmuls on the pool's weights, as
    MaskCLIP's `MaskClipHead` computes it (1x1 convolutions on layer4's map, no positional embedding)."""
    x = _layer4(visual, pixels)
    sd = {k: v.double().numpy() for k, v in visual.attnpool.state_dict().items()}
    v = x.transpose(0, 2, 3, 1) @ sd["v_proj.weight"].T + sd["v_proj.bias"]  # (B, h, w, C)
    return v @ sd["c_proj.weight"].T + sd["c_proj.bias"]  # (B, h, w, D)


# -- MaskCLIP dense features ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(64, 64), (96, 160)])  # the native 2 x 2 grid; a 3 x 5 one
def test_maskclip_features_equal_the_plain_formula(rn_visual, size):
    pixels = _pixels((2, 3, *size))
    ours = dense.patch_features(rn_visual, pixels)  # through the dispatch
    assert ours.shape == (2, size[0] // 32, size[1] // 32, 64) and ours.dtype == torch.float32
    ref = reference_maskclip(rn_visual, pixels)
    scale = np.abs(ref).max()
    np.testing.assert_allclose(ours.double().numpy(), ref, atol=1e-5 * scale, rtol=0)


def test_maskclip_features_are_what_the_attention_pool_averages(rn_visual):
    """With the query and key projections zeroed, open_clip's own AttentionPool2d attends uniformly, so its output
    is the mean of c_proj(v_proj(token + pos)) over the mean token and the h*w cells. The pool is affine, so each
    cell's term is ours plus W_c W_v pos_j: what remains once the positions' part is taken out is our features."""
    visual = copy.deepcopy(rn_visual)
    with torch.no_grad():
        for proj in (visual.attnpool.q_proj, visual.attnpool.k_proj):
            proj.weight.zero_()
            proj.bias.zero_()
    pixels = _pixels((3, 3, 64, 64), seed=1)
    with torch.no_grad():
        pooled = visual(pixels).double()  # (B, D), open_clip's forward
        feats = resnet.dense_features(visual, pixels).double().flatten(1, 2)  # (B, h*w, D)
        x = visual.layer4(visual.layer3(visual.layer2(visual.layer1(visual.stem(pixels)))))
        pool = visual.attnpool
        mean_token = pool.c_proj(pool.v_proj(x.mean(dim=(2, 3)) + pool.positional_embedding[0])).double()
        positions = pool.positional_embedding[1:].sum(dim=0) @ pool.v_proj.weight.T @ pool.c_proj.weight.T
    want = (mean_token + feats.sum(dim=1) + positions.double()) / (feats.shape[1] + 1)
    torch.testing.assert_close(want, pooled, atol=1e-5, rtol=1e-5)


def test_window_scores_pad_to_the_stride_and_crop(rn_visual, rn_encoders):
    """A 40 x 72 window is zero-padded to 64 x 96 (12 px each side), scored on its 2 x 3 grid, upsampled, cropped."""
    pixels = _pixels((1, 3, 40, 72), seed=2)
    text = rn_encoders.encode_text(["the red circle", "a blue square"]).double().numpy()
    ours = dense.window_scores(rn_visual, pixels, torch.from_numpy(text).float())
    padded = F.pad(pixels, (12, 12, 12, 12))
    f = reference_maskclip(rn_visual, padded)[0]  # (2, 3, D)
    s = np.einsum("hwd,pd->phw", f / np.linalg.norm(f, axis=-1, keepdims=True), text)
    up = np.einsum("ih,phw,jw->pij", bilinear_matrix(2, 64), s, bilinear_matrix(3, 96))
    assert ours.shape == (1, 2, 40, 72)
    np.testing.assert_allclose(ours[0].double().numpy(), up[:, 12:52, 12:84], atol=2e-5, rtol=0)


def test_segment_dense_is_the_background_softmax_of_maskclip_scores(rn_encoders):
    enc = rn_encoders
    image = np.random.default_rng(6).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    bg = ("background", "the sky")
    result = segment(enc, image, ["a red circle"], background=bg, dense_config=dense.DenseConfig(short_side=64))
    pixels = Pixels.of(enc)(Image.fromarray(image), (64, 64))[None]
    text = enc.encode_text(["a red circle", *bg]).double().numpy()
    f = reference_maskclip(enc.model.visual, pixels)[0]  # one native window: (2, 2, D)
    s = np.einsum("hwd,pd->phw", f / np.linalg.norm(f, axis=-1, keepdims=True), text)
    s = np.einsum("ih,phw,jw->pij", bilinear_matrix(2, 64), s, bilinear_matrix(2, 64)) * enc.logit_scale
    want = 1 / (1 + np.exp(-(s[0] - np.log(np.exp(s[1:]).sum(0)))))
    np.testing.assert_allclose(result.heatmaps[0], want, atol=1e-4)
    np.testing.assert_array_equal(result.masks[0], result.heatmaps[0] >= 0.5)


@pytest.mark.parametrize("hw", [(37, 101), (101, 37), (1, 1), (150, 97)])
def test_segment_dense_returns_masks_at_the_input_size(rn_encoders, hw):
    image = np.random.default_rng(hw[0]).integers(0, 256, (*hw, 3), dtype=np.uint8)
    result = segment(rn_encoders, image, ["the red circle", "a blue square"])
    assert result.masks.shape == result.heatmaps.shape == (2, *hw)
    assert result.masks.dtype == bool and result.heatmaps.dtype == np.float32
    assert result.heatmaps.min() >= 0.0 and result.heatmaps.max() <= 1.0
    assert result.compute_size == dense.tiling(hw, rn_encoders.model.visual, dense.DenseConfig()).size


def test_unsupported_towers_raise_a_model_error_that_says_why():
    broken = ModifiedResNet(layers=(1, 1, 1, 1), output_dim=32, heads=2, image_size=64, width=8)
    broken.attnpool = torch.nn.Identity()
    with pytest.raises(ModelError, match="AttentionPool2d"):
        towers.check_supported(broken)
    coca = VisionTransformer(32, 8, 64, 1, 2, 4.0, output_dim=32, attentional_pool=True, attn_pooler_heads=2)
    with pytest.raises(ModelError, match="attentional pooling"):
        towers.kind(coca)
    with pytest.raises(ModelError, match=r"ViT \(VisionTransformer\) or ResNet \(ModifiedResNet\).*Linear"):
        dense.patch_features(torch.nn.Linear(2, 2), torch.zeros(1, 3, 32, 32))


# -- the learned decoder ---------------------------------------------------------------------------------------


def test_stage_activations_are_open_clips_stages_on_one_grid(rn_visual):
    pixels = _pixels((2, 3, 96, 64), seed=3)  # grid 12 x 8 at stride 8
    acts, grid = dec.encoder_activations(rn_visual, pixels, (0, 1, 3), 8)
    with torch.no_grad():
        ref = rn_visual.forward_intermediates(pixels, indices=[1, 2, 4], intermediates_only=True)
    ref = ref["image_intermediates"]
    assert grid == (12, 8)

    def tokens(cells, stage):  # the stage's own mean, then the grid's cells row by row: (B, 1 + h*w, C)
        flat = cells.reshape(*cells.shape[:2], -1).transpose(0, 2, 1)
        return np.concatenate([stage.mean(axis=(2, 3))[:, None], flat], axis=1)

    l1, l2, l4 = (r.double().numpy() for r in ref)
    pooled = l1.reshape(2, -1, 12, 2, 8, 2).mean(axis=(3, 5))  # stride 4 -> 8: means of 2 x 2 cells
    up = np.einsum("ih,bchw,jw->bcij", bilinear_matrix(3, 12), l4, bilinear_matrix(2, 8))  # stride 32 -> 8
    for a, cells, stage in zip(acts, (pooled, l2, up), (l1, l2, l4), strict=True):
        np.testing.assert_allclose(a.double().numpy(), tokens(cells, stage), atol=1e-5, rtol=1e-5)


def test_resnet_spec_and_its_checks(rn_encoders):
    spec = dec.make_spec(rn_encoders)
    assert (spec.tower, spec.layers, spec.patch_size, spec.input_size) == ("resnet", (1, 2, 3), 8, 64)
    assert spec.layer_widths == (128, 256, 512) and spec.read_widths == (128, 256, 512)
    with pytest.raises(ConfigError, match="multiple of the ResNet's stride 32"):
        dec.make_spec(rn_encoders, input_size=48)
    with pytest.raises(ConfigError, match=r"do not exist.*stages"):
        dec.make_spec(rn_encoders, layers=(0, 4))
    assert dec.DecoderSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec
    with pytest.raises(CheckpointError, match="tower"):
        dec.DecoderSpec.from_json({**spec.to_json(), "tower": "convnext"})


def test_resnet_decoder_gives_one_logit_per_pixel_and_follows_the_text(rn_encoders):
    torch.manual_seed(0)
    d = dec.SegDecoder(dec.make_spec(rn_encoders, layers=(0, 2, 3), input_size=96))
    pixels = torch.randn(3, 3, 96, 96)
    text = F.normalize(torch.randn(3, rn_encoders.embed_dim), dim=-1)
    logits = dec.predict_logits(rn_encoders, d, pixels, text)
    assert logits.shape == (3, 96, 96)
    assert not torch.allclose(logits, dec.predict_logits(rn_encoders, d, pixels, text.roll(1, dims=0)))
    torch.testing.assert_close(dec.predict_logits(rn_encoders, d, pixels[:1], text[:1]), logits[:1])


def test_resnet_decoder_round_trip_and_encoder_check(rn_encoders, tmp_path):
    torch.manual_seed(1)
    d = dec.SegDecoder(dec.make_spec(rn_encoders))
    path = dec.save_decoder(tmp_path / "d", d, dec.encoder_record(rn_encoders, "vlm-rn", None))
    record = json.loads((path / "config.json").read_text())
    assert record["format_version"] == 2 and record["spec"]["tower"] == "resnet" and record["spec"]["patch_size"] == 8
    loaded = dec.load_decoder(path, rn_encoders)
    assert loaded.spec == d.spec
    for k, v in d.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v, atol=0, rtol=0)
    import dataclasses

    with pytest.raises(CheckpointError, match="--model vlm-rn"):
        dec.load_decoder(path, dataclasses.replace(rn_encoders, fingerprint="0000"))


def test_a_decoder_refuses_the_other_tower_kind(rn_encoders, tiny_encoders):
    d = dec.SegDecoder(dec.make_spec(rn_encoders))
    text = F.normalize(torch.randn(1, tiny_encoders.embed_dim), dim=-1)
    with pytest.raises(ModelError, match=r"reads a resnet image tower.*VisionTransformer"):
        dec.predict_logits(tiny_encoders, d, torch.zeros(1, 3, 64, 64), text)


def test_a_vit_decoder_config_from_before_resnet_support_still_loads(tiny_encoders, tmp_path):
    torch.manual_seed(2)
    d = dec.SegDecoder(dec.make_spec(tiny_encoders)).eval()
    path = dec.save_decoder(tmp_path / "old", d, dec.encoder_record(tiny_encoders, "vlm-tiny", None))
    record = json.loads((path / "config.json").read_text())
    assert record["spec"]["layer_widths"] == [64, 64]
    del record["spec"]["tower"], record["spec"]["layer_widths"]  # format 1 had neither
    record["format_version"] = 1
    (path / "config.json").write_text(json.dumps(record))
    loaded = dec.load_decoder(path, tiny_encoders)
    assert loaded.spec.tower == "vit" and loaded.spec.layer_widths == () and loaded.spec.read_widths == (64, 64)
    image = np.random.default_rng(0).integers(0, 256, (45, 30, 3), dtype=np.uint8)
    a = segment(tiny_encoders, image, ["a red circle"], method="decoder", decoder=d)
    b = segment(tiny_encoders, image, ["a red circle"], method="decoder", decoder=path)
    np.testing.assert_array_equal(a.heatmaps, b.heatmaps)


def test_train_seg_on_vlm_rn_then_segment(tmp_path):
    data = tmp_path / "data"
    synth.generate(data, scenes=12, seed=0, image_size=64, progress=False)
    cfg = from_leaves(SegTrainConfig, train_data=str(data / "phrases.csv"), model="vlm-rn", batch_size=8, steps=4,
                         warmup_steps=1, save_every=0, val_every=0, log_every=1, workers=0, val_limit=4,
                         cache_activations=True, output_dir=str(tmp_path / "run"))  # fmt: skip
    result = train_decoder(cfg, progress=False, validate=validate_decoder)
    assert result.steps == 4 and "mIoU" in result.metrics
    losses = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in losses if "train/loss" in r] == [1, 2, 3, 4]
    spec = json.loads((result.final_checkpoint / "config.json").read_text())["spec"]
    assert (spec["tower"], spec["layers"], spec["patch_size"]) == ("resnet", [1, 2, 3], 8)
    # the random encoder was kept beside the run; the decoder runs on it
    enc = models.load(str(tmp_path / "run" / "encoder"), device="cpu")
    out = segment(enc, data / "images" / "000000.png", "the red circle", method="decoder",
                  decoder=result.final_checkpoint)  # fmt: skip
    assert out.masks.shape == (1, 64, 64)
