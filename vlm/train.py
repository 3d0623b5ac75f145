"""The CLIP-style contrastive trainer: symmetric InfoNCE (or SigLIP) on the user's own image-text pairs.

`ContrastiveTask` is the task; the run itself (plan, sampler, logging, validation and checkpoint cadence, stop,
interrupt-save, exact resume, the run folder) is `vlm.training.Loop`'s, shared with the decoder trainer. Launch one
process with `vlm train ...`, or several with `torchrun --nproc_per_node N -m vlm train ...` (NCCL on GPUs, gloo on
CPU).

Exact resume: a checkpoint holds weights, optimizer, schedule, grad-scaler and RNG state and the step; the data
order is a pure function of (seed, epoch) and every sample's randomness of (seed, epoch, index), so a resumed run
replays the same batches as an uninterrupted one, whatever the number of DataLoader workers.

Size (~440 lines, over the ~400 guide): the task is one class whose methods are the loop's phases for one
model; its helpers (`ClipForward`, `planned_steps`, `read_run_pairs`, `validation_pairs`) are public names other
modules import from here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors.torch import load_file
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from vlm import checkpoint, distributed, finetune, flops, lora, models
from vlm.atomic import atomic_write_text
from vlm.config import TrainConfig
from vlm.data import Pair, PairDataset, read_pairs, split
from vlm.errors import ConfigError, DataError
from vlm.loss import LOGIT_SCALE_MAX, SIGLIP_LOGIT_BIAS_INIT, SIGLIP_LOGIT_SCALE_INIT, ClipLoss, SigLipLoss
from vlm.rundir import RunDir
from vlm.style_augment import StyleAugment
from vlm.training import RESUME_FREE_FIELDS as RUN_RESUME_FREE_FIELDS
from vlm.training import (
    Loop,
    MetricsLog,
    StepSampler,
    StopRequested,
    Task,
    TrainResult,
    adamw,
    lr_at,
    param_groups,
    restore_rng,
    rng_state,
    scheduler,
)

LOG = logging.getLogger(__name__)

# Public names kept here for the callers of `vlm.train` (they live in `vlm.training`).
__all__ = [
    "ClipForward", "ContrastiveTask", "MetricsLog", "StepSampler", "StopRequested", "TrainResult", "Validate",
    "lr_at", "param_groups", "planned_steps", "restore_rng", "rng_state", "train",
]  # fmt: skip

# Fields that may change between a run and its resume without changing what is being computed.
# channels_last changes only the memory layout and compile only how the same step is run, so a resume may switch them.
RESUME_FREE_FIELDS = RUN_RESUME_FREE_FIELDS | {
    "strict",
    "peak_tflops",
    "dist_timeout_minutes",
    "reference",
    "channels_last",
    "compile",
}


class Validate(Protocol):
    """Scores held-out pairs, e.g. `eval.retrieval.evaluate_pairs`: the caller passes it, the trainer (a lower layer
    than `eval`) does not import it. It runs with the model in eval mode; the trainer restores the modes after."""

    def __call__(
        self, encoders: models.Encoders, pairs: Sequence[Pair], *, batch_size: int, workers: int
    ) -> dict[str, float]: ...


def planned_steps(cfg: TrainConfig, n_pairs: int) -> int:
    """Optimizer steps a run of `cfg` takes when `cfg.data.train_data` holds `n_pairs` usable pairs (the trainer
    holds out `val_fraction` of them unless `val_data` is given). Raises `DataError` when the rest fill no batch."""
    held_out = 0 if cfg.data.val_data else round(cfg.data.val_fraction * n_pairs)
    train = n_pairs - held_out
    if train < cfg.batch_size:
        raise DataError(
            f"{n_pairs:,} usable pair(s) leave {train:,} for training once {held_out:,} are held out for validation: "
            f"too few for a batch of {cfg.batch_size}; lower the batch size or add data"
        )
    return cfg.steps or cfg.epochs * (train // new_per_batch(cfg))


def new_per_batch(cfg: TrainConfig) -> int:
    """Rows of each batch that come from the training data (all of them, unless some are replayed from keep_data)."""
    keep = finetune.keep_count(cfg.batch_size, cfg.data.keep_fraction) if cfg.data.keep_data else 0
    return cfg.batch_size - keep


class ClipForward(nn.Module):
    """The training forward: unnormalised features of both towers plus the temperature (and SigLIP bias).

    Returning the scale from forward keeps every trainable parameter inside DDP's forward, as open_clip does.
    """

    def __init__(self, clip: nn.Module):
        super().__init__()
        self.clip = clip

    def forward(self, images: torch.Tensor, tokens: torch.Tensor):
        image_features = self.clip.encode_image(images)  # (b, D)
        text_features = self.clip.encode_text(tokens)  # (b, D)
        bias = self.clip.logit_bias if getattr(self.clip, "logit_bias", None) is not None else None
        return image_features, text_features, self.clip.logit_scale.exp(), bias


class ContrastiveTask(Task):
    """Both towers trained on image-text pairs with a contrastive loss, from a `TrainConfig`."""

    name = "train"
    items = "pairs"
    resume_free = RESUME_FREE_FIELDS

    def __init__(
        self,
        cfg: TrainConfig,
        *,
        progress: bool = True,
        validate: Validate | None = None,
        reference: finetune.ReferenceScore | None = None,
    ):
        cfg, notes = finetune.resolve(cfg)  # fine-tune or from-scratch defaults for what was left unset
        for note in notes:
            LOG.info("%s", note)
        super().__init__(cfg)
        self.progress = progress
        self.validator = validate
        self.reference_score = reference
        self.keep_pairs: list[Pair] = []
        self.run_dir = RunDir(cfg.output_dir)
        self.accum_steps = cfg.optim.accum_steps
        self.workers = cfg.data.workers

    @property
    def train_pairs(self) -> Sequence[Pair]:
        return self.train_items

    @property
    def val_pairs(self) -> Sequence[Pair]:
        return self.val_items

    def setup(self) -> distributed.DistInfo:
        cfg = self.cfg
        dist = distributed.init(timeout=dt.timedelta(minutes=cfg.dist_timeout_minutes))
        if dist.device.type == "cuda":
            # As open_clip_train: TF32 matrix products and convolutions (fp32 runs 3-8x faster on Ampere and later,
            # at bf16-like input precision), and cuDNN picking the fastest convolution for the fixed input size.
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
            torch.backends.cudnn.benchmark = True
        per_step = dist.world_size * cfg.optim.accum_steps
        if cfg.batch_size % per_step:
            raise ConfigError(f"batch_size {cfg.batch_size} must be divisible by processes x accum_steps = {per_step}")
        self.micro_batch = cfg.batch_size // per_step
        return dist

    def build_model(self) -> None:
        mc = self.cfg.model
        self.encoders = models.load(mc.model, mc.pretrained, device=self.dist.device, precision=mc.precision)
        clip = self.encoders.model
        if self.cfg.loss.loss == "siglip" and getattr(clip, "logit_bias", None) is None:
            # A model made for InfoNCE gets SigLIP's temperature and bias; the saved config records the bias.
            clip.logit_bias = nn.Parameter(torch.tensor(SIGLIP_LOGIT_BIAS_INIT, device=self.dist.device))
            with torch.no_grad():
                clip.logit_scale.fill_(SIGLIP_LOGIT_SCALE_INIT)
            self.encoders.model_cfg = {**self.encoders.model_cfg, "init_logit_bias": SIGLIP_LOGIT_BIAS_INIT}
        if self.cfg.loss.loss == "clip" and getattr(clip, "logit_bias", None) is not None:
            # InfoNCE has no bias: left trainable it would get no gradient, and DDP stops at the second step waiting
            # for it. Frozen, it is kept as it is (the checkpoint still loads as the SigLIP-shaped model it is).
            clip.logit_bias.requires_grad_(False)
            LOG.info("--loss clip: the model's SigLIP logit_bias is kept fixed (InfoNCE does not use it)")
        if mc.lock_image:
            clip.lock_image_tower(unlocked_groups=mc.lock_image_unlocked_groups, freeze_bn_stats=True)
        if mc.lock_text:
            clip.lock_text_tower(unlocked_layers=mc.lock_text_unlocked_layers, freeze_layer_norm=True)
        if mc.grad_checkpointing:
            clip.set_grad_checkpointing(True)
        # Only the layout of the 4-d tensors changes (weights here, batches in `step`), so neither a checkpoint nor a
        # resume sees it. A CNN tower gains most: on 2 CPU cores a vlm-rn-wide step at batch 128 takes about 0.82x
        # the time, in fp32 and under bf16 autocast alike (bench/train_step.py).
        self.memory_format = torch.channels_last if mc.channels_last else torch.contiguous_format
        if mc.channels_last:
            clip.visual.to(memory_format=torch.channels_last)
        # LoRA: adapters put in place on the model (the rest frozen); checkpoints hold the merged weights + adapter/.
        self.lora = lora.apply(self.encoders, self.cfg.lora) if self.cfg.lora.enabled else None
        clip.train()
        if not mc.update_norm_stats:  # a fine-tune keeps the pretraining data's statistics (vlm/finetune.py)
            frozen = finetune.freeze_norm_stats(clip)
            if frozen:
                LOG.info("%d BatchNorm layers keep their running statistics (update_norm_stats is off)", len(frozen))
        self.forward = ClipForward(clip)
        trainable = sum(p.numel() for p in clip.parameters() if p.requires_grad)
        LOG.info("model %s: %s trainable parameters", self.encoders.source, f"{trainable:,}")
        self._count_flops()

    def _count_flops(self) -> None:
        """FLOPs per sample and the device's peak, for the MFU logged with samples/s (where the peak is known)."""
        peak_tflops = self.cfg.peak_tflops
        self.peak = peak_tflops * 1e12 if peak_tflops else flops.peak_flops(self.dist.device, self.encoders.precision)
        self.flops_per_sample = None
        if self.peak is None:
            return
        size = self.encoders.image_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        images = torch.zeros(1, 3, *size, dtype=self.encoders.input_dtype, device=self.dist.device)
        tokens = torch.zeros(1, self.encoders.context_length, dtype=torch.long, device=self.dist.device)
        with self.encoders.autocast():
            self.flops_per_sample = flops.flops_per_sample(self.forward, images, tokens)
        LOG.info(
            "%.2f GFLOPs per training sample (forward + backward); device peak %.0f TFLOP/s",
            self.flops_per_sample / 1e9,
            self.peak / 1e12,
        )

    def _read(self, source: str, *, own_layout: bool = True) -> tuple[list[Pair], list]:
        return read_run_pairs(self.cfg, source, own_layout=own_layout, progress=self.progress)

    def build_data(self) -> None:
        cfg, dc = self.cfg, self.cfg.data
        if not dc.train_data:
            raise ConfigError(
                "no training data: pass --train-data (a CSV/TSV/JSONL file, folder, HF dataset or shards)"
            )
        if self.dist.is_main:
            pairs, bad = self._read(dc.train_data)
            val_pairs, val_bad = self._read(dc.val_data) if dc.val_data else ([], [])
            train_pairs, held_out = split(pairs, 0.0 if dc.val_data else dc.val_fraction, seed=cfg.seed)
            val_pairs = val_pairs or held_out
            keep_pairs, keep_bad = self._read(dc.keep_data, own_layout=False) if dc.keep_data else ([], [])
            self._write_bad_rows(bad + val_bad + keep_bad)
            loaded = (train_pairs, val_pairs, keep_pairs)
        else:
            loaded = None
        self.train_items, self.val_items, self.keep_pairs = distributed.broadcast_object(loaded, self.dist)
        transform = self.encoders.preprocess_train if dc.augment else self.encoders.preprocess
        pairs = list(self.train_items) + self.keep_pairs  # keep pairs follow: ReplaySampler's indices from len(train)
        ops, p, prefixes = dc.style_augment, dc.style_augment_p, dc.style_augment_prefixes
        style = StyleAugment(ops, p, prefixes) if ops else None
        self.dataset = PairDataset(pairs, transform, self.encoders.tokenizer, seed=cfg.seed, style=style,
                                   first_caption_p=dc.first_caption_p)  # fmt: skip

    def items_per_batch(self) -> int:
        return new_per_batch(self.cfg)

    def sampler(self, start: int) -> finetune.ReplaySampler | None:
        if not self.keep_pairs:
            return None
        cfg, dist = self.cfg, self.dist
        keep = cfg.batch_size - new_per_batch(cfg)
        return finetune.ReplaySampler(
            len(self.train_items), len(self.keep_pairs), cfg.batch_size, keep, dist.rank, dist.world_size, cfg.seed,
            start, self.total_steps,
        )  # fmt: skip

    def _write_bad_rows(self, bad: list) -> None:
        if not bad:
            return
        lines = "".join(json.dumps(dataclasses.asdict(b)) + "\n" for b in bad)
        atomic_write_text(self.run_dir.bad_rows, lines)
        LOG.warning("%d bad rows skipped; see %s", len(bad), self.run_dir.bad_rows)

    def build_optimizer(self) -> None:
        if self.cfg.optim.warmup_steps is None:  # the recipe's warm-up depends on the run's length, known only now
            warmup = finetune.warmup_steps(finetune.recipe_for(self.cfg), self.total_steps)
            self.cfg = dataclasses.replace(self.cfg, optim=dataclasses.replace(self.cfg.optim, warmup_steps=warmup))
        oc = self.cfg.optim
        self.optimizer = adamw(self.encoders.model, oc)
        self.scheduler = scheduler(self.optimizer, oc, self.total_steps)
        self.scaler = torch.amp.GradScaler(self.dist.device.type, enabled=self.encoders.precision == "amp")
        lc = self.cfg.loss
        if lc.loss == "clip":
            self.loss_fn = ClipLoss(
                local_loss=lc.local_loss,
                gather_with_grad=lc.gather_with_grad,
                rank=self.dist.rank,
                world_size=self.dist.world_size,
            )
        else:
            self.loss_fn = SigLipLoss(rank=self.dist.rank, world_size=self.dist.world_size)

    def start_training(self) -> None:
        clip_forward = self.forward
        self.model = (
            DistributedDataParallel(
                clip_forward, device_ids=[self.dist.local_rank] if self.dist.device.type == "cuda" else None
            )
            if self.dist.distributed
            else clip_forward
        )
        if self.cfg.model.compile:
            # After the DDP wrap, as PyTorch and open_clip_train do: Dynamo then splits the graph at DDP's buckets.
            # Only the step runs compiled; validation, FLOP counting and checkpoints use the plain modules.
            LOG.info("model.compile: the first step compiles the forward and backward (a minute or two on a CPU)")
            self.model = torch.compile(self.model)

    # -- the step -----------------------------------------------------------------------------------------------

    def step(self, micro_batches: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """One optimizer step over `accum_steps` micro-batches; returns this rank's loss, a tensor on the device
        (read only at log steps: reading it every step would make the host wait for the GPU every step)."""
        model, dev = self.model, self.dist.device
        autocast = self.encoders.autocast
        micro_batches = [
            (x.to(dev, non_blocking=True, memory_format=self.memory_format), t.to(dev, non_blocking=True))
            for x, t in micro_batches
        ]
        if len(micro_batches) == 1:
            with autocast():
                img, txt, scale, bias = model(*micro_batches[0])
            loss = self.loss_fn(img, txt, scale, bias)
            self.scaler.scale(loss).backward()
        else:
            # Contrastive accumulation (open_clip's scheme): embed every micro-batch without gradients, then redo
            # each one with gradients against the cached features of the others, so every micro-batch sees all
            # the step's negatives. Averaging per-micro-batch losses instead would shrink the negatives and change
            # the objective. The temperature's gradient is taken once, in the last pass.
            with torch.no_grad(), autocast():
                cached = [model(x, t)[:2] for x, t in micro_batches]
            for j, (x, t) in enumerate(micro_batches):
                last = j == len(micro_batches) - 1
                sync = contextlib.nullcontext() if last or not self.dist.distributed else model.no_sync()
                with sync:
                    with autocast():
                        img_j, txt_j, scale, bias = model(x, t)
                    if not last:
                        scale = scale.detach()
                        bias = bias.detach() if bias is not None else None
                    img = torch.cat([img_j if i == j else c[0] for i, c in enumerate(cached)])
                    txt = torch.cat([txt_j if i == j else c[1] for i, c in enumerate(cached)])
                    loss = self.loss_fn(img, txt, scale, bias)
                    self.scaler.scale(loss).backward()
        if self.cfg.optim.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.encoders.model.parameters(), self.cfg.optim.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        with torch.no_grad():
            self.encoders.model.logit_scale.clamp_(0, LOGIT_SCALE_MAX)  # CLIP: logits never exceed 100
        return loss.detach()

    def log_values(self, step: int, samples_per_s: float) -> dict[str, float]:
        values = {"train/logit_scale": self.encoders.logit_scale, "train/epoch": step / self.steps_per_epoch}
        if self.flops_per_sample is not None and self.peak is not None:
            values["train/mfu"] = flops.mfu(self.flops_per_sample, samples_per_s, self.peak, self.dist.world_size)
        return values

    @property
    def can_validate(self) -> bool:
        return self.validator is not None

    def validate(self) -> dict[str, float]:
        with models.evaluating(self.encoders.model):  # back in train mode afterwards, whatever `validate` does
            return self.validator(
                self.encoders, self.val_items, batch_size=max(self.micro_batch, 64), workers=self.cfg.data.workers
            )

    @property
    def has_reference(self) -> bool:
        return self.reference_score is not None

    def reference(self) -> dict[str, float]:
        with models.evaluating(self.encoders.model):
            batch = max(self.micro_batch, 64)
            return self.reference_score(self.encoders, batch_size=batch, workers=self.cfg.data.workers)

    # -- checkpoints ------------------------------------------------------------------------------------------

    def is_checkpoint(self, path: Path) -> bool:
        return checkpoint.is_checkpoint_dir(path)

    def optimizer_state(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
        }

    def load_state(self, path: Path, state: dict[str, Any]) -> None:
        if self.lora is not None:  # the base weights are the initial ones, frozen: only the adapter moved
            lora.load_adapter_state(self.lora, lora.read_adapter(path / lora.ADAPTER_DIR)[2])
        else:
            weights = load_file(str(path / checkpoint.WEIGHTS_NAME), device=str(self.dist.device))
            self.encoders.model.load_state_dict(weights, strict=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])

    def save(self, path: Path, *, provenance: dict[str, Any], train_state: dict[str, Any] | None) -> Path:
        if self.lora is not None:
            return lora.export_merged(self.lora, path, provenance=provenance, train_state=train_state)
        return models.save(self.encoders, path, provenance=provenance, train_state=train_state)

    def provenance(self) -> dict[str, Any]:
        return {
            "initial_weights": self.encoders.source,
            "train_data": self.cfg.data.train_data,
            "train_pairs": len(self.train_items),
            "val_pairs": len(self.val_items),
        }


