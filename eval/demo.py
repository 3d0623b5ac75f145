"""The demo model's figures on held-out data, for its model card (`vlm demo export`).

The demo's data and export live in `vlm.demo`; the figures need the evaluations, which sit a layer above it.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from eval.datasets import read_labelled
from eval.images import ArrayImages, LabelledData
from eval.metrics import retrieval_recall
from eval.retrieval import PairEmbeddings, embed_pairs, evaluate_pairs
from eval.zeroshot import ZeroShotResult, evaluate_zeroshot
from vlm.data import Pair, read_pairs, split
from vlm.demo import SHAPES_FIGURE, SHAPES_HELD_OUT_TEMPLATES
from vlm.demo_corpus import is_corpus
from vlm.errors import DataError
from vlm.models import Encoders
from vlm.synth import LABELS, single_object_scene

# Shapes zero-shot as `bench.shapes_zeroshot` measures it (issue 18's ">= 0.90"): held-out single-object scenes from
# their own random stream, 48 bare "colour shape" labels, in templates unlike every training caption's phrasing.
SHAPES_TEMPLATES = SHAPES_HELD_OUT_TEMPLATES  # also the demo reference set's (`vlm.demo`)
SHAPES_FIRST_SEED = 1_000_000


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


class Card(NamedTuple):
    figures: dict[str, float]  # the model card's table
    showcase: dict[str, Any] | None  # the app's examples (`showcase`); None for the first recipe


def card_figures(encoders: Encoders, data_dir: str | Path, val_fraction: float, seed: int,
                 per_label: int = 10) -> Card:  # fmt: skip
    """The model card's figures for a demo model trained on `data_dir`: a `vlm demo corpus` folder gets
    `corpus_figures`, the shapes zero-shot figure and the app's `showcase`; the first recipe's folder (`vlm demo
    data`) gets `held_out_figures`."""
    if not is_corpus(data_dir):
        return Card(held_out_figures(encoders, data_dir, val_fraction, seed), None)
    held = held_out(encoders, data_dir)
    shapes = evaluate_zeroshot(encoders, shape_scenes(per_label), SHAPES_TEMPLATES)
    figures = {**held.figures, SHAPES_FIGURE: float(shapes.metrics["acc1"])}
    return Card(figures, showcase(held, shapes))


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


class HeldOut(NamedTuple):
    """What `held_out` measured on a corpus's held-out parts: the figures, and the embeddings they came from."""

    figures: dict[str, float]
    emoji: list[Pair]  # OpenMoji, its English name as the one caption
    emoji_emb: PairEmbeddings
    categories: dict[str, str]  # OpenMoji image key -> its emoji category
    names: dict[str, tuple[list[str], torch.Tensor, torch.Tensor]]  # lang -> (names, (N, D) embeddings, image index)
    icons: list[Pair]
    icons_emb: PairEmbeddings


