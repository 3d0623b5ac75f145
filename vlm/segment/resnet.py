"""Feature maps of an open_clip `ModifiedResNet` (CLIP's RN50-style tower) at any input size.

The tower is run piece by piece, as `ModifiedResNet.forward` does (stem, layer1 .. layer4), with its own modules:

    stem      (B, 3, H, W)   -> (B, width, H/4, W/4)
    layer1    stride 4, 4 * width channels        "stage 0"
    layer2    stride 8, 8 * width channels        "stage 1"
    layer3    stride 16, 16 * width channels      "stage 2"
    layer4    stride 32, 32 * width channels      "stage 3"
    attnpool  the mean token attends to all positions; its output is the image embedding

Two readers:
  - `dense_features`: MaskCLIP's ResNet recipe (Zhou, Loy & Dai, ECCV 2022): the attention pool without its
    query-key attention, applied at every position, F = c_proj(v_proj(x)); see the function.
  - `stage_activations`: the outputs of chosen stages on one token grid, for the learned decoder.

Inputs must be multiples of the tower's stride (32), where every stage's grid is exact (H/4 .. H/32); `dense.py`
pads windows to one. Supported: open_clip's `ModifiedResNet` with its `AttentionPool2d`. Anything else raises a
`ModelError`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from open_clip.modified_resnet import AttentionPool2d, ModifiedResNet
from torch import nn

from vlm.errors import ConfigError, ModelError

STAGES = 4  # layer1 .. layer4
STRIDE = 32  # pixels per cell of layer4, the tower's output grid
DEFAULT_STAGES = (1, 2, 3)  # what the decoder reads by default: layer2 .. layer4 (strides 8, 16, 32)
DEFAULT_GRID_STRIDE = 8  # the decoder's token grid: stride of layer2


def check_supported(visual: nn.Module) -> ModifiedResNet:
    """Return `visual` if it is an open_clip ModifiedResNet whose feature maps can be read here, else raise."""
    if not isinstance(visual, ModifiedResNet):
        raise ModelError(f"expected an open_clip ModifiedResNet image tower, got {type(visual).__name__}")
    pool = getattr(visual, "attnpool", None)
    if not isinstance(pool, AttentionPool2d):
        raise ModelError(
            f"this ModifiedResNet's pool is {type(pool).__name__}, not open_clip's AttentionPool2d: the training-free "
            f"method needs the pool's value and output projections"
        )
    return visual


def stage_stride(stage: int) -> int:
    """Pixels per cell of stage `stage` (0 = layer1 .. 3 = layer4): 4, 8, 16, 32."""
    return 4 * 2**stage


def default_input_size(visual: ModifiedResNet) -> int:
    """The side in pixels the tower was built for (`visual.image_size`; the short side if it is a pair)."""
    size = visual.image_size
    return int(min(size)) if isinstance(size, tuple | list) else int(size)


def stage_widths(visual: ModifiedResNet) -> tuple[int, ...]:
    """Channels of the outputs of layer1 .. layer4."""
    return tuple(int(getattr(visual, f"layer{i + 1}")[-1].conv3.out_channels) for i in range(STAGES))


def run_stages(visual: ModifiedResNet, pixels: torch.Tensor, keep: tuple[int, ...]) -> dict[int, torch.Tensor]:
    """Normalised pixels (B, 3, H, W), H and W multiples of 32 -> the outputs of the stages in `keep`, each
    (B, C_i, H / stride_i, W / stride_i). Runs only as many stages as needed."""
    if pixels.shape[-2] % STRIDE or pixels.shape[-1] % STRIDE:
        raise ValueError(f"input {tuple(pixels.shape[-2:])} is not a multiple of the ResNet's stride {STRIDE}")
    bad = [s for s in keep if not 0 <= s < STAGES]
    if bad:
        raise ConfigError(f"ResNet stages {bad} do not exist: the tower has stages 0..{STAGES - 1} (layer1..layer4)")
    x = visual.stem(pixels.to(visual.conv1.weight.dtype))  # (B, width, H/4, W/4)
    kept = {}
    for i in range(max(keep) + 1):
        x = getattr(visual, f"layer{i + 1}")(x)
        if i in keep:
            kept[i] = x
    return kept


@torch.no_grad()
def dense_features(visual: ModifiedResNet, pixels: torch.Tensor) -> torch.Tensor:
    """MaskCLIP's dense features: normalised pixels (B, 3, H, W), H and W multiples of 32 -> (B, h, w, D) float32,
    not normalised, h = H/32, w = W/32, D = the joint embedding size.

    The attention pool's output for the mean token is c_proj(sum_j a_j v_proj(x_j + pos_j)); MaskCLIP drops the
    query-key attention a and applies the value and output projections at every position:

        F_j = c_proj(v_proj(x_j))                   x = layer4 output

    as its released code does (`MaskClipHead.forward`, 1x1 convolutions on the backbone's map, no positional
    embedding). With the pool's positions added (the attention pool's own input) the figures hardly differ (mIoU
    0.167 vs 0.169 on the synthetic referring set, a 600-step vlm-rn); the code's form needs no resizing of the
    positions to other input sizes.
    """
    x = run_stages(visual, pixels, keep=(STAGES - 1,))[STAGES - 1]  # (B, C, h, w)
    b, _, h, w = x.shape
    pool = visual.attnpool
    feats = pool.c_proj(pool.v_proj(x.flatten(2).transpose(1, 2)))  # (B, h*w, D)
    return feats.float().reshape(b, h, w, -1)


def to_grid(x: torch.Tensor, stage: int, grid_stride: int, grid: tuple[int, int]) -> torch.Tensor:
    """A stage's map (B, C, h_i, w_i) brought to the token grid of `grid_stride` pixels per cell: average-pooled
    when the stage is finer (exact: strides are powers of two), bilinearly upsampled when it is coarser."""
    s = stage_stride(stage)
    if s < grid_stride:
        return F.avg_pool2d(x, kernel_size=grid_stride // s)
    if s > grid_stride:
        return F.interpolate(x, size=grid, mode="bilinear", align_corners=False)
    return x


def stage_activations(
    visual: ModifiedResNet, pixels: torch.Tensor, stages: tuple[int, ...], grid_stride: int = DEFAULT_GRID_STRIDE
) -> tuple[list[torch.Tensor], tuple[int, int]]:
    """The outputs of `stages` (shallowest first) as tokens on one grid, for the learned decoder.

    Normalised pixels (B, 3, H, W), H and W multiples of 32 -> a list of (B, 1 + h*w, C_i) float32 and the grid
    (h, w) = (H, W) / grid_stride. Token 0 is the stage's spatial mean (the attention pool's "mean token"), so the
    layout is a ViT's (a global token, then the cells row by row). No gradients (the encoder is frozen).
    """
    if grid_stride not in {stage_stride(s) for s in range(STAGES)}:
        raise ConfigError(f"the ResNet token grid's stride must be one of 4, 8, 16, 32 pixels, got {grid_stride}")
    grid = (pixels.shape[-2] // grid_stride, pixels.shape[-1] // grid_stride)
    with torch.no_grad():
        kept = run_stages(visual, pixels, keep=tuple(stages))
    out = []
    for s in stages:
        x = kept[s].float()  # (B, C, h_i, w_i)
        mean = x.mean(dim=(2, 3))[:, None]  # (B, 1, C)
        cells = to_grid(x, s, grid_stride, grid).flatten(2).transpose(1, 2)  # (B, h*w, C)
        out.append(torch.cat([mean, cells], dim=1))  # (B, 1 + h*w, C)
    return out, grid