def read_run_pairs(
    cfg: TrainConfig, source: str, *, own_layout: bool = True, progress: bool = False
) -> tuple[list[Pair], list]:
    """(pairs, bad rows) of one of a run's pair sets as its trainer reads them; with `own_layout` False (keep_data,
    a set of another layout) its format, columns and root are found from the file itself, not the run's flags."""
    dc = cfg.data
    table = read_pairs(
        source,
        format=dc.data_format if own_layout else "auto",
        image_key=dc.image_key if own_layout else None,
        caption_key=dc.caption_key if own_layout else None,
        root=dc.data_root if own_layout else None,
        strict=dc.strict,
        verify_images=dc.verify_images,
        workers=max(1, dc.workers),
        progress=progress,
    )
    return table.pairs, table.bad


def validation_pairs(cfg: TrainConfig, *, progress: bool = False) -> list[Pair]:
    """The pairs a run of `cfg` held out for validation (its val_data, else the same seeded share of its training
    data that `ContrastiveTask.build_data` holds out): what scores "your data" after the run, e.g. for WiSE-FT."""
    if not cfg.data.train_data:
        raise ConfigError("the run names no training data, so it held out no validation pairs")
    if cfg.data.val_data:
        return read_run_pairs(cfg, cfg.data.val_data, progress=progress)[0]
    pairs, _ = read_run_pairs(cfg, cfg.data.train_data, progress=progress)
    return split(pairs, cfg.data.val_fraction, seed=cfg.seed)[1]


def train(
    cfg: TrainConfig,
    *,
    progress: bool = True,
    validate: Validate | None = None,
    reference: finetune.ReferenceScore | None = None,
) -> TrainResult:
    """Train (or resume) according to `cfg`; returns where the final checkpoint is and the last metrics.

    `validate(encoders, val_pairs, batch_size=, workers=) -> metrics` scores the held-out pairs (the CLI passes
    `eval.retrieval.evaluate_pairs`); without it the pairs are still held out but not scored. `reference(encoders,
    batch_size=, workers=) -> metrics` scores what the model knew (the CLI passes `eval.reference.load(specs)`)
    before the first step, at every validation and at the end, logged as `ref/<metric>` beside `val/<metric>`.
    """
    task = ContrastiveTask(cfg, progress=progress, validate=validate, reference=reference)
    return Loop(task, progress=progress).run()
