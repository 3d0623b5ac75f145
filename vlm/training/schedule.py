"""The optimizer and its learning-rate schedule, shared by every training task: AdamW with decay on matrices only,
linear warm-up, then cosine decay (or constant)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from vlm.config import OptimConfig


def lr_at(step: int, *, lr: float, warmup: int, total: int, schedule: str, min_ratio: float) -> float:
    """Linear warm-up to `lr` over `warmup` steps, then cosine decay to `min_ratio * lr` at `total` (or constant)."""
    if step < warmup:
        return lr * (step + 1) / warmup
    if schedule == "constant":
        return lr
    progress = (step - warmup) / max(1, total - warmup)
    floor = lr * min_ratio
    return floor + 0.5 * (lr - floor) * (1.0 + math.cos(math.pi * min(1.0, progress)))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay matrices and embeddings (ndim >= 2); never biases, norms, the temperature or the SigLIP bias."""
    decay, no_decay = [], []
    for _, p in sorted(model.named_parameters()):
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def adamw(model: nn.Module, oc: OptimConfig) -> torch.optim.AdamW:
    """AdamW over `model`'s trainable parameters as `oc` says (`param_groups` for the decay)."""
    groups = param_groups(model, oc.weight_decay)
    # The fused kernel updates every tensor in one pass: on CPU 6x faster than the default per-tensor loop
    # (7 vs 44 ms a step for vlm-small), which is a tenth of a small model's whole step.
    fused = all(p.device.type in ("cpu", "cuda") for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=oc.lr, betas=(oc.beta1, oc.beta2), eps=oc.eps, fused=fused or None)


def scheduler(optimizer: torch.optim.Optimizer, oc: OptimConfig, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """`lr_at` as a multiplier of the optimizer's lr, stepped once per optimizer step."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: lr_at(
            s, lr=1.0, warmup=oc.warmup_steps, total=total_steps, schedule=oc.schedule, min_ratio=oc.min_lr_ratio
        ),
    )
