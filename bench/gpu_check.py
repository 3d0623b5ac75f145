"""The GPU check: every CUDA path of the project run once, with figures, in one call of a few minutes.

    bash bench/gpu_check.sh            # on the GPU machine: installs the carried wheels (.whl/), then this module
    bash bench/gpu_check.sh --dry      # here, on the CPU: the same script with tiny sizes, to debug it for free
    python -m bench.gpu_check --out DIR [--dry] [--budget-s 420]

Checks, each recorded as ok / failed (with the error) / skipped (with why), so one failure costs one row, not the run:
  environment       torch, CUDA, the device, faiss and whether it sees the GPU
  training          `vlm train` in its own process: amp_bf16 + SigLIP + accumulation; amp (fp16 with the grad scaler)
                    + InfoNCE + accumulation; finite losses; a resume from a step checkpoint against the straight run
  throughput        `bench.train_throughput` (each trainer in its own process): whole-run and steady samples/s against
                    open_clip_train, and the MFU the trainer logs; then a compute-only step (the trainer's
                    ClipForward + ClipLoss + fused AdamW on a resident batch) for the model's MFU without data loading
  embedding         indexing.embed images/s with the device defaults (GPU: batch 256, 8 workers) and the old CPU ones
  faiss             build time (IVF: GPU k-means when faiss sees a GPU), GPU memory held after it, batch and
                    single-query QPS on the CPU index and, with a GPU, on its GPU copy
  concurrent        8 threads searching one index at once (the GPU copy if any) against the serial answers

Figures go to DIR/gpu_check.json and a table to DIR/gpu_check.md. On the CPU (--dry) CUDA-only cases are replaced where
they can be (fp16 autocast by bf16) and say so.

Size (~480 lines, over the ~400 guide): one script for a GPU machine reached once, through one call: every
check must be in the file that is carried and run, each a short function with its own row.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.common import format_table

LOG = logging.getLogger("bench.gpu_check")
ROOT = Path(__file__).resolve().parents[1]


class Check:
    """Runs sections under a shared time budget and records each one's outcome and figures."""

    def __init__(self, out: Path, budget_s: float, only: set[str]):
        self.out, self.deadline, self.start = out, time.monotonic() + budget_s, time.monotonic()
        self.only = only
        self.record: dict[str, Any] = {"sections": {}}

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def run(self, name: str, needs_s: float, fn: Callable[[], dict[str, Any]]) -> None:
        if self.only and name not in self.only and name != "environment":
            return
        if self.left() < needs_s:
            self.record["sections"][name] = {"status": f"skipped: {self.left():.0f} s left, needs ~{needs_s:.0f} s"}
            print(f"== {name}: skipped (time)", flush=True)
            self.write()
            return
        print(f"== {name} ({self.left():.0f} s left)", flush=True)
        started = time.monotonic()
        try:
            figures = fn()
            status = "ok"
        except (Exception, SystemExit) as e:  # one failed section must not cost the others: its error is recorded
            figures, status = {"traceback": traceback.format_exc()[-4000:]}, f"failed: {type(e).__name__}: {e}"
            print(figures["traceback"], flush=True)
        figures = {"status": status, "seconds": round(time.monotonic() - started, 1), **figures}
        self.record["sections"][name] = figures
        print(json.dumps(figures, indent=1, default=str)[:3000], flush=True)
        self.write()

    def write(self) -> None:
        self.record["total_seconds"] = round(time.monotonic() - self.start, 1)
        (self.out / "gpu_check.json").write_text(json.dumps(self.record, indent=1, default=str))
        rows = []
        for name, figures in self.record["sections"].items():
            shown = {
                k: _short(v) if isinstance(v, dict) else v
                for k, v in figures.items()
                if k not in ("status", "traceback", "rows", "details", "settings")
            }
            rows.append({"check": name, "status": figures["status"][:60], "figures": _short(shown)})
        (self.out / "gpu_check.md").write_text(format_table(rows) + "\n")


