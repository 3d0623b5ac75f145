"""The trainer on the tiny model and small synthetic data: correctness of the step, exact resume, DDP equivalence."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from eval.retrieval import evaluate_pairs
from vlm import checkpoint, models
from vlm.config import TrainConfig, from_dict, to_dict
from vlm.errors import CheckpointError, ConfigError, DataError
from vlm.synth import generate
from vlm.train import ContrastiveTask, StepSampler, lr_at, param_groups, train
from vlm.training import config_differences

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shapes") / "data"
    generate(out, scenes=160, seed=3, image_size=48, progress=False)
    return out


def make_cfg(tmp: Path, data_dir: Path, **overrides) -> TrainConfig:
    base = {
        "output_dir": str(tmp / "run"),
        "batch_size": 16,
        "steps": 6,
        "seed": 1,
        "save_every": 0,
        "val_every": 0,
        "log_every": 1,
        "tensorboard": False,
        "model": {"model": "vlm-tiny"},
        "data": {"train_data": str(data_dir / "pairs.csv"), "workers": 0, "val_fraction": 0.2},
        "optim": {"warmup_steps": 2, "lr": 1e-3},
    }
    for key, value in overrides.items():
        if isinstance(value, dict):
            base[key] = {**base.get(key, {}), **value}
        else:
            base[key] = value
    return from_dict(TrainConfig, base)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / checkpoint.WEIGHTS_NAME))


def assert_same_weights(a: Path, b: Path, atol: float = 1e-6) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=atol, rtol=1e-5, msg=k)


# -- pure pieces ---------------------------------------------------------------------------------------------------


def test_lr_schedule_matches_the_formula():
    kw = dict(lr=1.0, warmup=10, total=110, schedule="cosine", min_ratio=0.0)
    assert lr_at(0, **kw) == pytest.approx(0.1)
    assert lr_at(9, **kw) == pytest.approx(1.0)
    assert lr_at(60, **kw) == pytest.approx(0.5)  # half-way through the cosine
    assert lr_at(110, **kw) == pytest.approx(0.0, abs=1e-12)
    assert lr_at(35, **kw) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.25)))
    assert lr_at(60, **{**kw, "min_ratio": 0.1}) == pytest.approx(0.1 + 0.45)
    assert lr_at(500, **{**kw, "schedule": "constant"}) == 1.0


def test_step_sampler_covers_epochs_and_splits_ranks():
    n, batch = 23, 6  # 3 steps per epoch, 5 samples left out of each epoch
    full = list(StepSampler(n, batch, 0, 1, seed=0, start=0, total=7))
    assert len(full) == 7 * batch
    for epoch in (0, 1):
        seen = [i for e, i in full if e == epoch]
        assert len(seen) == len(set(seen)) == 18
    assert [i for e, i in full if e == 0] != [i for e, i in full if e == 1]  # reshuffled each epoch
    ranks = [list(StepSampler(n, batch, r, 2, seed=0, start=0, total=7)) for r in (0, 1)]
    interleaved = [x for s in range(7) for r in (0, 1) for x in ranks[r][s * 3 : (s + 1) * 3]]
    assert interleaved == full  # two ranks together read exactly the single-process batches
    resumed = list(StepSampler(n, batch, 0, 1, seed=0, start=4, total=7))
    assert resumed == full[4 * batch :]


def test_no_weight_decay_on_biases_norms_and_temperature(tiny_encoders):
    decay, no_decay = param_groups(tiny_encoders.model, 0.2)
    names = {id(p): n for n, p in tiny_encoders.model.named_parameters()}

    # open_clip_train's rule (main.py): exclude = ndim < 2 or "bn"/"ln"/"bias"/"logit_scale" in the name.
    def open_clip_excludes(n, p):
        return p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n

    expected = {n for n, p in tiny_encoders.model.named_parameters() if open_clip_excludes(n, p)}
    assert {names[id(p)] for p in no_decay["params"]} == expected
    assert {names[id(p)] for p in decay["params"]} == set(names.values()) - expected
    assert decay["weight_decay"] == 0.2 and no_decay["weight_decay"] == 0.0


# -- training runs -------------------------------------------------------------------------------------------------


def test_train_writes_open_clip_checkpoint_and_metrics(tmp_path, shapes):
    cfg = make_cfg(tmp_path, shapes, steps=8, save_every=4)
    result = train(cfg, progress=False, validate=evaluate_pairs)
    out = Path(cfg.output_dir)
    assert result.steps == 8 and result.final_checkpoint == out / "final"
    assert [s for s, _ in checkpoint.list_step_checkpoints(out)] == [4, 8]
    assert set(result.metrics) >= {"image_retrieval_recall@1", "text_retrieval_recall@5", "mean_recall"}
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len([ln for ln in lines if "train/loss" in ln]) == 8
    record = checkpoint.read_config(result.final_checkpoint)
    assert record["provenance"]["steps"] == 8 and record["provenance"]["config"]["batch_size"] == 16
    # open_clip loads the checkpoint by itself and embeds exactly as vlm does.
    ours = models.load(str(result.final_checkpoint), device="cpu")
    clip, _, preprocess = open_clip.create_model_and_transforms(
        "vlm-tiny", pretrained=str(result.final_checkpoint / "model.safetensors")
    )
    clip.eval()
    from PIL import Image

    image = Image.open(shapes / "images" / "000000.png")
    x = preprocess(image).unsqueeze(0)
    tokens = open_clip.get_tokenizer("vlm-tiny")(["a red circle"])
    with torch.no_grad():
        torch.testing.assert_close(F.normalize(clip.encode_image(x), dim=-1), ours.encode_image(x))
        torch.testing.assert_close(F.normalize(clip.encode_text(tokens), dim=-1), ours.encode_text(tokens))
    initial = models.load("vlm-tiny", device="cpu")
    assert ours.fingerprint != initial.fingerprint


def test_training_learns_the_pairs(tmp_path, shapes):
    """About 15 epochs on 160 scenes: retrieval over the *training* pairs climbs far above chance (5/160)."""
    cfg = make_cfg(tmp_path, shapes, steps=150, data={"val_fraction": 0.0}, optim={"lr": 1e-3, "warmup_steps": 5})
    train(cfg, progress=False)
    from vlm.data import read_pairs

    pairs = read_pairs(shapes / "pairs.csv", progress=False).pairs
    before = evaluate_pairs(models.load("vlm-tiny", device="cpu"), pairs)
    after = evaluate_pairs(models.load(str(Path(cfg.output_dir) / "final"), device="cpu"), pairs)
    assert after["text_retrieval_recall@5"] > max(0.25, 3 * before["text_retrieval_recall@5"])
    assert after["image_retrieval_recall@5"] > max(0.25, 3 * before["image_retrieval_recall@5"])


def runs_off_and_on(tmp_path: Path, shapes: Path, option: str, steps: int, model: str = "vlm-rn") -> tuple[list, list]:
    """Two runs of `model` identical but for the boolean model `option` (off, then on): their results and the training
    loss of every step of each."""
    runs = [train(make_cfg(tmp_path / f"{option}-{on}", shapes, model={"model": model, option: on}, steps=steps,
                           data={"val_fraction": 0.0}), progress=False) for on in (False, True)]  # fmt: skip
    losses = [[json.loads(ln)["train/loss"] for ln in (Path(r.final_checkpoint).parent / "metrics.jsonl")
               .read_text().splitlines() if "train/loss" in ln] for r in runs]  # fmt: skip
    return runs, losses


@pytest.mark.slow
def test_compiled_step_trains_the_same_model(tmp_path, shapes):
    """`model.compile` runs the same step through torch.compile: every step's loss equals the eager run's up to float
    rounding (fused kernels sum in another order), the checkpoint holds the plain model's weights under their own
    names (it loads strictly), and a resume may switch the option, also on a run saved before it existed."""
    runs, losses = runs_off_and_on(tmp_path, shapes, "compile", steps=3, model="vlm-tiny")  # the least to compile
    assert len(losses[1]) == 3 and losses[0][0] != losses[0][-1]  # both trained
    assert losses[1][0] == pytest.approx(losses[0][0], rel=1e-5)
    assert losses[1] == pytest.approx(losses[0], rel=3e-3)
    eager, compiled = (load_file(str(Path(r.final_checkpoint) / checkpoint.WEIGHTS_NAME)) for r in runs)
    assert sorted(compiled) == sorted(eager)  # no torch.compile wrapper prefix (_orig_mod.) in the names
    a, b = (models.load(str(r.final_checkpoint), device="cpu") for r in runs)
    size = a.image_size if isinstance(a.image_size, tuple) else (a.image_size, a.image_size)
    x = torch.rand(2, 3, *size)
    torch.testing.assert_close(b.encode_image(x), a.encode_image(x), atol=1e-3, rtol=0)
    task = ContrastiveTask(make_cfg(tmp_path / "c", shapes, model={"model": "vlm-tiny", "compile": True}))
    task.dist = task.setup()
    task.build_model()
    task.start_training()  # the option is applied, not only harmless: the step calls the compiled module
    assert task.model is not task.forward and task.model._orig_mod is task.forward
    saved = to_dict(ContrastiveTask(make_cfg(tmp_path / "c", shapes, model={"model": "vlm-tiny"})).cfg)
    del saved["model"]["compile"]
    assert config_differences(saved, to_dict(task.cfg), ContrastiveTask.resume_free) == []


def test_accumulation_equals_one_big_batch(tmp_path, shapes):
    """Cached-feature accumulation computes the same gradient as the full batch: same weights after 2 steps."""
    a = train(make_cfg(tmp_path / "a", shapes, steps=2, data={"val_fraction": 0.0}), progress=False)
    b = train(
        make_cfg(tmp_path / "b", shapes, steps=2, data={"val_fraction": 0.0}, optim={"accum_steps": 4}),
        progress=False,
    )
    assert_same_weights(a.final_checkpoint, b.final_checkpoint, atol=2e-6)


def test_channels_last_trains_the_same_model(tmp_path, shapes):
    """`model.channels_last` changes the memory layout of a CNN tower and its batches, not the arithmetic: the loss of
    every step equals the default layout's up to float rounding, and the checkpoint loads and embeds as usual.
    (Weights are not compared: Adam's first steps move each weight by about lr times the sign of its gradient, so
    rounding flips the sign of near-zero gradients into differences of lr.)"""
    runs, losses = runs_off_and_on(tmp_path, shapes, "channels_last", steps=4)
    assert len(losses[0]) == 4 and losses[0][0] != losses[0][-1]  # it trained
    assert losses[1][0] == pytest.approx(losses[0][0], rel=1e-5)  # the same forward
    assert losses[1] == pytest.approx(losses[0], rel=3e-3)  # then rounding compounds; a step moves it by 10-20 %
    default, channels_last = (models.load(str(r.final_checkpoint), device="cpu") for r in runs)
    x = torch.rand(2, 3, 64, 64)
    torch.testing.assert_close(channels_last.encode_image(x), default.encode_image(x), atol=1e-3, rtol=0)
    task = ContrastiveTask(make_cfg(tmp_path / "c", shapes, model={"model": "vlm-rn", "channels_last": True}))
    task.dist = task.setup()
    task.build_model()  # the option is applied, not only harmless
    assert task.encoders.model.visual.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    # A resume may switch it, also on a run saved before the option existed (no such key there).
    saved = to_dict(ContrastiveTask(make_cfg(tmp_path / "c", shapes, model={"model": "vlm-rn"})).cfg)
    del saved["model"]["channels_last"]
    assert config_differences(saved, to_dict(task.cfg), ContrastiveTask.resume_free) == []


def test_lock_image_tower_keeps_it_fixed(tmp_path, shapes):
    cfg = make_cfg(tmp_path, shapes, steps=3, model={"lock_image": True}, data={"val_fraction": 0.0})
    result = train(cfg, progress=False)
    torch.manual_seed(1)  # the trainer seeds with cfg.seed before building the model
    start = models.load("vlm-tiny", device="cpu").model.state_dict()
    end = weights(result.final_checkpoint)
    for k, v in end.items():
        if k.startswith("visual."):
            torch.testing.assert_close(v, start[k], msg=k)
    assert not torch.equal(end["text_projection"], start["text_projection"])


def test_siglip_training_round_trips(tmp_path, shapes):
    cfg = make_cfg(tmp_path, shapes, steps=3, loss={"loss": "siglip"}, data={"val_fraction": 0.0})
    result = train(cfg, progress=False)
    loaded = models.load(str(result.final_checkpoint), device="cpu")
    assert loaded.model.logit_bias is not None
    torch.testing.assert_close(loaded.model.logit_bias.detach(), weights(result.final_checkpoint)["logit_bias"])


def test_refuses_to_overwrite_and_to_resume_a_different_run(tmp_path, shapes):
    train(make_cfg(tmp_path, shapes, steps=2, save_every=1), progress=False)
    with pytest.raises(CheckpointError, match="already holds checkpoints"):
        train(make_cfg(tmp_path, shapes, steps=2), progress=False)
    with pytest.raises(CheckpointError, match=r"optim\.lr: checkpoint 0\.001 vs now 0\.002"):
        train(make_cfg(tmp_path, shapes, steps=2, resume=True, optim={"lr": 2e-3}), progress=False)


def test_a_run_saved_before_a_setting_existed_resumes(tmp_path, shapes):
    """A checkpoint written by older code lacks the settings added since; they count as their defaults (which keep
    the older behaviour), so the run resumes, and a changed setting is still refused."""
    train(make_cfg(tmp_path, shapes, steps=2, save_every=1), progress=False)
    (_, first), (_, last) = checkpoint.list_step_checkpoints(tmp_path / "run")
    shutil.rmtree(last)  # as if stopped after step 1
    state_file = first / checkpoint.TRAIN_STATE_NAME
    state = torch.load(state_file, weights_only=True)
    del state["config"]["data"]["first_caption_p"]  # as a checkpoint from before the option was added
    torch.save(state, state_file)
    with pytest.raises(CheckpointError, match=r"first_caption_p: checkpoint 0\.0 vs now 0\.5"):
        train(make_cfg(tmp_path, shapes, steps=2, resume=True, data={"first_caption_p": 0.5}), progress=False)
    assert train(make_cfg(tmp_path, shapes, steps=2, resume=True), progress=False).steps == 2
    assert [s for s, _ in checkpoint.list_step_checkpoints(tmp_path / "run")] == [1, 2]  # step 2 was trained again


def test_bad_rows_are_skipped_and_reported(tmp_path, shapes):
    csv = tmp_path / "pairs.csv"
    rows = (shapes / "pairs.csv").read_text().splitlines()
    rows.insert(3, "images/missing.png,a purple star")
    rows.insert(5, "../../etc/passwd,sneaky")
    csv.write_text("\n".join(rows) + "\n")
    cfg = make_cfg(tmp_path, shapes, steps=1, data={"train_data": str(csv), "data_root": str(shapes)})
    train(cfg, progress=False)
    report = (Path(cfg.output_dir) / "bad_rows.jsonl").read_text()
    assert '"row": 4' in report and "missing file" in report
    assert '"row": 6' in report and "escapes the dataset root" in report
    with pytest.raises(DataError, match="missing file"):
        train(
            make_cfg(tmp_path / "strict", shapes, steps=1, data={**cfg.data.__dict__, "strict": True}), progress=False
        )


def test_config_errors_are_clear(tmp_path, shapes):
    with pytest.raises(ConfigError, match="divisible"):
        train(make_cfg(tmp_path, shapes, batch_size=18, optim={"accum_steps": 4}), progress=False)
    with pytest.raises(DataError, match="lower --batch-size"):
        train(make_cfg(tmp_path / "b", shapes, batch_size=512), progress=False)


# -- processes: SIGKILL + resume, torchrun -------------------------------------------------------------------------


def _cli(tmp: Path, data: Path, out: Path, *extra: str, steps: int = 12) -> list[str]:
    return [
        sys.executable, "-m", "vlm", "train", "--model", "vlm-tiny", "--train-data", str(data / "pairs.csv"),
        "--output-dir", str(out), "--batch-size", "16", "--steps", str(steps), "--seed", "5", "--val-fraction", "0",
        "--log-every", "1", "--no-tensorboard", "--warmup-steps", "2", *extra,
    ]  # fmt: skip


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_sigkill_and_resume_ends_with_the_same_weights(tmp_path, shapes):
    straight = tmp_path / "straight"
    subprocess.run(_cli(tmp_path, shapes, straight, "--workers", "0"), check=True, env=_env(), capture_output=True)
    killed = tmp_path / "killed"
    cmd = _cli(tmp_path, shapes, killed, "--workers", "2", "--save-every", "4")
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while checkpoint.latest(killed) is None and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # mid-way: after the step-4 checkpoint, before the end
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (killed / "final").exists()
    # A half-written checkpoint directory never carries the final name: everything listed is complete.
    for _, path in checkpoint.list_step_checkpoints(killed):
        checkpoint.read_config(path)
    subprocess.run([*cmd, "--resume"], check=True, env=_env(), capture_output=True)
    assert_same_weights(straight / "final", killed / "final")
    steps = [
        int(line.split('"step": ')[1].split(",")[0]) for line in (killed / "metrics.jsonl").read_text().splitlines()
    ]
    assert steps == sorted(steps) and len(steps) == len(set(steps)) == 12  # resumed log has no repeats


@pytest.mark.slow
def test_torchrun_two_processes_equal_one_process(tmp_path, shapes):
    if shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None:
        pytest.skip("torchrun is not installed next to this Python")
    torchrun = str(Path(sys.executable).parent / "torchrun")
    single = tmp_path / "single"
    subprocess.run(
        _cli(tmp_path, shapes, single, "--workers", "0", steps=4), check=True, env=_env(), capture_output=True
    )
    double = tmp_path / "double"
    cmd = [
        torchrun,
        "--standalone",  # a free port on 127.0.0.1
        "--nproc_per_node",
        "2",
        "-m",
        *_cli(tmp_path, shapes, double, "--workers", "0", steps=4)[2:],
    ]
    run = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    assert_same_weights(single / "final", double / "final", atol=1e-5)


# -- GPU-readiness pieces that a CPU can show (issue 19) -------------------------------------------------------------


def test_rng_state_is_restored_per_rank(caplog):
    from vlm.train import restore_rng, rng_state

    cpu = torch.device("cpu")
    states = []
    for seed in (11, 22):
        torch.manual_seed(seed)
        states.append(rng_state(cpu))
    assert states[0]["cuda"] is None
    draws = []
    for rank in (0, 1):
        restore_rng({"per_rank": states}, rank, cpu)
        draws.append(torch.rand(3))
    torch.manual_seed(22)
    torch.testing.assert_close(draws[1], torch.rand(3))  # rank 1 got its own state, not rank 0's
    assert not torch.equal(draws[0], draws[1])

    torch.manual_seed(5)
    before = torch.get_rng_state()
    with caplog.at_level("WARNING", logger="vlm.train"):
        restore_rng({"per_rank": states}, 2, cpu)  # more processes than the checkpoint had
    assert torch.equal(torch.get_rng_state(), before) and "no RNG state for rank 2" in caplog.text
    # The old layout (rank 0's CPU state and a state for each of 8 GPUs it saw) resumes on fewer devices.
    restore_rng({"torch": states[1]["torch"], "cuda": [torch.zeros(16, dtype=torch.uint8)] * 8}, 0, cpu)
    torch.testing.assert_close(torch.rand(3), draws[1])


def test_process_group_timeout_is_configurable(monkeypatch):
    import datetime as dt

    from vlm import distributed

    seen = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda **kw: seen.update(kw))
    info = distributed.init("cpu", timeout=dt.timedelta(minutes=90))
    assert info.rank == 1 and seen["backend"] == "gloo" and seen["timeout"] == dt.timedelta(minutes=90)
    distributed.init("cpu")
    assert seen["timeout"] == dt.timedelta(minutes=60)  # NCCL's own default, 10 minutes, is too short
    with pytest.raises(ConfigError, match="dist_timeout_minutes"):
        make_cfg(Path("/tmp"), Path("/tmp"), dist_timeout_minutes=0)


@pytest.mark.slow
def test_torchrun_clip_loss_on_a_siglip_model(tmp_path, shapes):
    """A model with a SigLIP bias fine-tuned with --loss clip under DDP: the bias gets no gradient from InfoNCE,
    which stopped DDP at step 2; it is now kept fixed."""
    if shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None:
        pytest.skip("torchrun is not installed next to this Python")
    siglip = tmp_path / "siglip"
    subprocess.run(
        _cli(tmp_path, shapes, siglip, "--workers", "0", "--loss", "siglip", steps=1),
        check=True,
        env=_env(),
        capture_output=True,
    )
    cmd = _cli(tmp_path, shapes, tmp_path / "clip", "--workers", "0", "--loss", "clip", steps=3)
    cmd[cmd.index("--model") + 1] = str(siglip / "final")
    torchrun = str(Path(sys.executable).parent / "torchrun")
    run = subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node", "2", "-m", *cmd[2:]],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    before, after = weights(siglip / "final"), weights(tmp_path / "clip" / "final")
    torch.testing.assert_close(after["logit_bias"], before["logit_bias"])
    assert not torch.equal(after["text_projection"], before["text_projection"])
