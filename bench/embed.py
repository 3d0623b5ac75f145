"""Images/s of the embedding pipeline (indexing.embed) versus a plain loop over open_clip's encode_image.

    python -m bench.embed                         # the demo model on 512 px scenes and on ../shared/data emoji
    python -m bench.embed --model vlm-small --data shapes256 --images 256 --repeats 2      # a quick run
    python -m bench.embed --phone 2000            # phone photos, ViT-B-32, ONNX + draft decoding (bench/embed_phone.py)

Claim (issue 5): the pipeline embeds >= 1.5x more images/s than the plain loop on CPU, with the same model and
batch size, because DataLoader workers decode and preprocess the next batches while the model computes.

The peer is the loop one writes first: for each batch, open every file with PIL, convert to RGB, apply the model's
preprocess, stack, `model.encode_image` under no_grad, L2-normalise. The pipeline does more work per image (it also
hashes the pixels for de-duplication, stats the file and writes resumable shards), so the ratio is not flattered.
Both run `--repeats` times, interleaved, in one process; the median of each is reported. The speed of a forward pass
does not depend on the weights' values, so while the demo model is not built a fresh `--fallback-model` of the
same family stands in (said in the output).

Data (`--data`, several allowed): "shapesN" is the synthetic shapes world rendered at N x N pixels (PNG; at 512 px
decoding and resizing cost about what a forward pass of a small model does, as with photos); any other name is a
dataset under ../shared/data (twemoji_captions: 64 x 64 PNG, where decoding is nearly free and no pipeline can
win much).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from bench.common import SHARED_DATA, report
from indexing import embed as pipeline
from indexing.config import EmbedConfig
from indexing.sources import gather
from vlm.errors import ModelError
from vlm.models import Encoders, load
from vlm.synth import generate

LOG = logging.getLogger(__name__)


def plain_loop(encoders: Encoders, paths: list[Path], batch_size: int) -> float:
    """The peer: decode, preprocess and encode one batch after another in this process; returns images/s."""
    model = encoders.model.eval()
    start = time.perf_counter()
    for i in range(0, len(paths), batch_size):
        pixels = torch.stack([encoders.preprocess(Image.open(p).convert("RGB")) for p in paths[i : i + batch_size]])
        with torch.no_grad(), encoders.autocast():
            F.normalize(model.encode_image(pixels.to(encoders.device)).float(), dim=-1).cpu()
    return len(paths) / (time.perf_counter() - start)


def with_pipeline(encoders: Encoders, paths: list[Path], cfg: EmbedConfig) -> float:
    items = gather(paths).items
    with tempfile.TemporaryDirectory() as tmp:
        job = pipeline.Job.for_items(items, encoders, dtype="float32", shard_size=cfg.shard_size)
        pipeline.prepare(Path(tmp) / "staging", job)
        start = time.perf_counter()
        pipeline.embed(encoders, items, Path(tmp) / "staging", job, cfg, progress=False)
        return len(paths) / (time.perf_counter() - start)


def images(name: str, limit: int, tmp: Path) -> tuple[list[Path], str] | None:
    if name.startswith("shapes") and name[len("shapes") :].isdigit():
        size = int(name[len("shapes") :])
        generate(tmp / name, scenes=limit, seed=0, image_size=size, progress=False)
        return sorted((tmp / name / "images").glob("*.png")), f"synthetic shapes, {size} px PNG"
    folder = SHARED_DATA / name / "images"
    if not folder.is_dir():
        print(f"{name} skipped: {folder} is missing")
        return None
    return sorted(folder.rglob("*.png"))[:limit], f"shared/data/{name}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="demo")
    parser.add_argument("--fallback-model", default="vlm-small", help="used, fresh, while --model cannot be loaded")
    parser.add_argument("--data", nargs="+", default=["shapes512", "twemoji_captions"])
    parser.add_argument("--images", type=int, default=2048, help="per dataset (fewer: worker start-up weighs more)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default=None)
    parser.add_argument(
        "--phone", type=int, metavar="N", help="run bench/embed_phone.py on N phone photos instead (its flags follow)"
    )
    args, rest = parser.parse_known_args(argv)
    if args.phone:
        from bench import embed_phone

        return embed_phone.main(["--images", str(args.phone), *rest])
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    logging.basicConfig(level=logging.WARNING)
    try:
        encoders, model_note = load(args.model, device=args.device), args.model
    except ModelError as e:
        print(f"{args.model} cannot be loaded ({e}); timing a fresh {args.fallback_model} instead")
        encoders, model_note = load(args.fallback_model, device=args.device), f"{args.fallback_model} (fresh)"
    cfg = EmbedConfig(batch_size=args.batch_size, workers=args.workers, shard_size=4 * args.batch_size)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-embed-") as tmp:
        for name in args.data:
            found = images(name, args.images, Path(tmp))
            if found is None:
                continue
            paths, data_note = found
            plain_loop(encoders, paths[: args.batch_size], args.batch_size)  # warm-up: first-call allocations
            plain, ours = [], []
            for _ in range(args.repeats):  # interleaved, so both see the same machine load
                plain.append(plain_loop(encoders, paths, args.batch_size))
                ours.append(with_pipeline(encoders, paths, cfg))
            rows.append(
                {
                    "data": data_note,
                    "images": len(paths),
                    "plain_loop_img_s": round(statistics.median(plain), 1),
                    "pipeline_img_s": round(statistics.median(ours), 1),
                    "ratio": round(statistics.median(ours) / statistics.median(plain), 2),
                }
            )
    report(
        "embed",
        rows,
        model=model_note,
        source=encoders.source,
        batch_size=args.batch_size,
        workers=args.workers,
        device=str(encoders.device),
        precision=encoders.precision,
    )


if __name__ == "__main__":
    main()
