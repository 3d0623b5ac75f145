"""Fine-tuning a model that already knows things: frozen normalisation statistics and fine-tune recipes.

A run that starts from weights (a pretrained tag or file, a checkpoint folder, the demo model, an hf-hub: id) is a
fine-tune; one that starts from an architecture name alone is from scratch. `resolve` fills in what the user left
unset (`None` in the config) with the recipe for that case and says why, and the trainer records the result:

- **Normalisation statistics.** From weights, every BatchNorm stays in eval mode for the whole run (its running mean
  and variance are the pretraining data's and stay bit-identical; its affine weight and bias still train unless the
  tower is locked). Re-estimating them on a few thousand new images is what wipes a ResNet tower's knowledge before
  any weight changes (issue 14's lr-1e-12 row). `update_norm_stats: true` re-estimates them anyway. From scratch
  they are updated, as before.
- **Recipe.** From weights: peak lr 1e-5, weight decay 0.1, cosine decay after a linear warm-up of min(500 steps,
  5 % of the run), the contrastive fine-tuning settings of FLYP (Goyal et al. 2023, "Finetune like you pretrain",
  CLIP loss, AdamW, lr 1e-5, wd 0.1, 500 warm-up steps, cosine) and WiSE-FT's end-to-end fine-tunes (Wortsman et al.
  2022: AdamW, lr 3e-5, wd 0.1, 500 warm-up steps, cosine). From scratch: CLIP's lr 5e-4, wd 0.2, 100 warm-up steps.
  Whatever the user set (flag, config file, the app's field) is kept.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from torch.utils.data import Sampler

from vlm.config import TrainConfig
from vlm.errors import DataError

LOG = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Recipe:
    lr: float
    weight_decay: float
    warmup_max: int  # warm-up steps at most
    warmup_share: float | None  # ... and at most this share of the run (None: no share limit)
    why: str


FROM_SCRATCH = Recipe(lr=5e-4, weight_decay=0.2, warmup_max=100, warmup_share=None, why="CLIP's from-scratch settings")
FINE_TUNE = Recipe(
    lr=1e-5,
    weight_decay=0.1,
    warmup_max=500,
    warmup_share=0.05,
    why="the model starts from weights: FLYP's contrastive fine-tuning settings (Goyal et al. 2023; WiSE-FT's "
    "fine-tunes, Wortsman et al. 2022, use the same wd 0.1, warm-up and cosine at lr 3e-5). A from-scratch lr such "
    "as 5e-4 overwrites what the model knew",
)
# The norm layers whose running statistics a fine-tune keeps (LayerNorm and GroupNorm have none).
NORM_WITH_STATS = (nn.modules.batchnorm._BatchNorm,)


def starts_from_weights(cfg: TrainConfig) -> bool:
    """True when `cfg.model` names weights (a pretrained tag/file, a checkpoint folder, 'demo', an hf-hub: id)."""
    from vlm import models  # models imports open_clip: only when asked

    return models.has_weights(cfg.model.model, cfg.model.pretrained)


def recipe_for(cfg: TrainConfig) -> Recipe:
    return FINE_TUNE if starts_from_weights(cfg) else FROM_SCRATCH


def warmup_steps(recipe: Recipe, total_steps: int) -> int:
    """The recipe's warm-up for a run of `total_steps` (at least 1 step)."""
    steps = recipe.warmup_max
    if recipe.warmup_share is not None:
        steps = min(steps, round(recipe.warmup_share * total_steps))
    return max(1, steps)


def resolve(cfg: TrainConfig) -> tuple[TrainConfig, list[str]]:
    """`cfg` with every unset (`None`) recipe field filled for a fine-tune or a from-scratch run, and one line per
    filled field saying what and why. Fields the user set are kept. The warm-up stays `None` when it depends on the
    run's length (`steps` unset): the trainer fills it with `warmup_steps` once it knows the length."""
    fine = starts_from_weights(cfg)
    recipe = FINE_TUNE if fine else FROM_SCRATCH
    why = recipe.why
    notes: list[str] = []
    optim, model = cfg.optim, cfg.model
    if optim.lr is None:
        optim = dataclasses.replace(optim, lr=recipe.lr)
        notes.append(f"lr {recipe.lr:g}")
    if optim.weight_decay is None:
        optim = dataclasses.replace(optim, weight_decay=recipe.weight_decay)
        notes.append(f"weight decay {recipe.weight_decay:g}")
    if optim.warmup_steps is None and cfg.steps is not None:
        optim = dataclasses.replace(optim, warmup_steps=warmup_steps(recipe, cfg.steps))
        notes.append(f"{optim.warmup_steps} warm-up steps")
    if model.update_norm_stats is None:
        model = dataclasses.replace(model, update_norm_stats=not fine)
        if fine:
            notes.append("BatchNorm statistics frozen (the pretraining data's; --update-norm-stats re-estimates them)")
    out = dataclasses.replace(cfg, optim=optim, model=model)
    if notes:
        notes = [f"{'fine-tune' if fine else 'from scratch'} defaults: {', '.join(notes)} ({why})"]
    return out, notes


def freeze_norm_stats(model: nn.Module) -> list[str]:
    """Keep every BatchNorm of `model` in eval mode from now on (running statistics used and never updated, even
    after `model.train()`); their affine parameters keep their `requires_grad`. Returns the names of the layers."""
    names = []
    for name, module in model.named_modules():
        if isinstance(module, NORM_WITH_STATS):
            module.eval()
            module.train = _StayInEval(module)  # type: ignore[method-assign]  # model.train() reaches it by name
            names.append(name)
    return names


