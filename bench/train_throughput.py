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
waits for, and both pay the same kinds of start-up; the steady rate (median samples/s of each trainer's own log
windows after the first) leaves start-up out. Every run is a process of its own: open_clip_train switches TF32 on
globally, which run in this process leaked into this trainer's later repeats. The runs alternate (ours, theirs,
ours, ...) and the median of each is reported, so a noisy machine slows both alike.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch

from bench.common import report
from vlm import models
from vlm.cli import configure_logging
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


# open_clip_train's entry point with this project's model configs registered (vlm-tiny, vlm-small, ...).
OPEN_CLIP_MAIN = (
    "import sys; from vlm import models; models.register_model_configs(); "
    "from open_clip_train.main import main; sys.exit(main(sys.argv[1:]))"
)


def _env() -> dict[str, str]:
    root = str(Path(__file__).resolve().parents[1])
    return {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}


def _run(cmd: list[str], log: Path, what: str) -> float:
    """Run `cmd` in its own process (so no global setting of one trainer, such as open_clip_train's TF32 switch,
    leaks into the other's runs); its wall time in seconds. The output goes to `log`."""
    start = time.perf_counter()
    with open(log, "w") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=_env(), check=False).returncode
    seconds = time.perf_counter() - start
    if rc != 0:
        raise SystemExit(f"{what} failed (exit {rc}); its output ends:\n{log.read_text()[-3000:]}")
    return seconds


def run_ours(csv_path: Path, out: Path, args: argparse.Namespace) -> tuple[float, list[float], list[float]]:
    """(wall seconds, samples/s of each log window, MFU of each log window where the trainer knows the peak)."""
    cmd = [
        sys.executable, "-m", "vlm", "train", "--output-dir", str(out), "--batch-size", str(args.batch_size),
        "--steps", str(args.steps), "--seed", "0", "--save-every", "0", "--val-every", "0",
        "--log-every", str(args.log_every), "--no-tensorboard", "--model", args.model, "--precision", args.precision,
        "--train-data", str(csv_path), "--val-fraction", "0", "--workers", str(args.workers), "--augment",
        "--lr", "5e-4", "--warmup-steps", "10", "--weight-decay", "0.2", "--grad-clip", "1.0",
    ]  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    seconds = _run(cmd, out.parent / f"{out.name}.log", "vlm train")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rates = [r["train/samples_per_s"] for r in rows if "train/samples_per_s" in r]
    return seconds, rates, [r["train/mfu"] for r in rows if "train/mfu" in r]


def run_open_clip(csv_path: Path, logs: Path, name: str, args: argparse.Namespace) -> tuple[float, list[float]]:
    """(wall seconds, samples/s of each log window from its own 'Batch (t)' averages)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cmd = [
        sys.executable, "-c", OPEN_CLIP_MAIN,
        "--train-data", str(csv_path), "--dataset-type", "csv", "--csv-separator", ",",
        "--csv-img-key", "filepath", "--csv-caption-key", "title", "--model", args.model,
        "--device", device, "--precision", args.precision, "--workers", str(args.workers),
        "--batch-size", str(args.batch_size), "--epochs", "1", "--lr", "5e-4", "--wd", "0.2",
        "--beta1", "0.9", "--beta2", "0.98", "--eps", "1e-6", "--warmup", "10", "--grad-clip-norm", "1.0",
        "--seed", "0", "--logs", str(logs), "--name", name, "--save-frequency", "1", "--zeroshot-frequency", "0",
        "--val-frequency", "0", "--log-every-n-steps", str(args.log_every),
    ]  # fmt: skip
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{name}.log"
    seconds = _run(cmd, log, "open_clip_train")
    if not (logs / name / "checkpoints" / "epoch_1.pt").is_file():
        raise SystemExit(f"open_clip_train wrote no checkpoint; see {log}")
    # "Batch (t): 0.123" is the mean step time (data wait included) since the last log line, as ours measures.
    times = [float(m) for m in re.findall(r"Batch \(t\): ([0-9.]+)", log.read_text())]
    return seconds, [args.batch_size / t for t in times if t > 0]


def measure(args: argparse.Namespace, tmp: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The comparison's rows and its details; each run in its own process, the pairs interleaved."""
    models.register_model_configs()
    image_size = int(open_clip.get_model_config(args.model)["vision_cfg"]["image_size"])
    samples = args.steps * args.batch_size
    generate(tmp / "data", args.scenes, 0, max(32, image_size), progress=False)
    ours_csv, theirs_csv = write_pairs(tmp / "data", samples, seed=0)
    times: dict[str, list[float]] = {"vlm train": [], "open_clip_train": []}
    # Steady rates: each trainer's own log windows after each run's first (start-up: cuDNN autotuning, workers).
    windows: dict[str, list[float]] = {"vlm train": [], "open_clip_train": []}
    mfus: list[float] = []
    for r in range(args.repeats):
        seconds, rates, mfu = run_ours(ours_csv, tmp / "ours" / f"run{r}", args)
        times["vlm train"].append(seconds)
        windows["vlm train"] += rates[1:] or rates
        mfus += mfu[1:] or mfu
        seconds, rates = run_open_clip(theirs_csv, tmp / "logs", f"run{r}", args)
        times["open_clip_train"].append(seconds)
        windows["open_clip_train"] += rates[1:] or rates
        LOG.info("repeat %d: vlm %.1fs, open_clip_train %.1fs", r, times["vlm train"][-1], seconds)
    rate = {k: samples / statistics.median(v) for k, v in times.items()}
    steady = {k: statistics.median(v) if v else None for k, v in windows.items()}
    rows = []
    for k in times:
        row = {
            "trainer": k,
            "median seconds": statistics.median(times[k]),
            "samples/s (whole run)": rate[k],
            "ratio vs open_clip_train": rate[k] / rate["open_clip_train"],
            "samples/s (steady)": steady[k],
        }
        if k == "vlm train" and mfus:
            row["MFU (steady)"] = statistics.median(mfus)
        rows.append(row)
    if steady["vlm train"] and steady["open_clip_train"]:
        rows[0]["steady ratio"] = steady["vlm train"] / steady["open_clip_train"]
    details = {
        "all_seconds": times,
        "steady_windows": windows,
        "paired_ratios": [t / o for o, t in zip(times["vlm train"], times["open_clip_train"], strict=True)],
    }
    return rows, details


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="vlm-small")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workers", type=int, default=1, help="data-loader workers, the same for both")
    p.add_argument("--precision", default="fp32", choices=["fp32", "amp", "amp_bf16"])
    p.add_argument("--scenes", type=int, default=2000)
    p.add_argument("--log-every", type=int, default=10, help="log window in steps (steady rates come from these)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads (default: all)")
    args = p.parse_args(argv)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the trainers' processes inherit it
    configure_logging()
    logging.getLogger("bench").setLevel(logging.INFO)
    with tempfile.TemporaryDirectory(prefix="bench-train-throughput-") as tmp:
        rows, details = measure(args, Path(tmp))
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
        note="wall time of each whole training call (start-up included), each in its own process; runs "
        "interleaved, medians; steady: median samples/s of the log windows after each run's first",
        **details,
    )


if __name__ == "__main__":
    main()
