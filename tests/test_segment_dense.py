"""The training-free method against an independent, plain computation of ClearCLIP's formula from the raw weights.

The reference below reads the open_clip state dict and redoes the whole ViT with einsum and elementwise ops: patch
embedding, positions, pre-norm, ordinary blocks, and ClearCLIP's last block (q-q attention, no residual, no MLP),
then ln_post, proj and cosine with the text embeddings. It never calls the module under test.
"""

from __future__ import annotations

import math

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.transformer import VisionTransformer

from vlm.errors import ModelError
from vlm.segment import dense, segment, vit


def _ln(x, sd, name, eps=1e-5):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * sd[f"{name}.weight"] + sd[f"{name}.bias"]


def _gelu(x):
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def _heads(t, h):  # (B, L, C) -> (B, h, L, C/h)
    b, n, c = t.shape
    return t.reshape(b, n, h, c // h).permute(0, 2, 1, 3)


def reference_clearclip(sd, pixels, heads, text, prefix="visual.", qk_norm=False):
    """(B, 3, H, W) normalised pixels -> (B, P, h, w) cosine of ClearCLIP patch features with (P, D) text."""
    sd = {k[len(prefix) :]: v.double() for k, v in sd.items() if k.startswith(prefix)}
    w = sd["conv1.weight"]  # (C, 3, p, p)
    c, p = w.shape[0], w.shape[-1]
    b, _, hh, ww = pixels.shape
    gh, gw = hh // p, ww // p
    patches = pixels.double().reshape(b, 3, gh, p, gw, p)
    x = torch.einsum("bihpwq,cipq->bhwc", patches, w).reshape(b, gh * gw, c)
    x = torch.cat([sd["class_embedding"].expand(b, 1, c), x], dim=1)
    pos = sd["positional_embedding"]
    n0 = math.isqrt(pos.shape[0] - 1)
    if (gh, gw) != (n0, n0):
        grid = pos[1:].reshape(1, n0, n0, c).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(gh, gw), mode="bicubic", align_corners=False)
        pos = torch.cat([pos[:1], grid.permute(0, 2, 3, 1).reshape(gh * gw, c)])
    x = _ln(x + pos, sd, "ln_pre")
    depth = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("transformer.resblocks."))

    def qkv(i, y):
        proj = torch.einsum("blc,ec->ble", y, sd[f"transformer.resblocks.{i}.attn.in_proj_weight"])
        q, k, v = (_heads(t, heads) for t in (proj + sd[f"transformer.resblocks.{i}.attn.in_proj_bias"]).chunk(3, -1))
        if qk_norm:
            q = _ln(q, sd, f"transformer.resblocks.{i}.attn.ln_q")
            k = _ln(k, sd, f"transformer.resblocks.{i}.attn.ln_k")
        return q, k, v

    def out_proj(i, o):
        o = o.permute(0, 2, 1, 3).reshape(b, -1, c)
        pre = f"transformer.resblocks.{i}.attn.out_proj"
        return torch.einsum("blc,ec->ble", o, sd[f"{pre}.weight"]) + sd[f"{pre}.bias"]

    for i in range(depth - 1):
        q, k, v = qkv(i, _ln(x, sd, f"transformer.resblocks.{i}.ln_1"))
        att = torch.softmax(torch.einsum("bhld,bhmd->bhlm", q, k) / math.sqrt(q.shape[-1]), dim=-1)
        x = x + out_proj(i, torch.einsum("bhlm,bhmd->bhld", att, v))
        y = _ln(x, sd, f"transformer.resblocks.{i}.ln_2")
        pre = f"transformer.resblocks.{i}.mlp"
        y = _gelu(torch.einsum("blc,ec->ble", y, sd[f"{pre}.c_fc.weight"]) + sd[f"{pre}.c_fc.bias"])
        x = x + torch.einsum("ble,ce->blc", y, sd[f"{pre}.c_proj.weight"]) + sd[f"{pre}.c_proj.bias"]
    last = depth - 1
    q, _, v = qkv(last, _ln(x, sd, f"transformer.resblocks.{last}.ln_1"))
    att = torch.softmax(torch.einsum("bhld,bhmd->bhlm", q, q) / math.sqrt(q.shape[-1]), dim=-1)  # q-q
    z = out_proj(last, torch.einsum("bhlm,bhmd->bhld", att, v))  # no residual, no MLP
    f = torch.einsum("blc,cd->bld", _ln(z[:, 1:], sd, "ln_post"), sd["proj"])
    f = f / f.norm(dim=-1, keepdim=True)
    t = text.double() / text.double().norm(dim=-1, keepdim=True)
    return torch.einsum("bld,pd->bpl", f, t).reshape(b, -1, gh, gw)


