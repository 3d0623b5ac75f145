"""A light learned decoder over a frozen CLIP image tower, in the spirit of CLIPSeg (Lüddecke & Ecker, CVPR 2022).

The encoder is frozen. The decoder reads a few of its layers as tokens on one grid (`towers.activations`), each
(B, 1 + h*w, C_k) with a global token first:
  - a ViT (open_clip VisionTransformer): the tokens of a few blocks (three, evenly spaced, by default); the grid is
    the patch grid;
  - a ResNet (open_clip ModifiedResNet): the outputs of a few stages (layer2..layer4 = stages 1, 2, 3, strides 8, 16,
    32, by default), brought to one grid of stride 8 (finer stages average-pooled, coarser ones bilinearly
    upsampled), with the stage's spatial mean as the global token.
It projects each to a small width, and walks from the deepest to the shallowest:

    a = 0
    for each read layer, deepest first:
        a = a + Linear(tokens_k)                     (B, 1 + h*w, width)
        a = gamma(t) * a + beta(t)                   FiLM by the phrase's text embedding t (B, D)
        a = TransformerEncoderLayer(a)
    logits = head(a[:, 1:] as a (width, h, w) map)                                      (B, 1, H, W)
    head = Conv3x3 -> GELU -> ConvTranspose(x f1) -> GELU -> ConvTranspose(x f2), f1 * f2 = the grid's stride

CLIPSeg applies FiLM once, before the first layer; here every stage is conditioned, which costs a few thousand
parameters and lets a decoder this small keep the phrase in view. The output is one logit per input pixel.

A decoder is saved as a directory (written atomically, like `vlm.checkpoint`):
    config.json           {"format": "vlm-seg-decoder", "spec": DecoderSpec (which tower kind and token stride it
                          reads), "encoder": how to load the encoder and its weights fingerprint, "provenance": ...}
    decoder.safetensors   the decoder's weights only (the encoder is loaded from its own source)
    train_state.pt        optional: optimizer, schedule, RNG, step; tensors and containers only (weights_only=True)
Loading checks the encoder's fingerprint, so a decoder never runs on features it was not trained on. Format 1 (ViT
only) has no `tower` in its spec and loads as a ViT decoder; format 2 adds `tower` and `layer_widths`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from vlm.atomic import atomic_dir
from vlm.checkpoint import read_format_record
from vlm.errors import CheckpointError, ConfigError, ModelError
from vlm.models import Encoders
from vlm.segment import towers

LOG = logging.getLogger(__name__)

FORMAT = "vlm-seg-decoder"
FORMAT_VERSION = 2  # 2: DecoderSpec.tower and layer_widths (ResNet towers); 1 is read as a ViT decoder
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "decoder.safetensors"
TRAIN_STATE_NAME = "train_state.pt"


@dataclasses.dataclass(frozen=True)
class DecoderSpec:
    """Everything that fixes the decoder's shapes; stored in its config.json."""

    layers: tuple[int, ...]  # encoder layers read (0-based), shallowest first: ViT blocks, or ResNet stages 0..3
    width: int  # decoder width (CLIPSeg: 64)
    heads: int  # attention heads of the decoder's transformer layers
    input_size: int  # side in pixels of the square input given to the encoder (a multiple of its stride)
    encoder_width: int  # width of the ViT's tokens; for a ResNet, the channels of the deepest read stage
    embed_dim: int  # size of the text embedding
    patch_size: int  # pixels per decoder token: the ViT's patch, or the stride of the ResNet's common grid (8)
    tower: str = towers.VIT  # "vit" or "resnet"; configs written before ResNet support have none: ViT
    layer_widths: tuple[int, ...] = ()  # channels of each read layer, shallowest first; () (format 1): encoder_width

    @property
    def read_widths(self) -> tuple[int, ...]:
        """Channels of each read layer's tokens, shallowest first."""
        return self.layer_widths or (self.encoder_width,) * len(self.layers)

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "layers": list(self.layers), "layer_widths": list(self.layer_widths)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DecoderSpec:
        try:
            spec = cls(**{**data, "layers": tuple(data["layers"]), "layer_widths": tuple(data.get("layer_widths", ()))})
        except (TypeError, KeyError) as e:
            raise CheckpointError(f"decoder spec {data} is not valid: {e}") from e
        if spec.tower not in towers.KINDS:
            raise CheckpointError(f"decoder spec names tower {spec.tower!r}; known: {list(towers.KINDS)}")
        if spec.layer_widths and len(spec.layer_widths) != len(spec.layers):
            raise CheckpointError(f"decoder spec has {len(spec.layers)} layers but layer_widths {spec.layer_widths}")
        return spec


