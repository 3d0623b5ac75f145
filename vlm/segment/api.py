"""`segment(encoders, image, phrases)`: one mask and one heat map per phrase, at the image's own resolution.

Two methods:
  "dense"    training-free (`dense.py`): ClearCLIP on an open_clip ViT, MaskCLIP on an open_clip ModifiedResNet
             (CLIP's RN50 family). Each phrase's cell scores compete with a set of background prompts through a
             softmax at the model's temperature; the heat map is the phrase's probability and the mask is where it
             reaches `threshold`.
  "decoder"  a decoder trained with `vlm train-seg` (`decoder.py`) over either tower; the heat map is its sigmoid.
Other towers (timm, CoCa's attentional pooling) raise a `ModelError` that says why (`towers.py`).
With `exclusive=True` every pixel goes to at most one phrase (the one with the highest heat, if it reaches the
threshold); for the dense method the phrases then also compete with each other in the softmax.

Conventions at this edge: images are PIL images (any mode), paths, or uint8 arrays (H, W) / (H, W, 3); `masks` is
(P, H, W) bool and `heatmaps` (P, H, W) float32 in [0, 1], P = number of phrases, H x W = the input image's size.
Inputs are resized for the model (the dense method: short side `DenseConfig.short_side`, long side at most
`max_side`; the decoder: squashed to its square input), so an image of any size or aspect ratio works, down to
1 x 1. Outputs are upsampled bilinearly back to H x W, which caps memory by P * H * W, not by the model.
Phrases longer than the text tower's context are truncated by its tokenizer (logged, and flagged in `truncated`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from vlm.errors import ConfigError, DataError
from vlm.models import Encoders
from vlm.readers.images import ImageRef, to_rgb
from vlm.segment import dense, towers
from vlm.segment.decoder import SegDecoder, load_decoder, predict_logits
from vlm.segment.overlay import overlay
from vlm.synth.world import COLOURS, SHAPES
from vlm.templates import bare_label

LOG = logging.getLogger(__name__)

METHODS = ("dense", "decoder")
# Competitors for the dense method: generic words for "not the thing", plus the plain backgrounds of the synthetic
# world. They are only competitors; what a phrase does not win, they take.
BACKGROUND_PROMPTS = (
    "background",
    "a plain background",
    "a dark background",
    "a light background",
    "a wall",
    "the ground",
    "the sky",
    "a texture",
)
# "Is the phrase in the image at all?" (the dense method; `vlm.segment.absent` says why it is decided so): a second,
# coarser pass (short side PRESENCE_SIDE x the window, the mask pass's default is 2 x) where each phrase competes with
# the background prompts and with words that name one attribute alone, a colour or a shape ("a red shape", "a star"),
# so that a phrase wins only where more than its colour or its shape matches. A competitor that is the phrase itself
# (up to case and a leading article) is left out for it.
PRESENCE_SIDE = 1.25
ATTRIBUTE_PROMPTS = tuple(f"a {c} shape" for c in COLOURS) + tuple(f"a {s}" for s in SHAPES)
MAX_OUTPUT_PIXELS = 100_000_000  # P * H * W; the masks and heat maps then take at most 500 MB
DEFAULT_THRESHOLD = 0.5


@dataclasses.dataclass(frozen=True)
class SegmentationResult:
    phrases: tuple[str, ...]
    masks: np.ndarray  # (P, H, W) bool
    heatmaps: np.ndarray  # (P, H, W) float32 in [0, 1]
    method: str
    threshold: float
    truncated: tuple[bool, ...]  # per phrase: cut to the text tower's context length
    compute_size: tuple[int, int]  # (rows, cols) of the image as the model saw it
    # per phrase: the peak logit at compute resolution (dense: the phrase's log-odds against the background prompts,
    # or against everything else with `exclusive`; decoder: its logit); the heat map is its sigmoid, so a phrase's
    # best pixel has heat sigmoid(score).
    scores: tuple[float, ...] = ()
    # per phrase, only when `absent_below` was given: the score that decides whether it is in the image at all (dense:
    # the presence pass, `presence_scores`; decoder: the same as `scores`)
    presence: tuple[float, ...] = ()
    absent: tuple[bool, ...] = ()  # per phrase: its presence was below `absent_below`, so its mask is empty
    absent_below: float | None = None

    def overlay(self, image: Image.Image, alpha: float = 0.45) -> Image.Image:
        """The masks drawn over `image` (the image that was segmented), with a legend of the phrases."""
        return overlay(to_rgb(image), self.masks, self.phrases, alpha=alpha)


def check_phrases(phrases: Sequence[str] | str) -> tuple[str, ...]:
    """A non-empty tuple of non-blank phrases (a single string is one phrase), stripped; DataError otherwise."""
    if isinstance(phrases, str):
        phrases = [phrases]
    phrases = list(phrases)
    if not phrases:
        raise DataError("no phrases given: pass at least one phrase to segment, e.g. 'the red circle'")
    out = []
    for i, p in enumerate(phrases):
        if not isinstance(p, str):
            raise DataError(f"phrase {i} is {type(p).__name__} {p!r}, not a string")
        if not p.strip():
            raise DataError(f"phrase {i} is empty or blank ({p!r}); give words that describe what to segment")
        out.append(" ".join(p.split()))
    return tuple(out)


def load_image(image: Image.Image | np.ndarray | str | Path) -> Image.Image:
    """A PIL RGB image from a PIL image, a path, or a uint8 array (H, W) or (H, W, 3|4)."""
    if isinstance(image, str | Path):
        return ImageRef(kind="file", path=str(image)).open()
    if isinstance(image, np.ndarray):
        if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)) or image.dtype != np.uint8:
            raise DataError(f"an image array must be uint8 (H, W) or (H, W, 3|4); got {image.dtype} {image.shape}")
        if 0 in image.shape[:2]:
            raise DataError(f"the image is empty: {image.shape}")
        image = Image.fromarray(image[..., 0] if image.ndim == 3 and image.shape[2] == 1 else image)
    if not isinstance(image, Image.Image):
        raise DataError(f"expected a PIL image, a path or a uint8 array, got {type(image).__name__}")
    if image.width < 1 or image.height < 1:
        raise DataError(f"the image is empty: {image.width} x {image.height}")
    return to_rgb(image)


def to_pixels(image: Image.Image, size: tuple[int, int], mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """RGB image -> (3, rows, cols) float32, resized bicubically to `size` (rows, cols) and normalised by the model's
    `mean` and `std` (as its own preprocessing does)."""
    rows, cols = size
    if image.size != (cols, rows):
        image = image.resize((cols, rows), Image.Resampling.BICUBIC)
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)  # (3, rows, cols)
    return (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


@dataclasses.dataclass(frozen=True)
class Pixels:
    """A picklable `to_pixels` bound to one model's normalisation (for DataLoader workers)."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def of(cls, encoders: Encoders) -> Pixels:
        cfg = encoders.preprocess_cfg
        return cls(tuple(float(v) for v in cfg["mean"]), tuple(float(v) for v in cfg["std"]))

    def __call__(self, image: Image.Image, size: tuple[int, int]) -> torch.Tensor:
        return to_pixels(image, size, self.mean, self.std)