def _pixels(shape, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).standard_normal(shape).astype(np.float32))


@pytest.mark.parametrize("size", [(32, 32), (48, 40)])  # native grid, and a resized one (6 x 5 patches)
def test_patch_scores_equal_the_plain_formula_on_vlm_tiny(tiny_encoders, size):
    enc = tiny_encoders
    visual = enc.model.visual
    pixels = _pixels((2, 3, *size))
    text = enc.encode_text(["the red circle", "a blue square", "background"])
    ref = reference_clearclip(enc.model.state_dict(), pixels, visual.transformer.resblocks[0].attn.num_heads, text)
    feats = F.normalize(dense.patch_features(visual, pixels), dim=-1)  # (B, h, w, D)
    ours = torch.einsum("bhwd,pd->bphw", feats, text)
    torch.testing.assert_close(ours.double(), ref, atol=2e-5, rtol=0)
    # and the pixel-level map of one window is that patch map upsampled bilinearly
    pix = dense.window_scores(visual, pixels, text)
    torch.testing.assert_close(pix, F.interpolate(ref.float(), size=size, mode="bilinear"), atol=2e-5, rtol=0)


def test_patch_scores_equal_the_plain_formula_on_a_random_vit_b16():
    from open_clip.model import _build_vision_tower

    torch.manual_seed(0)
    cfg = open_clip.get_model_config("ViT-B-16")  # 224 px, patch 16, width 768, 12 layers, 12 heads
    visual = _build_vision_tower(cfg["embed_dim"], cfg["vision_cfg"]).eval()  # randomly initialised
    pixels = _pixels((1, 3, 224, 224), seed=1)
    text = F.normalize(torch.randn(4, 512, generator=torch.Generator().manual_seed(2)), dim=-1)
    ref = reference_clearclip({f"visual.{k}": v for k, v in visual.state_dict().items()}, pixels, 12, text)
    feats = F.normalize(dense.patch_features(visual, pixels), dim=-1)
    ours = torch.einsum("bhwd,pd->bphw", feats, text)
    torch.testing.assert_close(ours.double(), ref, atol=1e-4, rtol=0)


def test_sliding_window_is_the_mean_of_the_windows(tiny_encoders):
    """An independent re-statement of ClearCLIP's forward_slide on a 56 x 40 image with 32 px windows, stride 16."""
    enc = tiny_encoders
    visual = enc.model.visual
    heads = visual.transformer.resblocks[0].attn.num_heads
    image = _pixels((3, 56, 40), seed=3)
    text = enc.encode_text(["a green star", "a cross"])
    tile = dense.Tiling(size=(56, 40), window=(32, 32), stride=(16, 16))
    ours = dense.dense_scores(visual, image, text, tile, batch=2)  # batches of 2 leave a remainder of 6 windows
    total, count = torch.zeros(2, 56, 40, dtype=torch.float64), torch.zeros(56, 40, dtype=torch.float64)
    for y in (0, 16, 24):  # rows: 0, 16, then flush with the bottom edge (56 - 32)
        for x in (0, 8):  # cols: 0, then flush with the right edge (40 - 32)
            crop = image[None, :, y : y + 32, x : x + 32]
            s = F.interpolate(reference_clearclip(enc.model.state_dict(), crop, heads, text), size=(32, 32),
                              mode="bilinear")  # fmt: skip
            total[:, y : y + 32, x : x + 32] += s[0]
            count[y : y + 32, x : x + 32] += 1
    assert sorted(tile.origins) == sorted((y, x) for y in (0, 16, 24) for x in (0, 8))
    torch.testing.assert_close(ours.double(), total / count, atol=2e-5, rtol=0)


