"""The one training loop: every trainer (`vlm train`, `vlm train-seg`, ...) is a `Task` that this loop drives.

The loop owns what all runs share: the run folder (`vlm.rundir`: config.json, status.json, the stop file,
metrics.jsonl, checkpoints/, final/, result.json), the step plan, the step sampler (data order a pure function of
(seed, epoch)), gradient-accumulation grouping, logging, validation and checkpoint cadence, pruning, the stop file
and time limit, the save on Ctrl-C / stop, and exact resume (config diff, data digest, optimizer and RNG state).
A task owns what is specific to it: its model, data, optimizer step, validation and checkpoint format.

Phases, in order: `setup` (processes, device) -> `build_model` -> `build_data` (the loop plans the steps) ->
`build_optimizer` -> resume (`load_state`) -> `start_training` -> steps -> final validation, checkpoint and model.

Size (~430 lines, over the ~400 guide): the phases above read and write one state (step, sampler, optimizer,
run folder); the parts that stand alone are already modules (`schedule`, `sampler`, `state`, `metrics`).
"""

from __future__ import annotations

import abc
import dataclasses
import datetime as dt
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from vlm import __version__, checkpoint, distributed
from vlm.atomic import atomic_write_json
from vlm.config import RunConfig, from_dict, to_dict
from vlm.errors import CheckpointError, ConfigError, DataError, VLMError
from vlm.rundir import RunDir
from vlm.training.metrics import MetricsLog
from vlm.training.sampler import StepSampler
from vlm.training.state import config_differences, keys_digest, restore_rng, rng_state

LOG = logging.getLogger(__name__)

# `RunConfig` fields a resume may change without changing what is computed (a task adds its own).
RESUME_FREE_FIELDS = frozenset(
    {"resume", "save_every", "keep_last", "val_every", "log_every", "tensorboard", "workers", "time_limit_minutes"}
)
STATUS_EVERY_S = 1.0  # status.json is rewritten at most this often during the loop (and at every phase)


class StopRequested(KeyboardInterrupt):
    """The run was asked to stop (its stop file, or its time limit): it ends as Ctrl-C ends it, saving first."""


@dataclasses.dataclass(frozen=True)
class TrainResult:
    output_dir: Path
    final_checkpoint: Path
    steps: int
    metrics: dict[str, float]  # the last validation metrics (empty without a validation split)


