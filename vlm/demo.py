"""The embedded demo: what the demo model is trained on, and how it is exported with its model card.

The demo model is trained by this project's own trainer on two sources that work offline:
- the synthetic shapes world (`vlm.synth`), made on the fly from a seed, and
- the Twemoji icons with their Unicode names (`vlm/demo_data/twemoji`, CC-BY 4.0, see its ATTRIBUTION.md).
A deterministic part of each is held out (the trainer's hash split), and the model card reports figures on it.
`make demo` runs the whole recipe; `export` writes the shipped fp16 checkpoint and its card.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from vlm import checkpoint
from vlm.atomic import atomic_write_text
from vlm.errors import DataError

LOG = logging.getLogger(__name__)

DEMO_DATA = Path(__file__).parent / "demo_data"
TWEMOJI = DEMO_DATA / "twemoji"
DEMO_MODEL = Path(__file__).parent / "demo_model"


def twemoji_captions(row: dict[str, str]) -> list[str]:
    """Several captions for one icon from its metadata: the Unicode name, phrased a few ways, and its short name.

    The first is the name itself, the caption that evaluations use."""
    name = row["caption"].strip()
    short = row["short_name"].replace("_", " ").strip()
    out = [name, f"an emoji of {name}", f"{name} icon"]
    if short and short != name:
        out.append(f"{short} emoji")
    return out


def build_training_data(out_dir: str | Path, *, scenes: int = 40000, seed: int = 0, image_size: int = 64) -> Path:
    """Write `out_dir/pairs.csv` over `out_dir/shapes` (synthetic) and `out_dir/twemoji` (copied) and return it.

    One CSV with paths relative to `out_dir`, so the trainer's root check covers both sources.
    """
    from vlm.synth import generate

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not (TWEMOJI / "pairs.csv").is_file():
        raise DataError(f"the Twemoji demo data is missing from {TWEMOJI}; restore it from git")
    summary = generate(out / "shapes", scenes, seed, image_size, progress=True)
    if (out / "twemoji").exists():
        shutil.rmtree(out / "twemoji")
    shutil.copytree(TWEMOJI / "images", out / "twemoji" / "images")
    rows: list[tuple[str, str]] = []
    with open(summary.out_dir / "pairs.csv", encoding="utf-8", newline="") as f:
        rows += [(f"shapes/{r['path']}", r["caption"]) for r in csv.DictReader(f)]
    with open(TWEMOJI / "pairs.csv", encoding="utf-8", newline="") as f:
        rows += [(f"twemoji/{r['path']}", c) for r in csv.DictReader(f) for c in twemoji_captions(r)]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["path", "caption"])
    writer.writerows(rows)
    atomic_write_text(out / "pairs.csv", buf.getvalue())
    LOG.info("demo training data: %d caption rows in %s", len(rows), out / "pairs.csv")
    return out / "pairs.csv"


def held_out_figures(encoders, data_dir: str | Path, val_fraction: float, seed: int) -> dict[str, float]:
    """Figures on the pairs the trainer held out of `data_dir/pairs.csv` (same split function, fraction and seed).

    Shapes: image<->text recall@1 over all held-out captions, and zero-shot top-1 over the 48 "colour shape" labels on
    the held-out single-object scenes. Twemoji: image<->name recall@1/@5 against the held-out icons' names.
    """
    import numpy as np

    from eval.datasets import read_labelled
    from eval.retrieval import evaluate_pairs
    from eval.zeroshot import evaluate_zeroshot
    from vlm.data import Pair, read_pairs, split
    from vlm.synth import LABELS

    data_dir = Path(data_dir).resolve()
    _, val = split(read_pairs(data_dir / "pairs.csv", progress=False).pairs, val_fraction, seed=seed)
    shapes = [p for p in val if p.key.startswith("shapes/")]
    icons = [Pair(p.key, p.image, p.captions[:1]) for p in val if p.key.startswith("twemoji/")]  # the name alone
    if not shapes or not icons:
        raise DataError(f"the held-out part of {data_dir / 'pairs.csv'} lacks shapes or icons; is it demo data?")
    figures: dict[str, float] = {"held-out shape scenes": len(shapes), "held-out icons": len(icons)}
    for name, pairs, ks in (("shapes", shapes, (1, 5)), ("twemoji", icons, (1, 5))):
        m = evaluate_pairs(encoders, pairs, ks=ks)
        for k in ks:
            figures[f"{name} image->text R@{k}"] = m[f"text_retrieval_recall@{k}"]
            figures[f"{name} text->image R@{k}"] = m[f"image_retrieval_recall@{k}"]
    labelled = read_labelled(data_dir / "shapes" / "labels.csv", class_names=LABELS)
    held = {str((data_dir / p.key).resolve()) for p in shapes}
    keep = [i for i, ref in enumerate(labelled.images.refs) if str(Path(ref.path).resolve()) in held]
    zs = evaluate_zeroshot(encoders, labelled.subset(np.asarray(keep)), "generic")
    figures["shapes zero-shot top-1 (48 labels)"] = zs.metrics["acc1"]
    figures["held-out single-object scenes"] = len(keep)
    return figures


def export(final_checkpoint: str | Path, figures: dict[str, Any], dest: str | Path = DEMO_MODEL) -> Path:
    """Copy a trained checkpoint to `dest` with fp16 weights, and write its model card (README.md)."""
    from vlm import models

    encoders = models.load(str(final_checkpoint), device="cpu", precision="fp32")
    provenance = {**encoders.provenance, "demo_figures": figures}
    path = models.save(encoders, dest, provenance=provenance, weights_dtype=torch.float16)
    record = checkpoint.read_config(path)
    atomic_write_text(path / "README.md", model_card(record, figures))
    return path


def model_card(record: dict[str, Any], figures: dict[str, Any]) -> str:
    prov = record.get("provenance", {})
    cfg = prov.get("config", {})
    lines = [
        "# vlm demo model",
        "",
        "A small CLIP-style model (open_clip architecture "
        f"`{record['model_name']}`) trained from scratch by this project's own trainer, shipped so that the app works "
        "offline. It knows the synthetic shapes world and the Twemoji icon names, nothing else: for real photos use a "
        "pretrained model (`--model ViT-B-32 --pretrained laion2b_s34b_b79k`).",
        "",
        "## How it was made",
        "",
        "```",
        "make demo    # = the three commands below",
        "vlm demo data runs/demo-data",
        "vlm train --config configs/demo.yaml",
        "vlm demo export runs/demo/final",
        "```",
        "",
        f"- data: {prov.get('train_pairs')} training images ({prov.get('train_data')}), "
        f"{prov.get('val_pairs')} held out (a deterministic hash split of the same sources)",
        f"- steps: {prov.get('steps')} at batch {prov.get('batch_size')}, seed {prov.get('seed')}, "
        f"lr {cfg.get('optim', {}).get('lr')}, loss {cfg.get('loss', {}).get('loss')}",
        f"- weights stored as float16 ({record['fingerprint']} is the fingerprint of the stored weights)",
        f"- trained by {prov.get('trained_by')} on {prov.get('date')}",
        "",
        "## Figures on held-out data",
        "",
        "| metric | value |",
        "| --- | --- |",
    ]
    lines += [f"| {k} | {v:.3f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in figures.items()]
    lines += [
        "",
        "## Licence of the training data",
        "",
        "Twemoji images: Copyright Twitter, Inc. and other contributors, CC-BY 4.0 "
        "(see `vlm/demo_data/twemoji/ATTRIBUTION.md`). Shapes: generated by `vlm.synth`.",
        "",
        "```json",
        json.dumps({"model_name": record["model_name"], "model_cfg": record["model_cfg"]}, indent=2),
        "```",
        "",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# The app's default collection.

DEMO_COLLECTION_SCENES = 300
DEMO_COLLECTION_SEED = 7  # not the training seed (0): the scenes in the demo collection are new to the demo model
DEMO_COLLECTIONS_KEPT = 3  # collections of other models' fingerprints kept beside the current one's images


def build_demo_collection(dest: str | Path, encoders, progress: bool = True):
    """The app's default collection: the Twemoji icons and a few hundred synthetic scenes, embedded by `encoders`.

    The images are written once into `dest` (`twemoji/`, `shapes/`) and shared by every model; each model gets its
    own collection `dest/collection-<fingerprint>`, so a model whose weights changed is embedded afresh and a
    model used before is reopened at once. Collections of other models beyond the newest `DEMO_COLLECTIONS_KEPT`
    are deleted. Returns the collection, open for writing (read-only when another process is writing it).
    """
    from indexing.collection import Collection
    from indexing.config import EmbedConfig
    from indexing.errors import IndexingError
    from indexing.versions import CURRENT
    from vlm.synth import generate

    dest = Path(dest)
    icons, shapes = dest / "twemoji", dest / "shapes"
    if not (shapes / "pairs.csv").is_file():
        generate(shapes, DEMO_COLLECTION_SCENES, DEMO_COLLECTION_SEED, 128, progress=progress)
    if not (icons / "pairs.csv").is_file():
        _copy_twemoji(icons)
    path = dest / f"collection-{encoders.fingerprint[:16]}"
    try:
        coll = Collection.create(path, encoders, root=dest, exist_ok=True)
    except IndexingError:
        if not (path / CURRENT).exists():
            raise
        LOG.warning("%s is being written by another process; opening it read-only", path)
        return Collection.open(path, read_only=True, encoders=encoders)
    # Small images decode fast in this process; DataLoader workers would fork a process that may run server threads.
    embed = EmbedConfig(batch_size=64, workers=0)
    coll.add([icons / "pairs.csv", shapes / "pairs.csv"], embed=embed, progress=progress)  # adds only what is missing
    path.touch()  # most recently used first when pruning
    _prune_collections(dest, keep=path)
    return coll


def _copy_twemoji(target: Path) -> None:
    if not (TWEMOJI / "pairs.csv").is_file():
        raise DataError(f"the Twemoji demo data is missing from {TWEMOJI}; restore it from git")
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(TWEMOJI / "images", tmp / "images")
    shutil.copy2(TWEMOJI / "pairs.csv", tmp / "pairs.csv")
    shutil.copy2(TWEMOJI / "ATTRIBUTION.md", tmp / "ATTRIBUTION.md")
    shutil.rmtree(target, ignore_errors=True)  # an incomplete copy (no pairs.csv) of an older layout
    tmp.rename(target)  # the CSV is only visible once every image is there


def _prune_collections(dest: Path, keep: Path) -> None:
    """Delete the least recently used collections of other models, skipping any another process is writing."""
    from indexing.errors import IndexingError
    from indexing.versions import lock

    others = sorted((p for p in dest.glob("collection-*") if p != keep), key=lambda p: p.stat().st_mtime)
    for old in others[: max(0, len(others) - (DEMO_COLLECTIONS_KEPT - 1))]:
        try:
            fd = lock(old)
        except IndexingError:
            continue
        try:
            shutil.rmtree(old)
        finally:
            os.close(fd)
        LOG.info("deleted the demo collection of an older model: %s", old)
