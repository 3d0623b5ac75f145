"""Images/s on phone photos: the project's pipeline (ONNX Runtime + draft JPEG decoding) against the plain open_clip
loop (full decode, PyTorch), in one run; `python -m bench.embed --phone N` runs it (or `python -m bench.embed_phone`).

    nice -n 10 python -m bench.embed_phone --images 2000          # the README's figure
    python -m bench.embed_phone --images 48 --parts 8 --no-int8   # a quick look

Claim (issue 16): >= 2x images/s on a CPU with ViT-B-32 (random weights: a forward pass costs the same whatever
their values) on 12-megapixel JPEGs. Photos: scikit-learn's two sample photos (real camera JPEGs, 640 x 427),
enlarged with sensor-like noise, then cut at random to 4032 x 3024, mirrored and colour-shifted (so each file is a
~2 MB JPEG like a phone's), a quarter of them stored sideways with an EXIF orientation as portrait phone photos
are. `--distinct` renders are made and the `--images` files cycle through them (decoding cost does not depend on
which picture it is; making 2,000 renders would take longer than the benchmark).

Rows (interleaved in `--rounds` slices of the images, so both see the same machine load):
- plain: for each batch, PIL open + convert("RGB") + the model's preprocess, stack, `encode_image` under no_grad,
  L2-normalise, in this process (the loop one writes first; it does not even apply the EXIF orientation).
- pipeline: `indexing.embed` (DataLoader workers decode, hash and preprocess; shards written) with the model loaded
  through `vlm.models.load(..., runtime="auto")`, which finds the export next to the checkpoint, and draft decoding.
  `--configs` adds the mixed rows (torch + draft, ONNX + full decode) that show what each part gives end to end.
Parts (per image, one process, on `--parts` images): decoding (full vs draft), preprocessing and pixel hashing of
each, the model (PyTorch vs ONNX Runtime, at 1 thread and at all threads). int8 (`--int8`): the
quantised export's image vectors against fp32's: recall@10 of image->image and text->image search over
../shared/data/twemoji_captions, and its speed.
"""

from __future__ import annotations

import argparse
import io
import logging
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench.common import SHARED_DATA, report
from indexing import embed as pipeline
from indexing.config import EmbedConfig
from indexing.sources import gather
from vlm import models
from vlm.onnx_export import export
from vlm.readers.images import ImageRef

LOG = logging.getLogger(__name__)
PHONE = (4032, 3024)
CONFIGS = {  # name: (runtime, draft side)
    "pipeline (ONNX + draft)": ("onnx", 512),
    "pipeline (torch + draft)": ("torch", 512),
    "pipeline (ONNX, full decode)": ("onnx", 0),
    "pipeline (torch, full decode)": ("torch", 0),
}


def make_photos(out: Path, count: int, distinct: int, seed: int = 0) -> list[Path]:
    """`count` files cycling through `distinct` renders: a random 4032 x 3024 window of one of two enlarged, noisy
    canvases (the sample photos at 4400 x 3300), perhaps mirrored, with a random colour cast."""
    from sklearn.datasets import load_sample_image

    rng = np.random.default_rng(seed)
    canvases = []
    for name in ("china.jpg", "flower.jpg"):
        big = Image.fromarray(load_sample_image(name)).resize((4400, 3300), Image.BICUBIC)
        noisy = np.asarray(big, dtype=np.int16) + rng.normal(0, 4, (3300, 4400, 3)).astype(np.int16)
        canvases.append(Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)))
    renders = []
    for i in range(distinct):
        x, y = rng.integers(0, 4400 - PHONE[0] + 1), rng.integers(0, 3300 - PHONE[1] + 1)
        im = canvases[i % 2].crop((x, y, x + PHONE[0], y + PHONE[1]))
        if rng.random() < 0.5:
            im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        gains = rng.uniform(0.85, 1.15, 3)
        lut = [min(255, int(v * g)) for g in gains for v in range(256)]
        im = im.point(lut)
        buf = io.BytesIO()
        exif = Image.Exif()
        if i % 4 == 3:  # a portrait photo, stored sideways with its orientation in EXIF
            exif[0x0112] = 6
        im.save(buf, "JPEG", quality=92, exif=exif)
        renders.append(buf.getvalue())
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = out / f"IMG_{i:05d}.jpg"
        path.write_bytes(renders[i % distinct])
        paths.append(path)
    return paths


def plain_loop(encoders: models.Encoders, paths: list[Path], batch_size: int) -> float:
    """The peer; returns seconds."""
    model = encoders.model.eval()
    start = time.perf_counter()
    for i in range(0, len(paths), batch_size):
        pixels = torch.stack([encoders.preprocess(Image.open(p).convert("RGB")) for p in paths[i : i + batch_size]])
        with torch.no_grad():
            torch.nn.functional.normalize(model.encode_image(pixels).float(), dim=-1)
    return time.perf_counter() - start


