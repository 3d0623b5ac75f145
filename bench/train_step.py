"""Seconds per training step under each precision and memory layout, interleaved in one process.

    python -m bench.train_step                                   # vlm-rn-wide (the demo model's architecture), 128
    python -m bench.train_step --model vlm-small --batch 64 --rounds 5
    python -m bench.train_step --compile                         # + bf16, channels-last and torch.compile

The step is the trainer's: `vlm.models.load` (random weights), `vlm.train.ClipForward`, `vlm.loss.ClipLoss` and the
trainer's fused AdamW (`vlm.training.adamw`), on one fixed random batch (the data loader is left out: this measures
the model's arithmetic). Variants, as `vlm train` sets them: `model.precision` fp32 or amp_bf16 (autocast; on CPU it
needs AVX-512 BF16 or AMX to pay), and `model.channels_last` off or on (the image tower and its batches in NHWC
layout); with `--compile` also both under `model.compile` (torch.compile of the step's forward and backward; the
compiling, a minute or more, happens in its warm-up step, reported as warmup_s). Each variant owns its own copy of the
model and optimizer, so no variant trains another's weights; the variants take turns, one step each per round, after
one warm-up step each; the median per variant is reported, and the ratio to fp32 in the default layout is the claim
(absolute seconds depend on the machine and its load).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from bench.common import report
from vlm import models
from vlm.config import OptimConfig
from vlm.loss import ClipLoss
from vlm.train import ClipForward
from vlm.training import adamw

VARIANTS = [("fp32", False), ("fp32", True), ("amp_bf16", False), ("amp_bf16", True)]


class Variant:
    def __init__(self, model: str, precision: str, channels_last: bool, seed: int, compiled: bool = False):
        torch.manual_seed(seed)  # every variant starts from the same weights
        self.encoders = models.load(model, device="cpu", precision=precision)
        self.layout = torch.channels_last if channels_last else torch.contiguous_format
        self.encoders.model.visual.to(memory_format=self.layout)
        self.encoders.model.train()
        self.forward = ClipForward(self.encoders.model)
        if compiled:  # as `vlm train` does with model.compile
            self.forward = torch.compile(self.forward)
        self.optimizer = adamw(self.encoders.model, OptimConfig(lr=1e-4, weight_decay=0.1))
        self.loss = ClipLoss()
        self.name = f"{precision}{', channels-last' if channels_last else ''}{', compiled' if compiled else ''}"

    def step(self, images: torch.Tensor, tokens: torch.Tensor) -> float:
        start = time.perf_counter()
        with self.encoders.autocast():
            img, txt, scale, _ = self.forward(images.to(memory_format=self.layout), tokens)
        loss = self.loss(img, txt, scale)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="vlm-rn-wide", help="an open_clip architecture (default: vlm-rn-wide)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--rounds", type=int, default=8, help="timed steps per variant, interleaved (default 8)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compile", action="store_true", help="add amp_bf16 + channels-last under torch.compile")
    args = p.parse_args(argv)
    if args.batch < 2 or args.rounds < 1:
        p.error("--batch must be at least 2 and --rounds at least 1")

    variants = [Variant(args.model, precision, cl, args.seed) for precision, cl in VARIANTS]
    if args.compile:
        variants.append(Variant(args.model, "amp_bf16", True, args.seed, compiled=True))
    size = variants[0].encoders.image_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    generator = torch.Generator().manual_seed(args.seed)
    images = torch.randn(args.batch, 3, *size, generator=generator)
    vocab = variants[0].encoders.model.vocab_size
    tokens = torch.randint(1, vocab, (args.batch, variants[0].encoders.context_length), generator=generator)

    seconds: dict[str, list[float]] = {v.name: [] for v in variants}
    warmup = {}
    for v in variants:  # warm-up: oneDNN picks its kernels, the optimizer makes its state, torch.compile compiles
        warmup[v.name] = v.step(images, tokens)
    for _ in range(args.rounds):
        for v in variants:
            seconds[v.name].append(v.step(images, tokens))
    base = statistics.median(seconds[variants[0].name])
    rows = [
        {
            "variant": name,
            "median_s_per_step": round(statistics.median(times), 4),
            "best_s": round(min(times), 4),
            "samples_per_s": round(args.batch / statistics.median(times), 1),
            "time_vs_fp32": round(statistics.median(times) / base, 3),
            "warmup_s": round(warmup[name], 1),
        }
        for name, times in seconds.items()
    ]
    report("train_step", rows, model=args.model, batch=args.batch, rounds=args.rounds, threads=torch.get_num_threads())


if __name__ == "__main__":
    main()
