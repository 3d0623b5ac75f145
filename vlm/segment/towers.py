"""The image towers segmentation can read, and one entry point per operation for all of them.

Callers (`dense.py`, `decoder.py`, `api.py`, `train.py`) never test a tower's type; they call these functions, which
dispatch on `kind(visual)`:

    kind        tower                           dense method (training-free)      decoder reads
    "vit"       open_clip VisionTransformer     ClearCLIP (`vit.dense_features`)  tokens of ViT blocks (stride = patch)
    "resnet"    open_clip ModifiedResNet        MaskCLIP (`resnet.dense_features`)  stage outputs on a stride-8 grid

Not supported, with a `ModelError` that says why: timm towers (`TimmModel`) and any other tower whose internals
open_clip does not define, and ViTs with attentional pooling (CoCa), whose output tokens are learned queries.
"""

from __future__ import annotations

import torch
from open_clip.modified_resnet import ModifiedResNet
from open_clip.transformer import VisionTransformer
from torch import nn

from vlm.errors import ConfigError, ModelError
from vlm.segment import resnet, vit

VIT = "vit"
RESNET = "resnet"
KINDS = (VIT, RESNET)


def kind(visual: nn.Module) -> str:
    """ "vit" or "resnet" for a tower this package can read; a `ModelError` naming the tower otherwise."""
    if isinstance(visual, VisionTransformer):
        vit.check_supported(visual)
        return VIT
    if isinstance(visual, ModifiedResNet):
        resnet.check_supported(visual)
        return RESNET
    raise ModelError(
        f"segmentation needs an open_clip ViT (VisionTransformer) or ResNet (ModifiedResNet) image tower; this "
        f"model's tower is {type(visual).__name__} (timm and Hugging Face towers have no feature maps this code can "
        f"read). Use e.g. --model ViT-B-16 --pretrained laion2b_s34b_b88k, or --model RN50 --pretrained openai"
    )


def check_supported(visual: nn.Module) -> nn.Module:
    """Return `visual` if segmentation can read it, else raise a `ModelError` that says why."""
    kind(visual)
    return visual


def stride(visual: nn.Module) -> tuple[int, int]:
    """Pixels per cell of the dense feature map, (rows, cols): the ViT's patch, or the ResNet's 32. Inputs of the
    dense method are padded to a multiple of it."""
    if kind(visual) == VIT:
        return vit.patch_size(visual)
    return resnet.STRIDE, resnet.STRIDE


def default_input_size(visual: nn.Module) -> int:
    """The side in pixels the tower was built for (its positions then need no resizing)."""
    if kind(visual) == VIT:
        return vit.default_input_size(visual)
    return resnet.default_input_size(visual)


@torch.no_grad()
def dense_features(visual: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """Training-free dense features in the joint space: normalised pixels (B, 3, H, W), H and W multiples of
    `stride(visual)` -> (B, h, w, D) float32, not normalised. ClearCLIP for a ViT, MaskCLIP for a ResNet."""
    if kind(visual) == VIT:
        return vit.dense_features(visual, pixels)
    return resnet.dense_features(visual, pixels)


# -- what the learned decoder reads ------------------------------------------------------------------------------


def depth(visual: nn.Module) -> int:
    """How many layers the decoder can read: the ViT's blocks, or the ResNet's 4 stages (layer1 .. layer4)."""
    if kind(visual) == VIT:
        return len(visual.transformer.resblocks)
    return resnet.STAGES


def evenly_spaced_layers(depth: int, count: int = 3) -> tuple[int, ...]:
    """`count` block indices spread over `depth` blocks, the last block included: 12, 3 -> (3, 7, 11)."""
    return tuple(sorted({round((i + 1) * depth / count) - 1 for i in range(count)}))


def default_layers(visual: nn.Module) -> tuple[int, ...]:
    """The decoder's default read layers: 3 evenly spaced ViT blocks (CLIPSeg), or ResNet stages 1, 2, 3 (layer2
    .. layer4, strides 8, 16, 32)."""
    if kind(visual) == VIT:
        return evenly_spaced_layers(depth(visual))
    return resnet.DEFAULT_STAGES


def layer_widths(visual: nn.Module, layers: tuple[int, ...]) -> tuple[int, ...]:
    """Channels of each read layer's tokens."""
    if kind(visual) == VIT:
        return (int(visual.conv1.out_channels),) * len(layers)
    widths = resnet.stage_widths(visual)
    return tuple(widths[i] for i in layers)


def layer_names(visual: nn.Module) -> str:
    """What the decoder's layer indices count, for messages: "blocks" or "stages (layer1..layer4)"."""
    return "blocks" if kind(visual) == VIT else "stages (layer1..layer4)"


def input_multiple(visual: nn.Module) -> tuple[int, str]:
    """The decoder's input side must be a multiple of this (every read grid is then exact), and its name."""
    if kind(visual) == VIT:
        return token_stride(visual), "patch size"
    return resnet.STRIDE, "ResNet's stride"


def token_stride(visual: nn.Module) -> int:
    """Pixels per decoder token: the ViT's (square) patch side, or the ResNet grid's stride (8)."""
    if kind(visual) == VIT:
        ph, pw = vit.patch_size(visual)
        if ph != pw:
            raise ConfigError(f"the decoder needs square patches, this tower has {ph}x{pw}")
        return ph
    return resnet.DEFAULT_GRID_STRIDE


def activations(
    visual: nn.Module, pixels: torch.Tensor, layers: tuple[int, ...], grid_stride: int | None = None
) -> tuple[list[torch.Tensor], tuple[int, int]]:
    """The read layers' tokens for normalised pixels (B, 3, S, S), shallowest first, each (B, 1 + h*w, C_i) float32
    with a global token first, and the grid (h, w). A ViT's grid is its patch grid (`grid_stride`, if given, must be
    the patch side); a ResNet's stages are brought to a grid of `grid_stride` pixels (default 8). No gradients."""
    if kind(visual) == RESNET:
        return resnet.stage_activations(visual, pixels, layers, grid_stride or resnet.DEFAULT_GRID_STRIDE)
    patch = vit.patch_size(visual)
    if grid_stride is not None and (grid_stride, grid_stride) != patch:
        raise ConfigError(f"a ViT decoder's token grid is its patch grid ({patch}), not a stride of {grid_stride}")
    with torch.no_grad():
        x, grid = vit.embed(visual, pixels)
        _, kept = vit.run_blocks(visual, x, max(layers) + 1, keep=layers)
    return [kept[i].float() for i in layers], grid
