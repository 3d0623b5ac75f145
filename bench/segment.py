"""Latency of `vlm.segment.segment` per image (224 and 448 px inputs), both methods, beside a peer in the same run.

    python -m bench.segment                                    # the demo model (default), CPU or CUDA if present
    python -m bench.segment --model ViT-B-16 --runs 5          # a randomly initialised ViT-B/16 (no download)
    python -m bench.segment --model ViT-B-16 --clearclip ~/src/ClearCLIP   # also ClearCLIP's own code

Peer: one plain image embedding (`Encoders.encode_image`) at the model's input size, timed in the same loop as each
method (interleaved repetitions), so the claim is the ratio "segment() costs R image embeddings", which survives a
busy machine; absolute milliseconds are printed for context. The dense method's cost is set by its tiling (by
default the short side becomes 2 x the window, so a 224 and a 448 input cost the same); the decoder's by its input
size. Without --decoder an untrained decoder of the default shape is timed (its cost does not depend on weights).

With --clearclip PATH (a checkout of github.com/mc-lan/ClearCLIP), its fork of open_clip is imported from
PATH/open_clip under another name, given the same weights, and its ClearCLIP features
(`visual(x, model_type='ClearCLIP')`) are timed and compared with ours on the same window: equal to float precision
at the native size; at other sizes its scale-factor bicubic position resize differs slightly from our size-based one.
It runs without mmseg (only its segmentor class needs mmseg; the features do not).
"""

from __future__ import annotations

import argparse
import importlib
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bench.common import report
from vlm import models
from vlm.segment import DenseConfig, dense, segment, towers
from vlm.segment import decoder as dec


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(fns: dict[str, Callable[[], object]], runs: int, device: torch.device) -> dict[str, float]:
    """Median seconds of each function over `runs` rounds, the functions taking turns in every round."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():  # warm-up (allocations, kernel choice)
        fn()
    for _ in range(runs):
        for name, fn in fns.items():
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def _clearclip_visual(path: Path, encoders: models.Encoders):
    """ClearCLIP's VisionTransformer (their open_clip fork) with our weights, or a SystemExit saying why not."""
    src = path / "open_clip"
    if not (src / "transformer.py").is_file():
        raise SystemExit(f"{path} is not a ClearCLIP checkout: {src}/transformer.py is missing")
    tmp = Path(tempfile.mkdtemp(prefix="clearclip-"))
    shutil.copytree(src, tmp / "clearclip_open_clip")
    sys.path.insert(0, str(tmp))
    fork = importlib.import_module("clearclip_open_clip")
    ref = fork.create_model(encoders.model_name, pretrained=None).eval().to(encoders.device)
    ref.visual.load_state_dict(encoders.model.visual.state_dict(), strict=True)
    return ref.visual


def bench_clearclip(path: Path, encoders: models.Encoders, runs: int) -> list[dict]:
    visual = encoders.model.visual
    ref = _clearclip_visual(path, encoders)
    native = towers.default_input_size(visual)
    rows = []
    for size in (native, 2 * native):
        x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(size)).to(encoders.device)
        with torch.no_grad():
            theirs = F.normalize(ref(x, model_type="ClearCLIP", ignore_residual=True).float(), dim=-1)
            ours = F.normalize(dense.patch_features(visual, x).reshape(theirs.shape), dim=-1)
        t = interleaved(
            {
                "ours": lambda x=x: dense.patch_features(visual, x),
                "clearclip": lambda x=x: ref(x, model_type="ClearCLIP", ignore_residual=True),
            },
            runs,
            encoders.device,
        )
        rows.append(
            {
                "method": "ClearCLIP features: ours vs reference code",
                "input": size,
                "ours_ms": 1000 * t["ours"],
                "reference_ms": 1000 * t["clearclip"],
                "ratio": t["ours"] / t["clearclip"],
                "max_abs_diff_normalised": float((theirs - ours).abs().max()),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="demo", help="model to time (default: demo)")
    p.add_argument("--pretrained")
    p.add_argument("--decoder", help="a trained decoder directory (default: an untrained one of the default shape)")
    p.add_argument("--runs", type=int, default=7, help="timed rounds; the median is reported (default 7)")
    p.add_argument("--sizes", type=int, nargs="+", default=[224, 448], help="input image sides (default 224 448)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--clearclip", type=Path, help="a checkout of mc-lan/ClearCLIP, to compare with its own code")
    args = p.parse_args(argv)

    torch.manual_seed(0)
    encoders = models.load(args.model, args.pretrained, device=args.device)
    device = encoders.device
    decoder = (
        dec.load_decoder(args.decoder, encoders)
        if args.decoder
        else dec.SegDecoder(dec.make_spec(encoders)).to(device).eval()
    )
    native = towers.default_input_size(encoders.model.visual)
    peer_input = torch.randn(1, 3, native, native, device=device)
    phrases = ["the red circle", "a dog"]
    rows = []
    for size in args.sizes:
        image = np.random.default_rng(size).integers(0, 256, (size, size, 3), dtype=np.uint8)
        single = DenseConfig(short_side=native)  # one window for a square image
        fns = {
            "peer": lambda: encoders.encode_image(peer_input),
            "dense": lambda image=image: segment(encoders, image, phrases),
            "dense_1win": lambda image=image, c=single: segment(encoders, image, phrases, dense_config=c),
            "decoder": lambda image=image: segment(encoders, image, phrases, method="decoder", decoder=decoder),
        }
        t = interleaved(fns, args.runs, device)
        for name in ("dense", "dense_1win", "decoder"):
            result = fns[name]()
            rows.append(
                {
                    "method": {"dense_1win": "dense, short side = window"}.get(name, name),
                    "input": size,
                    "compute_size": "x".join(map(str, result.compute_size)),
                    "median_ms": 1000 * t[name],
                    "peer_ms": 1000 * t["peer"],
                    "ratio_to_peer": t[name] / t["peer"],
                }
            )
    if args.clearclip:
        rows += bench_clearclip(args.clearclip.expanduser(), encoders, args.runs)
    report(
        "segment",
        rows,
        model=encoders.source,
        device=str(device),
        runs=args.runs,
        phrases=len(phrases),
        decoder=args.decoder or f"untrained, {dec.make_spec(encoders).to_json()}",
        peer="Encoders.encode_image of one image at the model's input size",
    )


if __name__ == "__main__":
    main()
