"""The relevance cut-off of a date-sorted search (`--sort date`): which cosine keeps the relevant images, per model.

    python -m bench.sort_cutoff                       # demo model: synthetic scenes + Fashion-MNIST (../shared/data)
    python -m bench.sort_cutoff --model ViT-B-32 --pretrained laion2b_s34b_b79k     # where the weights are at hand

`--sort date` shows the newest of the images scoring at least the cut-off, so the cut-off should keep the relevant
images and few others: it is judged as a set, by precision (relevant among those kept), recall (relevant kept among
all relevant) and their F1, summed over the queries (micro-averaged). Two labelled sets, each a collection built
through the library and searched by text with every image scored (`search_text(k=count)`):
    shapes          synthetic scenes (`vlm.synth`, seed 21: not the demo model's training scenes); queries
                    "a <colour> <shape>" for every object that occurs; relevant: the scenes holding that object
    fashion-mnist   ../shared/data/fashion_mnist_train5k; queries "a photo of a <label>"; relevant: that label
Each set's images are split in two halves (seeded): the cut-off with the best F1 on the tuning half is reported on
the test half, beside the current default (`indexing.queries.default_min_score` of the model the collection
recorded: by the weights' fingerprint, as a search looks it up, so a checkpoint path of the demo model gets the demo
model's cut-off). The default is picked from the `--pick-on` set (the model's own domain for the demo model) on its
tuning half.
"""

from __future__ import annotations

import argparse
import csv
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bench.common import report, shared_data

if TYPE_CHECKING:
    from indexing.results import ModelSpec

CUTS = np.round(np.arange(-0.2, 0.95, 0.01), 2)


def shapes_set(folder: Path, scenes: int, seed: int) -> tuple[list[Path], list[str], np.ndarray]:
    """(images, queries, relevance (queries, images) bool) of synthetic scenes."""
    from vlm.synth import generate

    generate(folder, scenes=scenes, seed=seed, image_size=128, progress=False)
    images = sorted((folder / "images").glob("*.png"))
    index = {p.name: i for i, p in enumerate(images)}
    holds: dict[str, set[int]] = {}
    with open(folder / "phrases.csv", newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            holds.setdefault(f"a {row['colour']} {row['shape']}", set()).add(index[Path(row["path"]).name])
    queries = sorted(holds)
    relevant = np.zeros((len(queries), len(images)), bool)
    for q, query in enumerate(queries):
        relevant[q, sorted(holds[query])] = True
    return images, queries, relevant


def fashion_set(limit: int) -> tuple[list[Path], list[str], np.ndarray]:
    data = shared_data("fashion_mnist_train5k")
    with open(data / "labels.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))[:limit]
    labels = sorted({r["label"] for r in rows})
    queries = [f"a photo of a {label.lower()}" for label in labels]
    relevant = np.array([[r["label"] == label for r in rows] for label in labels])
    return [data / r["path"] for r in rows], queries, relevant


def scores_of(
    model: str, pretrained: str | None, images: list[Path], queries: list[str], tmp: Path
) -> tuple[np.ndarray, ModelSpec]:
    """(queries, images) cosine of every image with every query, from a collection searched through the library, and
    the model the collection recorded (with its weights' fingerprint)."""
    from indexing.collection import Collection
    from indexing.config import EmbedConfig

    coll = Collection.create(tmp / "c", model, pretrained=pretrained, root=tmp.parent)
    coll.add(images, embed=EmbedConfig(batch_size=64, workers=0), progress=False)
    position = {str(p.resolve()): i for i, p in enumerate(images)}
    root = coll.root_dir
    hits = coll.search_text(queries, k=coll.count)
    out = np.full((len(queries), len(images)), -np.inf, np.float32)
    for q, (records, scores) in enumerate(zip(hits.records, hits.scores, strict=True)):
        for record, score in zip(records, scores, strict=False):
            out[q, position[str(Path(record.image_ref(root).path).resolve())]] = score
    spec = coll.model
    coll.close()
    return out, spec


def rates(scores: np.ndarray, relevant: np.ndarray, cut: float) -> dict:
    kept = scores >= cut
    tp = int((kept & relevant).sum())
    precision = tp / max(int(kept.sum()), 1)
    recall = tp / max(int(relevant.sum()), 1)
    f1 = 2 * precision * recall / max(precision + recall, 1e-12)
    return {"precision": round(precision, 3), "recall": round(recall, 3), "F1": round(f1, 3)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="demo")
    parser.add_argument("--pretrained", default=None)
    parser.add_argument("--scenes", type=int, default=600, help="synthetic scenes")
    parser.add_argument("--fashion", type=int, default=2000, help="Fashion-MNIST images (0: skip the set)")
    parser.add_argument("--pick-on", choices=("shapes", "fashion-mnist"), default="shapes")
    parser.add_argument("--seed", type=int, default=0, help="of the tuning/test split")
    args = parser.parse_args(argv)

    from indexing.queries import default_min_score

    rows, picked, default = [], {}, None
    with tempfile.TemporaryDirectory() as tmp:
        sets = {"shapes": shapes_set(Path(tmp) / "shapes", args.scenes, seed=21)}
        if args.fashion:
            sets["fashion-mnist"] = fashion_set(args.fashion)
        for name, (images, queries, relevant) in sets.items():
            where = Path(tmp) / f"coll-{name}" / "x"
            where.parent.mkdir()
            scores, spec = scores_of(args.model, args.pretrained, images, queries, where)
            default = default_min_score(spec)  # as a search finds it: by the weights' fingerprint, then the name
            tune = np.random.default_rng(args.seed).random(len(images)) < 0.5
            f1 = [rates(scores[:, tune], relevant[:, tune], c)["F1"] for c in CUTS]
            best = float(CUTS[int(np.argmax(f1))])
            picked[name] = best
            for pick, cut in (("best F1 on the tuning half", best), ("current default", default)):
                rows.append(
                    {
                        "set": name,
                        "queries": len(queries),
                        "images (test half)": int((~tune).sum()),
                        "cut-off": cut,
                        "pick": pick,
                        **rates(scores[:, ~tune], relevant[:, ~tune], cut),
                        "relevant per query": round(float(relevant[:, ~tune].sum(1).mean()), 1),
                    }
                )
    report(
        f"sort_cutoff-{Path(args.model).name}",
        rows,
        model=args.model,
        pretrained=args.pretrained,
        fingerprint=spec.fingerprint,
        current_default=default,
        best_on_tuning_half=picked,
        suggested_default=picked.get(args.pick_on),
        pick_on=args.pick_on,
    )


if __name__ == "__main__":
    main()
