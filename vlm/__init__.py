"""Open vision-language zero-shot platform: encoders, contrastive training, zero-shot classification, segmentation."""

__version__ = "0.1.0"
