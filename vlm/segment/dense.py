"""Training-free dense matching of image regions and text, for the two tower kinds (`towers.py`):

ViT (open_clip VisionTransformer): ClearCLIP (Lan et al., ECCV 2024). The ViT runs as usual up to its last block;
the last block is replaced by its attention branch alone, with query-query attention, and no residual and no MLP:

    X = blocks[:-1](embed(window))                       (B, 1 + h*w, width)
    Z = ls_1(out_proj(softmax(Q Q^T / sqrt(d)) V))       Q, V = the last block's projections of ln_1(X), per head
    F = ln_post(Z[:, 1:]) @ proj                         (B, h*w, D) patch features in the joint space

(ClearCLIP's `custom_attn(..., model_type='ClearCLIP')` with `ignore_residual=True` in its fork of open_clip.)

ResNet (open_clip ModifiedResNet): MaskCLIP (Zhou, Loy & Dai, ECCV 2022). The tower runs up to layer4; the attention
pool loses its query-key attention; its value and output projections are applied at every cell, as MaskCLIP's
`MaskClipHead` does (`resnet.dense_features`):

    X = layer4(...(stem(window)))                        (B, C, h, w), h*w cells of 32 x 32 pixels
    F = c_proj(v_proj(X))                                (B, h*w, D)

Both: S = normalise(F) @ normalise(T)^T, the (B, h*w, P) cosine with the P text embeddings. The cell map S is
upsampled bilinearly to the window's pixels. Large images are covered by overlapping windows (ClearCLIP's
`forward_slide`): each window's pixel map is added into the image and divided by the number of windows that cover
each pixel. Windows that are not a multiple of the cell size (the ViT's patch, the ResNet's stride of 32) are
zero-padded (in normalised space, i.e. with the mean colour), and the padding is cut off again after upsampling, as
ClearCLIP does. A window's default side is the tower's input size, where its positions need no resizing.
"""

from __future__ import annotations

import dataclasses
import logging

import torch
import torch.nn.functional as F
from torch import nn

from vlm.errors import ConfigError
from vlm.segment import towers

LOG = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DenseConfig:
    """How an image is tiled for the training-free method; every size is in pixels of the resized image."""

    window: int | None = None  # sliding-window side; None = the model's input size (its positions need no resizing)
    stride: int | None = None  # step between windows; None = window // 2 (ClearCLIP: 112 for 224 windows)
    short_side: int | None = None  # the image is resized so its short side is this; None = 2 * window
    max_side: int = 2048  # ... but its long side never exceeds this (caps compute for panoramas)
    batch: int = 16  # windows run through the image tower at once

    def __post_init__(self) -> None:
        for name in ("window", "stride", "short_side"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"DenseConfig.{name} must be a positive number of pixels, got {value}")
        if self.max_side < 1 or self.batch < 1:
            raise ConfigError(f"DenseConfig.max_side and batch must be positive, got {self.max_side}, {self.batch}")


@dataclasses.dataclass(frozen=True)
class Tiling:
    """The resolved tiling of one image: compute size, window and stride, all (rows, cols) in pixels."""

    size: tuple[int, int]
    window: tuple[int, int]
    stride: tuple[int, int]

    @property
    def origins(self) -> list[tuple[int, int]]:
        """Top-left corners (y, x) of the windows; the last row and column are flush with the far edges."""
        out = []
        (h, w), (wh, ww), (sh, sw) = self.size, self.window, self.stride
        rows = max(h - wh + sh - 1, 0) // sh + 1
        cols = max(w - ww + sw - 1, 0) // sw + 1
        for r in range(rows):
            for c in range(cols):
                y1, x1 = min(r * sh + wh, h), min(c * sw + ww, w)
                out.append((max(y1 - wh, 0), max(x1 - ww, 0)))
        return out


def tiling(image_hw: tuple[int, int], visual: nn.Module, cfg: DenseConfig) -> Tiling:
    """The compute size of an image of `image_hw` pixels (keeping its aspect ratio) and its windows."""
    window = cfg.window or towers.default_input_size(visual)
    stride = cfg.stride or max(1, window // 2)
    short = cfg.short_side or 2 * window
    h, w = image_hw
    scale = short / min(h, w)
    scale = min(scale, cfg.max_side / max(h, w))
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    win = (min(window, size[0]), min(window, size[1]))
    return Tiling(size=size, window=win, stride=(stride, stride))


def _pad_to_patch(h: int, w: int, patch: tuple[int, int]) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) zero padding that makes (h, w) a multiple of the cell size (ClearCLIP's split)."""
    pw_, ph_ = (-w) % patch[1], (-h) % patch[0]
    return pw_ // 2, pw_ - pw_ // 2, ph_ // 2, ph_ - ph_ // 2


@torch.no_grad()
def patch_features(visual: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """Dense features (ClearCLIP for a ViT, MaskCLIP for a ResNet): normalised pixels (B, 3, H, W), H and W
    multiples of `towers.stride(visual)` -> (B, h, w, D) float32, not normalised."""
    return towers.dense_features(visual, pixels)


@torch.no_grad()
def window_scores(visual: nn.Module, pixels: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """Cosine scores at pixel resolution for windows of any size: (B, 3, H, W) normalised pixels and (P, D)
    L2-normalised text embeddings -> (B, P, H, W) float32."""
    patch = towers.stride(visual)
    h, w = pixels.shape[-2:]
    left, right, top, bottom = _pad_to_patch(h, w, patch)
    padded = F.pad(pixels, (left, right, top, bottom))
    feats = F.normalize(patch_features(visual, padded), dim=-1)  # (B, gh, gw, D)
    scores = torch.einsum("bhwd,pd->bphw", feats, text.to(feats))  # (B, P, gh, gw)
    scores = F.interpolate(scores, size=padded.shape[-2:], mode="bilinear", align_corners=False)
    return scores[:, :, top : top + h, left : left + w]


@torch.no_grad()
def dense_scores(
    visual: nn.Module, pixels: torch.Tensor, text: torch.Tensor, tile: Tiling, batch: int = 16
) -> torch.Tensor:
    """Sliding-window cosine scores over one image: (3, H, W) normalised pixels at `tile.size` and (P, D)
    normalised text embeddings -> (P, H, W) float32, the mean over the windows covering each pixel."""
    towers.check_supported(visual)
    if tuple(pixels.shape[-2:]) != tile.size:
        raise ValueError(f"pixels {tuple(pixels.shape[-2:])} do not match the tiling size {tile.size}")
    (wh, ww), origins = tile.window, tile.origins
    total = pixels.new_zeros((text.shape[0], *tile.size), dtype=torch.float32)
    count = pixels.new_zeros(tile.size, dtype=torch.float32)
    for start in range(0, len(origins), batch):
        chunk = origins[start : start + batch]
        crops = torch.stack([pixels[:, y : y + wh, x : x + ww] for y, x in chunk])  # (b, 3, wh, ww)
        scores = window_scores(visual, crops, text)  # (b, P, wh, ww)
        for (y, x), s in zip(chunk, scores, strict=True):
            total[:, y : y + wh, x : x + ww] += s
            count[y : y + wh, x : x + ww] += 1
    LOG.debug("dense: %d windows of %s over %s", len(origins), tile.window, tile.size)
    return total / count
