"""Image and text encoders, built through open_clip.

`load(model, pretrained)` accepts every way a user names a model:
    load("ViT-B-32", "laion2b_s34b_b79k")     an open_clip architecture and pretrained tag (downloaded or cached)
    load("ViT-B-32", "/path/weights.bin")     an architecture and a local weights file (.safetensors/.bin/.pt)
    load("hf-hub:timm/ViT-B-16-SigLIP")      a Hugging Face Hub repo in open_clip's format
    load("runs/demo/final")                  a checkpoint directory written by this project (or "local-dir:...")
    load("demo")                             the demo model shipped with the project
    load("vlm-small")                        any architecture with no weights: a fresh model to train from scratch
and returns one `Encoders` object: image and text encoders, tokenizer, preprocessing, logit scale and a fingerprint
of the weights (so an index built with one model refuses queries from another).

A little over 400 lines on purpose: `load` and the helpers it alone uses (source resolution, offline help, weights
checks) are one path from a user's model name to `Encoders`; split, the pieces would have no other caller.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import logging
import os
import pickle
import socket
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import urlparse

import open_clip
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from torch import nn

from vlm import checkpoint
from vlm.config import PRECISIONS
from vlm.errors import CheckpointError, ModelError
from vlm.fingerprint import state_fingerprint
from vlm.printable import printable

LOG = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).parent / "model_configs"
DEMO_CHECKPOINT = Path(__file__).parent / "demo_model"
# What torch.load, safetensors and open_clip raise for a file that is not what it claims to be (truncated, empty,
# not a checkpoint, another model's weights, non-UTF-8 JSON); each becomes a ModelError naming the file.
LOAD_ERRORS = (OSError, ValueError, RuntimeError, EOFError, KeyError, TypeError, IndexError, AttributeError,
               pickle.UnpicklingError, SafetensorError)  # fmt: skip
# The weights files open_clip looks for in a folder (`factory._find_checkpoint_in_dir`): it takes one by a fixed
# preference, so a stray second file would be loaded silently instead of the checkpoint's own.
WEIGHTS_PATTERNS = ("*.safetensors", "*.bin", "*.pth")


def register_model_configs() -> None:
    """Make this project's JSON configs ordinary open_clip model names (idempotent; never run at import)."""
    if not set(p.stem for p in CONFIG_DIR.glob("*.json")) <= set(open_clip.list_models()):
        open_clip.add_model_config(CONFIG_DIR)


def pretrained_tags(model: str) -> list[str] | None:
    """The pretrained tags open_clip knows for architecture `model` (may be empty: this project's own architectures
    have none); None when `model` is not an architecture name (the demo, a checkpoint folder, an hf-hub: id)."""
    register_model_configs()
    if model not in open_clip.list_models():
        return None
    return list(open_clip.list_pretrained_tags_by_model(model))


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' means bf16 autocast on a CUDA device that supports it, fp16 autocast on older GPUs, fp32 on CPU."""
    if precision not in PRECISIONS:
        raise ModelError(f"unknown precision {precision!r}; choose one of {list(PRECISIONS)}")
    if precision != "auto":
        if device.type == "cpu" and precision in ("amp", "fp16"):
            raise ModelError(f"precision {precision!r} needs a CUDA device; on CPU use fp32 (or bf16/amp_bf16)")
        return precision
    if device.type == "cuda":
        return "amp_bf16" if torch.cuda.is_bf16_supported() else "amp"
    return "fp32"


