"""Fine-tuning that keeps what the model knew (issue 14): the shipped demo model fine-tuned on Fashion-MNIST pairs,
scored on the new data and on what it knew, on one budget (steps, batch, seed) for every row.

Base: the demo model (vlm-rn, BatchNorm). New data: Fashion-MNIST train5k from ../shared/data, each image captioned
"a photo of a {label}.", a seeded 1,000 images held out for the score and 500 for validation (the trainer's
validation and WiSE-FT's choice of alpha), the other 3,500 for training. Scores of every row:

    fashion      zero-shot top-1 on the 1,000 held-out images (class names, the "generic" templates)
    shapes       `bench.shapes_zeroshot`'s set: 480 held-out single-object scenes, its held-out templates, 48 labels
    twemoji R@5  text->image recall@5 of all 1,911 Twemoji icons against their names (../shared/data)
    seconds      wall time of the training (and of the alpha sweep for WiSE-FT) on this shared machine

Rows:
    base         the demo model itself
    (a) open_clip_train   its plain fine-tune from the same weights (`--pretrained` the demo weights), with the
                 fine-tuning settings its README documents (lr 1e-5, wd 0.1, cosine; its warm-up of 1,000 steps is
                 longer than this budget, so every row uses the same short warm-up); BatchNorm statistics updated, as
                 its `model.train()` does
    (b) vlm train        this trainer's defaults for a run from weights (`vlm.finetune`: frozen BatchNorm
                 statistics, lr 1e-5, wd 0.1, warm-up min(500, 5 %), cosine)
    (c) (b) + WiSE-FT    (b)'s weights averaged with the base at the alpha `vlm.wiseft` picks (best sum of the
                 validation top-1 and the demo reference set's shapes top-1; never the scored sets)
    (d) LoRA     `vlm.lora` adapters on both towers (rank 8, peft's default targets) at lr 5e-4 (LoRA's usual range;
                 1e-5 barely moves adapters that start at zero), the rest as (b)
    (e) replay   (b) + half of each batch replayed from the demo model's own recipe (`vlm.demo.replay_set`: 2,000
                 of its shapes scenes and all its icons)
    (f) replay at lr 3e-4, then WiSE-FT: the combination that came out best (README)

    python -m bench.finetune                  # 200 steps of 64, seed 0 (about 30 min on 2 busy cores)
    python -m bench.finetune --rows b,e --steps 50
"""

from __future__ import annotations

import argparse
import csv
import importlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.common import report, shared_data
from bench.shapes_zeroshot import FIRST_SEED, HELD_OUT_TEMPLATES, scenes
from eval.datasets import read_labelled
from eval.images import LabelledData
from eval.reference import read_set
from eval.retrieval import evaluate_pairs
from eval.zeroshot import evaluate_zeroshot
from vlm import demo, models
from vlm.atomic import atomic_write_json
from vlm.cli import configure_logging
from vlm.config import TrainConfig, from_dict
from vlm.data import Pair, read_pairs

LOG = logging.getLogger("bench.finetune")

CAPTION = "a photo of a {c}."
TEST, VAL = 1000, 500
ROWS = ("base", "a", "b", "c", "d", "e", "f")
ALPHAS = (0.0, 0.2, 0.4, 0.5, 0.6, 0.8, 1.0)
LORA_LR = 5e-4  # adapters start at zero and hold few parameters: LoRA fine-tunes use 1e-4 to 1e-3 (Hu et al. 2021)
GOAL = {"fashion": 0.80, "shapes": 0.90, "twemoji_ratio": 0.9}


@dataclass(frozen=True)
class Data:
    root: Path  # the Fashion-MNIST folder: the CSVs' paths are relative to it
    train_csv: Path
    val_csv: Path
    open_clip_csv: Path  # absolute paths, exactly steps x batch rows (open_clip_train counts epochs over rows)
    fashion_test: LabelledData
    fashion_val: LabelledData
    shapes: LabelledData
    twemoji: list[Pair]


