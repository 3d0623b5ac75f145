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


def copy_twemoji(target: Path) -> None:
    """Copy the Twemoji icons, their pairs.csv and attribution to `target`; the CSV appears only once all is there."""
    if not (TWEMOJI / "pairs.csv").is_file():
        raise DataError(f"the Twemoji demo data is missing from {TWEMOJI}; restore it from git")
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(TWEMOJI / "images", tmp / "images")
    shutil.copy2(TWEMOJI / "pairs.csv", tmp / "pairs.csv")
    shutil.copy2(TWEMOJI / "ATTRIBUTION.md", tmp / "ATTRIBUTION.md")
    shutil.rmtree(target, ignore_errors=True)  # an incomplete copy (no pairs.csv) of an older layout
    tmp.rename(target)  # the CSV is only visible once every image is there