def _short(values: dict[str, Any]) -> str:
    def fmt(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    return "; ".join(f"{k}={fmt(v)}" for k, v in values.items() if not isinstance(v, dict)) + "".join(
        f"; {k}: {{{_short(v)}}}" for k, v in values.items() if isinstance(v, dict)
    )


def _env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1"}


def _vlm_train(out: Path, data: Path, *flags: str) -> list[dict[str, Any]]:
    """`vlm train` in its own process; its metrics.jsonl rows (raises with the output's end if it fails)."""
    cmd = [
        sys.executable, "-m", "vlm", "train", "--output-dir", str(out), "--train-data", str(data / "pairs.csv"),
        "--val-fraction", "0", "--no-tensorboard", "--log-every", "1", "--warmup-steps", "2", "--seed", "0", *flags,
    ]  # fmt: skip
    run = subprocess.run(cmd, env=_env(), capture_output=True, text=True, check=False)
    if run.returncode != 0:
        raise RuntimeError(f"vlm train {' '.join(flags)} exited {run.returncode}: {run.stderr[-2500:]}")
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _losses(rows: list[dict[str, Any]]) -> list[float]:
    return [r["train/loss"] for r in rows if "train/loss" in r]


# ---------------------------------------------------------------------------------------------------------------
# Sections.


def environment(dry: bool) -> dict[str, Any]:
    import faiss

    from indexing.faiss_index import gpu_count

    info: dict[str, Any] = {
        "dry": dry,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "cores": os.cpu_count(),
        "faiss": faiss.__version__,
        "faiss_gpus": gpu_count(),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(
            device=torch.cuda.get_device_name(0),
            capability=f"{props.major}.{props.minor}",
            memory_gib=round(props.total_memory / 2**30, 1),
            bf16=torch.cuda.is_bf16_supported(),
        )
        smi = shutil.which("nvidia-smi")
        if smi:
            q = "--query-gpu=driver_version,clocks.max.sm"
            info["nvidia_smi"] = subprocess.run(
                [smi, q, "--format=csv,noheader"], capture_output=True, text=True
            ).stdout.strip()
    try:
        import open_clip

        info["open_clip"] = open_clip.__version__
    except ImportError as e:
        info["open_clip"] = f"missing: {e}"
    return info


def training(data: Path, tmp: Path, model: str, batch: int, dry: bool) -> dict[str, Any]:
    """Finite losses under each precision with accumulation and both losses; resume equals the straight run."""
    out: dict[str, Any] = {}
    common = ["--model", model, "--batch-size", str(batch), "--accum-steps", "2", "--workers", "2"]
    fp16 = "amp_bf16" if dry else "amp"  # fp16 autocast needs CUDA
    if dry:
        out["note"] = "CPU: the fp16 + grad-scaler run uses amp_bf16 (no scaler) instead"
    for name, flags in {
        "amp_bf16_siglip_accum2": ["--precision", "amp_bf16", "--loss", "siglip"],
        f"{fp16}_clip_accum2": ["--precision", fp16, "--loss", "clip"],
    }.items():
        losses = _losses(_vlm_train(tmp / name, data, *common, "--steps", "4", "--save-every", "0", *flags))
        out[name] = {"losses": [round(v, 4) for v in losses], "finite": all(math.isfinite(v) for v in losses)}
        if not out[name]["finite"] or len(losses) != 4:
            raise RuntimeError(f"{name}: losses {losses}")
    # Resume: a straight 6-step run with a checkpoint at 3, its final weights kept aside; the run is then cut back
    # to step 3 (as if killed after it) and resumed in place (a resume must keep its output_dir).
    from safetensors.torch import load_file

    from vlm.checkpoint import WEIGHTS_NAME, list_step_checkpoints

    run = tmp / "resume"
    flags = [*common, "--precision", "amp_bf16", "--steps", "6", "--save-every", "3"]
    _vlm_train(run, data, *flags)
    a = load_file(str(run / "final" / WEIGHTS_NAME))
    at3 = load_file(str(dict(list_step_checkpoints(run))[3] / WEIGHTS_NAME))
    for p in [run / "final", run / "result.json", dict(list_step_checkpoints(run))[6]]:
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    rows = _vlm_train(run, data, *flags, "--resume")
    b = load_file(str(run / "final" / WEIGHTS_NAME))
    diff = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    moved = max((a[k].float() - at3[k].float()).abs().max().item() for k in a)
    out["resume"] = {
        "steps_logged": [r["step"] for r in rows if "train/loss" in r],
        "max_weight_diff_vs_straight": diff,
        "max_weight_change_steps_4_to_6": moved,
    }
    if diff > 0.05 * moved:
        raise RuntimeError(f"resumed weights differ from the straight run by {diff:.3g} (steps 4-6 moved {moved:.3g})")
    return out


def throughput(model: str, batch: int, steps: int, workers: int, scenes: int, precision: str, tmp: Path):
    from bench.train_throughput import measure

    args = argparse.Namespace(
        model=model,
        steps=steps,
        batch_size=batch,
        repeats=1,
        workers=workers,
        precision=precision,
        scenes=scenes,
        log_every=max(2, steps // 6),
        threads=torch.get_num_threads(),
    )
    rows, details = measure(args, tmp)
    ours, theirs = rows
    return {
        "ours_steady_samples_s": ours["samples/s (steady)"],
        "open_clip_steady_samples_s": theirs["samples/s (steady)"],
        "steady_ratio": ours.get("steady ratio"),
        "whole_run_ratio": ours["ratio vs open_clip_train"],
        "mfu_logged_by_trainer": ours.get("MFU (steady)"),
        "rows": rows,
        "details": details,
        "settings": vars(args),
    }


def compute_step(model: str, batch: int, precision: str, steps: int) -> dict[str, Any]:
    """Samples/s and MFU of the training step alone (no data loading): a resident batch through the trainer's
    ClipForward, InfoNCE and fused AdamW, timed with CUDA synchronisation after warm-up."""
    from vlm import flops, models
    from vlm.loss import ClipLoss
    from vlm.train import ClipForward

    device = models.default_device()
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    encoders = models.load(model, device=device, precision=precision)
    forward = ClipForward(encoders.model).train()
    size = encoders.image_size if isinstance(encoders.image_size, int) else encoders.image_size[0]
    images = torch.randn(batch, 3, size, size, device=device)
    tokens = torch.randint(0, 1000, (batch, encoders.context_length), device=device)
    per_sample = flops.flops_per_sample(forward, images[:1], tokens[:1])
    optimizer = torch.optim.AdamW(encoders.model.parameters(), lr=1e-5, fused=True)
    loss_fn = ClipLoss()

    def step() -> torch.Tensor:
        with encoders.autocast():
            img, txt, scale, _ = forward(images, tokens)
        loss = loss_fn(img, txt, scale)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(3):
        step()
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        loss = step()
    sync()
    seconds = time.perf_counter() - start
    rate = batch * steps / seconds
    peak = flops.peak_flops(device, precision)
    return {
        "model": model,
        "batch": batch,
        "precision": precision,
        "gflops_per_sample": round(per_sample / 1e9, 3),
        "step_ms": round(1000 * seconds / steps, 2),
        "samples_per_s": round(rate, 1),
        "peak_tflops": peak / 1e12 if peak else None,
        "mfu": round(flops.mfu(per_sample, rate, peak), 4) if peak else None,
        "last_loss": float(loss),
        "max_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.type == "cuda" else None,
    }


def embedding(data: Path, model: str, precision: str, images: int) -> dict[str, Any]:
    from bench.embed import with_pipeline
    from indexing.config import EmbedConfig, embed_defaults
    from indexing.embed import available_cores
    from vlm import models

    encoders = models.load(model, precision=precision)
    paths = sorted((data / "images").glob("*.png"))[:images]
    out: dict[str, Any] = {"model": model, "precision": encoders.precision, "images": len(paths)}
    with_pipeline(encoders, paths[:256], EmbedConfig(batch_size=64, workers=2, shard_size=256))  # warm-up
    for name, cfg in {
        "device_defaults": EmbedConfig(),
        "old_defaults_64x2": EmbedConfig(batch_size=64, workers=2),
    }.items():
        batch, workers = embed_defaults(cfg, encoders.device.type, available_cores())
        cfg = EmbedConfig(batch_size=batch, workers=workers, shard_size=4 * batch)
        out[name] = {"batch": batch, "workers": workers, "images_per_s": round(with_pipeline(encoders, paths, cfg), 1)}
    return out


def _gpu_mem_used() -> int | None:
    if not torch.cuda.is_available():
        return None
    free, total = torch.cuda.mem_get_info()
    return total - free


def _qps(search: Callable[[np.ndarray], Any], queries: np.ndarray, batch: int) -> float:
    search(queries[:batch])  # warm-up
    start = time.perf_counter()
    for i in range(0, len(queries), batch):
        search(queries[i : i + batch])
    return len(queries) / (time.perf_counter() - start)


def faiss_section(n: int, d: int, state: dict[str, Any]) -> dict[str, Any]:
    """Build time, GPU memory held after the build, recall@10 and QPS on CPU and GPU, on clustered unit vectors."""
    import faiss

    from indexing import faiss_index as fi
    from indexing import gpu

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((1000, d)).astype(np.float32)
    vectors = centres[rng.integers(0, 1000, n)] + rng.standard_normal((n, d), dtype=np.float32) * 0.6
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = np.arange(n, dtype=np.int64)
    queries = vectors[rng.choice(n, 2000, replace=False)] + rng.standard_normal((2000, d)).astype(np.float32) * 0.1
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    before = _gpu_mem_used()
    start = time.perf_counter()
    index, info = fi.build(vectors, ids, fi.IndexConfig())
    build_s = time.perf_counter() - start
    gc.collect()
    after_build = _gpu_mem_used()
    out: dict[str, Any] = {
        "n": n,
        "d": d,
        "factory": info.factory,
        "nprobe": info.nprobe,
        "recall_at_10": round(info.recall_at_10, 4),
        "build_s": round(build_s, 2),
        "kmeans_on": "gpu" if fi.gpu_count() else "cpu",
        "gpu_mem_held_after_build_mib": None if before is None else round((after_build - before) / 2**20, 1),
    }
    out["cpu_qps_batch1000"] = round(_qps(lambda q: fi.search(index, info, q, 10), queries, 1000), 1)
    out["cpu_qps_single"] = round(_qps(lambda q: fi.search(index, info, q, 10), queries[:300], 1), 1)
    _, truth = faiss.knn(queries[:500], vectors, 10, metric=fi.METRIC)  # exact, for the recall of each copy
    _, cpu_ids = fi.search(index, info, queries[:500], 10)
    out["cpu_recall_at_10"] = round(fi.recall_at_k(cpu_ids, truth), 4)
    # Copied as a collection's version is: written, opened with its lists memory-mapped (indexing/gpu.py).
    folder = tempfile.mkdtemp(prefix="gpu-check-index-")
    fi.write(index, os.path.join(folder, "index.faiss"))
    mapped = fi.read(os.path.join(folder, "index.faiss"), mmap=info.kind)
    start = time.perf_counter()
    copy = gpu.gpu_copy(mapped, info, d)
    out["gpu_copy"] = None if copy is None else f"{len(copy.copies)} GPU(s) in {time.perf_counter() - start:.2f} s"
    del mapped
    shutil.rmtree(folder, ignore_errors=True)
    if copy is not None:
        out["gpu_mem_with_copy_mib"] = round((_gpu_mem_used() - before) / 2**20, 1)
        out["gpu_qps_batch1000"] = round(_qps(lambda q: fi.search(copy, info, q, 10, gpu=True), queries, 1000), 1)
        out["gpu_qps_single"] = round(_qps(lambda q: fi.search(copy, info, q, 10, gpu=True), queries[:300], 1), 1)
        _, gpu_ids = fi.search(copy, info, queries[:500], 10, gpu=True)
        out["gpu_vs_cpu_top10_overlap"] = round(fi.recall_at_k(gpu_ids, cpu_ids), 4)
        out["gpu_recall_at_10"] = round(fi.recall_at_k(gpu_ids, truth), 4)  # at the nprobe tuned on the CPU
    else:
        out["note"] = "faiss sees no GPU (the carried faiss is the CPU wheel): GPU figures not measured"
    state.update(index=index, info=info, copy=copy, queries=queries)
    return out


def concurrent(state: dict[str, Any], threads: int = 8, per_thread: int = 100) -> dict[str, Any]:
    """`threads` threads search one index at once (its GPU copy when there is one, through the per-copy lock);
    every answer must equal the serial answer to the same query."""
    from indexing import faiss_index as fi
    from indexing import gpu

    if "index" not in state:
        raise RuntimeError("the faiss section did not build an index")
    info, queries = state["info"], state["queries"][: threads * per_thread]
    copy = state["copy"]
    target = copy if copy is not None else gpu.Replicas([state["index"]])
    on_gpu = copy is not None
    want = [fi.search(target, info, queries[i : i + 1], 10, gpu=on_gpu)[1] for i in range(len(queries))]
    wrong, errors = [0] * threads, []

    def work(t: int) -> None:
        try:
            for i in range(t, len(queries), threads):
                got = fi.search(target, info, queries[i : i + 1], 10, gpu=on_gpu)[1]
                wrong[t] += int(not np.array_equal(got, want[i]))
        except Exception as e:  # counted, not raised: the thread's failure is the finding
            errors.append(repr(e))

    start = time.perf_counter()
    pool = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    seconds = time.perf_counter() - start
    result = {
        "on": "gpu copy" if on_gpu else "cpu index (through gpu.Replicas)",
        "threads": threads,
        "searches": len(queries),
        "wrong_results": sum(wrong),
        "errors": errors[:3],
        "qps": round(len(queries) / seconds, 1),
    }
    if sum(wrong) or errors:
        raise RuntimeError(f"concurrent searches went wrong: {result}")
    return result


# ---------------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "bench" / "results" / "gpu_check"))
    p.add_argument("--dry", action="store_true", help="CPU, tiny sizes: debug the script without a GPU")
    p.add_argument("--budget-s", type=float, default=420.0, help="sections that would not fit are skipped")
    p.add_argument("--only", default="", help="comma-separated sections to run (a rerun of failed ones); default all")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.dry and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --dry on a CPU")
    from vlm import models
    from vlm.synth import generate

    models.register_model_configs()
    dry = args.dry
    # Sizes: the GPU run is the measurement; the dry run only walks every line.
    model = "vlm-tiny" if dry else "ViT-B-32"
    size = 64 if dry else 224
    check = Check(out, args.budget_s, {s for s in args.only.split(",") if s})
    check.run("environment", 0, lambda: environment(dry))
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        tmp = Path(tmp)
        small = tmp / "small"
        generate(small, 64 if dry else 512, 0, size, progress=False)
        check.run("training", 30 if dry else 90, lambda: training(small, tmp / "train", model, 16 if dry else 64, dry))
        check.run(
            "throughput",
            30 if dry else 120,
            lambda: throughput(
                model,
                16 if dry else 256,
                8 if dry else 60,
                1 if dry else min(12, (os.cpu_count() or 2) - 2),
                100 if dry else 2000,
                "amp_bf16",
                tmp / "throughput",
            ),
        )
        check.run(
            "compute_step",
            10 if dry else 30,
            lambda: compute_step(model, 16 if dry else 256, "amp_bf16", 5 if dry else 30),
        )
        # The throughput section's 2,000 scenes when it made them: a GPU needs more than 512 images to show a rate.
        big = tmp / "throughput" / "data"
        pics = big if (big / "images").is_dir() else small
        check.run("embedding", 10 if dry else 30, lambda: embedding(pics, model, "fp32" if dry else "amp_bf16", 2000))
    state: dict[str, Any] = {}
    check.run("faiss", 20 if dry else 90, lambda: faiss_section(30_000 if dry else 500_000, 64 if dry else 512, state))
    check.run("concurrent", 5 if dry else 20, lambda: concurrent(state))
    check.write()
    print((out / "gpu_check.md").read_text())
    failed = [k for k, v in check.record["sections"].items() if v["status"].startswith("failed")]
    print(f"{len(failed)} failed: {failed}" if failed else "all checks ok or skipped as said", flush=True)


if __name__ == "__main__":
    main()
