"""The CLIP-style contrastive trainer: symmetric InfoNCE (or SigLIP) on the user's own image-text pairs.

One `Trainer` with named steps instead of one long `main`: set up processes, build the model, read the data, build
the optimizer and schedule, resume, then loop (step, log, validate, checkpoint). Launch one process with
`vlm train ...`, or several with `torchrun --nproc_per_node N -m vlm train ...` (NCCL on GPUs, gloo on CPU).

Exact resume: a checkpoint holds weights, optimizer, schedule, grad-scaler and RNG state and the step; the data
order is a pure function of (seed, epoch) and every sample's randomness of (seed, epoch, index), so a resumed run
replays the same batches as an uninterrupted one, whatever the number of DataLoader workers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import logging
import math
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors.torch import load_file
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Sampler
from tqdm.auto import tqdm

from vlm import __version__, checkpoint, distributed, finetune, flops, models
from vlm.atomic import atomic_write_json, atomic_write_text
from vlm.config import TrainConfig, to_dict
from vlm.data import Pair, PairDataset, read_pairs, split
from vlm.errors import CheckpointError, ConfigError, DataError, VLMError
from vlm.loss import LOGIT_SCALE_MAX, SIGLIP_LOGIT_BIAS_INIT, SIGLIP_LOGIT_SCALE_INIT, ClipLoss, SigLipLoss
from vlm.rundir import RunDir

LOG = logging.getLogger(__name__)

# Fields that may change between a run and its resume without changing what is being computed.
RESUME_FREE_FIELDS = {
    "resume", "save_every", "keep_last", "val_every", "log_every", "tensorboard", "workers", "strict", "peak_tflops",
    "dist_timeout_minutes", "time_limit_minutes", "reference",
}  # fmt: skip
STATUS_EVERY_S = 1.0  # status.json is rewritten at most this often during the loop (and at every phase)


class StopRequested(KeyboardInterrupt):
    """The run was asked to stop (its stop file, or its time limit): it ends as Ctrl-C ends it, saving first."""


class Validate(Protocol):
    """Scores held-out pairs, e.g. `eval.retrieval.evaluate_pairs`: the caller passes it, the trainer (a lower layer
    than `eval`) does not import it. It runs with the model in eval mode; the trainer restores the modes after."""

    def __call__(
        self, encoders: models.Encoders, pairs: Sequence[Pair], *, batch_size: int, workers: int
    ) -> dict[str, float]: ...


@dataclasses.dataclass(frozen=True)
class TrainResult:
    output_dir: Path
    final_checkpoint: Path
    steps: int
    metrics: dict[str, float]  # the last validation metrics (empty without a validation split)


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


def lr_at(step: int, *, lr: float, warmup: int, total: int, schedule: str, min_ratio: float) -> float:
    """Linear warm-up to `lr` over `warmup` steps, then cosine decay to `min_ratio * lr` at `total` (or constant)."""
    if step < warmup:
        return lr * (step + 1) / warmup
    if schedule == "constant":
        return lr
    progress = (step - warmup) / max(1, total - warmup)
    floor = lr * min_ratio
    return floor + 0.5 * (lr - floor) * (1.0 + math.cos(math.pi * min(1.0, progress)))


class StepSampler(Sampler[tuple[int, int]]):
    """Yields this rank's `(epoch, index)` items for steps `start_step .. total_steps-1`, in order.

    Global step s reads rows `pos*B .. (pos+1)*B` of the permutation of epoch `s // steps_per_epoch` (seeded by
    (seed, epoch)); rank r takes its contiguous slice of that global batch. Tail samples that do not fill a batch are
    left out of that epoch (a contrastive batch must be full) and come back in another order next epoch.
    """

    def __init__(self, n: int, global_batch: int, rank: int, world_size: int, seed: int, start: int, total: int):
        self.n, self.global_batch, self.rank, self.world_size = n, global_batch, rank, world_size
        self.seed, self.start, self.total = seed, start, total
        self.steps_per_epoch = n // global_batch
        self.local_batch = global_batch // world_size

    def __len__(self) -> int:
        return (self.total - self.start) * self.local_batch

    def __iter__(self) -> Iterator[tuple[int, int]]:
        perm, perm_epoch = None, -1
        for step in range(self.start, self.total):
            epoch, pos = divmod(step, self.steps_per_epoch)
            if epoch != perm_epoch:
                g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
                perm, perm_epoch = torch.randperm(self.n, generator=g), epoch
            lo = pos * self.global_batch + self.rank * self.local_batch
            for i in perm[lo : lo + self.local_batch].tolist():
                yield epoch, i


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


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay matrices and embeddings (ndim >= 2); never biases, norms, the temperature or the SigLIP bias."""
    decay, no_decay = [], []
    for _, p in sorted(model.named_parameters()):
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def keys_digest(pairs: Sequence[Pair]) -> str:
    """Identity of a training split, so a resume on different data is refused."""
    h = hashlib.blake2b(digest_size=8)
    for p in pairs:
        h.update(p.key.encode())
        h.update(b"\0")
    return h.hexdigest()


