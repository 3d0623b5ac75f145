"""`vlm train-seg`: train the segmentation decoder on (image, phrase, mask) data over a frozen encoder.

The same machinery as `vlm train` (`vlm.train`): the step sampler (data order a pure function of (seed, epoch)),
warm-up + cosine schedule, AdamW without decay on biases and norms, metrics.jsonl (+ TensorBoard), tqdm progress,
step checkpoints written atomically and pruned, and exact resume (`--resume` continues from the newest checkpoint
and refuses one made with other settings or data). A checkpoint is a decoder directory (`decoder.py`): config.json,
decoder.safetensors, train_state.pt (read with weights_only=True). The run ends with `<output_dir>/final`.

Loss: binary cross-entropy on every pixel plus `dice_weight` x soft Dice (CLIPSeg trains with BCE alone; Dice
helps small objects, which are most of the synthetic shapes).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import logging
import re
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from vlm import __version__, models
from vlm.atomic import atomic_write_json
from vlm.config import to_dict
from vlm.errors import CheckpointError, ConfigError, DataError
from vlm.segment import decoder as dec
from vlm.segment.api import Pixels
from vlm.segment.data import SegDataset, SegSample, read_segmentation, split_by_image
from vlm.train import MetricsLog, StepSampler, lr_at, param_groups

LOG = logging.getLogger(__name__)

# Scores the held-out samples with the decoder (in eval mode), e.g. `eval.segmentation.validate_decoder`: passed by
# the caller, since `eval` is a layer above the trainer.
ValidateDecoder = Callable[[models.Encoders, Sequence[SegSample], dec.SegDecoder], dict[str, float]]

_STEP_DIR = re.compile(r"^step_(\d+)$")
# Settings that may change between a run and its resume without changing the weights it produces (output_dir: a
# run directory may be moved or copied, then resumed).
RESUME_FREE_FIELDS = {
    *("resume", "save_every", "keep_last", "val_every", "log_every", "tensorboard", "workers", "val_limit"),
    *("output_dir", "cache_activations"),
}


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclasses.dataclass
class SegTrainConfig:
    train_data: str | None = dataclasses.field(
        default=None, metadata=_help("phrases.csv (path,mask_path,phrase), a mask folder, or a COCO/RefCOCO JSON")
    )
    val_data: str | None = dataclasses.field(default=None, metadata=_help("separate validation data"))
    data_format: Literal["auto", "csv", "folder", "coco"] = "auto"
    data_root: str | None = dataclasses.field(default=None, metadata=_help("image paths are relative to this"))
    split: str | None = dataclasses.field(default=None, metadata=_help("RefCOCO-style refs: keep this split only"))
    val_fraction: float = dataclasses.field(default=0.1, metadata=_help("share of images held out for validation"))
    val_limit: int = dataclasses.field(default=400, metadata=_help("validation samples scored (0 = all)"))
    model: str = dataclasses.field(default="demo", metadata=_help("the frozen encoder: any `vlm.models.load` name"))
    pretrained: str | None = dataclasses.field(default=None, metadata=_help("pretrained tag or weights file"))
    precision: Literal["auto", "fp32", "amp", "amp_bf16"] = "auto"
    layers: tuple[int, ...] = dataclasses.field(
        default=(),
        metadata=_help(
            "encoder layers read (0-based): ViT blocks, or ResNet stages 0-3 (layer1-layer4); empty = the tower's "
            "default (ViT: 3 evenly spaced blocks; ResNet: 1 2 3)"
        ),
    )
    width: int = dataclasses.field(default=64, metadata=_help("decoder width (CLIPSeg: 64)"))
    heads: int = 4
    input_size: int | None = dataclasses.field(
        default=None, metadata=_help("encoder input side in pixels; none = the model's own")
    )
    output_dir: str = dataclasses.field(default="runs/train-seg", metadata=_help("run directory"))
    batch_size: int = 32
    epochs: int = 10
    steps: int | None = dataclasses.field(default=None, metadata=_help("total steps; overrides epochs"))
    lr: float = dataclasses.field(default=1e-3, metadata=_help("peak learning rate (CLIPSeg: 1e-3)"))
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    grad_clip: float | None = 1.0
    dice_weight: float = dataclasses.field(default=1.0, metadata=_help("weight of the soft Dice term (0 = BCE only)"))
    seed: int = 0
    save_every: int = 500
    keep_last: int = 2
    val_every: int = 500
    log_every: int = 10
    resume: bool = False
    cache_activations: bool = dataclasses.field(
        default=False,
        metadata=_help(
            "keep each image's frozen-encoder activations in memory (float16) after first use: several times "
            "faster on CPU, at layers x tokens x width x 2 bytes per image"
        ),
    )
    workers: int = 2
    tensorboard: bool = False

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.epochs < 1 or (self.steps is not None and self.steps < 1):
            raise ValueError("batch_size, epochs and steps must be positive")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        for name in ("save_every", "val_every", "log_every", "workers", "val_limit", "warmup_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.keep_last < 1:
            raise ValueError(f"keep_last must be >= 1, got {self.keep_last}")


@dataclasses.dataclass(frozen=True)
class SegTrainResult:
    output_dir: Path
    final_checkpoint: Path
    steps: int
    metrics: dict[str, float]


def seg_loss(logits: torch.Tensor, target: torch.Tensor, dice_weight: float) -> torch.Tensor:
    """(B, S, S) logits and (B, S, S) targets in [0, 1] -> BCE (mean over pixels) + dice_weight * soft Dice loss
    (mean over samples; +1 smoothing so that empty masks give a finite loss)."""
    bce = F.binary_cross_entropy_with_logits(logits, target)
    if not dice_weight:
        return bce
    p = torch.sigmoid(logits).flatten(1)
    t = target.flatten(1)
    dice = 1 - (2 * (p * t).sum(1) + 1) / (p.sum(1) + t.sum(1) + 1)
    return bce + dice_weight * dice.mean()


def config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """The settings that differ between a checkpoint's config and now, resume-free ones left out."""
    keys = sorted((set(saved) | set(current)) - RESUME_FREE_FIELDS)
    return [
        f"{k}: checkpoint {saved.get(k)!r} vs now {current.get(k)!r}" for k in keys if saved.get(k) != current.get(k)
    ]


