"""This project's trainer against open_clip_train: same data, model, steps, batch, seed and schedule; both
checkpoints evaluated with this project's evaluator.

Data (from ../shared/data): Fashion-MNIST train5k, each image captioned from its class name with a few templates
("a photo of a {c}.", ...), and Twemoji images with their Unicode names. A seeded 20% of each is held out:
zero-shot top-1 on the Fashion-MNIST part (class names, "generic" templates), retrieval R@5 on the Twemoji part.
The training pairs are written twice under --out: `pairs.csv` (one row per caption, paths relative to the data root)
for `vlm train`, and `pairs_open_clip.csv` for `open_clip_train` (absolute paths).

open_clip_train counts epochs over CSV rows and has no step limit for CSV data, so its CSV holds exactly
steps x batch rows: seeded shuffled passes over the training images, each row with one of that image's captions
drawn at random, the last pass cut short. It then trains one epoch of exactly `steps` steps. This project's trainer
runs the same `steps` over the same images and draws a caption per sample the same way, so both see every image
equally often (one row per caption instead would give Fashion-MNIST, with 4 captions per image, 4x the weight of
Twemoji's single-caption images). Both use open_clip's training transform, AdamW (0.9, 0.98, 1e-6), weight decay 0.2,
gradient clipping at 1.0, linear warm-up then cosine decay to 0, fp32 on CPU.

    python -m bench.train_quality                       # vlm-tiny, 300 steps of 64, seed 0
    python -m bench.train_quality --model vlm-small --steps 600 --seed 1
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bench.common import report, shared_data
from eval.datasets import read_labelled
from eval.images import LabelledData
from eval.retrieval import evaluate_pairs
from eval.zeroshot import evaluate_zeroshot
from vlm import models
from vlm.cli import configure_logging
from vlm.config import TrainConfig, from_dict
from vlm.data import Pair, read_pairs

LOG = logging.getLogger("bench.train_quality")

FASHION_CAPTIONS = ("a photo of a {c}.", "a {c}.", "a picture of a {c}.", "a black and white photo of a {c}.")
EVAL_TEMPLATES = "generic"


@dataclass(frozen=True)
class Prepared:
    data_root: Path  # ../shared/data
    ours_csv: Path  # relative paths, for vlm train --data-root data_root
    open_clip_csv: Path  # absolute paths, for open_clip_train
    rows: int  # distinct caption rows
    images: int  # training images
    fashion_test: LabelledData
    twemoji_test: list[Pair]


def held_out_mask(n: int, fraction: float, seed: int) -> np.ndarray:
    """(n,) bool: a seeded `fraction` of the items, for evaluation only."""
    mask = np.zeros(n, dtype=bool)
    mask[np.random.default_rng(seed).permutation(n)[: round(n * fraction)]] = True
    return mask


def passes(n: int, total: int, seed: int) -> np.ndarray:
    """`total` indices into range(n): seeded shuffled passes over all n, the last one cut short."""
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.permutation(n) for _ in range(-(-total // n))])[:total]


def prepare(out: Path, samples: int, held_out: float = 0.2, seed: int = 0) -> Prepared:
    """Split both datasets and write the training pairs (see the module docstring)."""
    fashion_dir, twemoji_dir = shared_data("fashion_mnist_train5k"), shared_data("twemoji_captions")
    root = fashion_dir.parent
    fashion = read_labelled(fashion_dir / "labels.csv", progress=False)
    fashion_test_mask = held_out_mask(len(fashion), held_out, seed)
    twemoji = read_pairs(twemoji_dir / "pairs.csv", progress=False).pairs
    twemoji_test_mask = held_out_mask(len(twemoji), held_out, seed + 1)
    images: list[tuple[Path, list[str]]] = []  # (image, its captions)
    for i in np.flatnonzero(~fashion_test_mask):
        name = fashion.classes[fashion.targets[i]]
        images.append((Path(fashion.images.refs[i].path), [t.format(c=name) for t in FASHION_CAPTIONS]))
    for pair, test in zip(twemoji, twemoji_test_mask, strict=True):
        if not test:
            images.append((Path(pair.image.path), list(pair.captions)))
    rows = [(path, c) for path, captions in images for c in captions]
    rng = np.random.default_rng(seed + 2)
    drawn = [images[i] for i in passes(len(images), samples, seed)]
    sampled = [(path, captions[rng.integers(len(captions))]) for path, captions in drawn]
    out.mkdir(parents=True, exist_ok=True)
    ours, theirs = out / "pairs.csv", out / "pairs_open_clip.csv"
    for target, chosen, fmt in (
        (ours, rows, lambda p: p.relative_to(root).as_posix()),
        (theirs, sampled, str),
    ):
        with open(target, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["filepath", "title"])
            w.writerows((fmt(p), c) for p, c in chosen)
    return Prepared(
        data_root=root,
        ours_csv=ours,
        open_clip_csv=theirs,
        rows=len(rows),
        images=len(images),
        fashion_test=fashion.subset(np.flatnonzero(fashion_test_mask)),
        twemoji_test=[p for p, t in zip(twemoji, twemoji_test_mask, strict=True) if t],
    )


def train_ours(
    prep: Prepared, out: Path, model: str, steps: int, batch: int, lr: float, warmup: int, seed: int
) -> Path:
    from vlm.train import train

    cfg = from_dict(
        TrainConfig,
        {
            "output_dir": str(out),
            "batch_size": batch,
            "steps": steps,
            "seed": seed,
            "save_every": 0,
            "val_every": 0,
            "log_every": 50,
            "tensorboard": False,
            "model": {"model": model, "precision": "fp32"},
            "data": {
                "train_data": str(prep.ours_csv),
                "data_root": str(prep.data_root),
                "image_key": "filepath",
                "caption_key": "title",
                "val_fraction": 0.0,
                "workers": 1,
                "augment": True,
            },
            "optim": {"lr": lr, "warmup_steps": warmup, "weight_decay": 0.2, "grad_clip": 1.0},
        },
    )
    return train(cfg, progress=False).final_checkpoint


def train_open_clip(prep: Prepared, logs: Path, model: str, batch: int, lr: float, warmup: int, seed: int) -> Path:
    epochs = 1  # its CSV holds exactly the step budget
    from open_clip_train.main import main as open_clip_main

    models.register_model_configs()
    name = f"{model}-s{seed}"
    args = [
        "--train-data", str(prep.open_clip_csv), "--dataset-type", "csv", "--csv-separator", ",",
        "--csv-img-key", "filepath", "--csv-caption-key", "title", "--model", model,
        "--device", "cpu", "--precision", "fp32", "--workers", "1", "--batch-size", str(batch),
        "--epochs", str(epochs), "--lr", str(lr), "--wd", "0.2", "--beta1", "0.9", "--beta2", "0.98",
        "--eps", "1e-6", "--warmup", str(warmup), "--grad-clip-norm", "1.0", "--seed", str(seed),
        "--logs", str(logs), "--name", name, "--save-frequency", str(epochs), "--zeroshot-frequency", "0",
        "--val-frequency", "0", "--log-every-n-steps", "50",
    ]  # fmt: skip
    rc = open_clip_main(args)
    ckpt = logs / name / "checkpoints" / f"epoch_{epochs}.pt"
    if rc not in (None, 0) or not ckpt.is_file():
        raise SystemExit(f"open_clip_train failed (return {rc}); no {ckpt}")
    return ckpt


def evaluate(encoders: models.Encoders, prep: Prepared) -> dict[str, float]:
    zs = evaluate_zeroshot(encoders, prep.fashion_test, EVAL_TEMPLATES)
    ret = evaluate_pairs(encoders, prep.twemoji_test, ks=(1, 5, 10))
    return {
        "zeroshot_top1": zs.metrics["acc1"],
        "image_retrieval_R@5": ret["image_retrieval_recall@5"],
        "text_retrieval_R@5": ret["text_retrieval_recall@5"],
        "mean_R@5": (ret["image_retrieval_recall@5"] + ret["text_retrieval_recall@5"]) / 2,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="vlm-tiny")
    p.add_argument("--steps", type=int, default=300, help="optimizer steps for each trainer")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/train_quality")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads (default: all)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    configure_logging()  # our packages at INFO, libraries (open_clip logs to root) only warn
    logging.getLogger("bench").setLevel(logging.INFO)
    out = Path(args.out).resolve() / f"{args.model}-steps{args.steps}-seed{args.seed}"
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"{out} exists; remove it or choose another --out")
    steps = args.steps
    prep = prepare(out / "data", steps * args.batch_size, seed=args.seed)
    LOG.info("%d caption rows over %d training images; %d steps of %d", prep.rows, prep.images, steps, args.batch_size)

    start = time.perf_counter()
    ours_ckpt = train_ours(prep, out / "ours", args.model, steps, args.batch_size, args.lr, args.warmup, args.seed)
    ours_s = time.perf_counter() - start
    start = time.perf_counter()
    cwd = os.getcwd()
    try:
        theirs_ckpt = train_open_clip(
            prep, out / "open_clip", args.model, args.batch_size, args.lr, args.warmup, args.seed
        )
    finally:
        os.chdir(cwd)
    theirs_s = time.perf_counter() - start

    ours = evaluate(models.load(str(ours_ckpt), device="cpu", precision="fp32"), prep)
    theirs = evaluate(models.load(args.model, str(theirs_ckpt), device="cpu", precision="fp32"), prep)
    rows = [{"metric": k, "vlm train": ours[k], "open_clip_train": theirs[k], "difference": ours[k] - theirs[k]}
            for k in ours]  # fmt: skip
    rows.append({"metric": "train seconds", "vlm train": ours_s, "open_clip_train": theirs_s,
                 "difference": ours_s - theirs_s})  # fmt: skip
    report(
        "train_quality",
        rows,
        model=args.model,
        steps=steps,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup=args.warmup,
        seed=args.seed,
        threads=args.threads,
        train_images=prep.images,
        caption_rows=prep.rows,
        fashion_test_images=len(prep.fashion_test),
        twemoji_test_images=len(prep.twemoji_test),
        checkpoints={"ours": str(ours_ckpt), "open_clip_train": str(theirs_ckpt)},
        note="seconds are wall time on a shared machine; only the quality columns are compared",
    )


if __name__ == "__main__":
    main()
