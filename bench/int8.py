"""What int8 dynamic quantisation costs: search results of an int8-embedded collection against an fp32 one, and speed.

    python -m bench.int8                                   # demo model, the Twemoji icons of ../shared/data
    python -m bench.int8 --model ViT-B-32 --images 300     # a real-size tower (random weights: speed, and recall of
                                                           # an untrained embedding, which says little)

One export of `--model` (`vlm export onnx --quantize`, into a temporary folder) gives two collections built through
the library over the same real images: fp32 ONNX (`runtime="onnx"`, whose vectors equal PyTorch's) and int8
(`runtime="onnx-int8"`). Every tenth image is held out: those images are the image queries, and their captions the
text queries; each collection embeds its queries with its own model, as a user of it would. recall@10 = the share of
the fp32 collection's top 10 that the int8 collection also returns, averaged over the queries. Speed: the image
tower on the same preprocessed batch, fp32 and int8 ONNX Runtime interleaved over `--rounds`, best round each (the
ratio is the claim). Also the smallest cosine between an image's int8 and fp32 vectors.
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench.common import report, shared_data


def recall_at(a: np.ndarray, b: np.ndarray, k: int = 10) -> float:
    """Mean share of each row of `a` (reference ids, best first) found in the same row of `b`, over the first k."""
    return float(np.mean([len(set(x[:k].tolist()) & set(y[:k].tolist())) / k for x, y in zip(a, b, strict=True)]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="demo", help="a model name vlm.models.load takes (default: demo)")
    parser.add_argument("--images", type=int, default=0, help="use the first N images (0: all 1,911)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved speed rounds")
    parser.add_argument("--batch", type=int, default=32, help="images per timed forward pass")
    args = parser.parse_args(argv)

    from indexing.collection import Collection
    from indexing.config import EmbedConfig
    from vlm import models
    from vlm.onnx_export import export

    data = shared_data("twemoji_captions")
    with open(data / "pairs.csv", newline="", encoding="utf-8") as f:
        pairs = [(data / r["path"], r["caption"]) for r in csv.DictReader(f)]
    pairs = pairs[: args.images] if args.images else pairs
    held = set(range(0, len(pairs), 10))
    db = [p for i, (p, _) in enumerate(pairs) if i not in held]
    image_queries = [pairs[i][0] for i in sorted(held)]
    text_queries = [pairs[i][1] for i in sorted(held)]
    rows, meta = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        onnx = Path(tmp) / "export"
        torch.manual_seed(0)
        # Saved once: a model with random weights (an architecture name) loads with new weights every time.
        model = str(models.save(models.load(args.model, device="cpu"), Path(tmp) / "model"))
        start = time.perf_counter()
        export(models.load(model, device="cpu"), onnx, quantize=True)
        meta["export_s"] = round(time.perf_counter() - start, 1)
        results, encoders = {}, {}
        for runtime in ("onnx", "onnx-int8"):
            coll = Collection.create(Path(tmp) / f"coll-{runtime}", model, root=data, runtime=runtime, onnx=onnx)
            start = time.perf_counter()
            coll.add(db, embed=EmbedConfig(batch_size=64, workers=0), progress=False)
            build_s = time.perf_counter() - start
            text = coll.search_text(text_queries, k=10)
            image = coll.search_image(image_queries, k=10)
            results[runtime] = (text.ids, image.ids, build_s, coll.count)
            encoders[runtime] = coll.encoders
            coll.close()
        fp32, int8 = encoders["onnx"], encoders["onnx-int8"]
        sample = [Image.open(p).convert("RGB") for p in db[: args.batch]]
        pixels = torch.stack([fp32.preprocess(im) for im in sample])
        v32, v8 = fp32.encode_image(pixels).numpy(), int8.encode_image(pixels).numpy()
        best = {"onnx": float("inf"), "onnx-int8": float("inf")}
        for _ in range(args.rounds):
            for name, enc in (("onnx", fp32), ("onnx-int8", int8)):
                start = time.perf_counter()
                enc.encode_image(pixels)
                best[name] = min(best[name], time.perf_counter() - start)
    for runtime in ("onnx", "onnx-int8"):
        text_ids, image_ids, build_s, count = results[runtime]
        rows.append(
            {
                "runtime": "fp32 ONNX" if runtime == "onnx" else "int8 ONNX (dynamic)",
                "images": count,
                "text recall@10 vs fp32": round(recall_at(results["onnx"][0], text_ids), 3),
                "image recall@10 vs fp32": round(recall_at(results["onnx"][1], image_ids), 3),
                "image tower img/s": round(len(pixels) / best[runtime], 1),
                "speed vs fp32": round(best["onnx"] / best[runtime], 2),
                "build s": round(build_s, 1),
            }
        )
    cos = (v32 * v8).sum(1) / np.linalg.norm(v32, axis=1) / np.linalg.norm(v8, axis=1)
    report(
        f"int8-{Path(args.model).name}",
        rows,
        model=args.model,
        data=f"twemoji_captions: {len(db)} images searched, {len(held)} image and {len(held)} text queries",
        min_cosine_int8_fp32=round(float(cos.min()), 4),
        threads=torch.get_num_threads(),
        batch=len(pixels),
        **meta,
    )


if __name__ == "__main__":
    main()