def _config_differences(saved: dict[str, Any], current: dict[str, Any], prefix: str = "") -> list[str]:
    diffs = []
    for key in sorted(set(saved) | set(current)):
        if key in RESUME_FREE_FIELDS:
            continue
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += _config_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            diffs.append(f"{prefix}{key}: checkpoint {a!r} vs now {b!r}")
    return diffs


class MetricsLog:
    """metrics.jsonl (one JSON object per line) and, optionally, TensorBoard; written by the main process only."""

    def __init__(self, output_dir: Path, *, enabled: bool, tensorboard: bool, start_step: int):
        self.enabled = enabled
        self.path = RunDir(output_dir).metrics
        self.writer = None
        if not enabled:
            return
        if start_step > 0 and self.path.exists():
            self._truncate_after(start_step)  # a resumed run rewrites what came after its checkpoint
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(output_dir / "tensorboard"), purge_step=start_step or None)

    def _truncate_after(self, step: int) -> None:
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    kept.append(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a crash
        atomic_write_text(self.path, "".join(k + "\n" for k in kept))

    def write(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps({"step": step, **values}) + "\n")
        if self.writer is not None:
            for k, v in values.items():
                self.writer.add_scalar(k, v, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class Trainer:
    """Build everything from a `TrainConfig`, then `run()`."""

    def __init__(
        self,
        cfg: TrainConfig,
        *,
        progress: bool = True,
        validate: Validate | None = None,
        reference: finetune.ReferenceScore | None = None,
    ):
        self.cfg = cfg
        self.progress = progress
        self.validate = validate
        self.reference = reference
        self.out = Path(cfg.output_dir)
        self.run_dir = RunDir(self.out)
        self.step, self.total_steps = 0, None
        self.train_pairs, self.val_pairs, self.keep_pairs = [], [], []
        self._owns_status = False  # set once the folder is known to be this run's (never a refused run's status)
        self._status_at = 0.0
        self._started = time.monotonic()

    # -- status and stop --------------------------------------------------------------------------------------

    def _status(self, state: str, *, force: bool = True, **values: Any) -> None:
        """Rewrite status.json (main process only); within the loop at most every STATUS_EVERY_S seconds."""
        if not self._owns_status or not self.dist.is_main:
            return
        now = time.monotonic()
        if not force and now - self._status_at < STATUS_EVERY_S:
            return
        self._status_at = now
        pairs = {"train_pairs": len(self.train_pairs), "val_pairs": len(self.val_pairs)} if self.total_steps else {}
        try:
            self.run_dir.write_status(state, step=self.step, total=self.total_steps, **pairs, **values)
        except OSError as e:  # a full disk must not turn a finished run into a crash; the log still says it
            LOG.warning("cannot write %s: %s", self.run_dir.status_file, e)

    def _check_stop(self) -> None:
        """Raise `StopRequested` once the stop file exists or the time limit has passed; every rank agrees."""
        reason = ""
        if self.dist.is_main:
            limit = self.cfg.time_limit_minutes
            if self.run_dir.stop_requested():
                reason = "stopped on request"
            elif limit is not None and time.monotonic() - self._started > limit * 60:
                reason = f"stopped at its time limit ({limit:g} min)"
        if self.dist.distributed:
            flag = torch.tensor(1.0 if reason else 0.0, device=self.dist.device)
            if float(distributed.all_reduce_mean(flag, self.dist)) > 0:
                reason = reason or "stopped on request"
        if reason:
            raise StopRequested(reason)

    # -- set-up -----------------------------------------------------------------------------------------------

    def _setup(self) -> None:
        cfg = self.cfg
        self.dist = distributed.init(timeout=dt.timedelta(minutes=cfg.dist_timeout_minutes))
        if self.dist.device.type == "cuda":
            # As open_clip_train: TF32 matrix products and convolutions (fp32 runs 3-8x faster on Ampere and later,
            # at bf16-like input precision), and cuDNN picking the fastest convolution for the fixed input size.
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
            torch.backends.cudnn.benchmark = True
        per_step = self.dist.world_size * cfg.optim.accum_steps
        if cfg.batch_size % per_step:
            raise ConfigError(f"batch_size {cfg.batch_size} must be divisible by processes x accum_steps = {per_step}")
        self.micro_batch = cfg.batch_size // per_step
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
        self.resume_from = self._find_resume_point()
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank (DDP also broadcasts rank 0's)

    def _find_resume_point(self) -> Path | None:
        latest = checkpoint.latest(self.out)
        if self.cfg.resume:
            if latest is None:
                LOG.info("--resume: no checkpoint in %s yet, starting from step 0", self.out)
            self._owns_status = True
            return latest
        if latest is not None:
            raise CheckpointError(
                f"{self.out} already holds checkpoints (newest: {latest.name}); pass --resume to continue that run, "
                f"or choose another --output-dir (nothing was overwritten)"
            )
        self._owns_status = True
        return None

    def _build_model(self) -> None:
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

    def _read(self, source: str) -> tuple[list[Pair], list]:
        dc = self.cfg.data
        table = read_pairs(
            source,
            format=dc.data_format,
            image_key=dc.image_key,
            caption_key=dc.caption_key,
            root=dc.data_root,
            strict=dc.strict,
            verify_images=dc.verify_images,
            workers=max(1, dc.workers),
            progress=self.progress,
        )
        return table.pairs, table.bad

    def _build_data(self) -> None:
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
            keep_pairs, keep_bad = self._read(dc.keep_data) if dc.keep_data else ([], [])
            self._write_bad_rows(bad + val_bad + keep_bad)
            loaded = (train_pairs, val_pairs, keep_pairs)
        else:
            loaded = None
        self.train_pairs, self.val_pairs, self.keep_pairs = distributed.broadcast_object(loaded, self.dist)
        per_batch = new_per_batch(cfg)
        if len(self.train_pairs) < per_batch:
            raise DataError(
                f"only {len(self.train_pairs)} training pairs for a batch of {per_batch}: lower --batch-size "
                f"or add data"
            )
        self.steps_per_epoch = len(self.train_pairs) // per_batch
        self.total_steps = cfg.steps or cfg.epochs * self.steps_per_epoch
        if cfg.optim.warmup_steps is None:  # the recipe's warm-up depends on the run's length, known only now
            warmup = finetune.warmup_steps(finetune.recipe_for(cfg), self.total_steps)
            self.cfg = cfg = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, warmup_steps=warmup))
        transform = self.encoders.preprocess_train if dc.augment else self.encoders.preprocess
        pairs = self.train_pairs + self.keep_pairs  # keep pairs follow: ReplaySampler's indices from len(train)
        self.dataset = PairDataset(pairs, transform, self.encoders.tokenizer, seed=cfg.seed)
        LOG.info(
            "%d training pairs, %d validation pairs; %d steps of batch %d (%d per epoch)",
            len(self.train_pairs),
            len(self.val_pairs),
            self.total_steps,
            cfg.batch_size,
            self.steps_per_epoch,
        )

    def _write_bad_rows(self, bad: list) -> None:
        if not bad:
            return
        lines = "".join(json.dumps(dataclasses.asdict(b)) + "\n" for b in bad)
        atomic_write_text(self.run_dir.bad_rows, lines)
        LOG.warning("%d bad rows skipped; see %s", len(bad), self.run_dir.bad_rows)

    def _build_optimizer(self) -> None:
        oc = self.cfg.optim
        groups = param_groups(self.encoders.model, oc.weight_decay)
        # The fused kernel updates every tensor in one pass: on CPU 6x faster than the default per-tensor loop
        # (7 vs 44 ms a step for vlm-small), which is a tenth of a small model's whole step.
        fused = all(p.device.type in ("cpu", "cuda") for g in groups for p in g["params"])
        self.optimizer = torch.optim.AdamW(
            groups, lr=oc.lr, betas=(oc.beta1, oc.beta2), eps=oc.eps, fused=fused or None
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda s: lr_at(
                s,
                lr=1.0,
                warmup=oc.warmup_steps,
                total=self.total_steps,
                schedule=oc.schedule,
                min_ratio=oc.min_lr_ratio,
            ),
        )
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

    # -- checkpoints ------------------------------------------------------------------------------------------

    def _resume(self) -> int:
        if self.resume_from is None:
            return 0
        state = checkpoint.load_train_state(self.resume_from)
        diffs = _config_differences(state["config"], to_dict(self.cfg))
        if state.get("train_keys") != keys_digest(self.train_pairs + self.keep_pairs):
            diffs.append("the training pairs differ from the checkpoint's")
        if diffs:
            raise CheckpointError(f"cannot resume from {self.resume_from}: " + "; ".join(diffs))
        weights = load_file(str(self.resume_from / checkpoint.WEIGHTS_NAME), device=str(self.dist.device))
        self.encoders.model.load_state_dict(weights, strict=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        restore_rng(state["rng"], self.dist.rank, self.dist.device)
        LOG.info("resumed from %s at step %d", self.resume_from, state["step"])
        return int(state["step"])

    def _provenance(self, step: int, metrics: dict[str, float]) -> dict[str, Any]:
        return {
            "trained_by": f"vlm {__version__}",
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "initial_weights": self.encoders.source,
            "train_data": self.cfg.data.train_data,
            "train_pairs": len(self.train_pairs),
            "val_pairs": len(self.val_pairs),
            "steps": step,
            "seed": self.cfg.seed,
            "batch_size": self.cfg.batch_size,
            "world_size": self.dist.world_size,
            "metrics": metrics,
            "config": to_dict(self.cfg),
        }

    def _save(self, step: int, metrics: dict[str, float], rng: list[dict[str, Any]] | None = None) -> Path:
        """Rank 0 writes the checkpoint; `rng` holds every rank's RNG state (`rng_states`), else rank 0's alone."""
        train_state = {
            "step": step,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": {"per_rank": rng if rng is not None else [rng_state(self.dist.device)]},
            "config": to_dict(self.cfg),
            "train_keys": keys_digest(self.train_pairs + self.keep_pairs),
        }
        path = models.save(
            self.encoders,
            self.out / "checkpoints" / checkpoint.step_dir_name(step),
            provenance=self._provenance(step, metrics),
            train_state=train_state,
        )
        checkpoint.prune(self.out, self.cfg.keep_last)
        return path

    # -- the loop ---------------------------------------------------------------------------------------------

    def _loader(self, start_step: int) -> DataLoader:
        cfg, rank, world = self.cfg, self.dist.rank, self.dist.world_size
        if self.keep_pairs:
            keep = cfg.batch_size - new_per_batch(cfg)
            n_new, n_keep = len(self.train_pairs), len(self.keep_pairs)
            sampler = finetune.ReplaySampler(
                n_new, n_keep, cfg.batch_size, keep, rank, world, cfg.seed, start_step, self.total_steps
            )
        else:
            sampler = StepSampler(
                len(self.dataset), cfg.batch_size, rank, world, cfg.seed, start_step, self.total_steps
            )
        workers = self.cfg.data.workers
        return DataLoader(
            self.dataset,
            batch_size=self.micro_batch,
            sampler=sampler,
            num_workers=workers,
            pin_memory=self.dist.device.type == "cuda",
            prefetch_factor=4 if workers else None,
            persistent_workers=False,
        )

    def _train_step(self, micro_batches: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """One optimizer step over `accum_steps` micro-batches; returns this rank's loss, a tensor on the device
        (read only at log steps: reading it every step would make the host wait for the GPU every step)."""
        model, dev = self.model, self.dist.device
        autocast = self.encoders.autocast
        micro_batches = [(x.to(dev, non_blocking=True), t.to(dev, non_blocking=True)) for x, t in micro_batches]
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

    def _validate(self) -> dict[str, float]:
        if not self.val_pairs or self.validate is None:
            return {}
        metrics: dict[str, float] = {}
        if self.dist.is_main:
            with models.evaluating(self.encoders.model):  # back in train mode afterwards, whatever `validate` does
                metrics = self.validate(
                    self.encoders,
                    self.val_pairs,
                    batch_size=max(self.micro_batch, 64),
                    workers=self.cfg.data.workers,
                )
        distributed.barrier(self.dist)
        return metrics

    def _score_reference(self, log: MetricsLog, step: int) -> dict[str, float]:
        """What the model knew (`reference`), written beside the validation as `ref/...` (main process)."""
        if self.reference is None:
            return {}
        scores: dict[str, float] = {}
        if self.dist.is_main:
            with models.evaluating(self.encoders.model):
                batch = max(self.micro_batch, 64)
                scores = self.reference(self.encoders, batch_size=batch, workers=self.cfg.data.workers)
            scores = {f"ref/{k}": v for k, v in scores.items()}
            log.write(step, scores)
            LOG.info("step %d, what the model knew: %s", step, _fmt(scores))
        distributed.barrier(self.dist)
        return scores

    def run(self) -> TrainResult:
        self._started = time.monotonic()
        self._setup()
        try:
            return self._run()
        except KeyboardInterrupt as e:  # Ctrl-C / the app's Stop (SIGINT), the stop file, the time limit, the lifeline
            asked = self.run_dir.stop_requested()  # the app's Stop sends SIGINT beside the file
            self._status("stopped", message=str(e) or ("stopped on request" if asked else "interrupted"))
            raise
        except VLMError as e:
            self._status("failed", error=str(e))
            raise
        except Exception as e:
            self._status("failed", error=f"{type(e).__name__}: {e}")
            raise
        finally:
            distributed.cleanup(self.dist)

    def _run(self) -> TrainResult:
        self.cfg, notes = finetune.resolve(self.cfg)  # fine-tune or from-scratch defaults for what was left unset
        for note in notes:
            LOG.info("%s", note)
        cfg = self.cfg
        main = self.dist.is_main
        self._status("starting")
        self._check_stop()
        self._build_model()
        self._check_stop()
        self._status("reading data")
        self._build_data()
        self._check_stop()
        self._build_optimizer()
        start = self.step = self._resume()
        cfg = self.cfg  # with the warm-up the run's length decided
        if main:
            self.run_dir.write_config(cfg)  # after the resume check, so a refused resume leaves the run's config as is
        self._status("training")
        clip_forward = self.forward
        self.model = (
            DistributedDataParallel(
                clip_forward, device_ids=[self.dist.local_rank] if self.dist.device.type == "cuda" else None
            )
            if self.dist.distributed
            else clip_forward
        )
        log = MetricsLog(self.out, enabled=main, tensorboard=cfg.tensorboard, start_step=start)
        metrics: dict[str, float] = {}
        bar = tqdm(total=self.total_steps, initial=start, desc="train", disable=not (main and self.progress))
        step, micro, pending = start, [], []
        if start == 0:  # what the model knew before the first step: the baseline of the "what it knew" curve
            metrics = self._score_reference(log, 0)
        window_start, window_steps = time.perf_counter(), 0
        try:
            for batch in self._loader(start):
                micro.append(batch)
                if len(micro) < cfg.optim.accum_steps:
                    continue
                loss = self._train_step(micro)
                micro = []
                step += 1
                self.step = step
                window_steps += 1
                pending.append(loss)
                if step % max(cfg.log_every, 1) == 0 or step == self.total_steps:
                    # Every rank joins the mean: in local-loss mode and for SigLIP each holds only its rows' loss.
                    mean_loss = float(distributed.all_reduce_mean(torch.stack(pending).float().mean(), self.dist))
                    elapsed = time.perf_counter() - window_start
                    if main:
                        values = {
                            "train/loss": mean_loss,
                            "train/lr": self.scheduler.get_last_lr()[0],
                            "train/logit_scale": self.encoders.logit_scale,
                            "train/samples_per_s": window_steps * cfg.batch_size / max(elapsed, 1e-9),
                            "train/epoch": step / self.steps_per_epoch,
                        }
                        if self.flops_per_sample is not None and self.peak is not None:
                            values["train/mfu"] = flops.mfu(
                                self.flops_per_sample, values["train/samples_per_s"], self.peak, self.dist.world_size
                            )
                        log.write(step, values)
                        bar.set_postfix(loss=f"{values['train/loss']:.3f}", lr=f"{values['train/lr']:.2e}")
                    pending, window_start, window_steps = [], time.perf_counter(), 0
                bar.update(1)
                if cfg.val_every and step % cfg.val_every == 0 and step != self.total_steps:
                    metrics = self._validate()
                    if main and metrics:
                        log.write(step, {f"val/{k}": v for k, v in metrics.items()})
                        LOG.info("step %d validation: %s", step, _fmt(metrics))
                    metrics = {**metrics, **self._score_reference(log, step)}
                if cfg.save_every and step % cfg.save_every == 0 and step != self.total_steps:
                    rng = distributed.all_gather_object(rng_state(self.dist.device), self.dist)  # every rank joins
                    if main:
                        self._save(step, metrics, rng)
                self._status("training", force=False)
                if step != self.total_steps:
                    self._check_stop()
        except KeyboardInterrupt:
            self._status("stopping")
            if main and step > start:
                LOG.warning("interrupted: saving step %d so that --resume continues from here", step)
                self._save(step, metrics)
            raise
        finally:
            bar.close()
        metrics = self._validate()
        rng = distributed.all_gather_object(rng_state(self.dist.device), self.dist)
        if main and metrics:
            log.write(step, {f"val/{k}": v for k, v in metrics.items()})
            LOG.info("final validation: %s", _fmt(metrics))
        metrics = {**metrics, **self._score_reference(log, step)}  # the final report holds both
        if main:
            if step > start or checkpoint.latest(self.out) is None:
                self._save(step, metrics, rng)
            models.save(self.encoders, self.run_dir.final, provenance=self._provenance(step, metrics))
            result = {"steps": step, "metrics": metrics, "final_checkpoint": str(self.run_dir.final)}
            atomic_write_json(self.run_dir.result, result)
        log.close()
        self._status("finished")
        distributed.barrier(self.dist)
        return TrainResult(self.out, self.run_dir.final, step, metrics)


def rng_state(device: torch.device) -> dict[str, Any]:
    """This process's RNG state: the CPU generator's and, on a GPU, that one device's (not every visible GPU's)."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }


def restore_rng(saved: dict[str, Any], rank: int, device: torch.device) -> None:
    """Restore rank `rank`'s RNG state from a checkpoint's `rng` record.

    Each rank saved its own state (`per_rank`), so rank r gets its own CUDA state back, and a resume that sees fewer
    GPUs works (the state goes to this rank's device only). A rank the checkpoint has no state for (more processes
    than before, or an interrupted run that only rank 0 saved) keeps its seeded state, with a warning. Checkpoints
    from before per-rank states ({"torch", "cuda": one state per visible GPU}) are read too."""
    if "per_rank" in saved:
        entries = saved["per_rank"]
        if rank >= len(entries):
            LOG.warning("the checkpoint holds no RNG state for rank %d; it keeps its seeded state", rank)
            return
        entry = entries[rank]
    else:
        cuda = saved.get("cuda") or []
        index = (device.index or 0) if device.type == "cuda" else 0
        entry = {"torch": saved["torch"], "cuda": cuda[index] if index < len(cuda) else None}
    torch.set_rng_state(entry["torch"])
    if device.type == "cuda" and entry.get("cuda") is not None:
        torch.cuda.set_rng_state(entry["cuda"], device)


def _fmt(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.4f}" for k, v in metrics.items())


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
    return Trainer(cfg, progress=progress, validate=validate, reference=reference).run()
