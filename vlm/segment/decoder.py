"""A light learned decoder over a frozen CLIP ViT, in the spirit of CLIPSeg (Lüddecke & Ecker, CVPR 2022).

The encoder is frozen. The decoder reads the token outputs of a few ViT blocks (three, evenly spaced, by default),
projects each to a small width, and walks from the deepest to the shallowest:

    a = 0
    for each read block, deepest first:
        a = a + Linear(tokens_k)                     (B, 1 + h*w, width)
        a = gamma(t) * a + beta(t)                   FiLM by the phrase's text embedding t (B, D)
        a = TransformerEncoderLayer(a)
    logits = head(a[:, 1:] as a (width, h, w) map)                                      (B, 1, H, W)
    head = Conv3x3 -> GELU -> ConvTranspose(x f1) -> GELU -> ConvTranspose(x f2), f1 * f2 = patch size

CLIPSeg applies FiLM once, before the first layer; here every stage is conditioned, which costs a few thousand
parameters and lets a decoder this small keep the phrase in view. The output is one logit per input pixel.

A decoder is saved as a directory (written atomically, like `vlm.checkpoint`):
    config.json           {"format": "vlm-seg-decoder", "spec": DecoderSpec, "encoder": how to load the encoder and
                          its weights fingerprint, "provenance": ...}
    decoder.safetensors   the decoder's weights only (the encoder is loaded from its own source)
    train_state.pt        optional: optimizer, schedule, RNG, step; tensors and containers only (weights_only=True)
Loading checks the encoder's fingerprint, so a decoder never runs on features it was not trained on.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from vlm.atomic import atomic_dir
from vlm.checkpoint import read_format_record
from vlm.errors import CheckpointError, ConfigError
from vlm.models import Encoders
from vlm.segment import vit

LOG = logging.getLogger(__name__)

FORMAT = "vlm-seg-decoder"
FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "decoder.safetensors"
TRAIN_STATE_NAME = "train_state.pt"


@dataclasses.dataclass(frozen=True)
class DecoderSpec:
    """Everything that fixes the decoder's shapes; stored in its config.json."""

    layers: tuple[int, ...]  # encoder blocks read (0-based), shallowest first
    width: int  # decoder width (CLIPSeg: 64)
    heads: int  # attention heads of the decoder's transformer layers
    input_size: int  # side in pixels of the square input given to the encoder (a multiple of the patch size)
    encoder_width: int  # width of the ViT's tokens
    embed_dim: int  # size of the text embedding
    patch_size: int

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "layers": list(self.layers)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DecoderSpec:
        try:
            return cls(**{**data, "layers": tuple(data["layers"])})
        except (TypeError, KeyError) as e:
            raise CheckpointError(f"decoder spec {data} is not valid: {e}") from e


def evenly_spaced_layers(depth: int, count: int = 3) -> tuple[int, ...]:
    """`count` block indices spread over `depth` blocks, the last block included: 12, 3 -> (3, 7, 11)."""
    return tuple(sorted({round((i + 1) * depth / count) - 1 for i in range(count)}))


def make_spec(
    encoders: Encoders,
    *,
    layers: tuple[int, ...] | None = None,
    width: int = 64,
    heads: int = 4,
    input_size: int | None = None,
) -> DecoderSpec:
    """The spec of a new decoder for `encoders` (defaults: 3 evenly spaced blocks, the model's input size)."""
    visual = vit.check_supported(encoders.model.visual)
    depth = len(visual.transformer.resblocks)
    layers = tuple(layers) if layers else evenly_spaced_layers(depth)
    bad = [i for i in layers if not 0 <= i < depth]
    if bad:
        raise ConfigError(f"decoder layers {bad} do not exist: the image tower has blocks 0..{depth - 1}")
    ph, pw = vit.patch_size(visual)
    if ph != pw:
        raise ConfigError(f"the decoder needs square patches, this tower has {ph}x{pw}")
    size = input_size or vit.default_input_size(visual)
    if size % ph:
        raise ConfigError(f"decoder input_size {size} must be a multiple of the patch size {ph}")
    if width % heads:
        raise ConfigError(f"decoder width {width} must be divisible by heads {heads}")
    return DecoderSpec(
        layers=tuple(sorted(set(layers))),
        width=width,
        heads=heads,
        input_size=size,
        encoder_width=int(visual.conv1.out_channels),
        embed_dim=encoders.embed_dim,
        patch_size=ph,
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
        self.reduce = nn.ModuleList([nn.Linear(spec.encoder_width, d) for _ in range(n)])
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
        """`activations`: the read blocks' tokens, shallowest first, each (B, 1 + h*w, encoder_width); `text`:
        (B, D) normalised text embeddings -> logits (B, h*patch, w*patch)."""
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
    visual: vit.VisionTransformer, pixels: torch.Tensor, layers: tuple[int, ...]
) -> tuple[list[torch.Tensor], tuple[int, int]]:
    """The outputs of blocks `layers` (shallowest first) for normalised pixels (B, 3, S, S), and the grid.
    Runs only as many blocks as needed; no gradients (the encoder is frozen)."""
    with torch.no_grad():
        x, grid = vit.embed(visual, pixels)
        _, kept = vit.run_blocks(visual, x, max(layers) + 1, keep=layers)
    return [kept[i].float() for i in layers], grid


def predict_logits(encoders: Encoders, decoder: SegDecoder, pixels: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """Normalised pixels (B, 3, S, S) at the decoder's input size and (B, D) text embeddings -> (B, S, S) logits."""
    visual = encoders.model.visual
    with encoders.autocast():
        acts, grid = encoder_activations(visual, pixels.to(encoders.device), decoder.spec.layers)
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
    """Read a decoder directory; with `encoders`, refuse one trained on other encoder weights."""
    record = read_decoder_config(path)
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
    state = load_file(str(Path(path) / WEIGHTS_NAME))
    decoder.load_state_dict(state, strict=True)
    decoder.eval()
    if encoders is not None:
        decoder.to(encoders.device)
    return decoder