def prepare(work: Path, steps: int, batch: int, seed: int) -> Data:
    root = shared_data("fashion_mnist_train5k")
    fashion = read_labelled(root / "labels.csv", progress=False)
    order = np.random.default_rng(seed).permutation(len(fashion))
    test, val, train = order[:TEST], order[TEST : TEST + VAL], order[TEST + VAL :]
    work.mkdir(parents=True, exist_ok=True)

    def rows(indices: np.ndarray) -> list[tuple[str, str]]:
        out = []
        for i in indices:
            path = Path(fashion.images.refs[i].path).resolve().relative_to(root.resolve()).as_posix()
            out.append((path, CAPTION.format(c=fashion.classes[fashion.targets[i]])))
        return out

    train_rows = rows(train)
    drawn = np.concatenate([np.random.default_rng(seed + p).permutation(len(train_rows)) for p in range(
        -(-steps * batch // len(train_rows)))])[: steps * batch]  # fmt: skip
    for target, chosen in (
        (work / "train.csv", train_rows),
        (work / "val.csv", rows(val)),
        (work / "train_open_clip.csv", [(str(root / train_rows[i][0]), train_rows[i][1]) for i in drawn]),
    ):
        with open(target, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["filepath", "title"])
            w.writerows(chosen)
    twemoji = read_pairs(shared_data("twemoji_captions") / "pairs.csv", progress=False).pairs
    return Data(
        root=root,
        train_csv=work / "train.csv",
        val_csv=work / "val.csv",
        open_clip_csv=work / "train_open_clip.csv",
        fashion_test=fashion.subset(test),
        fashion_val=fashion.subset(val),
        shapes=scenes(10, FIRST_SEED, 128),
        twemoji=[Pair(p.key, p.image, p.captions[:1]) for p in twemoji],
    )


def score(encoders: models.Encoders, data: Data) -> dict[str, float]:
    return {
        "fashion": evaluate_zeroshot(encoders, data.fashion_test, "generic").metrics["acc1"],
        "shapes": evaluate_zeroshot(encoders, data.shapes, HELD_OUT_TEMPLATES).metrics["acc1"],
        "twemoji R@5": evaluate_pairs(encoders, data.twemoji, ks=(5,))["image_retrieval_recall@5"],
    }


def train_ours(data: Data, out: Path, steps: int, batch: int, seed: int, **over: dict[str, Any]) -> Path:
    """`vlm train` from the demo model; `over` sets model/keep/optim/lora fields (everything else: the defaults)."""
    from eval.retrieval import evaluate_pairs as validate
    from vlm.train import train

    if (out / "final").is_dir():  # a finished run of an earlier invocation
        return out / "final"
    warmup = max(1, round(0.05 * steps))
    cfg = {
        "output_dir": str(out), "batch_size": batch, "steps": steps, "seed": seed, "save_every": 0,
        "val_every": 0, "log_every": 50, "tensorboard": False,
        "model": {"model": "demo", "precision": "fp32", **over.get("model", {})},
        "data": {"train_data": str(data.train_csv), "val_data": str(data.val_csv), "data_root": str(data.root),
                 "image_key": "filepath", "caption_key": "title", "workers": 1, **over.get("keep", {})},
        "optim": {"warmup_steps": warmup, **over.get("optim", {})},
        **({"lora": over["lora"]} if "lora" in over else {}),
    }  # fmt: skip
    return train(from_dict(TrainConfig, cfg), progress=False, validate=validate).final_checkpoint


def train_open_clip(data: Data, logs: Path, steps: int, batch: int, seed: int) -> Path:
    from open_clip_train.main import main as open_clip_main

    name = f"finetune-s{seed}"
    ckpt = logs / name / "checkpoints" / "epoch_1.pt"
    if ckpt.is_file():
        return ckpt
    models.register_model_configs()
    args = [
        "--train-data", str(data.open_clip_csv), "--dataset-type", "csv", "--csv-separator", ",",
        "--csv-img-key", "filepath", "--csv-caption-key", "title", "--model", "vlm-rn",
        "--pretrained", str(demo.DEMO_MODEL / "model.safetensors"), "--device", "cpu", "--precision", "fp32",
        "--workers", "1", "--batch-size", str(batch), "--epochs", "1", "--lr", "1e-5", "--wd", "0.1",
        "--warmup", str(max(1, round(0.05 * steps))), "--seed", str(seed), "--logs", str(logs), "--name", name,
        "--save-frequency", "1", "--zeroshot-frequency", "0", "--val-frequency", "0", "--log-every-n-steps", "50",
    ]  # fmt: skip
    cwd = os.getcwd()
    try:
        rc = open_clip_main(args)
    finally:
        os.chdir(cwd)
    if rc not in (None, 0) or not ckpt.is_file():
        raise SystemExit(f"open_clip_train failed (return {rc}); no {ckpt}")
    return ckpt


def wise(base: Path, finetuned: Path, out: Path, data: Data) -> tuple[Path, float]:
    """WiSE-FT of `finetuned` with `base` at the alpha `vlm.wiseft` picks on the validation images and the demo
    reference shapes (best sum); returns the exported checkpoint and alpha."""
    from eval.reference import headline
    from vlm import wiseft

    reference = read_set(demo.REFERENCE[0])
    scorers = {
        "val": lambda enc: evaluate_zeroshot(enc, data.fashion_val, "generic").metrics["acc1"],
        "reference": lambda enc: headline(reference, enc),
    }
    w = wiseft.WiseFT.load(str(base), str(finetuned), device="cpu", precision="fp32")
    points = w.sweep(ALPHAS, scorers)
    alpha = wiseft.pick(points, "best-sum")
    alpha = getattr(alpha, "alpha", alpha)
    return Path(w.export(alpha, out)), float(alpha)


def run_row(row: str, data: Data, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    steps, batch, seed = args.steps, args.batch_size, args.seed
    start = time.perf_counter()
    note = ""
    if row == "base":
        encoders, what = models.load("demo", device="cpu", precision="fp32"), "demo model (base)"
    elif row == "a":
        ckpt = train_open_clip(data, work / "a-open_clip", steps, batch, seed)
        encoders, what = models.load("vlm-rn", str(ckpt), device="cpu", precision="fp32"), "(a) open_clip_train"
    elif row == "b":
        encoders = models.load(str(train_ours(data, work / "b", steps, batch, seed)), device="cpu", precision="fp32")
        what = "(b) vlm train defaults"
    elif row == "c":
        b = train_ours(data, work / "b", steps, batch, seed)
        ckpt, alpha = wise(demo.DEMO_MODEL, b, work / "c-wise", data)
        encoders, what, note = models.load(str(ckpt)), "(c) (b) + WiSE-FT", f"alpha {alpha:g}"
    elif row == "d":
        importlib.import_module("vlm.lora")  # ImportError (row not run) where LoRA has not landed
        lora, optim = {"lora_rank": 8}, {"lr": LORA_LR}
        ckpt = train_ours(data, work / "d-lora", steps, batch, seed, lora=lora, optim=optim)
        encoders, what = models.load(str(ckpt), device="cpu", precision="fp32"), "(d) LoRA"
        note = f"rank 8, both towers, lr {LORA_LR:g}"
    elif row == "e":
        keep = {"keep_data": str(demo.replay_set(work / "demo-replay")), "keep_fraction": 0.5}
        ckpt = train_ours(data, work / "e-replay", steps, batch, seed, keep=keep)
        encoders, what, note = models.load(str(ckpt), device="cpu", precision="fp32"), "(e) replay", "keep 0.5"
    else:
        keep = {"keep_data": str(demo.replay_set(work / "demo-replay")), "keep_fraction": 0.5}
        e = train_ours(data, work / "f-replay-3e-4", steps, batch, seed, keep=keep, optim={"lr": 3e-4})
        ckpt, alpha = wise(demo.DEMO_MODEL, e, work / "f-wise", data)
        encoders, what = models.load(str(ckpt), device="cpu", precision="fp32"), "(f) replay lr 3e-4 + WiSE-FT"
        note = f"keep 0.5, alpha {alpha:g}"
    seconds = time.perf_counter() - start if row != "base" else 0.0
    return {"run": what, **score(encoders, data), "seconds": round(seconds, 1), "note": note}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", default=",".join(ROWS), help=f"which rows (default: all of {','.join(ROWS)})")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", default="runs/bench-finetune",
                   help="runs and each row's scores are kept here; a finished row is reused, not rerun")  # fmt: skip
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = p.parse_args(argv)
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    if unknown := sorted(set(rows) - set(ROWS)):
        p.error(f"unknown rows {unknown}; choose from {list(ROWS)}")
    torch.set_num_threads(args.threads)
    configure_logging()
    logging.getLogger("bench").setLevel(logging.INFO)
    work = Path(args.work).resolve() / f"steps{args.steps}-batch{args.batch_size}-seed{args.seed}"
    data = prepare(work, args.steps, args.batch_size, args.seed)
    results = []
    for row in rows:
        LOG.info("row %s", row)
        done = work / f"row-{row}.json"  # scores of a row an earlier invocation finished (deterministic)
        if done.is_file():
            results.append(json.loads(done.read_text(encoding="utf-8")))
            continue
        try:
            results.append(run_row(row, data, work, args))
            atomic_write_json(done, results[-1])
        except ImportError as e:  # a row whose library part (vlm.wiseft, vlm.lora) is not in this checkout
            LOG.warning("row %s not run: %s", row, e)
            results.append({"run": f"({row}) not run", "note": f"{type(e).__name__}: {e}"[:120]})
        LOG.info("%s", results[-1])
    base = next((r for r in results if r["run"].startswith("demo")), None)
    if base is not None:
        for r in results:
            if "twemoji R@5" in r:
                r["twemoji vs base"] = round(r["twemoji R@5"] / base["twemoji R@5"], 3)
    report("finetune", results, steps=args.steps, batch_size=args.batch_size, seed=args.seed, goal=GOAL,
           threads=args.threads, fashion_test=len(data.fashion_test), shapes_images=len(data.shapes),
           twemoji_icons=len(data.twemoji), note="seconds are wall time on a shared machine")  # fmt: skip
    met = [
        r["run"]
        for r in results
        if "fashion" in r and r["fashion"] >= GOAL["fashion"] and r["shapes"] >= GOAL["shapes"]
        and r.get("twemoji vs base", 0) >= GOAL["twemoji_ratio"]
    ]  # fmt: skip
    verdict = "met by " + ", ".join(met) if met else "not met"
    print(f"\ngoal (fashion >= 0.80, shapes >= 0.90, twemoji >= 0.9 x base): {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
