"""The shared training loop (`vlm.training`) driving a toy task: a linear least-squares model, no open_clip, so the
loop's own contract (plan, cadence, status, stop, interrupt-save, exact resume, accumulation, config diff) is checked
apart from either real trainer (those are `tests/test_train.py` and `tests/test_segment_decoder.py`)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from vlm import checkpoint, distributed
from vlm.atomic import atomic_dir
from vlm.config import OptimConfig, RunConfig, add_arguments, from_dict, from_leaves, run_default
from vlm.errors import CheckpointError, ConfigError, DataError
from vlm.rundir import RunDir
from vlm.segment.train import SegTrainConfig
from vlm.training import Loop, StopRequested, Task, config_differences

N, DIM = 40, 3


@dataclasses.dataclass
class ToyConfig(RunConfig):
    output_dir: str = run_default("output_dir", "runs/toy")
    batch_size: int = run_default("batch_size", 8)
    tensorboard: bool = run_default("tensorboard", False)
    optim: OptimConfig = dataclasses.field(default_factory=lambda: OptimConfig(lr=0.05, weight_decay=0.0))


@dataclasses.dataclass(frozen=True)
class Row:
    key: str


class Rows(torch.utils.data.Dataset):
    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, item: tuple[int, int]):
        _, i = item
        return self.x[i], self.y[i]


class ToyTask(Task):
    name, items = "toy", "rows"

    def __init__(self, cfg: ToyConfig, interrupt_at: int | None = None):
        super().__init__(cfg)
        self.accum_steps = cfg.optim.accum_steps
        self.interrupt_at, self.steps_done = interrupt_at, 0

    def setup(self):
        return distributed.DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))

    def build_model(self):
        self.model = nn.Linear(DIM, 1)

    def build_data(self):
        g = torch.Generator().manual_seed(7)
        x = torch.randn(N, DIM, generator=g)
        y = x @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.3
        self.train_items = [Row(f"r{i}") for i in range(N - 8)]
        self.val_items = [Row(f"v{i}") for i in range(8)]
        self.dataset = Rows(x[: N - 8], y[: N - 8])
        self.val = (x[N - 8 :], y[N - 8 :])

    def build_optimizer(self):
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=self.cfg.optim.lr)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: 1.0)

    def step(self, micro_batches):
        if self.interrupt_at is not None and self.steps_done == self.interrupt_at:
            raise KeyboardInterrupt
        total = torch.zeros(())
        for x, y in micro_batches:
            loss = nn.functional.mse_loss(self.model(x), y) / len(micro_batches)
            loss.backward()
            total += loss.detach()
        self.optimizer.step()
        self.optimizer.zero_grad()
        self.scheduler.step()
        self.steps_done += 1
        return total

    can_validate = True

    def validate(self):
        with torch.no_grad():
            return {"mse": float(nn.functional.mse_loss(self.model(self.val[0]), self.val[1]))}

    def is_checkpoint(self, path: Path) -> bool:
        return (path / "w.safetensors").is_file()

    def optimizer_state(self):
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}

    def save(self, path: Path, *, provenance: dict[str, Any], train_state: dict[str, Any] | None) -> Path:
        with atomic_dir(path) as tmp:
            save_file({k: v.contiguous() for k, v in self.model.state_dict().items()}, str(tmp / "w.safetensors"))
            (tmp / "provenance.json").write_text(json.dumps(provenance))
            if train_state is not None:
                torch.save(train_state, tmp / checkpoint.TRAIN_STATE_NAME)
        return path

    def load_state(self, path: Path, state: dict[str, Any]) -> None:
        self.model.load_state_dict(load_file(str(path / "w.safetensors")))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])


def toy(tmp_path: Path, name: str = "run", **leaves) -> ToyConfig:
    base = dict(output_dir=str(tmp_path / name), steps=8, save_every=3, keep_last=2, val_every=4, log_every=1)
    return from_leaves(ToyConfig, **{**base, **leaves})


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "w.safetensors"))


def test_a_run_plans_logs_saves_prunes_and_ends_finished(tmp_path):
    result = Loop(ToyTask(toy(tmp_path)), progress=False).run()
    run = RunDir(tmp_path / "run", lambda p: (p / "w.safetensors").is_file())
    assert result.steps == 8 and set(result.metrics) == {"mse"}
    status = run.read_status()
    assert (status.state, status.step, status.total, status.train_pairs, status.val_pairs) == ("finished", 8, 8, 32, 8)
    assert status.paths["checkpoint"] == "final"
    # steps 3 and 6 by the cadence, 8 at the end; keep_last=2 leaves the newest two
    assert [s for s, _ in checkpoint.list_step_checkpoints(run.path, run.is_checkpoint)] == [6, 8]
    rows = run.read_metrics()
    assert [r["step"] for r in rows if "train/loss" in r] == list(range(1, 9))
    assert [r["step"] for r in rows if "val/mse" in r] == [4, 8]
    assert json.loads(run.result.read_text())["steps"] == 8
    assert from_dict(ToyConfig, json.loads(run.config.read_text())) == toy(tmp_path)
    assert rows[-1]["val/mse"] < 0.5 * rows[0]["train/loss"]  # it learned


def test_resume_after_an_interrupt_ends_with_the_same_weights(tmp_path):
    full = Loop(ToyTask(toy(tmp_path, "full")), progress=False).run()
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C before step 6: step 5 is saved, status says stopped
        Loop(ToyTask(toy(tmp_path, "cut"), interrupt_at=5), progress=False).run()
    cut = RunDir(tmp_path / "cut")
    assert cut.read_status().state == "stopped" and cut.read_status().step == 5
    assert [s for s, _ in checkpoint.list_step_checkpoints(cut.path, lambda p: True)] == [3, 5]
    with pytest.raises(CheckpointError, match="already holds checkpoints"):
        Loop(ToyTask(toy(tmp_path, "cut")), progress=False).run()
    with pytest.raises(CheckpointError, match=r"optim\.lr: checkpoint 0\.05 vs now 0\.1"):
        Loop(ToyTask(toy(tmp_path, "cut", resume=True, lr=0.1)), progress=False).run()
    resumed = Loop(ToyTask(toy(tmp_path, "cut", resume=True, log_every=2)), progress=False).run()  # log_every: free
    for k, v in weights(full.final_checkpoint).items():
        torch.testing.assert_close(weights(resumed.final_checkpoint)[k], v, atol=0, rtol=0)
    assert [r["step"] for r in cut.read_metrics() if "train/loss" in r] == [1, 2, 3, 4, 5, 6, 8]


def test_accumulated_micro_batches_equal_one_batch(tmp_path):
    one = Loop(ToyTask(toy(tmp_path, "one", save_every=0)), progress=False).run()
    two = Loop(ToyTask(toy(tmp_path, "two", save_every=0, accum_steps=4)), progress=False).run()
    for k, v in weights(one.final_checkpoint).items():
        torch.testing.assert_close(weights(two.final_checkpoint)[k], v, atol=1e-6, rtol=1e-5)


def test_a_stop_file_stops_before_the_first_step_and_too_little_data_fails(tmp_path):
    cfg = toy(tmp_path)
    RunDir(cfg.output_dir).path.mkdir()
    RunDir(cfg.output_dir).request_stop()
    with pytest.raises(StopRequested, match="stopped on request"):
        Loop(ToyTask(cfg), progress=False).run()
    assert RunDir(cfg.output_dir).read_status().state == "stopped"
    big = toy(tmp_path, "big", batch_size=33)
    with pytest.raises(DataError, match="only 32 training rows for a batch of 33"):
        Loop(ToyTask(big), progress=False).run()
    assert RunDir(big.output_dir).read_status().state == "failed"
    shutil.rmtree(tmp_path / "big")


def test_config_differences_nest_and_skip_free_fields_at_any_depth():
    saved = {"lr": 1, "optim": {"lr": 1, "workers": 2}, "resume": False}
    now = {"lr": 1, "optim": {"lr": 2, "workers": 4}, "resume": True, "new": 3}
    assert config_differences(saved, now, {"workers", "resume"}) == [
        "new: checkpoint None vs now 3",
        "optim.lr: checkpoint 1 vs now 2",
    ]


def test_seg_config_reuses_the_shared_sections_with_its_own_defaults():
    cfg = SegTrainConfig()
    assert isinstance(cfg, RunConfig) and isinstance(cfg.optim, OptimConfig)
    assert (cfg.output_dir, cfg.batch_size, cfg.tensorboard, cfg.optim.lr) == ("runs/train-seg", 32, False, 1e-3)
    parser = argparse.ArgumentParser()
    add_arguments(parser, SegTrainConfig)
    helps = {a.option_strings[0]: a.help for a in parser._actions if a.option_strings}
    assert "(default: 0.001)" in helps["--lr"] and "(default: 32)" in helps["--batch-size"]
    with pytest.raises(ConfigError, match="unknown setting"):
        from_leaves(SegTrainConfig, learning_rate=1e-3)


def test_a_section_given_in_part_keeps_its_own_defaults():
    # `--lr 3e-3` for train-seg changes the lr only: weight decay and betas stay the decoder's, not OptimConfig's
    cfg = from_leaves(SegTrainConfig, lr=3e-3)
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.beta2, cfg.optim.eps) == (3e-3, 1e-4, 0.999, 1e-8)
    assert from_dict(ToyConfig, {"optim": {"accum_steps": 2}}).optim.lr == 0.05