class Task(abc.ABC):
    """One kind of training. The loop sets `dist`, `total_steps` and `steps_per_epoch`; the task sets the rest of
    the attributes below in its `build_*` phases."""

    name = "train"  # the progress bar's label
    items = "items"  # what the training data holds, in messages: "pairs", "samples"
    resume_free: frozenset[str] = RESUME_FREE_FIELDS

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.dist: distributed.DistInfo | None = None
        self.train_items: Sequence[Any] = []  # each with a `.key` (the data digest)
        self.val_items: Sequence[Any] = []
        self.dataset: Dataset | None = None  # indexed by the sampler's (epoch, index) items
        self.scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
        self.total_steps: int = 0
        self.steps_per_epoch: int = 0
        self.accum_steps: int = 1  # micro-batches per optimizer step
        self.workers: int = 0  # DataLoader workers

    # -- phases -------------------------------------------------------------------------------------------------
    @abc.abstractmethod
    def setup(self) -> distributed.DistInfo:
        """Join the processes (or not) and choose the device; checks that need no model or data go here."""

    @abc.abstractmethod
    def build_model(self) -> None: ...

    @abc.abstractmethod
    def build_data(self) -> None:
        """Read the data: set `train_items`, `val_items` and `dataset`."""

    @abc.abstractmethod
    def build_optimizer(self) -> None:
        """Set the optimizer and `scheduler` (`total_steps` is known by now)."""

    def start_training(self) -> None:
        """After the resume, before the first step (e.g. wrap the model in DDP, put it in train mode)."""
        return None

    @abc.abstractmethod
    def step(self, micro_batches: list[Any]) -> torch.Tensor:
        """One optimizer step over `accum_steps` micro-batches; this rank's loss, a detached tensor."""

    def log_values(self, step: int, samples_per_s: float) -> dict[str, float]:
        """Task-specific values logged with the loss, lr and samples/s."""
        return {}

    @abc.abstractmethod
    def validate(self) -> dict[str, float]:
        """Score `val_items` (main process only; called only when there are some); restores the model's modes."""

    @property
    @abc.abstractmethod
    def can_validate(self) -> bool: ...

    # -- checkpoints --------------------------------------------------------------------------------------------
    @abc.abstractmethod
    def is_checkpoint(self, path: Path) -> bool:
        """Whether `path` holds a whole checkpoint of this task's kind (weights and config)."""

    @abc.abstractmethod
    def optimizer_state(self) -> dict[str, Any]:
        """What a resume needs beside weights and RNG: optimizer, scheduler (and scaler) state dicts."""

    @abc.abstractmethod
    def save(self, path: Path, *, provenance: dict[str, Any], train_state: dict[str, Any] | None) -> Path:
        """Write a checkpoint (with `train_state`) or the final model (without) to `path`, atomically."""

    def resume_differences(self, path: Path) -> list[str]:
        """Task-specific reasons the checkpoint at `path` cannot be resumed (beside config and data)."""
        return []

    @abc.abstractmethod
    def load_state(self, path: Path, state: dict[str, Any]) -> None:
        """Load the weights at `path` and the `optimizer_state` part of `state`."""

    def items_per_batch(self) -> int:
        """Rows of each batch from `train_items` (a task that replays a second set draws the rest from it)."""
        return self.cfg.batch_size

    def sampler(self, start: int) -> Sampler | None:
        """The task's own step sampler (e.g. replay, `vlm.finetune.ReplaySampler`); None: `StepSampler`."""
        return None

    @property
    def has_reference(self) -> bool:
        """Whether `reference` scores anything (what the model knew, issue 14)."""
        return False

    def reference(self) -> dict[str, float]:
        """Scores of what the model knew, logged as `ref/<name>` before step 1, at every validation and at the end
        (main process only)."""
        return {}

    def provenance(self) -> dict[str, Any]:
        """Task-specific provenance of a saved model (initial weights, data sizes, ...)."""
        return {}