def make_spec(
    encoders: Encoders,
    *,
    layers: tuple[int, ...] | None = None,
    width: int = 64,
    heads: int = 4,
    input_size: int | None = None,
) -> DecoderSpec:
    """The spec of a new decoder for `encoders` (defaults: `towers.default_layers`, the model's input size)."""
    visual = encoders.model.visual
    tower = towers.kind(visual)
    depth = towers.depth(visual)
    layers = tuple(sorted(set(layers))) if layers else towers.default_layers(visual)
    bad = [i for i in layers if not 0 <= i < depth]
    if bad:
        what = towers.layer_names(visual)
        raise ConfigError(f"decoder layers {bad} do not exist: the image tower has {what} 0..{depth - 1}")
    multiple, name = towers.input_multiple(visual)
    size = input_size or towers.default_input_size(visual)
    if size % multiple:
        raise ConfigError(f"decoder input_size {size} must be a multiple of the {name} {multiple}")
    if width % heads:
        raise ConfigError(f"decoder width {width} must be divisible by heads {heads}")
    widths = towers.layer_widths(visual, layers)
    return DecoderSpec(
        layers=layers,
        width=width,
        heads=heads,
        input_size=size,
        encoder_width=widths[-1],
        embed_dim=encoders.embed_dim,
        patch_size=towers.token_stride(visual),
        tower=tower,
        layer_widths=widths,
    )


def upsampling_steps(patch: int) -> tuple[int, int]:
    """Split a patch side into two upsampling factors, the first the largest divisor not above its square root:
    16 -> (4, 4) as in CLIPSeg, 8 -> (2, 4), 14 -> (2, 7), 32 -> (4, 8), 7 -> (1, 7)."""
    first = max(k for k in range(1, int(patch**0.5) + 1) if patch % k == 0)
    return first, patch // first