def test_custom_blocks_and_sequence_first_layout_give_the_same_scores():
    torch.manual_seed(0)
    kw = dict(image_size=32, patch_size=8, width=64, layers=2, heads=2, mlp_ratio=4.0, output_dim=32)
    plain = VisionTransformer(**kw).eval()
    custom = VisionTransformer(**kw, block_type="custom").eval()
    missing, unexpected = custom.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and not missing
    pixels = _pixels((2, 3, 40, 24), seed=4)
    text = F.normalize(torch.randn(3, 32), dim=-1)
    want = dense.window_scores(plain, pixels, text)
    torch.testing.assert_close(dense.window_scores(custom, pixels, text), want, atol=1e-5, rtol=0)
    # older open_clip towers run their blocks sequence-first (L, N, D)
    plain.transformer.batch_first = False
    for block in plain.transformer.resblocks:
        block.attn.batch_first = False
    torch.testing.assert_close(dense.window_scores(plain, pixels, text), want, atol=1e-5, rtol=0)


def test_qk_norm_blocks_follow_the_formula_with_normed_queries():
    torch.manual_seed(0)
    tower = VisionTransformer(32, 8, 64, 2, 2, 4.0, output_dim=32, qk_norm=True).eval()
    with torch.no_grad():
        for block in tower.transformer.resblocks:  # make the norms do something
            block.attn.ln_q.weight.uniform_(0.5, 1.5)
            block.attn.ln_k.bias.uniform_(-0.2, 0.2)
    pixels = _pixels((1, 3, 32, 32), seed=5)
    text = F.normalize(torch.randn(2, 32), dim=-1)
    sd = {f"visual.{k}": v for k, v in tower.state_dict().items()}
    ref = reference_clearclip(sd, pixels, 2, text, qk_norm=True)
    ours = torch.einsum("bhwd,pd->bphw", F.normalize(dense.patch_features(tower, pixels), dim=-1), text)
    torch.testing.assert_close(ours.double(), ref, atol=2e-5, rtol=0)


def test_unsupported_towers_raise_a_clear_model_error():
    from open_clip.modified_resnet import ModifiedResNet

    resnet = ModifiedResNet(layers=(1, 1, 1, 1), output_dim=32, heads=2, image_size=64, width=8)
    with pytest.raises(ModelError, match="ModifiedResNet"):
        vit.check_supported(resnet)
    coca = VisionTransformer(32, 8, 64, 1, 2, 4.0, output_dim=32, attentional_pool=True, attn_pooler_heads=2)
    with pytest.raises(ModelError, match="attentional pooling"):
        vit.check_supported(coca)
    with pytest.raises(ModelError, match="ViT"):
        dense.dense_scores(
            torch.nn.Identity(), torch.zeros(3, 8, 8), torch.zeros(1, 4), dense.Tiling((8, 8), (8, 8), (4, 4))
        )


def test_segment_uses_the_dense_scores_with_a_background_softmax(tiny_encoders):
    """The heat map of one phrase is its softmax share against the background prompts at the model's scale."""
    enc = tiny_encoders
    rng = np.random.default_rng(6)
    image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    cfg = dense.DenseConfig(short_side=32)  # one native window: no resizing, no tiling
    bg = ("background", "the sky")
    result = segment(enc, image, ["a red circle"], background=bg, dense_config=cfg)
    from vlm.segment.api import Pixels

    pixels = Pixels.of(enc)(__import__("PIL.Image").Image.fromarray(image), (32, 32))
    text = enc.encode_text(["a red circle", *bg])
    heads = enc.model.visual.transformer.resblocks[0].attn.num_heads
    s = F.interpolate(reference_clearclip(enc.model.state_dict(), pixels[None], heads, text), size=(32, 32),
                      mode="bilinear")[0] * enc.logit_scale  # fmt: skip
    want = torch.softmax(s, dim=0)[0]
    np.testing.assert_allclose(result.heatmaps[0], want.numpy(), atol=1e-4)
    np.testing.assert_array_equal(result.masks[0], result.heatmaps[0] >= 0.5)
    # the phrase's score is its peak log-odds against the background prompts
    assert result.scores[0] == pytest.approx(float((s[0] - torch.logsumexp(s[1:], dim=0)).max()), abs=1e-3)
    assert result.absent == (False,) and result.absent_below is None
