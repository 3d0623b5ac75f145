"""LoRA against a full fine-tune with this project's trainer: trainable parameters, peak memory, step time.

    python -m bench.lora                                   # the demo model, 40 steps of 64, LoRA r=8
    python -m bench.lora --model vlm-small --steps 30 --rank 4 --repeats 2

Every run is `vlm.train.train` on the same synthetic shapes pairs (`vlm.synth`, rendered at the model's input size),
same steps, batch, seed and learning rate, in a process of its own, so its peak resident memory (`ru_maxrss`: model,
gradients, optimizer state, activations, the Python and torch runtime) is its own. Step time is the median of the
trainer's own samples/s log windows after the first (start-up left out). The runs alternate (full, LoRA both towers,
LoRA text tower, full, ...) and each row is the median over `--repeats`; ratios are against the full fine-tune of
the same invocation. On a GPU, peak memory is `torch.cuda.max_memory_allocated` instead.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.common import report

CONFIGS = {
    "full fine-tune": {},
    "LoRA, both towers": {"lora_towers": "both"},
    "LoRA, text tower": {"lora_towers": "text"},
}


def one(spec: dict[str, Any]) -> dict[str, Any]:
    """Train once as `spec` says (in this process) and measure it."""
    import torch

    from vlm import lora, models
    from vlm.config import TrainConfig, from_dict
    from vlm.rundir import RunDir
    from vlm.train import train

    cfg = from_dict(TrainConfig, spec["config"])
    result = train(cfg, progress=False)
    rates = [m["train/samples_per_s"] for m in RunDir(cfg.output_dir).read_metrics() if "train/samples_per_s" in m]
    rate = statistics.median(rates[1:] or rates)
    enc = models.load(cfg.model.model, cfg.model.pretrained, device="cpu")
    total = sum(p.numel() for p in enc.model.parameters())
    trainable = lora.apply(enc, cfg.lora).counts()["trainable"] if cfg.lora.enabled else total
    cuda = torch.cuda.is_available()
    peak = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"trainable": trainable, "total": total, "samples_per_s": rate, "step_ms": 1000 * cfg.batch_size / rate,
            "peak_mb": peak / 2**20, "memory": "cuda allocated" if cuda else "process max RSS",
            "final": str(result.final_checkpoint)}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="demo", help="model to fine-tune (default: demo)")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--rank", type=int, default=8, help="LoRA rank (alpha = 2 x rank)")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--scenes", type=int, default=640, help="synthetic training pairs")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one measurement (a JSON spec) and print it
    args = p.parse_args(argv)
    if args.one:
        print("RESULT " + json.dumps(one(json.loads(args.one))))
        return 0

    from vlm import models
    from vlm.synth import generate

    size = models.load(args.model, device="cpu").image_size
    size = size if isinstance(size, int) else size[0]
    work = Path(tempfile.mkdtemp(prefix="bench-lora-"))
    generate(work / "data", scenes=args.scenes, seed=0, image_size=size, progress=False)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in CONFIGS}
    for r in range(args.repeats):
        for name, extra in CONFIGS.items():
            lora = {"lora_rank": args.rank, **extra} if extra else {}
            config = {
                "output_dir": str(work / f"{len(runs[name])}-{name.replace(' ', '_').replace(',', '')}"),
                "batch_size": args.batch_size, "steps": args.steps, "seed": 0, "save_every": 0, "val_every": 0,
                "log_every": 5, "tensorboard": False, "model": {"model": args.model},
                "data": {"train_data": str(work / "data" / "pairs.csv"), "workers": 0, "val_fraction": 0.0},
                "optim": {"lr": args.lr, "warmup_steps": 5}, "lora": lora,
            }  # fmt: skip
            out = subprocess.run([sys.executable, "-m", "bench.lora", "--one", json.dumps({"config": config})],
                                 capture_output=True, text=True, check=False)  # fmt: skip
            line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
            if out.returncode or line is None:
                print(out.stdout[-3000:], out.stderr[-3000:], file=sys.stderr)
                raise SystemExit(f"run {name!r} (repeat {r}) failed")
            runs[name].append(json.loads(line[len("RESULT ") :]))
    base = {k: statistics.median(x[k] for x in runs["full fine-tune"]) for k in ("step_ms", "peak_mb")}
    rows = []
    for name, results in runs.items():
        step_ms = statistics.median(x["step_ms"] for x in results)
        peak = statistics.median(x["peak_mb"] for x in results)
        rows.append({
            "run": name, "trainable": results[0]["trainable"],
            "trainable %": round(100 * results[0]["trainable"] / results[0]["total"], 3),
            "step ms": round(step_ms, 1), "step vs full": round(step_ms / base["step_ms"], 3),
            "peak MB": round(peak, 1), "peak vs full": round(peak / base["peak_mb"], 3),
        })  # fmt: skip
    report("lora", rows, model=args.model, steps=args.steps, batch_size=args.batch_size, rank=args.rank,
           lr=args.lr, repeats=args.repeats, memory=runs["full fine-tune"][0]["memory"])  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
