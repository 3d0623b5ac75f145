"""The run folder (`vlm.rundir`) as the trainer writes it, the step plan, stop requests, and the lifeline that ends a
trainer with its parent."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from vlm import checkpoint, finetune
from vlm.config import TrainConfig, from_dict
from vlm.data import read_pairs
from vlm.errors import DataError
from vlm.rundir import RunDir, Status, newest_run, process_alive, start_ticks, usable_checkpoints
from vlm.synth import generate
from vlm.train import StopRequested, planned_steps, train

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shapes") / "data"
    generate(out, scenes=42, seed=4, image_size=32, progress=False)
    return out


def make_cfg(run: Path, data: Path, **top) -> TrainConfig:
    return from_dict(TrainConfig, {
        "output_dir": str(run), "batch_size": 8, "epochs": 2, "seed": 1, "save_every": 0, "val_every": 0,
        "log_every": 1, "tensorboard": False, "model": {"model": "vlm-tiny"},
        "data": {"train_data": str(data / "pairs.csv"), "workers": 0}, "optim": {"warmup_steps": 1}, **top,
    })  # fmt: skip


def test_a_finished_run_leaves_its_config_status_and_outputs(tmp_path, shapes):
    cfg = make_cfg(tmp_path / "run", shapes)
    train(cfg, progress=False)
    run = RunDir(cfg.output_dir)
    # The config as run: what was left unset filled with the from-scratch recipe (vlm/finetune.py), the rest as given.
    assert run.read_config() == finetune.resolve(cfg)[0]
    assert (run.read_config().optim.lr, run.read_config().model.update_norm_stats) == (5e-4, True)
    status = run.read_status()
    # The plan counted by hand: 42 pairs, round(0.1 * 42) = 4 held out, 38 // 8 = 4 batches an epoch, 2 epochs.
    assert (status.state, status.step, status.total, status.train_pairs, status.val_pairs) == ("finished", 8, 8, 38, 4)
    assert planned_steps(cfg, len(read_pairs(shapes / "pairs.csv", progress=False).pairs)) == 8
    assert status.error == "" and status.paths["checkpoint"] == "final"
    assert run.usable_checkpoint() == run.final and checkpoint.is_checkpoint_dir(run.final)
    assert [m["step"] for m in run.read_metrics()] == list(range(1, 9))
    assert json.loads(run.result.read_text())["steps"] == 8


def test_the_step_plan():
    cfg = make_cfg(Path("r"), Path("d"))
    assert planned_steps(cfg, 100) == 2 * (90 // 8)
    assert planned_steps(from_dict(TrainConfig, {"steps": 7}), 1000) == 7
    with_val = from_dict(TrainConfig, {"batch_size": 10, "epochs": 3, "data": {"val_data": "v.csv"}})
    assert planned_steps(with_val, 25) == 3 * 2  # nothing held out of train_data when val_data is given
    with pytest.raises(DataError, match="too few for a batch of 8"):
        planned_steps(cfg, 8)  # 8 pairs, 1 held out: 7 left


def test_a_stop_asked_before_the_first_step_is_honoured(tmp_path, shapes):
    cfg = make_cfg(tmp_path / "run", shapes)
    run = RunDir(cfg.output_dir)
    run.path.mkdir()
    run.request_stop()
    with pytest.raises(StopRequested):
        train(cfg, progress=False)
    status = run.read_status()
    assert status.state == "stopped" and status.step == 0 and status.message == "stopped on request"
    assert run.usable_checkpoint() is None


def test_the_time_limit_stops_a_run_and_saves_it(tmp_path, shapes, monkeypatch):
    import vlm.training.loop

    cfg = make_cfg(tmp_path / "run", shapes, steps=500, time_limit_minutes=1.0)
    clock = iter(range(10**6))  # the trainer's clock: each look is a second later, so the hour passes mid-run
    fake = SimpleNamespace(monotonic=lambda: float(next(clock)), perf_counter=time.perf_counter, time=time.time)
    monkeypatch.setattr(vlm.training.loop, "time", fake)
    with pytest.raises(StopRequested):
        train(cfg, progress=False)
    run = RunDir(cfg.output_dir)
    status = run.read_status()
    assert status.state == "stopped" and status.message == "stopped at its time limit (1 min)"
    assert 0 < status.step < 500 and run.usable_checkpoint() == checkpoint.latest(run.path)


def test_a_failed_run_says_why(tmp_path, shapes):
    cfg = make_cfg(tmp_path / "run", shapes, batch_size=64)
    with pytest.raises(DataError):
        train(cfg, progress=False)
    status = RunDir(cfg.output_dir).read_status()
    assert status.state == "failed" and "training pairs for a batch of 64" in status.error


def test_a_refused_run_does_not_overwrite_the_status_of_the_run_it_would_clobber(tmp_path, shapes):
    cfg = make_cfg(tmp_path / "run", shapes, steps=2)
    train(cfg, progress=False)
    with pytest.raises(Exception, match="already holds checkpoints"):
        train(cfg, progress=False)
    assert RunDir(cfg.output_dir).read_status().state == "finished"


def test_status_is_checked_and_read_back_whole(tmp_path):
    run = RunDir(tmp_path)
    assert run.read_status() is None  # before the first write
    written = run.write_status("training", step=3, total=10)
    assert run.read_status() == written and isinstance(written, Status) and not written.ended
    with pytest.raises(ValueError, match="unknown run state"):
        run.write_status("dancing")
    run.status_file.write_text('{"state": "train', encoding="utf-8")  # what a torn write would look like
    assert run.read_status() is None
    run.metrics.write_text('{"step": 1, "train/loss": 2.0}\n{"step": 2, "tr', encoding="utf-8")
    assert run.read_metrics() == [{"step": 1, "train/loss": 2.0}]  # the line being written is skipped


def test_processes_are_told_apart_from_reused_pids(tmp_path):
    me = os.getpid()
    assert process_alive(me, start_ticks(me))
    assert not process_alive(me, (start_ticks(me) or 0) + 1)  # same pid, another start time: not ours
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert not process_alive(child.pid)
    older, newer = RunDir(tmp_path / "a"), RunDir(tmp_path / "b")
    for run in (newer, older):  # written in the other order than their names
        run.path.mkdir()
        run.write_process(me)
        time.sleep(0.02)
    assert newest_run(tmp_path).path == older.path and newest_run(tmp_path / "none") is None
    assert older.read_process().alive()


# The lifeline: a "parent" process starts a "trainer" that waits; the test kills the parent with SIGKILL.
TRAINER = """
import os, sys, time
from vlm.lifeline import die_with_parent
die_with_parent(int(sys.argv[1]), poll_s=float(sys.argv[3]))
open(sys.argv[2] + ".ready", "w").close()
try:
    time.sleep(60)
