"""Fine-tuning that keeps what the model knew: frozen BatchNorm statistics, fine-tune recipes, the reference score
and replay (issue 14). The demo model (a ResNet with BatchNorm) is the model fine-tuned."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from eval import reference
from eval.datasets import read_labelled
from eval.zeroshot import evaluate_zeroshot
from vlm import checkpoint, demo, finetune, models
from vlm.cli import main
from vlm.config import TrainConfig, from_dict
from vlm.errors import DataError
from vlm.synth import generate
from vlm.train import StepSampler, train


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shapes") / "data"
    generate(out, scenes=48, seed=5, image_size=64, progress=False)
    return out


def cfg_for(tmp: Path, data_dir: Path, **over) -> TrainConfig:
    base = {
        "output_dir": str(tmp / "run"),
        "batch_size": 8,
        "steps": 3,
        "seed": 0,
        "save_every": 0,
        "val_every": 0,
        "log_every": 1,
        "tensorboard": False,
        "model": {"model": "demo", "precision": "fp32"},
        "data": {"train_data": str(data_dir / "pairs.csv"), "workers": 0, "val_fraction": 0.0},
        "optim": {"lr": 1e-3},  # large on purpose: the statistics must stay put even when the weights move a lot
    }
    for key, value in over.items():
        base[key] = {**base[key], **value} if isinstance(value, dict) else value
    return from_dict(TrainConfig, base)


def norm_stats(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    keys = ("running_mean", "running_var", "num_batches_tracked")
    return {k: v for k, v in weights.items() if k.endswith(keys)}


def test_fine_tune_keeps_every_batchnorm_statistic_bit_identical(tmp_path, shapes):
    base = load_file(str(demo.DEMO_MODEL / checkpoint.WEIGHTS_NAME))
    before = {k: v.float() for k, v in norm_stats(base).items() if v.is_floating_point()}
    before |= {k: v for k, v in norm_stats(base).items() if not v.is_floating_point()}
    assert len(before) > 20  # the demo model's ResNet towers have BatchNorm layers
    result = train(cfg_for(tmp_path, shapes))
    after = load_file(str(result.final_checkpoint / checkpoint.WEIGHTS_NAME))
    for k, v in before.items():
        assert torch.equal(after[k], v), k
    # ... while the BatchNorm affine weights (and the rest) did train
    moved = [k for k in norm_stats(base) if k.replace("running_mean", "weight") in after and k.endswith("running_mean")]
    affine = [k.replace("running_mean", "weight") for k in moved]
    assert any(not torch.equal(after[k], base[k].float()) for k in affine)
    recorded = checkpoint.read_config(result.final_checkpoint)["provenance"]["config"]
    assert recorded["model"]["update_norm_stats"] is False
    # The option re-estimates them: the same run with update_norm_stats changes them (so the check above can fail).
    updated = train(cfg_for(tmp_path / "u", shapes, model={"update_norm_stats": True}))
    after_u = load_file(str(updated.final_checkpoint / checkpoint.WEIGHTS_NAME))
    assert any(not torch.equal(after_u[k], v) for k, v in before.items() if k.endswith("running_mean"))


def test_frozen_norm_layers_stay_in_eval_mode_through_train_and_eval_calls():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.LayerNorm(2))
    assert finetune.freeze_norm_stats(net) == ["1"]
    net.train()
    assert net[0].training and net[2].training and not net[1].training
    with models.evaluating(net):
        pass
    assert not net[1].training and net[0].training
    assert [n for n, _ in finetune.frozen_norm_layers(net)] == ["1"]


def test_recipe_defaults_depend_on_starting_from_weights(tmp_path, shapes):
    fine, notes = finetune.resolve(cfg_for(tmp_path, shapes, steps=1000, optim={"lr": None}))
    assert (fine.optim.lr, fine.optim.weight_decay, fine.optim.warmup_steps) == (1e-5, 0.1, 50)  # 5 % of 1000
    assert fine.model.update_norm_stats is False
    assert len(notes) == 1 and "fine-tune defaults: lr 1e-05" in notes[0] and "FLYP" in notes[0]
    scratch, notes = finetune.resolve(cfg_for(tmp_path, shapes, model={"model": "vlm-tiny"}, optim={"lr": None}))
    scratch_values = (scratch.optim.lr, scratch.optim.weight_decay, scratch.optim.warmup_steps)
    assert scratch_values == (5e-4, 0.2, 100)  # as before this issue
    assert scratch.model.update_norm_stats is True and notes[0].startswith("from scratch defaults")
    kept, _ = finetune.resolve(cfg_for(tmp_path, shapes, optim={"lr": 3e-4, "weight_decay": 0.05}))
    assert (kept.optim.lr, kept.optim.weight_decay) == (3e-4, 0.05)  # what the user set wins
    assert finetune.resolve(fine)[1] == []  # resolving twice changes nothing


def test_reference_is_scored_before_step_one_and_at_the_end(tmp_path, shapes):
    ref = reference.load([demo.REFERENCE[0]], workers=1)
    result = train(cfg_for(tmp_path, shapes, steps=2, data={"val_fraction": 0.25}), reference=ref)
    rows = [json.loads(line) for line in (result.output_dir / "metrics.jsonl").read_text().splitlines()]
    refs = [r for r in rows if "ref/score" in r]
    assert [r["step"] for r in refs] == [0, 2]
    assert rows.index(refs[0]) == 0  # before any training step was logged
    # Step 0 is the untouched demo model: an independent zero-shot evaluation of it, with the templates the set ships
    # (phrasings no shapes caption uses, as bench.shapes_zeroshot's), gives the same top-1; the generic ones do not.
    encoders = models.load("demo", device="cpu", precision="fp32")
    data = read_labelled(demo.REFERENCE_SHAPES, workers=1)
    templates = json.loads((demo.REFERENCE_SHAPES / "templates.json").read_text())
    assert tuple(templates) == demo.SHAPES_HELD_OUT_TEMPLATES
    expected = evaluate_zeroshot(encoders, data, templates).metrics["acc1"]
    assert refs[0]["ref/reference-shapes/acc1"] == pytest.approx(expected, abs=1e-6)
    assert evaluate_zeroshot(encoders, data, "generic").metrics["acc1"] != pytest.approx(expected, abs=1e-6)
    assert refs[0]["ref/score"] == refs[0]["ref/reference-shapes/acc1"]
    assert result.metrics["ref/score"] == refs[1]["ref/score"]  # the final report holds it
    written = json.loads((result.output_dir / "result.json").read_text())
    assert written["metrics"]["ref/score"] == refs[1]["ref/score"]


def test_a_labelled_reference_set_is_scored_with_the_templates_in_its_folder(tmp_path, tiny_encoders):
    generate(tmp_path / "s", scenes=12, seed=3, image_size=32, progress=False)
    labels = tmp_path / "s" / "labels.csv"
    data = read_labelled(labels, workers=1)
    plain = reference.load([f"zeroshot:{labels}"], workers=1)
    assert plain.sets[0].templates == "generic"
    expected = evaluate_zeroshot(tiny_encoders, data, "generic").metrics["acc1"]
    assert plain(tiny_encoders)["s/acc1"] == pytest.approx(expected, abs=1e-6)
    own = ["a {c} icon.", "{c}"]
    (tmp_path / "s" / "templates.json").write_text(json.dumps(own))
    named = reference.load([f"zeroshot:{labels}", str(tmp_path / "s")], workers=1)  # the labels file or its folder
    assert [s.templates for s in named.sets] == [tuple(own), tuple(own)]
    expected = evaluate_zeroshot(tiny_encoders, data, own).metrics["acc1"]
    assert named(tiny_encoders)["s/acc1"] == pytest.approx(expected, abs=1e-6)
    (tmp_path / "s" / "templates.json").write_text(json.dumps(["no class field"]))
    with pytest.raises(DataError, match=r"templates\.json.*no \{c\}"):
        reference.load([f"zeroshot:{labels}"], workers=1)


def test_demo_reference_icons_are_the_ones_its_run_held_out():
    pairs = reference.read_set(demo.REFERENCE[1]).data
    names = {Path(p.image.path).name for p in pairs}
    assert len(pairs) == 185  # the model card's "held-out icons"
    assert names == {Path(p).name for p in demo.held_out_icons()}


def test_unreadable_reference_stops_the_cli_before_training(tmp_path, shapes, capsys):
    bad = tmp_path / "ref.csv"
    bad.write_text("path,colour\nnot-there.png,red\n")
    out = tmp_path / "run"
    argv = ["train", "--model", "demo", "--train-data", str(shapes / "pairs.csv"), "--output-dir", str(out),
            "--reference", str(bad), "--steps", "2", "--batch-size", "8", "--workers", "0"]  # fmt: skip
    assert main(argv) != 0
    err = capsys.readouterr().err
    assert "cannot read reference set" in err and str(bad) in err
    assert "vlm train: fine-tune defaults: lr 1e-05, weight decay 0.1" in err  # said before anything else
    assert not out.exists()  # refused before anything was built or written
    with pytest.raises(DataError, match="does not exist"):
        reference.load([f"zeroshot:{tmp_path / 'nothing'}"])


def test_replay_batches_mix_the_keep_set_at_the_fraction_and_resume_identically():
    n_new, n_keep, batch, keep = 50, 30, 10, finetune.keep_count(10, 0.3)
    full = list(finetune.ReplaySampler(n_new, n_keep, batch, keep, 0, 1, 4, 0, 12))
    for s in range(12):
        rows = [i for _, i in full[s * batch : (s + 1) * batch]]
        assert sum(i >= n_new for i in rows) == keep == 3
        assert len(set(rows)) == batch
    # every new pair is seen once per epoch of the new stream (50 // 7 = 7 steps), as StepSampler would
    first_epoch = [i for _, i in full[: 7 * batch] if i < n_new]
    assert len(set(first_epoch)) == len(first_epoch) == 49
    resumed = list(finetune.ReplaySampler(n_new, n_keep, batch, keep, 0, 1, 4, 5, 12))
    assert resumed == full[5 * batch :]
    ranks = [list(finetune.ReplaySampler(n_new, n_keep, batch, keep, r, 2, 4, 0, 12)) for r in (0, 1)]
    joined = [x for s in range(12) for r in (0, 1) for x in ranks[r][s * 5 : (s + 1) * 5]]
    assert joined == full
    assert len(StepSampler(50, 10, 0, 1, 4, 0, 12)) == len(full)
    with pytest.raises(DataError, match="fewer than"):
        finetune.ReplaySampler(n_new, 2, batch, keep, 0, 1, 4, 0, 12)


def test_replay_run_trains_on_both_sets(tmp_path, shapes):
    keep = tmp_path / "keep"
    generate(keep, scenes=16, seed=9, image_size=64, progress=False)
    cfg = cfg_for(tmp_path, shapes, steps=2, data={"keep_data": str(keep / "pairs.csv"), "keep_fraction": 0.25})
    result = train(cfg)
    recorded = checkpoint.read_config(result.final_checkpoint)["provenance"]["config"]["data"]
    assert recorded["keep_data"] == str(keep / "pairs.csv") and recorded["keep_fraction"] == 0.25


def _demo_like(folder: Path, train_data: str, corpus: bool) -> Path:
    """A copy of the shipped demo model's folder whose card names `train_data` (and a data card where `corpus`)."""
    folder.mkdir()
    (folder / checkpoint.WEIGHTS_NAME).symlink_to((demo.DEMO_MODEL / checkpoint.WEIGHTS_NAME).resolve())
    record = json.loads((demo.DEMO_MODEL / checkpoint.CONFIG_NAME).read_text())
    record["provenance"]["config"]["data"]["train_data"] = train_data
    if not corpus:
        record["provenance"].pop("demo_data_card", None)
    (folder / checkpoint.CONFIG_NAME).write_text(json.dumps(record))
    return folder