def samples_digest(samples: Sequence[SegSample]) -> str:
    h = hashlib.blake2b(digest_size=8)
    for s in samples:
        h.update(s.key.encode() + b"\0")
    return h.hexdigest()


def step_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        m = _STEP_DIR.match(child.name)
        if m and dec.is_decoder_dir(child) and (child / dec.TRAIN_STATE_NAME).is_file():
            found.append((int(m.group(1)), child))
    return sorted(found)


class SegTrainer:
    """Build everything from a `SegTrainConfig`, then `run()`."""

    def __init__(self, cfg: SegTrainConfig, *, progress: bool = True, validate: ValidateDecoder | None = None):
        self.cfg = cfg
        self.progress = progress
        self.validate = validate
        self.out = Path(cfg.output_dir)

    # -- set-up ---------------------------------------------------------------------------------------------

    def _resume_point(self) -> Path | None:
        found = step_checkpoints(self.out)
        if self.cfg.resume:
            return found[-1][1] if found else None
        if found:
            raise CheckpointError(
                f"{self.out} already holds checkpoints (newest: {found[-1][1].name}); pass --resume to continue "
                f"that run, or choose another --output-dir (nothing was overwritten)"
            )
        return None

    def _build(self) -> None:
        cfg = self.cfg
        torch.manual_seed(cfg.seed)  # an encoder built without weights is then the same in a resumed run
        self.encoders = models.load(cfg.model, cfg.pretrained, precision=cfg.precision)
        self.encoders.model.requires_grad_(False).eval()
        self.device = self.encoders.device
        self.encoder_source = (cfg.model, cfg.pretrained)
        if self.encoders.source.endswith("(randomly initialised)"):
            # Nothing else could rebuild these random weights: keep them beside the run, so the decoder stays usable.
            path = self.out / "encoder"
            if not path.is_dir():
                models.save(
                    self.encoders, path, provenance={"note": f"random encoder of a train-seg run, seed {cfg.seed}"}
                )
            self.encoder_source = (str(path), None)
        spec = dec.make_spec(
            self.encoders, layers=cfg.layers or None, width=cfg.width, heads=cfg.heads, input_size=cfg.input_size
        )
        torch.manual_seed(cfg.seed)
        self.decoder = dec.SegDecoder(spec).to(self.device)
        self.cache: dict[int, list[torch.Tensor]] = {}  # image index -> activations (see cache_activations)
        n = sum(p.numel() for p in self.decoder.parameters())
        LOG.info("decoder on %s: blocks %s, input %d px, %s parameters", self.encoders.source, spec.layers,
                 spec.input_size, f"{n:,}")  # fmt: skip

    def _read(self, source: str) -> list[SegSample]:
        c = self.cfg
        return read_segmentation(source, format=c.data_format, root=c.data_root, split=c.split).samples

    def _build_data(self) -> None:
        cfg = self.cfg
        if not cfg.train_data:
            raise ConfigError("no training data: pass --train-data (phrases.csv, a mask folder or a COCO JSON)")
        samples = self._read(cfg.train_data)
        if cfg.val_data:
            self.train_samples, self.val_samples = samples, self._read(cfg.val_data)
        else:
            self.train_samples, self.val_samples = split_by_image(samples, cfg.val_fraction, cfg.seed)
        if cfg.val_limit:
            self.val_samples = self.val_samples[: cfg.val_limit]
        if len(self.train_samples) < cfg.batch_size:
            raise DataError(f"only {len(self.train_samples)} training samples for a batch of {cfg.batch_size}")
        phrases = sorted({s.phrase for s in self.train_samples})
        self.phrase_index = {p: i for i, p in enumerate(phrases)}
        self.text = torch.cat([self.encoders.encode_text(phrases[i : i + 256]) for i in range(0, len(phrases), 256)])
        size = self.decoder.spec.input_size
        self.dataset = SegDataset(self.train_samples, self.phrase_index, size, Pixels.of(self.encoders))
        self.steps_per_epoch = len(self.train_samples) // cfg.batch_size
        self.total_steps = cfg.steps or cfg.epochs * self.steps_per_epoch
        counts = (len(self.train_samples), len(phrases), len(self.val_samples), self.total_steps, cfg.batch_size)
        LOG.info("%d training samples (%d phrases), %d validation samples; %d steps of batch %d", *counts)

    def _build_optimizer(self) -> None:
        cfg = self.cfg
        self.optimizer = torch.optim.AdamW(param_groups(self.decoder, cfg.weight_decay), lr=cfg.lr)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda s: lr_at(s, lr=1.0, warmup=cfg.warmup_steps, total=self.total_steps, schedule="cosine", min_ratio=0),
        )

    # -- checkpoints ----------------------------------------------------------------------------------------

    def _encoder_record(self) -> dict[str, Any]:
        return dec.encoder_record(self.encoders, *self.encoder_source)

    def _provenance(self, step: int, metrics: dict[str, float]) -> dict[str, Any]:
        return {
            "trained_by": f"vlm {__version__} train-seg",
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "train_data": self.cfg.train_data,
            "train_samples": len(self.train_samples),
            "val_samples": len(self.val_samples),
            "steps": step,
            "metrics": metrics,
            "config": to_dict(self.cfg),
        }

    def _save(self, step: int, metrics: dict[str, float]) -> Path:
        state = {
            "step": step,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": {"torch": torch.get_rng_state()},
            "config": to_dict(self.cfg),
            "train_keys": samples_digest(self.train_samples),
        }
        path = self.out / "checkpoints" / f"step_{step:08d}"
        dec.save_decoder(path, self.decoder, self._encoder_record(), provenance=self._provenance(step, metrics),
                         train_state=state)  # fmt: skip
        for _, old in step_checkpoints(self.out)[: -self.cfg.keep_last]:
            shutil.rmtree(old, ignore_errors=True)
        return path

    def _resume(self, path: Path | None) -> int:
        if path is None:
            return 0
        file = path / dec.TRAIN_STATE_NAME
        try:
            state = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as e:  # a truncated or foreign file; torch raises several types here
            raise CheckpointError(f"cannot read {file}: {e}") from e
        diffs = config_differences(state["config"], to_dict(self.cfg))
        if state.get("train_keys") != samples_digest(self.train_samples):
            diffs.append("the training samples differ from the checkpoint's")
        record = dec.read_decoder_config(path)
        if record["encoder"]["fingerprint"] != self.encoders.fingerprint:
            diffs.append("the encoder's weights differ from the checkpoint's")
        if diffs:
            raise CheckpointError(f"cannot resume from {path}: " + "; ".join(diffs))
        self.decoder.load_state_dict(load_file(str(path / dec.WEIGHTS_NAME), device=str(self.device)), strict=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"]["torch"])
        LOG.info("resumed from %s at step %d", path, state["step"])
        return int(state["step"])

    # -- the loop -------------------------------------------------------------------------------------------

    def _loader(self, start: int) -> DataLoader:
        cfg = self.cfg
        sampler = StepSampler(len(self.dataset), cfg.batch_size, 0, 1, cfg.seed, start, self.total_steps)
        return DataLoader(
            self.dataset,
            batch_size=cfg.batch_size,
            sampler=sampler,
            num_workers=cfg.workers,
            pin_memory=self.device.type == "cuda",
            prefetch_factor=4 if cfg.workers else None,
        )

    def _activations(self, pixels: torch.Tensor, images: torch.Tensor) -> list[torch.Tensor]:
        """The frozen encoder's activations for a batch, from the cache where present (then computed once)."""
        visual, layers = self.encoders.model.visual, self.decoder.spec.layers
        if not self.cfg.cache_activations:
            with self.encoders.autocast():
                return dec.encoder_activations(visual, pixels, layers, self.decoder.spec.patch_size)[0]
        keys = images.tolist()
        missing = sorted({i for i, k in enumerate(keys) if k not in self.cache}, key=keys.__getitem__)
        if missing:
            with self.encoders.autocast():
                fresh, _ = dec.encoder_activations(visual, pixels[missing], layers, self.decoder.spec.patch_size)
            for j, i in enumerate(missing):
                self.cache.setdefault(keys[i], [a[j].to("cpu", torch.float16) for a in fresh])
        return [torch.stack([self.cache[k][n] for k in keys]).to(self.device).float() for n in range(len(layers))]

    def _step(self, pixels: torch.Tensor, target: torch.Tensor, phrase: torch.Tensor, images: torch.Tensor) -> float:
        pixels, target = pixels.to(self.device, non_blocking=True), target.to(self.device, non_blocking=True)
        acts = self._activations(pixels, images)
        grid = (pixels.shape[-2] // self.decoder.spec.patch_size, pixels.shape[-1] // self.decoder.spec.patch_size)
        logits = self.decoder(acts, grid, self.text[phrase.to(self.device)])
        loss = seg_loss(logits, target, self.cfg.dice_weight)
        loss.backward()
        if self.cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.decoder.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return float(loss.detach())

    def _validate(self) -> dict[str, float]:
        if not self.val_samples or self.validate is None:
            return {}
        self.decoder.eval()
        metrics = self.validate(self.encoders, self.val_samples, self.decoder)
        self.decoder.train()
        return metrics

    def run(self) -> SegTrainResult:
        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        resume_from = self._resume_point()
        self._build()
        self._build_data()
        self._build_optimizer()
        start = self._resume(resume_from)
        atomic_write_json(self.out / "config.json", to_dict(cfg))
        log = MetricsLog(self.out, enabled=True, tensorboard=cfg.tensorboard, start_step=start)
        self.decoder.train()
        metrics: dict[str, float] = {}
        bar = tqdm(total=self.total_steps, initial=start, desc="train-seg", disable=not self.progress)
        step, pending, t0 = start, [], time.perf_counter()
        try:
            for pixels, target, phrase, images in self._loader(start):
                pending.append(self._step(pixels, target, phrase, images))
                step += 1
                bar.update(1)
                if step % max(cfg.log_every, 1) == 0 or step == self.total_steps:
                    elapsed = time.perf_counter() - t0
                    values = {
                        "train/loss": sum(pending) / len(pending),
                        "train/lr": self.scheduler.get_last_lr()[0],
                        "train/samples_per_s": len(pending) * cfg.batch_size / max(elapsed, 1e-9),
                    }
                    log.write(step, values)
                    bar.set_postfix(loss=f"{values['train/loss']:.4f}")
                    pending, t0 = [], time.perf_counter()
                if cfg.val_every and step % cfg.val_every == 0 and step != self.total_steps:
                    metrics = self._validate()
                    log.write(step, {f"val/{k}": v for k, v in metrics.items()})
                    LOG.info("step %d validation: %s", step, metrics)
                if cfg.save_every and step % cfg.save_every == 0 and step != self.total_steps:
                    self._save(step, metrics)
        except KeyboardInterrupt:
            if step > start:
                LOG.warning("interrupted: saving step %d so that --resume continues from here", step)
                self._save(step, metrics)
            raise
        finally:
            bar.close()
        metrics = self._validate()
        if metrics:
            log.write(step, {f"val/{k}": v for k, v in metrics.items()})
            LOG.info("final validation: %s", metrics)
        log.close()
        if step > start or not step_checkpoints(self.out):
            self._save(step, metrics)
        final = dec.save_decoder(self.out / "final", self.decoder, self._encoder_record(),
                                 provenance=self._provenance(step, metrics))  # fmt: skip
        atomic_write_json(self.out / "result.json", {"steps": step, "metrics": metrics, "final_checkpoint": str(final)})
        return SegTrainResult(self.out, final, step, metrics)


def train_decoder(
    cfg: SegTrainConfig, *, progress: bool = True, validate: ValidateDecoder | None = None
) -> SegTrainResult:
    """Train (or resume) a segmentation decoder according to `cfg`.

    `validate(encoders, val_samples, decoder) -> metrics` scores the held-out samples (the CLI passes
    `eval.segmentation.validate_decoder`); without it they are held out but not scored.
    """
    return SegTrainer(cfg, progress=progress, validate=validate).run()
