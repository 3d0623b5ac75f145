"""WiSE-FT of a finished fine-tune run (`eval.wise_run`, what the app's Train tab offers): the sweep's two ends are
checked against what the trainer itself logged for the run (step 0 = the base, the last validation = the
fine-tune), the sweep is cached in the run folder, the exported α is the hand-computed average, and runs WiSE-FT
cannot use are refused before any model loads."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from eval import reference, wise_run
from eval.retrieval import evaluate_pairs
from vlm import checkpoint, demo, models, wiseft
from vlm.cli import main
from vlm.config import TrainConfig, from_dict
from vlm.errors import ConfigError
from vlm.rundir import RunDir
from vlm.synth import generate
from vlm.train import train

ALPHAS = "0,0.5,1"


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wise-run")
    generate(tmp / "new", scenes=48, seed=11, image_size=64, progress=False)
    generate(tmp / "known", scenes=16, seed=12, image_size=64, progress=False)
    cfg = from_dict(TrainConfig, {
        "output_dir": str(tmp / "run"), "batch_size": 8, "steps": 3, "seed": 0, "save_every": 0, "val_every": 0,
        "log_every": 1, "tensorboard": False, "model": {"model": "demo", "precision": "fp32"},
        "data": {"train_data": str(tmp / "new" / "pairs.csv"), "workers": 0, "val_fraction": 0.25,
                 "reference": [f"retrieval:{tmp / 'known' / 'pairs.csv'}"]},
        "optim": {"lr": 1e-3},  # large: the two ends must differ for the sweep to mean anything
    })  # fmt: skip
    result = train(cfg, progress=False, validate=evaluate_pairs, reference=reference.load(cfg.data.reference))
    return result.output_dir


def logged(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_sweep_ends_are_what_the_trainer_logged_and_the_sweep_is_cached(run, monkeypatch):
    assert wise_run.cached(run, ALPHAS) is None
    sweep = wise_run.sweep_run(run, ALPHAS, device="cpu")
    assert [p.alpha for p in sweep.points] == [0.0, 0.5, 1.0]
    refs = [m for m in logged(run) if "ref/score" in m]
    vals = [m for m in logged(run) if "val/image_retrieval_recall@5" in m]
    # α=0 is the model the run started from (the trainer's step-0 reference score), α=1 its final model.
    assert sweep.at(0).scores["reference"] == pytest.approx(refs[0]["ref/score"], abs=1e-6)
    assert sweep.at(1).scores["reference"] == pytest.approx(refs[-1]["ref/score"], abs=1e-6)
    assert sweep.at(1).scores["val"] == pytest.approx(vals[-1]["val/image_retrieval_recall@5"], abs=1e-6)
    assert sweep.at(0.5000000001).alpha == 0.5  # a slider's float finds its point
    assert sweep.picked == wiseft.pick(sweep.points, "best-sum")
    assert sweep.frontier.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sweep.frontier.parent == RunDir(run).wise_ft
    # A second sweep reads the cache: no model is loaded.
    monkeypatch.setattr(wiseft.WiseFT, "load", lambda *a, **k: pytest.fail("the cached sweep was recomputed"))
    again = wise_run.sweep_run(run, ALPHAS, device="cpu")
    assert again.points == sweep.points and again.picked == sweep.picked and again.labels == sweep.labels
    assert wise_run.cached(run, ALPHAS) == again and wise_run.cached(run, "0,1") is None  # other α: not cached
    with pytest.raises(ConfigError, match="was not scored"):
        again.at(0.3)


def test_export_is_the_hand_average_and_loads_as_a_model(run):
    path = wise_run.export_run(run, 0.5000000001, device="cpu", scores={"val": 0.5})
    assert path == RunDir(run).wise_ft / "alpha-0.5" and checkpoint.is_checkpoint_dir(path)
    base = load_file(str(demo.DEMO_MODEL / "model.safetensors"))
    tuned = load_file(str(run / "final" / "model.safetensors"))
    mixed = load_file(str(path / "model.safetensors"))
    for key, a in base.items():  # the demo's fp16 weights are averaged in float32 (the exported dtype)
        if a.is_floating_point():
            torch.testing.assert_close(mixed[key].float(), 0.5 * a.float() + 0.5 * tuned[key].float())
    made = checkpoint.read_config(path)["provenance"]["wise_ft"]
    tuned_fingerprint = checkpoint.read_config(run / "final")["fingerprint"]
    assert made["alpha"] == 0.5 and made["finetuned_fingerprint"] == tuned_fingerprint
    encoders = models.load(str(path), device="cpu", precision="fp32")
    assert encoders.fingerprint == checkpoint.read_config(path)["fingerprint"]
    assert wise_run.export_run(run, 0.5, device="cpu") == path  # written once


def test_runs_wise_ft_cannot_use_are_refused_before_any_model_loads(run, tmp_path, monkeypatch):
    monkeypatch.setattr(wiseft.WiseFT, "load", lambda *a, **k: pytest.fail("a model was loaded"))
    unfinished = tmp_path / "unfinished"
    shutil.copytree(run, unfinished, ignore=shutil.ignore_patterns("final", "wise_ft"))
    with pytest.raises(ConfigError, match="no final model"):
        wise_run.sweep_run(unfinished)
    scratch = tmp_path / "scratch"
    shutil.copytree(run, scratch, ignore=shutil.ignore_patterns("wise_ft"))
    config = json.loads((scratch / "config.json").read_text())
    config["model"]["model"] = "vlm-tiny"
    (scratch / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="from scratch"):
        wise_run.sweep_run(scratch)
    with pytest.raises(ConfigError, match="not a training run"):
        wise_run.sweep_run(tmp_path)
    with pytest.raises(ConfigError, match=r"within \[0, 1\]"):
        wise_run.export_run(run, 1.5)


def test_cli_sweeps_a_run_folder(run, capsys):
    assert main(["wise-ft", "--run", str(run), "--alphas", "0,1", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    record = json.loads((RunDir(run).wise_ft / "wise_ft.json").read_text())
    assert [p["alpha"] for p in record["points"]] == [0.0, 1.0] and "← picked" in out
    assert checkpoint.is_checkpoint_dir(RunDir(run).wise_ft / f"alpha-{record['picked_alpha']:g}")
    assert main(["wise-ft", "demo", "--run", str(run)]) == 2
    assert "drop BASE" in capsys.readouterr().err
    assert main(["wise-ft", "demo", "--val", "x"]) == 2
    assert "give FINETUNED, --reference, --out" in capsys.readouterr().err