except KeyboardInterrupt as e:
    open(sys.argv[2], "w").write(str(e))
"""
PARENT = """
import os, subprocess, sys, threading, time
def launch():  # from a thread that then ends, as a web server's worker thread does
    subprocess.Popen([sys.executable, "-c", sys.argv[1], str(os.getpid()), sys.argv[2], sys.argv[3]])
t = threading.Thread(target=launch); t.start(); t.join()
time.sleep(60)
"""


@pytest.mark.parametrize("poll_s", ["0.2", "1000"], ids=["polling", "pdeathsig"])
def test_the_trainer_ends_with_its_parent_not_with_the_parents_thread(tmp_path, poll_s):
    if poll_s == "1000" and not sys.platform.startswith("linux"):
        pytest.skip("PR_SET_PDEATHSIG is Linux's")
    flag = tmp_path / "interrupted"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    parent = subprocess.Popen([sys.executable, "-c", PARENT, TRAINER, str(flag), poll_s], env=env)
    try:
        deadline = time.monotonic() + 60
        while not Path(f"{flag}.ready").exists():
            assert time.monotonic() < deadline, "the trainer did not start"
            time.sleep(0.05)
        time.sleep(0.5)
        assert not flag.exists()  # the launching thread has ended, the parent lives: the trainer goes on
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    deadline = time.monotonic() + 10
    while not flag.exists():
        assert time.monotonic() < deadline, "the trainer outlived its parent"
        time.sleep(0.05)
    time.sleep(0.1)
    assert flag.read_text() == f"the parent process {parent.pid} has ended"


def test_each_run_is_listed_once_by_its_usable_checkpoint(tmp_path):
    """A run's final/ and its last step hold the same weights: one entry per run (final/, else its newest step);
    checkpoint folders outside a run's layout (a WiSE-FT alpha, an export) are listed by themselves."""

    def make(path: Path, *, state: bool = False) -> Path:
        path.mkdir(parents=True)
        (path / "config.json").write_text("{}")
        (path / "weights").write_text("w")
        if state:
            (path / checkpoint.TRAIN_STATE_NAME).write_text("s")
        return path

    def is_ckpt(p: Path) -> bool:
        return (p / "weights").is_file()

    finished = tmp_path / "runs" / "done"
    for step in (2, 4):
        make(finished / "checkpoints" / f"step_{step:06d}", state=True)
    make(finished / "final")
    alpha = make(finished / "wise_ft" / "alpha-0.5")
    running = tmp_path / "runs" / "going"
    make(running / "checkpoints" / "step_000003", state=True)
    newest = make(running / "checkpoints" / "step_000010", state=True)
    (running / "config.json").write_text("{}")  # the run's own config is no checkpoint
    export = make(tmp_path / "runs" / "export")
    listed = usable_checkpoints(tmp_path / "runs", is_ckpt)
    assert sorted(listed) == sorted([finished / "final", alpha, newest, export])
    assert usable_checkpoints(tmp_path / "nothing", is_ckpt) == []