def autocast_context(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    if precision == "amp":
        return torch.autocast(device.type, dtype=torch.float16)
    if precision == "amp_bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def evaluating(module: nn.Module) -> Iterator[nn.Module]:
    """`module` in eval mode for the block; afterwards every submodule is back in its own mode (a trainer's model
    stays in train mode, with a locked tower's frozen parts as they were)."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, training in modes:
            m.training = training


def weights_fingerprint(model: nn.Module) -> str:
    """A short hash of the model's weights (see `vlm.fingerprint`)."""
    return state_fingerprint(model.state_dict())


class TextEncoder(nn.Module):
    """The text tower as a module of its own: token ids (B, context) -> unnormalised features (B, embed_dim)."""

    def __init__(self, clip: nn.Module):
        super().__init__()
        self.clip = clip

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.clip.encode_text(tokens)


@dataclass
class Encoders:
    """A loaded CLIP-style model and everything needed to embed images and texts with it."""

    model: nn.Module
    model_name: str
    model_cfg: dict[str, Any]
    preprocess_cfg: dict[str, Any]
    tokenizer: Callable[..., torch.Tensor]
    preprocess: Callable  # PIL image -> (3, H, W) float tensor, for inference
    preprocess_train: Callable  # the same with open_clip's training augmentation
    device: torch.device
    precision: str
    fingerprint: str
    source: str  # how it was loaded, for people: "ViT-B-32 + laion2b_s34b_b79k", "checkpoint runs/x/final", ...
    provenance: dict[str, Any] = field(default_factory=dict)  # a checkpoint's record of how it was made
    random_weights: bool = False  # an architecture built without weights: it answers at random until trained
    loaded_from: tuple[str, str | None] = ("", None)  # (model, pretrained) as given to `load`: what lies next to it
    # Set by `vlm.onnx_runtime.attach`: an ONNX Runtime backend that computes encode_image/encode_text in place of
    # the torch model (None: PyTorch), and a sentence saying which runtime embeds and why.
    backend: Any = None
    runtime_note: str = "PyTorch"

    @property
    def runtime(self) -> str:
        """What computes `encode_image` and `encode_text`: "torch", "onnx" or "onnx-int8"."""
        return self.backend.name if self.backend is not None else "torch"

    @property
    def image_encoder(self) -> nn.Module:
        """(B, 3, H, W) normalised pixels -> (B, embed_dim) unnormalised features."""
        return self.model.visual

    @property
    def text_encoder(self) -> nn.Module:
        return TextEncoder(self.model)

    @property
    def embed_dim(self) -> int:
        return int(self.model_cfg["embed_dim"])

    @property
    def image_size(self) -> int | tuple[int, int]:
        return self.preprocess_cfg["size"]

    @property
    def context_length(self) -> int:
        return int(self.model_cfg["text_cfg"].get("context_length", 77))

    @property
    def logit_scale(self) -> float:
        """The learned inverse temperature exp(t), as the model uses it (clamped to 100 as in CLIP)."""
        return float(self.model.logit_scale.detach().exp().clamp(max=100.0).item())

    @property
    def input_dtype(self) -> torch.dtype:
        """The dtype image inputs must have: the weights' under pure fp16/bf16 (a float32 batch into bf16 convolution
        weights raises), float32 otherwise (autocast casts inside). As open_clip's `get_input_dtype`."""
        return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.precision, torch.float32)

    def autocast(self) -> contextlib.AbstractContextManager:
        return autocast_context(self.precision, self.device)

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        return self.tokenizer(list(texts))

    @torch.no_grad()
    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """(B, 3, H, W) preprocessed images -> (B, D) float32 features, L2-normalised in float32 by default.

        Runs in eval mode (no dropout, batch-norm statistics fixed) and leaves the model in the mode it found."""
        if self.backend is not None:
            features = torch.from_numpy(self.backend.encode_image(images.float().cpu().numpy()))
            return F.normalize(features, dim=-1) if normalize else features
        with evaluating(self.model), self.autocast():
            features = self.model.encode_image(images.to(self.device, self.input_dtype, non_blocking=True))
        features = features.float()
        return F.normalize(features, dim=-1) if normalize else features

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str] | torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Texts (or token ids) -> (N, D) float32 features, L2-normalised in float32 by default.

        Runs in eval mode and leaves the model in the mode it found."""
        tokens = texts if isinstance(texts, torch.Tensor) else self.tokenize(texts)
        if self.backend is not None:
            features = torch.from_numpy(self.backend.encode_text(tokens.cpu().numpy()))
            return F.normalize(features, dim=-1) if normalize else features
        with evaluating(self.model), self.autocast():
            features = self.model.encode_text(tokens.to(self.device, non_blocking=True))
        features = features.float()
        return F.normalize(features, dim=-1) if normalize else features

    def describe(self) -> dict[str, Any]:
        """A JSON-ready summary for people and logs."""
        n_params = sum(p.numel() for p in self.model.parameters())
        return {
            "model": self.model_name,
            "source": self.source,
            "fingerprint": self.fingerprint,
            "parameters": n_params,
            "embed_dim": self.embed_dim,
            "image_size": self.image_size,
            "device": str(self.device),
            "precision": self.precision,
            "runtime": self.runtime,
            "runtime_note": self.runtime_note,
            "provenance": self.provenance,
            "random_weights": self.random_weights,
        }


# ---------------------------------------------------------------------------------------------------------------
# Hub access that fails fast offline.


@functools.lru_cache(maxsize=1)
def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face Hub answers a TCP connection. Offline, huggingface_hub retries for ~45 s before
    giving up; we ask once, quickly, and then run the download in offline mode so cached weights still load."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(constants.ENDPOINT)
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def _hub_mode() -> Iterator[bool]:
    from huggingface_hub import constants

    online = hub_reachable()
    if online:
        yield True
    else:
        with mock.patch.object(constants, "HF_HUB_OFFLINE", True):
            yield False


def _offline_help(model: str, pretrained: str | None) -> str:
    what = f"{model} + {pretrained}" if pretrained else model
    return (
        f"the weights for {what} are not in the local cache and the Hugging Face Hub cannot be reached. "
        f"Either connect this machine once (the weights are cached under ~/.cache/huggingface), copy that cache "
        f"from a connected machine (set HF_HOME to point at it), or download the weights file yourself and pass "
        f"its path: --model {model} --pretrained /path/to/open_clip_pytorch_model.bin"
    )


# ---------------------------------------------------------------------------------------------------------------
# Loading.


def _resolve_source(model: str, pretrained: str | None) -> tuple[str, str | None, str]:
    """Normalise the user's (model, pretrained) into what open_clip takes, plus a description."""
    if model == "demo":
        if not checkpoint.is_checkpoint_dir(DEMO_CHECKPOINT):
            raise ModelError(
                f"the demo model is missing from {DEMO_CHECKPOINT}; rebuild it with `make demo` "
                f"or pass --model NAME --pretrained TAG"
            )
        model = str(DEMO_CHECKPOINT)
    if model.startswith("hf-hub:"):
        if pretrained:
            raise ModelError(f"an hf-hub: model carries its own weights; drop --pretrained ({pretrained!r})")
        return model, None, model
    if model.startswith("local-dir:"):  # (an hf-hub: id holds a "/" too, so it is told apart first)
        model = model[len("local-dir:") :]
    path = Path(model).expanduser()
    if path.is_dir() or os.sep in model or model.startswith("."):
        if not path.exists():
            raise ModelError(f"model path not found: {path}")
        if not (path / checkpoint.OPEN_CLIP_CONFIG_NAME).is_file():
            raise ModelError(
                f"{path} is not a model directory: it needs {checkpoint.OPEN_CLIP_CONFIG_NAME} and a weights file "
                f"(a checkpoint written by `vlm train`, or an open_clip model folder)"
            )
        if pretrained:
            raise ModelError(f"a checkpoint directory carries its own weights; drop --pretrained ({pretrained!r})")
        _check_weights_files(path)
        if (path / checkpoint.CONFIG_NAME).is_file():
            try:
                checkpoint.read_config(path)  # a broken config.json is named before anything loads
            except CheckpointError as e:
                raise ModelError(str(e)) from e
        return f"local-dir:{path.resolve()}", None, f"checkpoint {path}"
    register_model_configs()
    if model not in open_clip.list_models():
        names = open_clip.list_models()
        close = difflib.get_close_matches(model, names, n=5, cutoff=0.5)
        hint = f"Did you mean {', '.join(close)}? " if close else ""
        raise ModelError(
            f"unknown model {model!r}. {hint}{len(names)} architectures are known, e.g. ViT-B-32, ViT-B-16, RN50; "
            f"open_clip.list_models() lists them all"
        )
    if pretrained:
        if Path(pretrained).expanduser().is_dir() and checkpoint.is_checkpoint_dir(pretrained):
            pretrained = str(Path(pretrained).expanduser() / checkpoint.WEIGHTS_NAME)
        if Path(pretrained).expanduser().is_file():
            return model, str(Path(pretrained).expanduser()), f"{model} + {pretrained}"
        tags = open_clip.list_pretrained_tags_by_model(model)
        if pretrained not in tags:
            looks_like_path = os.sep in pretrained or pretrained.endswith((".bin", ".pt", ".pth", ".safetensors"))
            if looks_like_path:
                raise ModelError(f"pretrained weights file not found: {pretrained}")
            raise ModelError(f"unknown pretrained tag {pretrained!r} for {model}. Available tags: {tags or 'none'}")
        return model, pretrained, f"{model} + {pretrained}"
    return model, None, f"{model} (randomly initialised)"


