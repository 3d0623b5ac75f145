"""Patch tokens of an open_clip `VisionTransformer` at any input size.

Both segmentation methods need the ViT's tokens, not its pooled embedding: the training-free method replaces the
last block (see `dense.py`), the decoder reads the outputs of a few blocks (see `decoder.py`). This module runs the
tower piece by piece, as `VisionTransformer.forward` does, with three differences:
  - the positional embedding is resized (bicubic, as timm and ClearCLIP do) to the grid of the input, so any input
    size that is a multiple of the patch size works;
  - patch dropout is never applied (it is an identity at inference anyway, and it would drop patches we need);
  - it stops where the caller asks and returns the tokens of the blocks the caller names.

Supported: open_clip's `VisionTransformer` with `ResidualAttentionBlock` (nn.MultiheadAttention, batch-first or
not) or `CustomResidualAttentionBlock` (open_clip's own `Attention`: qk-norm, scaled-cosine attention, head scale,
inner norm, layer scale), any `pool_type`, `final_ln_after_pool`. Not supported here, with a `ModelError`: other
towers (`ModifiedResNet` goes through `resnet.py`; timm and Hugging Face towers through nothing, see `towers.py`),
and attentional pooling (CoCa), whose output tokens are learned queries rather than patches.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from open_clip.transformer import Attention, VisionTransformer
from torch import nn

from vlm.errors import ModelError


def check_supported(visual: nn.Module) -> VisionTransformer:
    """Return `visual` if its patch tokens can be read here, else raise a `ModelError` that says why."""
    if not isinstance(visual, VisionTransformer):
        kind = type(visual).__name__
        raise ModelError(
            f"expected an open_clip ViT image tower (VisionTransformer), got {kind}; `towers.check_supported` says "
            f"which towers segmentation can read"
        )
    if visual.attn_pool is not None:
        raise ModelError(
            "segmentation does not support ViTs with attentional pooling (CoCa): their output tokens are learned "
            "queries, not image patches"
        )
    for i, block in enumerate(visual.transformer.resblocks):
        attn = block.attn
        if isinstance(attn, Attention):
            continue
        if not isinstance(attn, nn.MultiheadAttention) or not attn._qkv_same_embed_dim:
            raise ModelError(f"block {i} of the image tower has an attention layer this code cannot read: {attn}")
        if attn.bias_k is not None or attn.add_zero_attn:
            raise ModelError(f"block {i}: nn.MultiheadAttention with bias_k/add_zero_attn is not supported")
    return visual


def patch_size(visual: VisionTransformer) -> tuple[int, int]:
    ph, pw = visual.patch_size
    return int(ph), int(pw)


def native_grid(visual: VisionTransformer) -> tuple[int, int]:
    """The patch grid the positional embedding was trained for: (rows, cols)."""
    return tuple(int(g) for g in visual.grid_size)  # type: ignore[return-value]


def default_input_size(visual: VisionTransformer) -> int:
    """The side in pixels the tower was built for (the short side, for a non-square tower)."""
    ph, pw = patch_size(visual)
    gh, gw = native_grid(visual)
    return min(gh * ph, gw * pw)


def resize_positional_embedding(
    pos: torch.Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int]
) -> torch.Tensor:
    """(1 + R*C, width) -> (1 + r*c, width): the class position kept, the patch positions resized bicubically.

    `align_corners=False` and an explicit output size (timm's `resample_abs_pos_embed`); ClearCLIP passes a scale
    factor instead, which differs in the last decimals for grids that are not integer multiples.
    """
    if tuple(old_grid) == tuple(new_grid):
        return pos
    cls_pos, patch_pos = pos[:1], pos[1:]
    width = pos.shape[-1]
    grid = patch_pos.reshape(1, old_grid[0], old_grid[1], width).permute(0, 3, 1, 2)  # (1, width, R, C)
    grid = F.interpolate(grid.float(), size=new_grid, mode="bicubic", align_corners=False).to(pos.dtype)
    return torch.cat([cls_pos, grid.permute(0, 2, 3, 1).reshape(-1, width)])  # (1 + r*c, width)


def embed(visual: VisionTransformer, pixels: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """Normalised pixels (B, 3, H, W), H and W multiples of the patch size -> tokens (B, 1 + h*w, width) after
    `ln_pre`, and the grid (h, w)."""
    ph, pw = patch_size(visual)
    if pixels.shape[-2] % ph or pixels.shape[-1] % pw:
        raise ValueError(f"input {tuple(pixels.shape[-2:])} is not a multiple of the patch size {(ph, pw)}")
    x = visual.conv1(pixels.to(visual.conv1.weight.dtype))  # (B, width, h, w)
    grid = (x.shape[-2], x.shape[-1])
    x = x.flatten(2).transpose(1, 2)  # (B, h*w, width)
    cls = visual.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
    x = torch.cat([cls, x], dim=1)  # (B, 1 + h*w, width)
    x = x + resize_positional_embedding(visual.positional_embedding, native_grid(visual), grid).to(x.dtype)
    return visual.ln_pre(x), grid


def run_block(visual: VisionTransformer, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """One ordinary block on batch-first tokens (B, L, width), whichever layout the tower uses internally."""
    if visual.transformer.batch_first:
        return block(x)
    return block(x.transpose(0, 1)).transpose(0, 1)


def run_blocks(
    visual: VisionTransformer, x: torch.Tensor, stop: int, keep: tuple[int, ...] = ()
) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """Blocks 0 .. stop-1 on (B, L, width) tokens; returns the output and the outputs of the blocks in `keep`."""
    kept = {}
    for i, block in enumerate(visual.transformer.resblocks[:stop]):
        x = run_block(visual, block, x)
        if i in keep:
            kept[i] = x
    return x, kept


def _qkv(attn: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, L, width) -> q, k, v of shape (B, heads, L, head_dim), with qk-norm applied where the block has it."""
    b, n, width = x.shape
    heads = attn.num_heads
    q, k, v = F.linear(x, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    q, k, v = (t.reshape(b, n, heads, width // heads).transpose(1, 2) for t in (q, k, v))
    if isinstance(attn, Attention):
        q, k = attn.ln_q(q), attn.ln_k(k)
    return q, k, v


def self_self_attention(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """ClearCLIP's attention branch of `block` on batch-first tokens (B, L, width) already passed through `ln_1`:

        out_proj( softmax(q q^T / sqrt(d)) v )    per head; q, v from the block's own projection

    followed by what the block applies to its attention branch before the residual sum (open_clip's custom block:
    head scale, inner norm, `ln_attn`; both blocks: layer scale). Query-query attention replaces query-key
    attention; the caller drops the residual and the MLP.
    """
    attn = block.attn
    b, n, width = x.shape
    q, _, v = _qkv(attn, x)  # (B, heads, L, head_dim)
    if isinstance(attn, Attention) and attn.logit_scale is not None:
        # scaled-cosine attention (Swin v2): the block's own similarity, with q in place of k
        qn = F.normalize(q, dim=-1)
        logits = qn @ qn.transpose(-1, -2) * torch.clamp(attn.logit_scale, max=attn.logit_scale_max).exp()
    else:
        logits = q @ q.transpose(-1, -2) / math.sqrt(q.shape[-1])  # (B, heads, L, L)
    out = logits.softmax(dim=-1) @ v  # (B, heads, L, head_dim)
    if isinstance(attn, Attention) and attn.head_scale is not None:
        out = out * attn.head_scale
    out = out.transpose(1, 2).reshape(b, n, width)  # (B, L, width)
    if isinstance(attn, Attention):
        out = attn.ln_inner(out)
    out = attn.out_proj(out)
    out = getattr(block, "ln_attn", nn.Identity())(out)
    return block.ls_1(out)


def project(visual: VisionTransformer, tokens: torch.Tensor) -> torch.Tensor:
    """Patch tokens (B, N, width) -> joint-space features (B, N, D) through `ln_post` and `proj`.

    With `final_ln_after_pool` open_clip normalises the pooled vector only; applied to each patch token here, the
    same norm is its per-token analogue.
    """
    tokens = visual.ln_post(tokens)
    return tokens @ visual.proj if visual.proj is not None else tokens


@torch.no_grad()
def dense_features(visual: VisionTransformer, pixels: torch.Tensor) -> torch.Tensor:
    """ClearCLIP's patch features (see `dense.py`): normalised pixels (B, 3, H, W), H and W multiples of the patch
    size -> (B, h, w, D) float32, not normalised."""
    x, (h, w) = embed(visual, pixels)  # (B, 1 + h*w, width)
    blocks = visual.transformer.resblocks
    x, _ = run_blocks(visual, x, len(blocks) - 1)
    last = blocks[-1]
    z = self_self_attention(last, last.ln_1(x))  # (B, 1 + h*w, width): no residual, no MLP
    feats = project(visual, z[:, 1:])  # (B, h*w, D)
    return feats.float().reshape(x.shape[0], h, w, -1)