def with_pipeline(encoders: models.Encoders, paths: list[Path], cfg: EmbedConfig, tmp: Path) -> float:
    items = gather(paths).items
    staging = tmp / "staging"
    shutil.rmtree(staging, ignore_errors=True)
    job = pipeline.Job.for_items(items, encoders, dtype="float32", shard_size=cfg.shard_size)
    pipeline.prepare(staging, job)
    start = time.perf_counter()
    stats = pipeline.embed(encoders, items, staging, job, cfg, progress=False)
    seconds = time.perf_counter() - start
    if stats.failed:
        raise RuntimeError(f"{stats.failed} photos failed to decode")
    return seconds


def _ms(fn, reps: int) -> float:
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - start) / reps * 1000


def parts(torch_enc, onnx_enc, paths: list[Path], batch_size: int) -> list[dict]:
    """Per-image milliseconds of each part, the plain way against the pipeline's way."""
    refs = [ImageRef("file", str(p)) for p in paths]
    rows = []

    def row(part, plain_ms, ours_ms, plain_what, ours_what):
        rows.append(
            {
                "part": part,
                "plain": plain_what,
                "plain_ms_per_img": round(plain_ms, 2),
                "pipeline": ours_what,
                "pipeline_ms_per_img": round(ours_ms, 2),
                "saved_x": round(plain_ms / max(ours_ms, 1e-9), 2),
            }
        )

    full = [r.open() for r in refs]
    draft = [r.open(draft=512) for r in refs]
    dec_full = sum(_ms(lambda r=r: r.open(), 1) for r in refs) / len(refs)
    dec_draft = sum(_ms(lambda r=r: r.open(draft=512), 1) for r in refs) / len(refs)
    row("decode (+ EXIF, RGB)", dec_full, dec_draft, "full 4032x3024", "draft >= 512 px")
    pre_full = sum(_ms(lambda im=im: torch_enc.preprocess(im), 1) for im in full) / len(full)
    pre_draft = sum(_ms(lambda im=im: torch_enc.preprocess(im), 1) for im in draft) / len(draft)
    row("preprocess (resize, crop, normalise)", pre_full, pre_draft, "from full", "from draft")
    hash_full = sum(_ms(lambda im=im: pipeline.pixel_sha256(im), 1) for im in full) / len(full)
    hash_draft = sum(_ms(lambda im=im: pipeline.pixel_sha256(im), 1) for im in draft) / len(draft)
    row("pixel hash (the plain loop has none)", hash_full, hash_draft, "of full, if it had one", "of draft")
    batch = torch.stack([torch_enc.preprocess(im) for im in draft])
    batch = batch.repeat(-(-batch_size // len(batch)), 1, 1, 1)[:batch_size]
    before = torch.get_num_threads()
    for threads in sorted({1, before}):
        torch.set_num_threads(threads)
        torch_enc.encode_image(batch[:2]), onnx_enc.encode_image(batch[:2])  # warm-up at this thread count
        t = _ms(lambda: torch_enc.encode_image(batch), 1) / len(batch)
        o = _ms(lambda: onnx_enc.encode_image(batch), 1) / len(batch)
        row(f"model, batch {len(batch)}, {threads} thread(s)", t, o, "PyTorch fp32", "ONNX Runtime fp32")
    torch.set_num_threads(before)
    return rows


def int8_recall(model_dir: Path, images: int, queries: int) -> dict | None:
    folder = SHARED_DATA / "twemoji_captions"
    if not folder.is_dir():
        print(f"int8 recall skipped: {folder} is missing")
        return None
    import csv

    paths = sorted((folder / "images").rglob("*.png"))[: images + queries]
    with open(folder / "pairs.csv", newline="", encoding="utf-8") as f:
        texts = [r["caption"] for r in csv.DictReader(f)][:queries]
    fp32 = models.load(str(model_dir), device="cpu", runtime="onnx")
    int8 = models.load(str(model_dir), device="cpu", runtime="onnx-int8")
    pixels = torch.stack([fp32.preprocess(Image.open(p).convert("RGB")) for p in paths])
    out = {}
    for name, enc in (("fp32", fp32), ("int8", int8)):
        start = time.perf_counter()
        vecs = torch.cat([enc.encode_image(pixels[i : i + 64]) for i in range(0, len(pixels), 64)])
        out[name] = (vecs, len(pixels) / (time.perf_counter() - start), enc.encode_text(texts))
    db32, db8 = out["fp32"][0][:images], out["int8"][0][:images]

    def recall(q32, q8, k=10):
        top32 = (q32 @ db32.T).topk(k).indices
        top8 = (q8 @ db8.T).topk(k).indices
        return float(np.mean([len(set(a.tolist()) & set(b.tolist())) / k for a, b in zip(top32, top8, strict=True)]))

    return {
        "data": f"twemoji_captions: {images} images, {queries} image and {queries} text queries",
        "image_recall@10_vs_fp32": round(recall(out["fp32"][0][images:], out["int8"][0][images:]), 3),
        "text_recall@10_vs_fp32": round(recall(out["fp32"][2], out["int8"][2]), 3),
        "min_cosine_int8_fp32": round(float((out["fp32"][0] * out["int8"][0]).sum(1).min()), 4),
        "fp32_img_s": round(out["fp32"][1], 1),
        "int8_img_s": round(out["int8"][1], 1),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ViT-B-32", help="an open_clip architecture (random weights)")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--distinct", type=int, default=40, help="different renders the files cycle through")
    parser.add_argument("--parts", type=int, default=16, help="images timed part by part")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved slices of the images")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--configs", nargs="+", default=["pipeline (ONNX + draft)"], choices=list(CONFIGS))
    parser.add_argument("--int8", action=argparse.BooleanOptionalAction, default=True, help="the int8 recall row")
    parser.add_argument("--recall-images", type=int, default=500, help="int8 recall: images searched (+10%% queries)")
    parser.add_argument("--model-dir", type=Path, help="reuse this checkpoint of --model and its onnx/ export")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="bench-phone-") as tmp_name:
        tmp = Path(tmp_name)
        model_dir = args.model_dir
        if model_dir is None:
            torch.manual_seed(0)
            model_dir = models.save(models.load(args.model, device="cpu"), tmp / "model")
        if not (model_dir / "onnx").is_dir():
            start = time.perf_counter()
            export(models.load(str(model_dir), device="cpu"), model_dir / "onnx", quantize=args.int8)
            print(f"exported {args.model} to ONNX in {time.perf_counter() - start:.0f} s")
        torch_enc = models.load(str(model_dir), device="cpu", runtime="torch")
        onnx_enc = models.load(str(model_dir), device="cpu", runtime="auto")  # finds model/onnx by itself
        assert onnx_enc.runtime == "onnx", onnx_enc.runtime_note
        start = time.perf_counter()
        paths = make_photos(tmp / "photos", args.images, min(args.distinct, args.images))
        mb = sum(p.stat().st_size for p in paths[: args.distinct]) / min(args.distinct, len(paths)) / 2**20
        print(f"made {len(paths)} photos ({mb:.1f} MB each on average) in {time.perf_counter() - start:.0f} s")
        part_rows = parts(torch_enc, onnx_enc, paths[: args.parts], min(args.batch_size, 32))
        print("per image, part by part:")
        report("embed_phone_parts", part_rows, model=args.model)
        plain_loop(torch_enc, paths[:4], 4)  # warm-up
        seconds = {"plain open_clip loop (full decode, torch)": 0.0, **{c: 0.0 for c in args.configs}}
        slices = np.array_split(np.arange(len(paths)), args.rounds)
        for r, idx in enumerate(slices):
            chunk = [paths[i] for i in idx]
            seconds["plain open_clip loop (full decode, torch)"] += plain_loop(torch_enc, chunk, args.batch_size)
            for name in args.configs:
                runtime, draft = CONFIGS[name]
                cfg = EmbedConfig(
                    batch_size=args.batch_size, workers=args.workers, shard_size=4 * args.batch_size, draft_side=draft
                )
                seconds[name] += with_pipeline(onnx_enc if runtime == "onnx" else torch_enc, chunk, cfg, tmp)
            print(f"round {r + 1}/{len(slices)}: " + ", ".join(f"{k}: {v:.0f} s" for k, v in seconds.items()))
        plain_s = seconds["plain open_clip loop (full decode, torch)"]
        rows = [
            {
                "run": name,
                "images": len(paths),
                "img_s": round(len(paths) / s, 2),
                "ratio": round(plain_s / s, 2),
                "seconds": round(s, 1),
            }
            for name, s in seconds.items()
        ]
        int8 = int8_recall(model_dir, args.recall_images, max(1, args.recall_images // 10)) if args.int8 else None
        if int8:
            print("int8 (dynamic quantisation) against fp32 ONNX:", int8)
        print("end to end:")
        report(
            "embed_phone",
            rows,
            model=f"{args.model} (random weights)",
            batch_size=args.batch_size,
            workers=args.workers,
            photo_mb=round(mb, 2),
            distinct=min(args.distinct, args.images),
            parts=part_rows,
            int8=int8,
        )


if __name__ == "__main__":
    main()
