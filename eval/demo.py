"""The demo model's figures on held-out data, for its model card (`vlm demo export`).

The demo's data and export live in `vlm.demo`; the figures need the evaluations, which sit a layer above it.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch

from eval.datasets import read_labelled
from eval.images import ArrayImages, LabelledData
from eval.metrics import retrieval_recall
from eval.retrieval import embed_pairs, evaluate_pairs
from eval.zeroshot import evaluate_zeroshot
from vlm.data import Pair, read_pairs, split
from vlm.demo_corpus import is_corpus
from vlm.errors import DataError
from vlm.models import Encoders
from vlm.synth import LABELS, single_object_scene

# Shapes zero-shot as `bench.shapes_zeroshot` measures it (issue 18's ">= 0.90"): held-out single-object scenes from
# their own random stream, 48 bare "colour shape" labels, in templates unlike every training caption's phrasing.
SHAPES_TEMPLATES = ("a photo of a {c}.", "a rendering of a {c}.", "a {c} icon.", "this is a {c}.", "{c}")
SHAPES_FIRST_SEED = 1_000_000
SHAPES_FIGURE = "shapes zero-shot top-1 (48-way)"


def shape_scenes(per_label: int, seed: int = SHAPES_FIRST_SEED, image_size: int = 128,
                 object_size: str | None = None) -> LabelledData:  # fmt: skip
    """`per_label` scenes of each of the 48 labels; image i uses seed `seed + i`; objects of `object_size` (small,
    medium, large), or of a random size each."""
    targets = np.repeat(np.arange(len(LABELS)), per_label)
    images = []
    for i, t in enumerate(targets):
        colour, shape = LABELS[t].split(" ")
        image = single_object_scene(shape, colour, image_size=image_size, seed=seed + i, size=object_size)
        images.append(np.asarray(image))
    return LabelledData(ArrayImages(np.stack(images)), targets, LABELS, f"synth single-object scenes (seed {seed}+)")


def shapes_zeroshot(encoders: Encoders, per_label: int = 10) -> float:
    """48-way zero-shot top-1 on `per_label` held-out scenes of each label (`shape_scenes`, `SHAPES_TEMPLATES`)."""
    return float(evaluate_zeroshot(encoders, shape_scenes(per_label), SHAPES_TEMPLATES).metrics["acc1"])


def card_figures(encoders: Encoders, data_dir: str | Path, val_fraction: float, seed: int,
                 per_label: int = 10) -> dict[str, float]:  # fmt: skip
    """The model card's figures for a demo model trained on `data_dir`: a `vlm demo corpus` folder gets
    `corpus_figures` and `shapes_zeroshot`; the older recipe's folder (`vlm demo data`) gets `held_out_figures`."""
    if is_corpus(data_dir):
        return {**corpus_figures(encoders, data_dir), SHAPES_FIGURE: shapes_zeroshot(encoders, per_label)}
    return held_out_figures(encoders, data_dir, val_fraction, seed)


def held_out_figures(encoders: Encoders, data_dir: str | Path, val_fraction: float, seed: int) -> dict[str, float]:
    """Figures on the pairs the trainer held out of `data_dir/pairs.csv` (same split function, fraction and seed).

    Shapes: image<->text recall@1 over all held-out captions, and zero-shot top-1 over the 48 "colour shape" labels on
    the held-out single-object scenes. Twemoji: image<->name recall@1/@5 against the held-out icons' names.
    """
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


# The 10-way emoji-category prompts: bare category names as emojibase words them ("food & drink"), in templates
# unlike the training captions.
CATEGORY_TEMPLATES = ("{c}", "an emoji from the group {c}", "{c} emoji")


def corpus_figures(encoders: Encoders, corpus_dir: str | Path, ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """Issue 18's figures on the held-out parts of a `vlm demo corpus` folder (none of it is ever trained on).

    - OpenMoji (the unseen style), its English CLDR names as captions: text->image R@k over all of its images;
    - OpenMoji, 10-way emoji-category zero-shot top-1 (`CATEGORY_TEMPLATES`);
    - the held-out icons (a seeded part of every icon set), their names as captions: text->image R@k;
    - OpenMoji with its names in each language (`heldout/openmoji/names.csv`): text->image R@5 per language.
    """
    root = Path(corpus_dir).resolve()
    om = root / "heldout" / "openmoji"
    for need in (om / "pairs.csv", om / "labels.csv", om / "names.csv", root / "heldout" / "icons" / "pairs.csv"):
        if not need.is_file():
            raise DataError(f"{need} is missing: is {root} a `vlm demo corpus` folder?")
    figures: dict[str, float] = {}
    emoji = read_pairs(om / "pairs.csv", progress=False).pairs
    figures["held-out style (OpenMoji) images"] = len(emoji)
    emb = embed_pairs(encoders, emoji)  # the images once, for every language
    m = retrieval_recall(emb.image_emb, emb.text_emb, emb.text_to_image, ks=ks)
    for k in ks:
        figures[f"held-out style text->image R@{k}"] = m[f"image_retrieval_recall@{k}"]
    zs = evaluate_zeroshot(encoders, read_labelled(om / "labels.csv"), CATEGORY_TEMPLATES)
    figures["emoji categories"] = len(zs.classes)
    figures["emoji category zero-shot top-1"] = zs.metrics["acc1"]
    icons = read_pairs(root / "heldout" / "icons" / "pairs.csv", progress=False).pairs
    figures["held-out icons"] = len(icons)
    m = evaluate_pairs(encoders, icons, ks=ks)
    for k in ks:
        figures[f"held-out icons text->image R@{k}"] = m[f"image_retrieval_recall@{k}"]
    # per language: each language's names against the same images (text->image recall of a caption depends on
    # that caption and the images only)
    index = {p.key: i for i, p in enumerate(emoji)}
    texts: dict[str, tuple[list[str], list[int]]] = {}
    with open(om / "names.csv", encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            if row["path"] in index:
                captions, owners = texts.setdefault(row["lang"], ([], []))
                captions.append(row["caption"])
                owners.append(index[row["path"]])
    for lang, (captions, owners) in texts.items():
        with torch.no_grad():
            text_emb = torch.cat(
                [encoders.encode_text(captions[s : s + 256]).cpu() for s in range(0, len(captions), 256)]
            )
        m = retrieval_recall(emb.image_emb, text_emb, torch.tensor(owners), ks=(5,))
        figures[f"held-out style text->image R@5 [{lang}]"] = m["image_retrieval_recall@5"]
    return figures