def embed_phrases(
    encoders: Encoders, phrases: Sequence[str], templates: Sequence[str] = ("{}",)
) -> tuple[torch.Tensor, tuple[bool, ...]]:
    """(P, D) normalised text embeddings, each the normalised mean over `templates` (CLIP's prompt ensembling),
    and which phrases the tokenizer truncated."""
    if not templates or any("{}" not in t for t in templates):
        raise ConfigError(f"templates must each contain '{{}}' for the phrase, got {list(templates)}")
    texts = [t.format(p) for p in phrases for t in templates]
    tokens = encoders.tokenize(texts)  # (P*T, context)
    context = tokens.shape[1]
    truncated = tuple(
        any(_token_count(encoders, t) > context for t in texts[i * len(templates) : (i + 1) * len(templates)])
        for i in range(len(phrases))
    )
    for p, t in zip(phrases, truncated, strict=True):
        if t:
            LOG.warning("phrase truncated to the text tower's %d tokens: %r", context, p[:80])
    emb = encoders.encode_text(tokens).reshape(len(phrases), len(templates), -1).mean(dim=1)
    return F.normalize(emb, dim=-1).cpu(), truncated


def _token_count(encoders: Encoders, text: str) -> int:
    """Tokens `text` needs, start and end tokens included (open_clip's BPE tokenizer, or a Hugging Face one)."""
    tok = encoders.tokenizer
    if hasattr(tok, "encode"):  # open_clip SimpleTokenizer: BPE ids without <start>/<end>
        return len(tok.encode(text)) + 2
    inner = getattr(tok, "tokenizer", None)
    if inner is not None:
        return len(inner(text)["input_ids"])
    return 0  # an unknown tokenizer: truncation cannot be detected


