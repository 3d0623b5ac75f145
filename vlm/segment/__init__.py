"""Referring segmentation: a pixel mask and a heat map for each text phrase, at the image's own resolution.

    from vlm import models
    from vlm.segment import segment
    enc = models.load("demo")
    result = segment(enc, "photo.png", ["the red circle", "a dog"])               # training-free (ClearCLIP)
    result = segment(enc, "photo.png", "the red circle", method="decoder", decoder="runs/seg/final")
    result.masks      # (P, H, W) bool
    result.heatmaps   # (P, H, W) float32 in [0, 1]
    result.overlay(image).save("overlay.png")

Modules: `api` (segment), `vit` (open_clip ViT tokens at any size), `dense` (ClearCLIP), `decoder` (CLIPSeg-style
decoder), `data` ((image, phrase, mask) readers), `train` (decoder trainer), `overlay` (pictures). See README.md.
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