def test_demo_replay_is_the_training_data_its_card_names_else_says_what_part_is_rebuilt(tmp_path, monkeypatch):
    assert "demo_data_card" in checkpoint.read_config(demo.DEMO_MODEL)["provenance"]  # the shipped one: corpus
    monkeypatch.setattr(demo, "DEMO_CORPUS_PAIRS", tmp_path / "no-make-demo" / "pairs.csv")  # not this machine's
    corpus = tmp_path / "demo-corpus" / "pairs.csv"
    corpus.parent.mkdir()
    corpus.write_text("path,caption\n")
    path, line = demo.replay_data(tmp_path / "replay", _demo_like(tmp_path / "here", str(corpus), corpus=True))
    assert path == corpus and "own training data" in line
    rebuilt = tmp_path / "replay" / "pairs.csv"  # replay_set reuses a set it built before
    rebuilt.parent.mkdir()
    rebuilt.write_text("path,caption\n")
    gone = str(tmp_path / "gone" / "pairs.csv")
    path, line = demo.replay_data(tmp_path / "replay", _demo_like(tmp_path / "corpus", gone, corpus=True))
    assert path == rebuilt and "part of" in line and "not its icon sets" in line and gone in line
    path, line = demo.replay_data(tmp_path / "replay", _demo_like(tmp_path / "first", gone, corpus=False))
    assert path == rebuilt and "own training recipe" in line
    # a run that drew its shapes through keep_data names pairs-artwork.csv: the corpus's pairs.csv holds both
    (corpus.parent / "pairs-artwork.csv").write_text("path,caption\n")
    named = str(corpus.parent / "pairs-artwork.csv")
    path, line = demo.replay_data(tmp_path / "replay", _demo_like(tmp_path / "artwork", named, corpus=True))
    assert path == corpus and "own training data" in line
    # the named corpus is gone, but `make demo` built one where it writes it
    monkeypatch.setattr(demo, "DEMO_CORPUS_PAIRS", corpus)
    path, line = demo.replay_data(tmp_path / "replay", _demo_like(tmp_path / "made", gone, corpus=True))
    assert path == corpus and "make demo" in line and gone in line
    path, line = demo.replay_data(tmp_path / "replay", _demo_like(tmp_path / "first2", gone, corpus=False))
    assert path == rebuilt  # the first recipe's model was not trained on the corpus
