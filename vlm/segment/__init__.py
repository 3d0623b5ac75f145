"""Referring segmentation: a pixel mask and a heat map for each text phrase, at the image's own resolution.

    from vlm import models
    from vlm.segment import segment
    enc = models.load("demo")
    result = segment(enc, "photo.png", ["the red circle", "a dog"])               # training-free
    result = segment(enc, "photo.png", "the red circle", method="decoder", decoder="runs/seg/final")
    result.masks      # (P, H, W) bool
    result.heatmaps   # (P, H, W) float32 in [0, 1]
    result.overlay(image).save("overlay.png")

Which method runs for which image tower:
    open_clip VisionTransformer   dense: ClearCLIP    decoder: tokens of ViT blocks (default 3, evenly spaced)
    open_clip ModifiedResNet      dense: MaskCLIP     decoder: stages layer2..layer4 on one stride-8 grid
    anything else                 a ModelError that says why (timm towers, CoCa's attentional pooling)

Modules: `api` (segment), `towers` (which towers, one dispatch per operation), `vit` (open_clip ViT tokens at any
size, ClearCLIP features), `resnet` (ModifiedResNet stages at any size, MaskCLIP features), `dense` (sliding windows
for both), `decoder` (CLIPSeg-style decoder), `data` ((image, phrase, mask) readers), `train` (decoder trainer),
`overlay` (pictures). See README.md.
"""

from vlm.segment.api import BACKGROUND_PROMPTS, METHODS, SegmentationResult, check_phrases, load_image, segment
from vlm.segment.dense import DenseConfig
from vlm.segment.overlay import heatmap_image, overlay

__all__ = [
    "BACKGROUND_PROMPTS",
    "METHODS",
    "DenseConfig",
    "SegmentationResult",
    "check_phrases",
    "heatmap_image",
    "load_image",
    "overlay",
    "segment",
]