class _StayInEval:
    """Replaces one norm layer's `train(mode)`: the layer stays in eval mode whatever its parent asks."""

    def __init__(self, module: nn.Module):
        self.module = module

    def __call__(self, mode: bool = True) -> nn.Module:
        return self.module


def frozen_norm_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """The norm layers with running statistics that `freeze_norm_stats` holds in eval mode."""
    for name, module in model.named_modules():
        if isinstance(module, NORM_WITH_STATS) and isinstance(module.__dict__.get("train"), _StayInEval):
            yield name, module


def summary(cfg: TrainConfig) -> dict[str, Any]:
    """The effective recipe of a resolved config, for the app and the CLI's report."""
    return {
        "fine_tune": starts_from_weights(cfg),
        "lr": cfg.optim.lr,
        "weight_decay": cfg.optim.weight_decay,
        "warmup_steps": cfg.optim.warmup_steps,
        "update_norm_stats": cfg.model.update_norm_stats,
    }


# ---------------------------------------------------------------------------------------------------------------
# What the model knew: its reference sets, and replay of pairs it should keep knowing.


class ReferenceScore(Protocol):
    """Scores the model on what it knew, e.g. `eval.reference.load(specs)`: the caller passes it, as `validate`.
    Metric names are `<set>/<metric>` plus `score` (one number for the app's "what it knew" curve)."""

    def __call__(self, encoders: Any, *, batch_size: int, workers: int) -> dict[str, float]: ...


def default_reference(model: str) -> tuple[str, ...]:
    """The reference sets a model brings along: the demo model's shipped set, or those a checkpoint written by
    `vlm train` was scored on (where they still exist). Empty when it brings none."""
    from vlm import checkpoint, demo

    if demo.is_demo_model(model):
        return demo.REFERENCE
    path = Path(model.removeprefix("local-dir:")).expanduser()
    if not checkpoint.is_checkpoint_dir(path):
        return ()
    specs = checkpoint.read_config(path).get("provenance", {}).get("config", {}).get("data", {}).get("reference", [])
    return tuple(s for s in specs if Path(s.split(":", 1)[-1] if ":" in s else s).exists())


def own_training_data(model: str) -> str | None:
    """The pairs a checkpoint written by `vlm train` was trained on (its recipe names them), if they still exist:
    what a fine-tune of it replays to keep knowing it."""
    from vlm import checkpoint

    path = Path(model.removeprefix("local-dir:")).expanduser()
    if not checkpoint.is_checkpoint_dir(path):
        return None
    data = checkpoint.read_config(path).get("provenance", {}).get("config", {}).get("data", {}).get("train_data")
    return data if data and Path(data).exists() else None


NO_REFERENCE_NOTE = (
    "no reference set: nothing will measure what the model forgets while it learns your data. Pass --reference "
    "DATA (labelled images, or image-caption pairs like the ones it was trained on) to score it before, during "
    "and after the fine-tune"
)


def with_reference(cfg: TrainConfig) -> tuple[TrainConfig, list[str]]:
    """`cfg` with the model's own reference sets when it starts from weights and none was given (a note says which,
    or that there are none)."""
    if cfg.data.reference or not starts_from_weights(cfg):
        return cfg, []
    found = default_reference(cfg.model.model)
    if not found:
        return cfg, [NO_REFERENCE_NOTE]
    data = dataclasses.replace(cfg.data, reference=tuple(found))
    return dataclasses.replace(cfg, data=data), [f"reference: the model's own set, {', '.join(found)}"]


def keep_count(batch_size: int, keep_fraction: float) -> int:
    """Rows of each batch drawn from the keep (replay) set: round(fraction x batch), at least 1, at most batch - 1."""
    return min(batch_size - 1, max(1, round(keep_fraction * batch_size)))


class ReplaySampler(Sampler[tuple[int, int]]):
    """`vlm.train.StepSampler` with replay: each global batch is `batch - keep` rows of the new data (indices
    `0 .. n_new-1`) then `keep` rows of the keep set (indices `n_new ..`), each stream walking its own seeded
    permutation epoch by epoch. A pure function of (seed, step), so a resumed run replays the same batches."""

    def __init__(
        self, n_new: int, n_keep: int, global_batch: int, keep: int, rank: int, world_size: int, seed: int,
        start: int, total: int,
    ):  # fmt: skip
        if n_keep < keep:
            raise DataError(f"the keep set has {n_keep} pairs, fewer than the {keep} each batch draws from it")
        self.streams = ((0, n_new, global_batch - keep, seed), (n_new, n_keep, keep, seed + 7_919))
        self.global_batch, self.rank, self.world_size = global_batch, rank, world_size
        self.local_batch = global_batch // world_size
        self.start, self.total = start, total

    def __len__(self) -> int:
        return (self.total - self.start) * self.local_batch

    def __iter__(self) -> Iterator[tuple[int, int]]:
        perms: dict[int, tuple[int, Any]] = {}
        for step in range(self.start, self.total):
            batch: list[tuple[int, int]] = []
            for k, (offset, n, per_batch, seed) in enumerate(self.streams):
                epoch, pos = divmod(step, n // per_batch)
                if perms.get(k, (-1, None))[0] != epoch:
                    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
                    perms[k] = (epoch, torch.randperm(n, generator=g))
                rows = perms[k][1][pos * per_batch : (pos + 1) * per_batch].tolist()
                batch += [(epoch, offset + i) for i in rows]
            lo = self.rank * self.local_batch
            yield from batch[lo : lo + self.local_batch]