def _dense_scores(
    encoders: Encoders, image: Image.Image, rows: torch.Tensor, cfg: dense.DenseConfig, logit_scale: float
) -> tuple[torch.Tensor, tuple[int, int]]:
    """(N, h, w) scaled cosines of the N embeddings `rows` over the image at compute resolution, and (h, w)."""
    visual = towers.check_supported(encoders.model.visual)
    tile = dense.tiling((image.height, image.width), visual, cfg)
    pixels = Pixels.of(encoders)(image, tile.size).to(encoders.device)
    with encoders.autocast():
        scores = dense.dense_scores(visual, pixels, rows.to(encoders.device), tile, cfg.batch)
    return scores.cpu() * logit_scale, tile.size


def dense_logits(
    encoders: Encoders,
    image: Image.Image,
    text: torch.Tensor,
    background: torch.Tensor,
    cfg: dense.DenseConfig,
    exclusive: bool,
    logit_scale: float,
) -> tuple[torch.Tensor, tuple[int, int]]:
    """The dense method on an RGB image with (P, D) phrase and (K, D) background embeddings (`embed_phrases`):
    (P, h, w) phrase log-odds at compute resolution (their sigmoid is the heat map), and (h, w)."""
    scores, size = _dense_scores(encoders, image, torch.cat([text, background]), cfg, logit_scale)  # (P + K, h, w)
    p = text.shape[0]
    if exclusive:  # softmax over phrases and background; a phrase's share is sigmoid(s_p - logsumexp(the others))
        others = torch.stack([torch.logsumexp(torch.cat([scores[:i], scores[i + 1 :]]), dim=0) for i in range(p)])
        return scores[:p] - others, size
    # each phrase against the background prompts alone: softmax over [phrase, bg_1 .. bg_K], the phrase's share
    bg = torch.logsumexp(scores[p:], dim=0) if len(background) else torch.full_like(scores[0], -torch.inf)
    return scores[:p] - bg, size


def presence_scores(
    encoders: Encoders,
    image: Image.Image,
    phrases: Sequence[str],
    text: torch.Tensor,
    competitors: Sequence[str],
    competing: torch.Tensor,
    cfg: dense.DenseConfig,
    logit_scale: float,
) -> list[float]:
    """Each phrase's presence score: its peak log-odds on the presence pass (the image at short side PRESENCE_SIDE
    x the window of `cfg`) against the `competitors` (background and attribute prompts, embedded as `competing`)
    other than the phrase itself. `text`: the phrases' (P, D) embeddings."""
    window = cfg.window or towers.default_input_size(towers.check_supported(encoders.model.visual))
    coarse = dataclasses.replace(cfg, short_side=max(1, round(PRESENCE_SIDE * window)))
    scores, _ = _dense_scores(encoders, image, torch.cat([text, competing]), coarse, logit_scale)
    p, out = len(phrases), []
    for i, phrase in enumerate(phrases):
        keep = [p + k for k, c in enumerate(competitors) if bare_label(c) != bare_label(phrase)]
        out.append(float((scores[i] - torch.logsumexp(scores[keep], dim=0)).max()) if keep else float("inf"))
    return out


def _decoder_heat(
    encoders: Encoders, image: Image.Image, text: torch.Tensor, decoder: SegDecoder
) -> tuple[torch.Tensor, tuple[int, int]]:
    size = decoder.spec.input_size
    pixels = Pixels.of(encoders)(image, (size, size))[None].expand(text.shape[0], -1, -1, -1)
    with torch.no_grad():
        logits = predict_logits(encoders, decoder, pixels, text)  # (P, S, S)
    return logits.float().cpu(), (size, size)


