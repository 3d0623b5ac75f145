"""The run folder of `vlm train` and `vlm train-seg` (`vlm.training.Loop`): the one module that knows its layout.
The trainer writes through it; the app (and anything else watching a run) reads through it, so progress, errors and
the final model never depend on log lines.

    <run>/config.json       the run's `TrainConfig` (the app writes it, then starts `vlm train --config` on it)
    <run>/status.json       state, step, total steps, pairs, error, paths: rewritten atomically as the run goes
    <run>/process.json      the trainer's pid (and its start time, so a reused pid is not taken for it)
    <run>/stop              present = stop asked for; the trainer checks it at every phase and every step
    <run>/metrics.jsonl     one JSON object per logged step ({"step": 12, "train/loss": ...})
    <run>/bad_rows.jsonl    rows of the data that were skipped, one JSON object each
    <run>/checkpoints/step_*   resumable step checkpoints;  <run>/final/  the finished model
    <run>/result.json       steps and last metrics of a finished run
    <run>/train.log         the trainer's output (for people; nothing parses it)
    <run>/upload/           a dataset uploaded to the app for this run
    <run>/wise_ft/          WiSE-FT of the finished run (`eval.wise_run`): wise_ft.json (the α sweep, cached),
                            frontier.png, alpha-<α>/ (the model at an α, a checkpoint folder)

States, in order: starting, reading data, training, stopping, then one of finished, stopped, failed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vlm import checkpoint
from vlm.atomic import atomic_write_json, atomic_write_text
from vlm.config import TrainConfig, from_dict, load_file, to_dict
from vlm.processes import process_alive, start_ticks

STATES = ("starting", "reading data", "training", "stopping", "finished", "stopped", "failed")
ENDED = ("finished", "stopped", "failed")


@dataclass(frozen=True)
class Status:
    """What status.json holds."""

    state: str
    step: int = 0
    total: int | None = None  # optimizer steps planned, once the data has been read
    train_pairs: int | None = None
    val_pairs: int | None = None
    error: str = ""  # why a failed run failed, in words
    message: str = ""  # a note on an ended run, e.g. why it stopped
    paths: dict[str, str] = field(default_factory=dict)  # checkpoint / final / metrics / bad_rows, relative
    updated: float = 0.0  # time.time() of the write

    def __post_init__(self) -> None:
        if self.state not in STATES:
            raise ValueError(f"unknown run state {self.state!r}; one of {list(STATES)}")

    @property
    def ended(self) -> bool:
        return self.state in ENDED


@dataclass(frozen=True)
class Process:
    """What process.json holds: enough to tell whether the trainer is still alive, and to signal it."""

    pid: int
    start_ticks: int | None = None  # /proc/<pid>/stat field 22 on Linux; None elsewhere

    def alive(self) -> bool:
        return process_alive(self.pid, self.start_ticks)


class RunDir:
    """One run folder. Every path of the layout is a property; reads tolerate a run being written."""

    def __init__(self, path: str | Path, is_checkpoint: Callable[[Path], bool] = checkpoint.is_checkpoint_dir):
        self.path = Path(path)
        self.is_checkpoint = is_checkpoint  # what a whole checkpoint of this run is (a decoder run: a decoder dir)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # -- the layout --------------------------------------------------------------------------------------------
    config = property(lambda self: self.path / "config.json")
    status_file = property(lambda self: self.path / "status.json")
    process_file = property(lambda self: self.path / "process.json")
    stop_file = property(lambda self: self.path / "stop")
    metrics = property(lambda self: self.path / "metrics.jsonl")
    bad_rows = property(lambda self: self.path / "bad_rows.jsonl")
    checkpoints = property(lambda self: self.path / "checkpoints")
    final = property(lambda self: self.path / "final")
    result = property(lambda self: self.path / "result.json")
    log = property(lambda self: self.path / "train.log")
    upload = property(lambda self: self.path / "upload")
    wise_ft = property(lambda self: self.path / "wise_ft")

    # -- config -----------------------------------------------------------------------------------------------
    def write_config(self, cfg: Any) -> None:
        """The run's config (any training config dataclass: `TrainConfig`, `SegTrainConfig`, ...)."""
        atomic_write_json(self.config, to_dict(cfg))

    def read_config(self) -> TrainConfig:
        return from_dict(TrainConfig, load_file(self.config), where=str(self.config))

    # -- status -----------------------------------------------------------------------------------------------
    def write_status(self, state: str, **values: Any) -> Status:
        """Replace status.json (atomically: a reader sees the old or the new one, never half)."""
        paths = {"metrics": self.metrics.name, "log": self.log.name}
        if self.bad_rows.is_file():
            paths["bad_rows"] = self.bad_rows.name
        usable = self.usable_checkpoint()
        if usable is not None:
            paths["checkpoint"] = str(usable.relative_to(self.path))
        status = Status(state, paths=paths, updated=time.time(), **values)
        atomic_write_json(self.status_file, asdict(status))
        return status

    def read_status(self) -> Status | None:
        """status.json, or None before the first write (or if it cannot be read: it is only ever replaced whole)."""
        try:
            data = json.loads(self.status_file.read_text(encoding="utf-8"))
            return Status(**data)
        except (OSError, ValueError, TypeError):
            return None

    # -- process and stop -------------------------------------------------------------------------------------
    def write_process(self, pid: int) -> Process:
        process = Process(pid, start_ticks(pid))
        atomic_write_json(self.process_file, asdict(process))
        return process

    def read_process(self) -> Process | None:
        try:
            return Process(**json.loads(self.process_file.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError):
            return None

    def request_stop(self) -> None:
        atomic_write_text(self.stop_file, f"{time.time()}\n")

    def stop_requested(self) -> bool:
        return self.stop_file.exists()

    # -- outputs ----------------------------------------------------------------------------------------------
    def read_metrics(self) -> list[dict[str, Any]]:
        """The rows of metrics.jsonl as it is being written: a line cut short at the end is skipped."""
        if not self.metrics.is_file():
            return []
        rows = []
        for line in self.metrics.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return rows

    def bad_row_count(self) -> int:
        return len(self.bad_rows.read_text(encoding="utf-8").splitlines()) if self.bad_rows.is_file() else 0

    def usable_checkpoint(self) -> Path | None:
        """The newest weights a person can use: final/, else the newest complete step checkpoint."""
        if self.is_checkpoint(self.final):
            return self.final
        return checkpoint.latest(self.path, self.is_checkpoint)


def usable_checkpoints(
    root: str | Path, is_checkpoint: Callable[[Path], bool] = checkpoint.is_checkpoint_dir
) -> list[Path]:
    """Each set of weights under `root` once, newest first: a run folder counts once, by its `usable_checkpoint`
    (final/, else its newest step checkpoint: a finished run's final/ holds its last step's weights, so listing both
    would offer the same model twice), and a checkpoint folder outside any run's final/ and checkpoints/ (a WiSE-FT
    alpha-*/, an export) counts by itself."""
    base = Path(root)
    if not base.is_dir():
        return []
    found: set[Path] = set()
    for config in base.glob("**/config.json"):
        folder = config.parent
        if not is_checkpoint(folder):
            continue
        run = folder.parent if folder.name == "final" else folder.parent.parent
        if folder.name == "final" or folder.parent.name == "checkpoints":
            usable = RunDir(run, is_checkpoint).usable_checkpoint()
            if usable is not None:
                found.add(usable)
        else:
            found.add(folder)
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def newest_run(runs_dir: str | Path) -> RunDir | None:
    """The run under `runs_dir` whose trainer was started last (by process.json), or None."""
    root = Path(runs_dir)
    if not root.is_dir():
        return None
    started = [(p.stat().st_mtime, p.parent) for p in root.glob("*/process.json")]
    return RunDir(max(started)[1]) if started else None