def has_weights(model: str, pretrained: str | None = None) -> bool:
    """True when `load(model, pretrained)` starts from trained weights (a tag or weights file, a checkpoint or model
    folder, 'demo', an hf-hub: id), False for an architecture name alone (random initialisation). Raises
    `ModelError` as `load` would for a name or path that does not exist."""
    name, weights, _ = _resolve_source(model, pretrained)
    return weights is not None or name.startswith(("local-dir:", "hf-hub:"))


def _check_weights_files(folder: Path) -> None:
    """Exactly one weights file in a model folder: none would give random weights, two an arbitrary choice."""
    found = sorted({p.name for pattern in WEIGHTS_PATTERNS for p in folder.glob(pattern)})
    if not found:
        raise ModelError(
            f"{printable(folder)} has no weights file ({checkpoint.WEIGHTS_NAME}); open_clip would build the model "
            f"with random weights. Point at a complete checkpoint folder"
        )
    if len(found) > 1:
        raise ModelError(
            f"{printable(folder)} holds {len(found)} weights files ({', '.join(printable(f) for f in found)}); "
            f"open_clip would load one of them by name, perhaps not the checkpoint's own. Keep only one "
            f"(for a checkpoint written by `vlm train`: {checkpoint.WEIGHTS_NAME})"
        )