def segment(
    encoders: Encoders,
    image: Image.Image | np.ndarray | str | Path,
    phrases: Sequence[str] | str,
    *,
    method: str = "dense",
    decoder: SegDecoder | str | Path | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    exclusive: bool = False,
    background: Sequence[str] = BACKGROUND_PROMPTS,
    templates: Sequence[str] = ("{}",),
    dense_config: dense.DenseConfig | None = None,
    logit_scale: float | None = None,
    max_output_pixels: int = MAX_OUTPUT_PIXELS,
    absent_below: float | None = None,
) -> SegmentationResult:
    """Segment each phrase in `image`; see the module docstring for the methods and conventions.

    Parameters
    ----------
    encoders : a loaded model with a ViT or ModifiedResNet image tower (`vlm.models.load`)
    image : PIL image, path, or uint8 array (H, W) / (H, W, 3)
    phrases : one phrase or a sequence of them (each non-blank)
    method : "dense" (training-free) or "decoder" (needs `decoder`: a `SegDecoder` or a decoder directory)
    threshold : heat at or above which a pixel is in the mask
    exclusive : each pixel in at most one mask
    background : competing prompts for the dense method (may be empty only with `exclusive` and several phrases)
    templates : prompt templates with "{}" for the phrase, averaged (default: the phrase alone)
    dense_config : tiling of the dense method (window, stride, compute resolution)
    logit_scale : softmax temperature of the dense method; default: the model's own learned scale
    max_output_pixels : refuse when P * H * W exceeds this (the output arrays take 5 bytes per value)
    absent_below : a phrase whose presence score (`SegmentationResult.presence`; dense: `presence_scores` with the
        `background` and ATTRIBUTE_PROMPTS, which costs a second, coarser pass) is below this is "not in the image":
        its mask is empty (its heat map is kept). `vlm.segment.absent.absent_threshold` measures one per model
    """
    if method not in METHODS:
        raise ConfigError(f"unknown segmentation method {method!r}; choose one of {list(METHODS)}")
    if not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"threshold must be in [0, 1], got {threshold}")
    phrases = check_phrases(phrases)
    image = load_image(image)
    rows, cols = image.height, image.width
    if len(phrases) * rows * cols > max_output_pixels:
        raise DataError(
            f"the image is {cols} x {rows} pixels; with {len(phrases)} phrase(s) its masks and heat maps would hold "
            f"{len(phrases) * rows * cols:,} values, above the limit of {max_output_pixels:,}. Downscale the image, "
            f"segment fewer phrases per call, or raise max_output_pixels"
        )
    text, truncated = embed_phrases(encoders, phrases, templates)
    if method == "dense":
        if not background and not (exclusive and len(phrases) > 1):
            raise ConfigError("the dense method needs background prompts, or exclusive=True with several phrases")
        bg = embed_phrases(encoders, list(background), templates)[0] if background else text[:0]
        scale = encoders.logit_scale if logit_scale is None else logit_scale
        cfg = dense_config or dense.DenseConfig()
        logits, size = dense_logits(encoders, image, text, bg, cfg, exclusive, scale)
        if absent_below is not None:
            competitors = [*background, *ATTRIBUTE_PROMPTS]
            competing = torch.cat([bg, embed_phrases(encoders, list(ATTRIBUTE_PROMPTS), templates)[0]])
            presence = presence_scores(encoders, image, phrases, text, competitors, competing, cfg, scale)
    else:
        if decoder is None:
            raise ConfigError("method 'decoder' needs a trained decoder: pass decoder=<SegDecoder or directory>")
        if not isinstance(decoder, SegDecoder):
            decoder = load_decoder(decoder, encoders)
        logits, size = _decoder_heat(encoders, image, text, decoder)
    scores = tuple(float(v) for v in logits.flatten(1).amax(dim=1))
    if absent_below is None:
        presence = ()
    elif method != "dense":
        presence = scores
    absent = tuple(v < absent_below for v in presence) if absent_below is not None else (False,) * len(phrases)
    heat = torch.sigmoid(logits)[None].float()
    heat = F.interpolate(heat, size=(rows, cols), mode="bilinear", align_corners=False)[0]
    masks = heat >= threshold  # (P, H, W)
    if exclusive:
        best = heat.argmax(dim=0)  # (H, W)
        masks &= best[None] == torch.arange(len(phrases))[:, None, None]
    masks[torch.tensor(absent, dtype=torch.bool)] = False
    return SegmentationResult(
        phrases=phrases,
        masks=masks.numpy(),
        heatmaps=heat.clamp(0.0, 1.0).numpy(),
        method=method,
        threshold=threshold,
        truncated=truncated,
        compute_size=size,
        scores=scores,
        presence=tuple(presence),
        absent=absent,
        absent_below=absent_below,
    )