class SegDecoder(nn.Module):
    """Frozen-encoder activations + a text embedding -> one logit per input pixel."""

    def __init__(self, spec: DecoderSpec):
        super().__init__()
        self.spec = spec
        n, d = len(spec.layers), spec.width
        self.reduce = nn.ModuleList([nn.Linear(w, d) for w in spec.read_widths])
        self.film_mul = nn.ModuleList([nn.Linear(spec.embed_dim, d) for _ in range(n)])
        self.film_add = nn.ModuleList([nn.Linear(spec.embed_dim, d) for _ in range(n)])
        self.blocks = nn.ModuleList(
            [
                nn.TransformerEncoderLayer(d, spec.heads, dim_feedforward=4 * d, dropout=0.0, batch_first=True)
                for _ in range(n)
            ]
        )
        first, second = upsampling_steps(spec.patch_size)
        # CLIPSeg's "complex transposed convolution" head: two learned upsamplings with a non-linearity between
        self.head = nn.Sequential(
            nn.Conv2d(d, d, kernel_size=3, padding=1),
            nn.GELU(),
            nn.ConvTranspose2d(d, d // 2, kernel_size=first, stride=first),
            nn.GELU(),
            nn.ConvTranspose2d(d // 2, 1, kernel_size=second, stride=second),
        )

    def forward(self, activations: list[torch.Tensor], grid: tuple[int, int], text: torch.Tensor) -> torch.Tensor:
        """`activations`: the read layers' tokens, shallowest first, each (B, 1 + h*w, read_widths[k]); `text`:
        (B, D) normalised text embeddings -> logits (B, h*patch_size, w*patch_size)."""
        a = None
        stages = zip(activations[::-1], self.reduce[::-1], self.film_mul, self.film_add, self.blocks, strict=True)
        for act, reduce, mul, add, block in stages:
            a = reduce(act) if a is None else a + reduce(act)  # (B, 1 + h*w, d)
            a = mul(text)[:, None] * a + add(text)[:, None]
            a = block(a)
        b = a.shape[0]
        fmap = a[:, 1:].transpose(1, 2).reshape(b, -1, *grid)  # (B, d, h, w)
        return self.head(fmap)[:, 0]  # (B, h*p, w*p)


def encoder_activations(
    visual: nn.Module, pixels: torch.Tensor, layers: tuple[int, ...], grid_stride: int | None = None
) -> tuple[list[torch.Tensor], tuple[int, int]]:
    """The tokens of `layers` (shallowest first) for normalised pixels (B, 3, S, S), each (B, 1 + h*w, C_k), and
    the grid (h, w); `grid_stride`: the spec's `patch_size` (default: the tower's). Runs only as many blocks or
    stages as needed; no gradients (the encoder is frozen)."""
    return towers.activations(visual, pixels, layers, grid_stride)


def predict_logits(encoders: Encoders, decoder: SegDecoder, pixels: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """Normalised pixels (B, 3, S, S) at the decoder's input size and (B, D) text embeddings -> (B, S, S) logits."""
    visual = encoders.model.visual
    if towers.kind(visual) != decoder.spec.tower:
        raise ModelError(
            f"this decoder reads a {decoder.spec.tower} image tower, but the encoder's is {type(visual).__name__}; "
            f"load the encoder it was trained on"
        )
    with encoders.autocast():
        acts, grid = encoder_activations(
            visual, pixels.to(encoders.device), decoder.spec.layers, decoder.spec.patch_size
        )
    return decoder(acts, grid, text.to(encoders.device).float()).float()


# -- saving and loading -------------------------------------------------------------------------------------------


def encoder_record(encoders: Encoders, model: str, pretrained: str | None) -> dict[str, Any]:
    """How to load the encoder a decoder was trained on, and the fingerprint that must match."""
    return {
        "model": model,
        "pretrained": pretrained,
        "model_name": encoders.model_name,
        "source": encoders.source,
        "fingerprint": encoders.fingerprint,
    }


def save_decoder(
    path: str | Path,
    decoder: SegDecoder,
    encoder: dict[str, Any],
    *,
    provenance: dict[str, Any] | None = None,
    train_state: dict[str, Any] | None = None,
) -> Path:
    """Write a decoder directory atomically (temp dir, fsync, rename) and return its path."""
    path = Path(path)
    with atomic_dir(path) as tmp:
        state = {k: v.detach().cpu().contiguous().clone() for k, v in decoder.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        record = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "spec": decoder.spec.to_json(),
            "encoder": encoder,
            "provenance": provenance or {},
        }
        (tmp / CONFIG_NAME).write_text(json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
        if train_state is not None:
            torch.save(train_state, tmp / TRAIN_STATE_NAME)
    LOG.info("saved decoder %s", path)
    return path


def is_decoder_dir(path: str | Path) -> bool:
    return (Path(path) / CONFIG_NAME).is_file() and (Path(path) / WEIGHTS_NAME).is_file()


def read_decoder_config(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not is_decoder_dir(path):
        found = sorted(p.name for p in path.iterdir()) if path.is_dir() else "nothing"
        raise CheckpointError(
            f"{path} is not a segmentation decoder: it needs {CONFIG_NAME} and {WEIGHTS_NAME} (found: {found}). "
            f"Train one with `vlm train-seg`; pass its final/ directory"
        )
    return read_format_record(path / CONFIG_NAME, FORMAT, FORMAT_VERSION)


def load_decoder(path: str | Path, encoders: Encoders | None = None) -> SegDecoder:
    """Read a decoder directory; with `encoders`, refuse one trained on other encoder weights. A damaged folder
    (missing keys, truncated weights, weights of another shape) raises `CheckpointError` naming it."""
    record = read_decoder_config(path)
    try:
        decoder = _build_decoder(path, record, encoders)
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError, OSError, SafetensorError) as e:
        first = str(e).strip().split("\n")[0][:300]
        raise CheckpointError(
            f"cannot load the decoder {path} ({type(e).__name__}: {first}); the folder is damaged or not a "
            f"`vlm train-seg` output"
        ) from e
    decoder.eval()
    if encoders is not None:
        decoder.to(encoders.device)
    return decoder


def _build_decoder(path: str | Path, record: dict[str, Any], encoders: Encoders | None) -> SegDecoder:
    if encoders is not None:
        want = record["encoder"]["fingerprint"]
        if want != encoders.fingerprint:
            raise CheckpointError(
                f"decoder {path} was trained on encoder {record['encoder']['source']} (fingerprint {want}), but "
                f"the loaded encoder is {encoders.source} (fingerprint {encoders.fingerprint}). Load the decoder's "
                f"own encoder: --model {record['encoder']['model']}"
                + (f" --pretrained {record['encoder']['pretrained']}" if record["encoder"].get("pretrained") else "")
            )
    decoder = SegDecoder(DecoderSpec.from_json(record["spec"]))
    decoder.load_state_dict(load_file(str(Path(path) / WEIGHTS_NAME)), strict=True)
    return decoder
