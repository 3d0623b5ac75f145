"""LoRA (Hu et al. 2021) on open_clip models through peft: adapters on either or both towers, saved on their own
and merged into an ordinary checkpoint that plain open_clip loads.

    handle = apply(encoders, LoraOptions(lora_rank=8))     # in place: LoRA layers in, every other weight frozen
    ... train encoders.model ...
    save_adapter(handle, "runs/x/adapter")                  # adapter.safetensors + adapter.json (ours, small)
    export_merged(handle, "runs/x/merged")                  # a checkpoint folder: W + (alpha/r)·B·A in every target

Why peft, and where it cannot go. peft (0.13 and later) wraps `nn.Linear`, `nn.Conv2d` and `nn.MultiheadAttention`
(open_clip's text transformer and ViT blocks use the last; peft's wrapper folds the low-rank update into
`in_proj_weight` and `out_proj` for each call). A module whose weight its parent reads directly instead of calling
it gets no update from any wrapper: `nn.MultiheadAttention.out_proj` (peft's MHA wrapper covers it) and the ResNet
towers' attention pool (`visual.attnpool.q_proj/k_proj/v_proj/c_proj`, read by `F.multi_head_attention_forward`).
`resolve_targets` finds those by running one forward with hooks, and refuses them by name rather than train
adapters that change nothing.

Targets (`--lora-targets`): module names or name endings, matched within the chosen towers (`--lora-towers`):
`attn` (every attention block's MultiheadAttention: q, k, v and output projections), `mlp.c_fc`, `mlp.c_proj`,
`conv1`/`conv2`/`conv3` (ResNet blocks), or full names such as `transformer.resblocks.0.attn`. By default every
Linear, Conv2d and MultiheadAttention the tower's forward calls.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from vlm import models
from vlm.atomic import atomic_dir
from vlm.config import LoraOptions
from vlm.errors import CheckpointError, ConfigError, ModelError

LOG = logging.getLogger(__name__)

ADAPTER_DIR = "adapter"  # inside a checkpoint folder written by `export_merged`
ADAPTER_WEIGHTS = "adapter.safetensors"
ADAPTER_CONFIG = "adapter.json"
FORMAT = "vlm-lora-adapter"
FORMAT_VERSION = 1
SUPPORTED = (nn.Linear, nn.Conv2d, nn.MultiheadAttention)
ADAPTER_NAME = "default"


@dataclasses.dataclass
class LoraHandle:
    """A model with LoRA layers in place (`encoders.model` itself), and how they were made."""

    encoders: models.Encoders
    peft_model: Any  # peft.LoraModel around encoders.model
    options: LoraOptions
    targets: tuple[str, ...]
    base_fingerprint: str

    def counts(self) -> dict[str, int]:
        """Trainable (LoRA) parameters and all parameters of the model as it trains."""
        params = list(self.encoders.model.parameters())
        return {
            "trainable": sum(p.numel() for p in params if p.requires_grad),
            "total": sum(p.numel() for p in params),
        }

    def adapter_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().to("cpu").contiguous().clone()
                for k, v in self.encoders.model.state_dict().items() if ".lora_" in k}  # fmt: skip


def _in_tower(name: str, towers: str) -> bool:
    image = name == "visual" or name.startswith("visual.")
    return towers == "both" or (towers == "image") == image


def _called_modules(encoders: models.Encoders, names: set[str]) -> set[str]:
    """Which of `names` a forward of both towers calls (one small image, two short texts)."""
    called: set[str] = set()
    model = encoders.model
    hooks = [m.register_forward_hook(lambda _m, _i, _o, n=n: called.add(n))
             for n, m in model.named_modules() if n in names]  # fmt: skip
    size = encoders.image_size
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    try:
        images = torch.zeros(1, 3, h, w, device=encoders.device, dtype=encoders.input_dtype)
        encoders.encode_image(images)
        encoders.encode_text(["a photo", "a drawing"])
    finally:
        for hook in hooks:
            hook.remove()
    return called


def resolve_targets(encoders: models.Encoders, options: LoraOptions) -> tuple[str, ...]:
    """The full module names LoRA goes on; `ConfigError` for a name that matches nothing, a module of a kind peft
    cannot wrap, or one whose forward the model never calls. Nothing is changed."""
    modules = dict(encoders.model.named_modules())
    in_tower = {n: m for n, m in modules.items() if n and _in_tower(n, options.lora_towers)}
    candidates = {n for n, m in in_tower.items() if isinstance(m, SUPPORTED)}
    called = _called_modules(encoders, candidates)
    if not options.lora_targets:
        chosen = sorted(called)
        if not chosen:
            raise ConfigError(
                f"the {options.lora_towers} tower(s) hold no Linear, Conv2d or MultiheadAttention to adapt"
            )
        return tuple(chosen)
    chosen: list[str] = []
    for pattern in options.lora_targets:
        pattern = pattern.strip().strip(".")
        matches = sorted(n for n in in_tower if n == pattern or n.endswith("." + pattern))
        if not matches:
            endings = sorted({".".join(n.split(".")[-2:]) if n.split(".")[-1].isdigit() else n.split(".")[-1]
                              for n in called})  # fmt: skip
            raise ConfigError(
                f"--lora-targets {pattern!r}: no module of that name in the {options.lora_towers} tower(s) of "
                f"{encoders.model_name}. Names that work here: {', '.join(endings[:40])}"
            )
        wrong = [n for n in matches if not isinstance(in_tower[n], SUPPORTED)]
        if wrong:
            raise ConfigError(
                f"--lora-targets {pattern!r}: {wrong[0]} is a {type(in_tower[wrong[0]]).__name__}; LoRA goes on "
                f"Linear, Conv2d and MultiheadAttention modules"
            )
        unused = [n for n in matches if n not in called]
        if unused:
            raise ConfigError(
                f"--lora-targets {pattern!r}: the model never calls {unused[0]} (its parent reads the weight "
                f"directly, as nn.MultiheadAttention does with out_proj and the ResNet attention pool with its "
                f"projections), so an adapter there would change nothing. Target the parent attention module "
                f"(e.g. 'attn') or another layer"
            )
        chosen.extend(m for m in matches if m not in chosen)
    return tuple(chosen)


def apply(encoders: models.Encoders, options: LoraOptions) -> LoraHandle:
    """Put LoRA layers on the targets of `encoders.model`, in place, and freeze every other weight."""
    from peft import LoraConfig, LoraModel

    if not options.enabled:
        raise ConfigError("LoRA is off (lora_rank 0): give --lora-rank R")
    targets = resolve_targets(encoders, options)
    base_fingerprint = encoders.fingerprint
    config = LoraConfig(
        r=options.lora_rank, lora_alpha=options.alpha, lora_dropout=options.lora_dropout,
        target_modules=exact_names_pattern(targets), bias="none",
    )  # fmt: skip
    peft_model = LoraModel(encoders.model, config, ADAPTER_NAME)  # injects into encoders.model and freezes the rest
    wrapped = {n for n, m in encoders.model.named_modules()  # (an attention's own out_proj sits under base_layer)
               if isinstance(getattr(m, "lora_A", None), nn.ModuleDict) and ".base_layer." not in n}  # fmt: skip
    if wrapped != set(targets):  # peft's own name matching must have taken exactly the resolved modules
        raise ModelError(f"peft wrapped {sorted(wrapped ^ set(targets))[:3]} against the resolved targets")
    handle = LoraHandle(encoders, peft_model, options, targets, base_fingerprint)
    counts = handle.counts()
    LOG.info(
        "LoRA r=%d alpha=%g on %d modules: %s of %s parameters train (%.2f %%)",
        options.lora_rank, options.alpha, len(targets), f"{counts['trainable']:,}", f"{counts['total']:,}",
        100.0 * counts["trainable"] / max(counts["total"], 1),
    )  # fmt: skip
    return handle


def exact_names_pattern(names: tuple[str, ...]) -> str:
    """A regex peft full-matches against module names: a list would also match every name *ending* in an entry
    (`visual.transformer.resblocks.0.attn` ends in `transformer.resblocks.0.attn`)."""
    return "|".join(re.escape(n) for n in names)


def merged_model(handle: LoraHandle) -> nn.Module:
    """A copy of the model with every adapter folded into its weights: a plain open_clip model (same state-dict
    keys as before `apply`). The training model is left as it is."""
    return copy.deepcopy(handle.peft_model).merge_and_unload()


def merged_encoders(handle: LoraHandle) -> models.Encoders:
    merged = merged_model(handle)
    # Weights no checkpoint holds: nothing to load them from again (a collection it embeds records it as in-memory).
    return dataclasses.replace(
        handle.encoders, model=merged, fingerprint=models.weights_fingerprint(merged), loaded_from=("", None)
    )


def export_merged(
    handle: LoraHandle, path: str | Path, *, provenance: dict[str, Any] | None = None, **kwargs: Any
) -> Path:
    """Write the merged model as a checkpoint folder (`vlm.checkpoint`): open_clip loads its model.safetensors. The
    adapter goes beside it in `adapter/` (`adapter.safetensors`, `adapter.json`): a resumed run reads it from there."""

    def write(tmp: Path) -> None:
        (tmp / ADAPTER_DIR).mkdir()
        write_adapter(handle, tmp / ADAPTER_DIR)

    record = {**(provenance or handle.encoders.provenance), "lora": describe(handle)}
    return models.save(merged_encoders(handle), path, provenance=record, extra=write, **kwargs)


def describe(handle: LoraHandle) -> dict[str, Any]:
    return {
        "rank": handle.options.lora_rank,
        "alpha": handle.options.alpha,
        "dropout": handle.options.lora_dropout,
        "towers": handle.options.lora_towers,
        "targets": list(handle.targets),
        "base_fingerprint": handle.base_fingerprint,
        **handle.counts(),
    }


def write_adapter(handle: LoraHandle, folder: Path) -> None:
    """Write adapter.safetensors and adapter.json into an existing folder (inside a caller's atomic directory)."""
    save_file(handle.adapter_state(), str(folder / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    record = {"format": FORMAT, "format_version": FORMAT_VERSION, "model_name": handle.encoders.model_name,
              **describe(handle)}  # fmt: skip
    (folder / ADAPTER_CONFIG).write_text(json.dumps(record, indent=2) + "\n")


def save_adapter(handle: LoraHandle, path: str | Path) -> Path:
    """The adapter alone, atomically: a few hundred KB where the model is many MB."""
    with atomic_dir(path) as tmp:
        write_adapter(handle, tmp)
    return Path(path)


def read_adapter(path: str | Path) -> tuple[LoraOptions, dict[str, Any], dict[str, torch.Tensor]]:
    path = Path(path)
    if not (path / ADAPTER_CONFIG).is_file() or not (path / ADAPTER_WEIGHTS).is_file():
        raise CheckpointError(f"{path} is not a LoRA adapter folder: it needs {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS}")
    from vlm.checkpoint import read_format_record

    record = read_format_record(path / ADAPTER_CONFIG, FORMAT, FORMAT_VERSION)
    options = LoraOptions(
        lora_rank=record["rank"], lora_alpha=record["alpha"], lora_towers=record["towers"],
        lora_targets=tuple(record["targets"]), lora_dropout=record["dropout"],
    )  # fmt: skip
    return options, record, load_file(str(path / ADAPTER_WEIGHTS))


def load_adapter(encoders: models.Encoders, path: str | Path, *, check_base: bool = True) -> LoraHandle:
    """Put a saved adapter on `encoders` (the base model it was trained from: refused otherwise)."""
    options, record, state = read_adapter(path)
    if check_base and record["base_fingerprint"] != encoders.fingerprint:
        raise CheckpointError(
            f"the adapter in {path} was trained on weights {record['base_fingerprint']}, not on {encoders.source} "
            f"({encoders.fingerprint}); load it onto its own base model"
        )
    handle = apply(encoders, options)
    load_adapter_state(handle, state)
    return handle


def load_adapter_state(handle: LoraHandle, state: dict[str, torch.Tensor]) -> None:
    expected = set(handle.adapter_state())
    if set(state) != expected:
        missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
        raise CheckpointError(f"adapter weights do not fit the model: missing {missing[:3]}, unexpected {extra[:3]}")
    handle.encoders.model.load_state_dict(state, strict=False)
