"""Training runs started from the app: `python -m vlm train --config <run>/config.json` in a subprocess, so the server
stays responsive and a stop needs no shared memory.

The run folder is the contract (`vlm.rundir`): the app writes the run's `TrainConfig` as its config.json and reads
state, step, total, errors, metrics and checkpoints back from the folder, never from the trainer's log. One run at a
time, also across restarts: on start the app picks up the newest run (by its process.json) and, while that trainer
lives, shows it, can stop it, and starts no other beside it. The trainer is told to end with the app
(`--die-with-parent`, `vlm.lifeline`).

Stop writes the run's stop file and sends SIGINT: the signal interrupts a step at once, the file is seen at the next
phase or step even when the signal came before the trainer could take it (in its first seconds). Either way the
trainer saves the step it has reached, so the run can be used, or resumed with `vlm train --resume`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlm.config import TrainConfig
from vlm.errors import VLMError
from vlm.rundir import ENDED, Process, RunDir, newest_run

LOG = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
STOP_WAIT_S = 60.0  # how long a stop waits for the trainer to save its checkpoint
EXIT_WAIT_S = 10.0  # how long a trainer that has written its outcome may take to exit
RUNNING = ("starting", "reading data", "training", "stopping")


@dataclass
class TrainStatus:
    state: str  # "idle", or a run state of `vlm.rundir` ("starting" ... "finished", "stopped", "failed")
    run_dir: Path | None = None
    step: int = 0
    total: int | None = None  # steps, once the trainer has read the data
    train_pairs: int | None = None
    val_pairs: int | None = None
    metrics: list[dict[str, Any]] = field(default_factory=list)  # the rows of metrics.jsonl
    message: str = ""  # why the run failed
    note: str = ""  # how an ended run ended, e.g. "stopped at the time limit of 60 minutes"
    checkpoint: Path | None = None  # the newest usable weights: final/, else the newest step checkpoint
    bad_rows: int = 0

    @property
    def running(self) -> bool:
        return self.state in RUNNING


class TrainRunner:
    """Starts, watches and stops one training subprocess at a time; removes uploads past their retention."""

    def __init__(self, runs_dir: Path, upload_retention_s: float = 24 * 3600.0):
        self.runs_dir = Path(runs_dir)
        self.upload_retention_s = upload_retention_s
        self._lock = threading.Lock()
        self._run: RunDir | None = None
        self._proc: subprocess.Popen | None = None  # a trainer this app started
        self._process: Process | None = None  # its pid record; for a run picked up on start, all we have
        self._preparing = False  # a start holds the slot while it unpacks and checks its data
        self._pick_up()
        self.remove_old_uploads()

    def _pick_up(self) -> None:
        run = newest_run(self.runs_dir)
        if run is None:
            return
        self._run, self._process = run, run.read_process()
        if self._alive():
            LOG.warning("a training run started earlier is still going (pid %d): %s", self._process.pid, run.path)

    def _alive(self) -> bool:
        if self._proc is not None:
            return self._proc.poll() is None
        return self._process is not None and self._process.alive()

    def start(self, prepare: Callable[[RunDir], TrainConfig]) -> tuple[RunDir, TrainConfig]:
        """Take the one run slot, make a new run folder, let `prepare(run)` put the data there (an upload goes to
        `run.upload`) and return the config, then launch the trainer on it. Whatever `prepare` raises, the folder is
        removed (a refused upload does not stay on disk) and the slot freed."""
        written = self._run.read_status() if self._run is not None else None
        if written is not None and written.ended:
            self._wait(EXIT_WAIT_S)  # it has said how it ended and is exiting: the next run need not be refused
        with self._lock:
            if self._preparing or self._alive():
                where = f" ({self._run.path})" if self._run is not None and not self._preparing else ""
                raise VLMError(f"a training run is already in progress{where}; stop it first")
            self._preparing = True
        try:
            self.remove_old_uploads()
            run = self._new_run_dir()
            try:
                cfg = dataclasses.replace(prepare(run), output_dir=str(run.path))
                run.write_config(cfg)
                run.write_status("starting")
                self._launch(run)
            except BaseException:
                shutil.rmtree(run.path, ignore_errors=True)
                raise
            return run, cfg
        finally:
            with self._lock:
                self._preparing = False

    def _launch(self, run: RunDir) -> None:
        env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1"}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")]))
        cmd = [sys.executable, "-m", "vlm", "train", "--config", str(run.config), "--die-with-parent", str(os.getpid())]
        with open(run.log, "wb") as log:
            # Its own session: a Ctrl-C in the server's terminal does not reach it; we stop it ourselves.
            proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=PROJECT_ROOT, start_new_session=True
            )
        process = run.write_process(proc.pid)
        with self._lock:
            self._run, self._proc, self._process = run, proc, process
        LOG.info("training started (pid %d): %s", proc.pid, run.path)

    def _new_run_dir(self) -> RunDir:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for n in range(100):
            path = self.runs_dir / (f"train-{stamp}" + (f"-{n}" if n else ""))
            try:
                path.mkdir(parents=True)
                return RunDir(path)
            except FileExistsError:
                continue
        raise VLMError(f"cannot make a new run folder under {self.runs_dir}")

    def stop(self, wait_s: float = STOP_WAIT_S) -> TrainStatus:
        """Ask the run to stop (it saves a checkpoint first) and wait up to `wait_s` for it to exit."""
        with self._lock:
            run = self._run
            if run is None or not self._alive():
                raise VLMError("no training run is in progress")
            run.request_stop()
            self._signal(signal.SIGINT)
        if not self._wait(wait_s):
            LOG.warning("the training run is still saving after %.0f s; it goes on stopping in the background", wait_s)
        return self.status()

    def _signal(self, sig: int) -> None:
        if self._process is None:
            return
        with contextlib.suppress(ProcessLookupError):  # it has just ended
            os.kill(self._process.pid, sig)

    def _wait(self, wait_s: float) -> bool:
        """Whether the trainer ended within `wait_s`."""
        deadline = time.monotonic() + wait_s
        while self._alive():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True

    def status(self) -> TrainStatus:
        run = self._run
        if run is None:
            return TrainStatus("idle", message="no training run yet")
        written = run.read_status()
        alive = self._alive()
        metrics = run.read_metrics()
        out = TrainStatus(
            state=written.state if written else "starting",
            run_dir=run.path,
            step=max([written.step if written else 0, *(int(m.get("step", 0)) for m in metrics)]),
            total=written.total if written else None,
            train_pairs=written.train_pairs if written else None,
            val_pairs=written.val_pairs if written else None,
            metrics=metrics,
            message=written.error if written else "",
            note=written.message if written else "",
            checkpoint=run.usable_checkpoint(),
            bad_rows=run.bad_row_count(),
        )
        if out.state not in ENDED:
            if alive and run.stop_requested():
                out.state = "stopping"
            elif not alive and run.stop_requested():
                out.state, out.note = "stopped", "stopped on request"  # before it could say so (in its imports)
            elif not alive:
                code = self._proc.poll() if self._proc is not None else None
                out.state = "failed"
                out.message = (
                    f"the trainer ended{f' with exit status {code}' if code is not None else ''} without saying "
                    f"why (killed?); see {run.log}"
                )
            if not alive:  # the trainer is gone, so nobody else writes: the folder says how the run ended
                run.write_status(out.state, step=out.step, total=out.total, train_pairs=out.train_pairs,
                                 val_pairs=out.val_pairs, error=out.message, message=out.note)  # fmt: skip
        return out

    def remove_old_uploads(self) -> None:
        """Delete uploaded datasets of ended runs older than the retention time (and of earlier versions' folder)."""
        cutoff = time.time() - self.upload_retention_s
        current = self._run.path if self._run is not None and self._alive() else None
        for upload in [*self.runs_dir.glob("*/upload"), *self.runs_dir.glob("uploads/*")]:
            if upload.parent == current:
                continue
            try:
                newest = max(p.stat().st_mtime for p in (upload, upload.parent / "status.json") if p.exists())
            except (OSError, ValueError):
                continue
            if newest < cutoff:
                LOG.info("removing the uploaded data %s (older than %.0f h)", upload, self.upload_retention_s / 3600)
                shutil.rmtree(upload, ignore_errors=True)

    def close(self, wait_s: float = 10.0) -> None:
        """Stop a run still going (when the server shuts down): stop file and SIGINT, then SIGKILL of its group."""
        if self._run is None or not self._alive():
            return
        self._run.request_stop()
        self._signal(signal.SIGINT)
        if not self._wait(wait_s) and self._process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._process.pid, signal.SIGKILL)
            self._wait(5.0)