class Loop:
    """Runs one `Task` to its end (or to a stop), keeping the run folder's status as it goes."""

    def __init__(self, task: Task, *, progress: bool = True):
        self.task = task
        self.cfg = task.cfg
        self.progress = progress
        self.out = Path(self.cfg.output_dir)
        self.run_dir = RunDir(self.out, task.is_checkpoint)
        self.step = 0
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
        task = self.task
        total = task.total_steps or None
        sizes = {"train_pairs": len(task.train_items), "val_pairs": len(task.val_items)} if total else {}
        try:
            self.run_dir.write_status(state, step=self.step, total=total, **sizes, **values)
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
    def _find_resume_point(self) -> Path | None:
        latest = checkpoint.latest(self.out, self.task.is_checkpoint)
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

    def _plan(self) -> None:
        task, cfg = self.task, self.cfg
        n = len(task.train_items)
        if n < cfg.batch_size:
            raise DataError(
                f"only {n} training {task.items} for a batch of {cfg.batch_size}: lower --batch-size or add data"
            )
        per_batch = task.items_per_batch()
        if n < per_batch:
            raise DataError(f"only {n} training {task.items} for {per_batch} of them a batch: add data")
        task.steps_per_epoch = n // per_batch
        task.total_steps = cfg.steps or cfg.epochs * task.steps_per_epoch
        LOG.info(
            "%d training %s, %d validation %s; %d steps of batch %d (%d per epoch)",
            *(n, task.items, len(task.val_items), task.items, task.total_steps, cfg.batch_size, task.steps_per_epoch),
        )

    # -- checkpoints ------------------------------------------------------------------------------------------
    def _resume(self, path: Path | None) -> int:
        if path is None:
            return 0
        task = self.task
        state = checkpoint.load_train_state(path)
        diffs = config_differences(self._as_current_config(state["config"]), to_dict(self.cfg), task.resume_free)
        if state.get("train_keys") != keys_digest(item.key for item in task.train_items):
            diffs.append(f"the training {task.items} differ from the checkpoint's")
        diffs += task.resume_differences(path)
        if diffs:
            raise CheckpointError(f"cannot resume from {path}: " + "; ".join(diffs))
        task.load_state(path, state)
        restore_rng(state["rng"], self.dist.rank, self.dist.device)
        LOG.info("resumed from %s at step %d", path, state["step"])
        return int(state["step"])

    def _as_current_config(self, saved: dict[str, Any]) -> dict[str, Any]:
        """A checkpoint's config read through this code's config class: a setting added since the checkpoint was
        written (absent there) takes its default, which by this project's rule keeps the older behaviour, so the
        run resumes unless the setting was changed. A config this code cannot read is compared as saved."""
        try:
            return to_dict(from_dict(type(self.cfg), saved, "the checkpoint's config"))
        except ConfigError:  # a setting removed or renamed since: the comparison names it
            return saved

    def _provenance(self, step: int, metrics: dict[str, float]) -> dict[str, Any]:
        return {
            "trained_by": f"vlm {__version__} {self.task.name}",
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            **self.task.provenance(),
            "steps": step,
            "seed": self.cfg.seed,
            "batch_size": self.cfg.batch_size,
            "world_size": self.dist.world_size,
            "metrics": metrics,
            "config": to_dict(self.cfg),
        }

    def _save(self, step: int, metrics: dict[str, float], rng: list[dict[str, Any]] | None = None) -> Path:
        """Rank 0 writes the checkpoint; `rng` holds every rank's RNG state (`rng_state`), else rank 0's alone."""
        task = self.task
        train_state = {
            "step": step,
            **task.optimizer_state(),
            "rng": {"per_rank": rng if rng is not None else [rng_state(self.dist.device)]},
            "config": to_dict(self.cfg),
            "train_keys": keys_digest(item.key for item in task.train_items),
        }
        path = self.out / "checkpoints" / checkpoint.step_dir_name(step)
        path = task.save(path, provenance=self._provenance(step, metrics), train_state=train_state)
        checkpoint.prune(self.out, self.cfg.keep_last, task.is_checkpoint)
        return path

    # -- the loop ---------------------------------------------------------------------------------------------
    def _loader(self, start: int) -> DataLoader:
        task, dist = self.task, self.dist
        sampler = task.sampler(start) or StepSampler(
            len(task.dataset), self.cfg.batch_size, dist.rank, dist.world_size, self.cfg.seed, start, task.total_steps
        )
        return DataLoader(
            task.dataset,
            batch_size=self.cfg.batch_size // (dist.world_size * task.accum_steps),
            sampler=sampler,
            num_workers=task.workers,
            pin_memory=dist.device.type == "cuda",
            prefetch_factor=4 if task.workers else None,
            persistent_workers=False,
        )

    def _validate(self) -> dict[str, float]:
        if not self.task.val_items or not self.task.can_validate:
            return {}
        metrics = self.task.validate() if self.dist.is_main else {}
        distributed.barrier(self.dist)
        return metrics

    def _reference(self, log: MetricsLog, step: int) -> dict[str, float]:
        """What the model knew (the task's reference score), written beside the validation as `ref/...`."""
        if not self.task.has_reference:
            return {}
        scores: dict[str, float] = {}
        if self.dist.is_main:
            scores = {f"ref/{k}": v for k, v in self.task.reference().items()}
            log.write(step, scores)
            LOG.info("step %d, what the model knew: %s", step, _fmt(scores))
        distributed.barrier(self.dist)
        return scores

    def run(self) -> TrainResult:
        self._started = time.monotonic()
        self.dist = self.task.dist = self.task.setup()
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
        resume_from = self._find_resume_point()
        torch.manual_seed(self.cfg.seed)  # identical initial weights on every rank (DDP also broadcasts rank 0's)
        try:
            return self._run(resume_from)
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

    def _run(self, resume_from: Path | None) -> TrainResult:
        cfg, task = self.cfg, self.task
        main = self.dist.is_main
        self._status("starting")
        self._check_stop()
        task.build_model()
        self._check_stop()
        self._status("reading data")
        task.build_data()
        self._plan()
        self._check_stop()
        task.build_optimizer()
        cfg = self.cfg = task.cfg  # the task may have filled in what depends on the plan (a fine-tune's warm-up)
        start = self.step = self._resume(resume_from)
        if main:
            self.run_dir.write_config(cfg)  # after the resume check, so a refused resume leaves the run's config as is
        self._status("training")
        task.start_training()
        log = MetricsLog(self.out, enabled=main, tensorboard=cfg.tensorboard, start_step=start)
        metrics: dict[str, float] = {}
        bar = tqdm(total=task.total_steps, initial=start, desc=task.name, disable=not (main and self.progress))
        step, micro, pending = start, [], []
        if start == 0:  # what the model knew before the first step: the baseline of the "what it knew" curve
            metrics = self._reference(log, 0)
        window_start, window_steps = time.perf_counter(), 0
        try:
            for batch in self._loader(start):
                micro.append(batch)
                if len(micro) < task.accum_steps:
                    continue
                loss = task.step(micro)
                micro = []
                step += 1
                self.step = step
                window_steps += 1
                pending.append(loss)
                if step % max(cfg.log_every, 1) == 0 or step == task.total_steps:
                    # Every rank joins the mean: in local-loss mode and for SigLIP each holds only its rows' loss.
                    mean_loss = float(distributed.all_reduce_mean(torch.stack(pending).float().mean(), self.dist))
                    elapsed = time.perf_counter() - window_start
                    if main:
                        samples_per_s = window_steps * cfg.batch_size / max(elapsed, 1e-9)
                        values = {
                            "train/loss": mean_loss,
                            "train/lr": task.scheduler.get_last_lr()[0],
                            "train/samples_per_s": samples_per_s,
                            **task.log_values(step, samples_per_s),
                        }
                        log.write(step, values)
                        bar.set_postfix(loss=f"{values['train/loss']:.3f}", lr=f"{values['train/lr']:.2e}")
                    pending, window_start, window_steps = [], time.perf_counter(), 0
                bar.update(1)
                if cfg.val_every and step % cfg.val_every == 0 and step != task.total_steps:
                    metrics = self._validate()
                    if main and metrics:
                        log.write(step, {f"val/{k}": v for k, v in metrics.items()})
                        LOG.info("step %d validation: %s", step, _fmt(metrics))
                    metrics = {**metrics, **self._reference(log, step)}
                if cfg.save_every and step % cfg.save_every == 0 and step != task.total_steps:
                    rng = distributed.all_gather_object(rng_state(self.dist.device), self.dist)  # every rank joins
                    if main:
                        self._save(step, metrics, rng)
                self._status("training", force=False)
                if step != task.total_steps:
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
        metrics = {**metrics, **self._reference(log, step)}  # the final report holds both
        if main:
            if step > start or checkpoint.latest(self.out, task.is_checkpoint) is None:
                self._save(step, metrics, rng)
            task.save(self.run_dir.final, provenance=self._provenance(step, metrics), train_state=None)
            result = {"steps": step, "metrics": metrics, "final_checkpoint": str(self.run_dir.final)}
            atomic_write_json(self.run_dir.result, result)
        log.close()
        self._status("finished")
        distributed.barrier(self.dist)
        return TrainResult(self.out, self.run_dir.final, step, metrics)


def _fmt(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.4f}" for k, v in metrics.items())
