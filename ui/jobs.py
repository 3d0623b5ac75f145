"""Training runs started from the app: `python -m vlm train` in a subprocess, so the server stays responsive and a
stop is a signal.

The trainer writes `<run>/metrics.jsonl` (one JSON object per logged step), step checkpoints under
`<run>/checkpoints/step_*`, and `<run>/final/` at the end. A stop sends SIGINT: the trainer saves the step it has
reached (so the run can be used, or resumed with `vlm train --resume`) and exits with status 130. One run at a time.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlm import checkpoint
from vlm.errors import VLMError

LOG = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
LOG_NAME = "train.log"
STOP_WAIT_S = 60.0  # how long a stop waits for the trainer to save its checkpoint
_TOTAL = re.compile(r"; (\d+) steps of batch (\d+)")
_ERROR = re.compile(r"^vlm train: error: (.*)$", re.MULTILINE)


@dataclass(frozen=True)
class TrainRequest:
    train_data: str  # what `vlm train --train-data` takes
    model: str
    pretrained: str | None = None
    epochs: int = 1
    steps: int | None = None  # overrides epochs
    batch_size: int = 32
    lr: float = 5e-4
    warmup_steps: int = 10
    val_every: int = 50
    save_every: int = 100
    data_root: str | None = None

    def command(self, output_dir: Path) -> list[str]:
        cmd = [sys.executable, "-m", "vlm", "train", "--train-data", self.train_data, "--model", self.model]
        cmd += ["--pretrained", self.pretrained] if self.pretrained else []
        cmd += ["--steps", str(self.steps)] if self.steps else ["--epochs", str(self.epochs)]
        cmd += ["--data-root", self.data_root] if self.data_root else []
        cmd += ["--output-dir", str(output_dir), "--batch-size", str(self.batch_size), "--lr", str(self.lr)]
        cmd += ["--warmup-steps", str(self.warmup_steps), "--val-every", str(self.val_every)]
        cmd += ["--save-every", str(self.save_every), "--log-every", "1", "--workers", "1", "--no-tensorboard"]
        return cmd


@dataclass
class TrainStatus:
    state: str  # "idle", "running", "stopping", "finished", "stopped" or "failed"
    run_dir: Path | None = None
    step: int = 0
    total: int | None = None  # steps, once the trainer has read the data
    metrics: list[dict[str, Any]] = field(default_factory=list)  # the rows of metrics.jsonl
    message: str = ""
    checkpoint: Path | None = None  # the newest usable weights: final/, else the newest step checkpoint
    bad_rows: int = 0

    @property
    def running(self) -> bool:
        return self.state in ("running", "stopping")


class TrainRunner:
    """Starts, watches and stops one training subprocess at a time."""

    def __init__(self, runs_dir: Path):
        self.runs_dir = Path(runs_dir)
        self._proc: subprocess.Popen | None = None
        self._run: Path | None = None
        self._stopping = False
        self._lock = threading.Lock()

    def start(self, request: TrainRequest) -> Path:
        """Launch a run in a new folder under `runs_dir`; returns the folder."""
        with self._lock:
            if self._proc is not None and self._proc.poll() is None:
                raise VLMError(f"a training run is already in progress ({self._run}); stop it first")
            run = self._new_run_dir()
            env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1"}
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")]))
            (run / "request.json").write_text(json.dumps(request.__dict__, indent=2), encoding="utf-8")
            with open(run / LOG_NAME, "wb") as log:
                # Its own session: a Ctrl-C in the server's terminal does not reach it; we stop it ourselves.
                self._proc = subprocess.Popen(
                    request.command(run), stdout=log, stderr=subprocess.STDOUT, env=env, cwd=PROJECT_ROOT,
                    start_new_session=True,
                )  # fmt: skip
            self._run, self._stopping = run, False
            LOG.info("training started (pid %d): %s", self._proc.pid, run)
            return run

    def _new_run_dir(self) -> Path:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for n in range(100):
            run = self.runs_dir / (f"train-{stamp}" + (f"-{n}" if n else ""))
            try:
                run.mkdir(parents=True)
                return run
            except FileExistsError:
                continue
        raise VLMError(f"cannot make a new run folder under {self.runs_dir}")

    def stop(self, wait_s: float = STOP_WAIT_S) -> TrainStatus:
        """Ask the run to stop (SIGINT: it saves a checkpoint first) and wait up to `wait_s` for it to exit."""
        with self._lock:
            proc = self._proc
            if proc is None or proc.poll() is not None:
                raise VLMError("no training run is in progress")
            self._stopping = True
            proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            LOG.warning("the training run is still saving after %.0f s; it goes on stopping in the background", wait_s)
        return self.status()

    def status(self) -> TrainStatus:
        proc, run = self._proc, self._run
        if proc is None or run is None:
            return TrainStatus("idle", message="no training run yet")
        code = proc.poll()
        log_text = _read(run / LOG_NAME)
        metrics = read_metrics(run / "metrics.jsonl")
        total = _TOTAL.findall(log_text)
        out = TrainStatus(
            state=_state(code, self._stopping),
            run_dir=run,
            step=max((int(m.get("step", 0)) for m in metrics), default=0),
            total=int(total[-1][0]) if total else None,
            metrics=metrics,
            checkpoint=usable_checkpoint(run),
            bad_rows=_count_lines(run / "bad_rows.jsonl"),
        )
        errors = _ERROR.findall(log_text)
        if out.state == "failed":
            out.message = errors[-1] if errors else f"the trainer exited with status {code}; see {run / LOG_NAME}"
        return out

    def close(self, wait_s: float = 10.0) -> None:
        """Stop a run still going (when the server shuts down): SIGINT, then SIGKILL of its process group."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _state(code: int | None, stopping: bool) -> str:
    if code is None:
        return "stopping" if stopping else "running"
    if code == 0:
        return "finished"
    return "stopped" if stopping and code in (130, -signal.SIGINT) else "failed"


def usable_checkpoint(run: Path) -> Path | None:
    if checkpoint.is_checkpoint_dir(run / "final"):
        return run / "final"
    return checkpoint.latest(run)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The rows of a metrics.jsonl being written: a line cut short at the end is skipped."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def _read(path: Path, size: int = 1 << 20) -> str:
    """The log, or its first and last halves of `size` bytes (the total comes early, an error at the end)."""
    if not path.is_file():
        return ""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) > size:
        data = data[: size // 2] + b"\n" + data[-size // 2 :]
    return data.decode("utf-8", errors="replace")


def _count_lines(path: Path) -> int:
    return len(path.read_text(encoding="utf-8").splitlines()) if path.is_file() else 0
