"""Training samples/s of this project's trainer against open_clip's own trainer (`open_clip_train`), in one run.

    python -m bench.train_throughput                          # vlm-small, 60 steps of 64, 3 interleaved repeats
    python -m bench.train_throughput --model vlm-tiny --steps 40 --repeats 2

Claim (issue 3): `vlm train` trains at least as many samples/s as `open_clip_train` (ratio >= 1.0) with the same
model, data, batch size, precision, optimizer, data-loader workers and training transform (open_clip's
random-resized crop, which open_clip_train always applies).

Both train the same synthetic shapes pairs (`vlm.synth`, rendered at the model's input size so decoding is cheap and
the comparison is about the training loop) for exactly `--steps` optimizer steps, without validation or periodic
checkpoints. open_clip_train has no step limit for CSV data, so its CSV holds exactly steps x batch rows and it runs
one epoch; this trainer runs `--steps` steps over the same images. Each measurement is the wall time of the whole
training call, start-up included (model creation, data loader start, final checkpoint), since that is what a person
waits for, and both pay the same kinds of start-up. The runs alternate (ours, theirs, ours, theirs, ...) in one
process and the median of each is reported, so a noisy machine slows both alike.
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import open_clip
import torch

from bench.common import report
from vlm import models
from vlm.cli import configure_logging
from vlm.config import TrainConfig, from_dict
from vlm.synth import generate

LOG = logging.getLogger("bench.train_throughput")


def write_pairs(data: Path, samples: int, seed: int) -> tuple[Path, Path]:
    """`pairs.csv` (relative paths, every caption) for vlm; `pairs_open_clip.csv` (absolute, `samples` rows)."""
    with open(data / "pairs.csv", encoding="utf-8", newline="") as f:
        rows = [(r["path"], r["caption"]) for r in csv.DictReader(f)]
    order = np.concatenate(
        [np.random.default_rng(seed + i).permutation(len(rows)) for i in range(-(-samples // len(rows)))]
    )
    theirs = data / "pairs_open_clip.csv"
    with open(theirs, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["filepath", "title"])
        w.writerows((str((data / rows[i][0]).resolve()), rows[i][1]) for i in order[:samples])
    return data / "pairs.csv", theirs


def run_ours(csv_path: Path, out: Path, args: argparse.Namespace) -> float:
    from vlm.train import train

    cfg = from_dict(
        TrainConfig,
        {
            "output_dir": str(out),
            "batch_size": args.batch_size,
            "steps": args.steps,
            "seed": 0,
            "save_every": 0,
            "val_every": 0,
            "log_every": 10**9,
            "tensorboard": False,
            "model": {"model": args.model, "precision": args.precision},
            "data": {"train_data": str(csv_path), "val_fraction": 0.0, "workers": args.workers, "augment": True},
            "optim": {"lr": 5e-4, "warmup_steps": 10, "weight_decay": 0.2, "grad_clip": 1.0},
        },
    )
    start = time.perf_counter()
    train(cfg, progress=False)
    return time.perf_counter() - start


def run_open_clip(csv_path: Path, logs: Path, name: str, args: argparse.Namespace) -> float:
    from open_clip_train.main import main as open_clip_main

    device = "cuda" if torch.cuda.is_available() else "cpu"
    argv = [
        "--train-data", str(csv_path), "--dataset-type", "csv", "--csv-separator", ",",
        "--csv-img-key", "filepath", "--csv-caption-key", "title", "--model", args.model,
        "--device", device, "--precision", args.precision, "--workers", str(args.workers),
        "--batch-size", str(args.batch_size), "--epochs", "1", "--lr", "5e-4", "--wd", "0.2",
        "--beta1", "0.9", "--beta2", "0.98", "--eps", "1e-6", "--warmup", "10", "--grad-clip-norm", "1.0",
        "--seed", "0", "--logs", str(logs), "--name", name, "--save-frequency", "1", "--zeroshot-frequency", "0",
        "--val-frequency", "0", "--log-every-n-steps", str(10**9),
    ]  # fmt: skip
    cwd = os.getcwd()
    start = time.perf_counter()
    try:
        rc = open_clip_main(argv)
    finally:
        os.chdir(cwd)
    seconds = time.perf_counter() - start
    if rc not in (None, 0) or not (logs / name / "checkpoints" / "epoch_1.pt").is_file():
        raise SystemExit(f"open_clip_train failed (return {rc})")
    return seconds


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="vlm-small")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workers", type=int, default=1, help="data-loader workers, the same for both")
    p.add_argument("--precision", default="fp32", choices=["fp32", "amp", "amp_bf16"])
    p.add_argument("--scenes", type=int, default=2000)
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads (default: all)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    configure_logging()
    logging.getLogger("bench").setLevel(logging.INFO)
    models.register_model_configs()
    image_size = int(open_clip.get_model_config(args.model)["vision_cfg"]["image_size"])
    samples = args.steps * args.batch_size

    with tempfile.TemporaryDirectory(prefix="bench-train-throughput-") as tmp:
        tmp = Path(tmp)
        generate(tmp / "data", args.scenes, 0, max(32, image_size), progress=False)
        ours_csv, theirs_csv = write_pairs(tmp / "data", samples, seed=0)
        times: dict[str, list[float]] = {"vlm train": [], "open_clip_train": []}
        for r in range(args.repeats):
            times["vlm train"].append(run_ours(ours_csv, tmp / f"ours{r}", args))
            times["open_clip_train"].append(run_open_clip(theirs_csv, tmp / "logs", f"run{r}", args))
            LOG.info(
                "repeat %d: vlm %.1fs, open_clip_train %.1fs", r, times["vlm train"][-1], times["open_clip_train"][-1]
            )

    rate = {k: samples / statistics.median(v) for k, v in times.items()}
    rows = [
        {"trainer": k, "median seconds": statistics.median(v), "samples/s": rate[k], "ratio vs open_clip_train":
         rate[k] / rate["open_clip_train"]}
        for k, v in times.items()
    ]  # fmt: skip
    report(
        "train_throughput",
        rows,
        model=args.model,
        steps=args.steps,
        batch_size=args.batch_size,
        precision=args.precision,
        workers=args.workers,
        threads=args.threads,
        device="cuda" if torch.cuda.is_available() else "cpu",
        all_seconds=times,
        paired_ratios=[t / o for o, t in zip(times["vlm train"], times["open_clip_train"], strict=True)],
        note="wall time of each whole training call (start-up included); runs interleaved, medians",
    )


if __name__ == "__main__":
    main()