def corpus_figures(encoders: Encoders, corpus_dir: str | Path, ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """Issue 18's figures on the held-out parts of a `vlm demo corpus` folder (none of it is ever trained on).

    - OpenMoji (the unseen style), its English CLDR names as captions: text->image R@k over all of its images;
    - OpenMoji, 10-way emoji-category zero-shot top-1 (`CATEGORY_TEMPLATES`);
    - the held-out icons (a seeded part of every icon set), their names as captions: text->image R@k;
    - OpenMoji with its names in each language (`heldout/openmoji/names.csv`): text->image R@5 per language.
    """
    return held_out(encoders, corpus_dir, ks).figures


def held_out(encoders: Encoders, corpus_dir: str | Path, ks: tuple[int, ...] = (1, 5)) -> HeldOut:
    """`corpus_figures`, with the embeddings behind them (for `showcase`)."""
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
    labelled = read_labelled(om / "labels.csv")
    zs = evaluate_zeroshot(encoders, labelled, CATEGORY_TEMPLATES)
    figures["emoji categories"] = len(zs.classes)
    figures["emoji category zero-shot top-1"] = zs.metrics["acc1"]
    categories = {
        str(Path(ref.path).resolve()): labelled.classes[t]
        for ref, t in zip(labelled.images.refs, labelled.targets, strict=True)
    }
    icons = read_pairs(root / "heldout" / "icons" / "pairs.csv", progress=False).pairs
    figures["held-out icons"] = len(icons)
    icons_emb = embed_pairs(encoders, icons)
    m = retrieval_recall(icons_emb.image_emb, icons_emb.text_emb, icons_emb.text_to_image, ks=ks)
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
    names = {}
    for lang, (captions, owners) in texts.items():
        with torch.no_grad():
            text_emb = torch.cat(
                [encoders.encode_text(captions[s : s + 256]).cpu() for s in range(0, len(captions), 256)]
            )
        m = retrieval_recall(emb.image_emb, text_emb, torch.tensor(owners), ks=(5,))
        figures[f"held-out style text->image R@5 [{lang}]"] = m["image_retrieval_recall@5"]
        names[lang] = (captions, text_emb, torch.tensor(owners))
    cats = {p.key: categories.get(str(Path(p.image.path).resolve()), "") for p in emoji}
    return HeldOut(figures, emoji, emb, cats, names, icons, icons_emb)


def margins(query_emb: torch.Tensor, item_emb: torch.Tensor, owner: torch.Tensor) -> torch.Tensor:
    """(N_query,) for each query: its own item's score minus the best other item's score. Positive exactly when
    its item ranks first with no tie (ties lose, so a pick never rests on an arbitrary tie order).

    query_emb : (N_query, D), item_emb : (N_item, D), both L2-normalised; owner : (N_query,) int64 item index."""
    scores = query_emb.float() @ item_emb.float().T  # (N_query, N_item)
    rows = torch.arange(scores.shape[0])
    own = scores[rows, owner].clone()
    scores[rows, owner] = -torch.inf
    return own - scores.max(dim=1).values


def pick(names: Sequence[str], margin: torch.Tensor, n: int, groups: Sequence[str] | None = None,
         max_words: int = 2, max_chars: int = 16) -> list[str]:  # fmt: skip
    """Up to `n` of `names` with a positive `margin`, largest first: short ones (at most `max_words` words and
    `max_chars` characters, so they read as typed queries), no name twice and, given `groups`, one per group."""
    out: list[str] = []
    seen: set[str] = set()
    for i in sorted(range(len(names)), key=lambda i: (-float(margin[i]), names[i])):
        name, group = names[i], groups[i] if groups is not None else str(i)
        if float(margin[i]) <= 0 or len(out) == n:
            break
        if (
            len(name.split()) > max_words
            or len(name) > max_chars
            or name.lower() in {o.lower() for o in out}
            or (group and group in seen)
        ):
            continue
        out.append(name)
        seen.add(group)
    return out


def showcase(held: HeldOut, shapes: ZeroShotResult | None = None, n: int = 4) -> dict[str, Any]:
    """Examples for the app, picked from measured held-out results (`vlm.demo.describe` reads them back):

    - `queries`: English names of held-out OpenMoji images (a style it never saw) that find their image first among
      all of them, by the largest margin, one per emoji category; then two held-out icon names found first;
    - `queries_by_language`: per language, the name that finds its image first by the largest margin;
    - `labels`: names whose held-out OpenMoji image picks its own name first among all the names (image->text, as
      the Classify tab works), one per category; then the three best-recalled shape labels of `shapes`.
    """
    emoji_names = [p.captions[0] for p in held.emoji]
    groups = [held.categories.get(p.key, "") for p in held.emoji]
    e = held.emoji_emb
    t2i = margins(e.text_emb, e.image_emb, e.text_to_image)
    queries = pick([emoji_names[i] for i in e.text_to_image.tolist()], t2i, n,
                   [groups[i] for i in e.text_to_image.tolist()])  # fmt: skip
    ic = held.icons_emb
    icon_names = [c for p in held.icons for c in p.captions]
    queries += pick(icon_names, margins(ic.text_emb, ic.image_emb, ic.text_to_image), 2)
    by_language = {}
    for lang, (names, emb, owners) in held.names.items():
        if lang != "en":
            best = pick(names, margins(emb, e.image_emb, owners), 1, max_words=3)
            if best:
                by_language[lang] = best[0]
    # image -> text: each image's own (first) caption against every name
    first = {}
    for j, i in enumerate(e.text_to_image.tolist()):
        first.setdefault(i, j)
    own = torch.tensor([first[i] for i in range(len(held.emoji))])
    labels = pick(emoji_names, margins(e.image_emb, e.text_emb[own], torch.arange(len(own))), n, groups)
    if shapes is not None:
        order = sorted(range(len(shapes.classes)), key=lambda c: (-np.nan_to_num(shapes.class_recall[c]), c))
        colours: set[str] = set()
        kinds: set[str] = set()
        for c in order:
            colour, shape = shapes.classes[c].split(" ")
            if colour not in colours and shape not in kinds and len(colours) < 3:
                labels.append(shapes.classes[c])
                colours.add(colour)
                kinds.add(shape)
    return {"queries": queries, "queries_by_language": by_language, "labels": labels}