def _short(error: BaseException, limit: int = 3000) -> str:
    """A loader's message with its type; a long one keeps its start and end (a state-dict error lists every missing
    key first and the unexpected ones last)."""
    text = str(error).strip()
    text = f"{type(error).__name__}: {text}" if text else type(error).__name__
    if len(text) > limit:
        text = text[: limit // 2] + " ... " + text[-limit // 2 :]
    return printable(text).replace("\\n", "\n").replace("\\t", " ")  # keep the loader's own line breaks


def _model_config(name: str) -> dict[str, Any]:
    if name.startswith("local-dir:"):
        import json

        record = json.loads((Path(name[len("local-dir:") :]) / checkpoint.OPEN_CLIP_CONFIG_NAME).read_text())
        return record["model_cfg"]
    cfg = open_clip.get_model_config(name)
    if cfg is None:
        raise ModelError(f"no model config for {name!r}")
    return cfg


def load(
    model: str,
    pretrained: str | None = None,
    *,
    device: str | torch.device | None = None,
    precision: str = "auto",
    cache_dir: str | None = None,
    runtime: str = "torch",
    onnx: str | Path | None = None,
) -> Encoders:
    """Build image and text encoders; see the module docstring for the accepted names. `runtime`/`onnx`: compute
    embeddings through ONNX Runtime (`vlm.onnx_runtime.attach`; "torch" by default, as a trainer must)."""
    device = torch.device(device) if device is not None else default_device()
    precision = resolve_precision(precision, device)
    name, weights, source = _resolve_source(model, pretrained)
    needs_hub = name.startswith("hf-hub:") or (weights is not None and not Path(weights).is_file())
    try:
        with _hub_mode() if needs_hub else contextlib.nullcontext(True) as online:
            # Build on CPU in fp32 first: the fingerprint is taken of the fp32 weights, then cast and moved.
            clip, preprocess_train, preprocess = open_clip.create_model_and_transforms(
                name, pretrained=weights, precision="fp32", device="cpu", cache_dir=cache_dir
            )
    except LOAD_ERRORS as e:
        if needs_hub and not online:
            raise ModelError(_offline_help(model, pretrained)) from e
        raise ModelError(
            f"cannot load {printable(source)}: {_short(e)}. The file may be truncated, not a checkpoint, or weights "
            f"of another model"
        ) from e
    tokenizer = open_clip.get_tokenizer(name, cache_dir=cache_dir)
    fingerprint = weights_fingerprint(clip)
    if precision in ("fp16", "bf16"):
        open_clip.model.convert_weights_to_lp(clip, dtype=torch.float16 if precision == "fp16" else torch.bfloat16)
    clip.to(device).eval()
    provenance: dict[str, Any] = {}
    display_name = model
    if name.startswith("local-dir:"):
        local = Path(name[len("local-dir:") :])
        if checkpoint.is_checkpoint_dir(local):
            record = checkpoint.read_config(local)
            provenance = record.get("provenance", {})
            display_name = record["model_name"]
    encoders = Encoders(
        model=clip,
        model_name=display_name,
        model_cfg=_model_config(name),
        preprocess_cfg=open_clip.model.get_model_preprocess_cfg(clip),
        tokenizer=tokenizer,
        preprocess=preprocess,
        preprocess_train=preprocess_train,
        device=device,
        precision=precision,
        fingerprint=fingerprint,
        source=source,
        provenance=provenance,
        random_weights=weights is None and not name.startswith(("local-dir:", "hf-hub:")),
        loaded_from=(model, pretrained),
    )
    if runtime == "torch" and onnx is None:
        return encoders
    from vlm.onnx_runtime import attach

    return attach(encoders, runtime, onnx)


def save(encoders: Encoders, path: str | Path, provenance: dict[str, Any] | None = None, **kwargs: Any) -> Path:
    """Write `encoders` as a checkpoint directory (see `vlm.checkpoint`)."""
    return checkpoint.save(
        path,
        encoders.model,
        model_name=encoders.model_name,
        model_cfg=encoders.model_cfg,
        preprocess_cfg=encoders.preprocess_cfg,
        provenance=provenance if provenance is not None else encoders.provenance,
        tokenizer=encoders.tokenizer,
        **kwargs,
    )
