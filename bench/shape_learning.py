"""How fast an image tower trained from scratch learns shape: each tower as a plain 6-way shape classifier.

Why this exists: the demo model must tell a red circle from a red star, and the small ViTs trained contrastively here
learned colour but hardly shape. This isolates the image tower from the contrastive objective: every tower gets the
same seeded stream of single-object scenes (`vlm.synth.single_object_scene`, random colour and shape, 64 px), a
linear head on its embedding, AdamW with 20 warm-up steps, and is scored on the same 480 held-out scenes.

    python -m bench.shape_learning                       # vlm-base (ViT) vs vlm-rn (ResNet), 100 steps of 128
    python -m bench.shape_learning --steps 200 --towers vlm-base vlm-rn vit-sincos-avg

Prints shape accuracy (chance 1/6) and seconds per step for each tower; writes bench/results/shape_learning.json.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import open_clip
import torch
from open_clip.model import _build_vision_tower

from bench.common import report
from vlm import models
from vlm.synth import COLOURS, SHAPES, single_object_scene

# Tower variants: a registered config's vision tower, optionally with overrides of its vision_cfg.
TOWERS = {
    "vlm-base": ("vlm-base", {}),
    "vit-sincos-avg": ("vlm-base", {"pos_embed_type": "sin_cos_2d", "pool_type": "avg"}),
    "vit-w128-p8": ("vlm-base", {"width": 128, "patch_size": 8, "pos_embed_type": "sin_cos_2d", "pool_type": "avg"}),
    "vlm-rn": ("vlm-rn", {}),
}


def build_tower(name: str) -> tuple[torch.nn.Module, int]:
    config, overrides = TOWERS[name]
    cfg = open_clip.get_model_config(config)
    vision = {**cfg["vision_cfg"], **overrides}
    return _build_vision_tower(cfg["embed_dim"], vision), cfg["embed_dim"]


def scenes(n: int, rng: np.random.Generator, first_seed: int, preprocess) -> tuple[torch.Tensor, torch.Tensor]:
    pixels, targets = [], []
    for i in range(n):
        shape, colour = SHAPES[rng.integers(len(SHAPES))], COLOURS[rng.integers(len(COLOURS))]
        pixels.append(preprocess(single_object_scene(shape, colour, image_size=64, seed=first_seed + i)))
        targets.append(SHAPES.index(shape))
    return torch.stack(pixels), torch.tensor(targets)


def run(name: str, steps: int, batch: int, lr: float, seed: int, preprocess) -> dict:
    torch.manual_seed(seed)
    tower, dim = build_tower(name)
    head = torch.nn.Linear(dim, len(SHAPES))
    params = [*tower.parameters(), *head.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.1)
    rng = np.random.default_rng(seed)
    test_x, test_y = scenes(480, np.random.default_rng(seed + 1), 9_000_000, preprocess)
    elapsed = 0.0
    for step in range(1, steps + 1):
        x, y = scenes(batch, rng, step * 1000, preprocess)
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, step / 20)
        start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(head(tower(x)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        elapsed += time.perf_counter() - start
    with torch.no_grad():
        accuracy = float((head(tower(test_x)).argmax(1) == test_y).float().mean())
    return {
        "tower": name,
        "params": sum(p.numel() for p in tower.parameters()),
        "steps": steps,
        "lr": lr,
        "shape_accuracy": round(accuracy, 3),
        "s_per_step": round(elapsed / steps, 3),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--towers", nargs="+", default=["vlm-base", "vlm-rn"], choices=list(TOWERS))
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    models.register_model_configs()
    preprocess = models.load("vlm-rn").preprocess  # 64 px, CLIP normalisation: the same for every tower
    rows = [run(name, args.steps, args.batch, args.lr, args.seed, preprocess) for name in args.towers]
    report("shape_learning", rows, **json.loads(json.dumps(vars(args))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
