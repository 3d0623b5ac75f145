"""The embedded demo: what the demo model is trained on, and how it is exported with its model card.

Two recipes, told apart by the training folder (`vlm.demo_corpus.is_corpus`):
- the demo corpus (`vlm demo corpus`, vlm/demo_corpus.py): emoji in several vendors' styles, five icon sets, CLDR names
  in six languages and synthetic shapes, with OpenMoji and a seeded part of every icon set held out; its card
  reports `eval.demo.corpus_figures` on them and carries the corpus's licences and restrictions;
- the first recipe (`vlm demo data`, `build_training_data`): the synthetic shapes world and the Twemoji icons with
  their Unicode names (`vlm/demo_data/twemoji`), a deterministic part of each held out by the trainer's hash split.
`export` writes the shipped fp16 checkpoint and its card. The app's demo collection is made of the folders in
`COLLECTION_SETS` (shipped: Twemoji, CC-BY 4.0; the corpus's held-out icons, each set's licence beside them) and
synthetic scenes made at first start.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vlm import checkpoint
from vlm.atomic import atomic_write_text
from vlm.errors import DataError

LOG = logging.getLogger(__name__)

DEMO_DATA = Path(__file__).parent / "demo_data"
TWEMOJI = DEMO_DATA / "twemoji"
ICONS = DEMO_DATA / "icons"  # written by `vlm demo collection` (vlm.demo_corpus.build_demo_icons)
DEMO_MODEL = Path(__file__).parent / "demo_model"
# What the demo model knew, for fine-tunes of it (`vlm train --reference`, the app): held-out single-object scenes
# labelled with the 48 "colour shape" names (zero-shot) and the Twemoji icons the demo run held out (retrieval by
# name). Written once by `build_reference`; small enough to ship (about 1 MB).
REFERENCE_SHAPES = DEMO_DATA / "reference-shapes"
REFERENCE_ICONS = DEMO_DATA / "reference-icons.csv"
REFERENCE = (f"zeroshot:{REFERENCE_SHAPES}", f"retrieval:{REFERENCE_ICONS}")
# The templates the reference scenes are scored with (`reference-shapes/templates.json`, read by `eval.reference`):
# phrasings no shapes caption uses ("a picture of", "an image of", "a drawing of" are the captions' own), as
# `bench.shapes_zeroshot` scores. With the "generic" ones, a fine-tune that replays the shapes captions kept its
# reference score flat while it forgot the labels (README, "What it buys, measured").
SHAPES_HELD_OUT_TEMPLATES = ("a photo of a {c}.", "a rendering of a {c}.", "a {c} icon.", "this is a {c}.", "{c}")
# The first demo model's recipe (configs/demo-first.yaml): what `replay_set` rebuilds, smaller, to replay. The corpus
# recipe (configs/demo.yaml) needs npm packages; its shapes and Twemoji are in this one too (`replay_data` says which).
DEMO_RECIPE = {"scenes": 40000, "seed": 0, "image_size": 64, "val_fraction": 0.1}
REFERENCE_SCENES_SEED = 2_000_000  # single_object_scene's own stream: never one of the training scenes


def is_demo_model(model: str | Path) -> bool:
    """True for 'demo' and for the shipped demo model's folder."""
    if str(model) == "demo":
        return True
    text = str(model).removeprefix("local-dir:")
    return Path(text).expanduser().resolve() == DEMO_MODEL.resolve()


def held_out_icons(
    scenes: int = DEMO_RECIPE["scenes"],
    seed: int = DEMO_RECIPE["seed"],
    val_fraction: float = DEMO_RECIPE["val_fraction"],
) -> list[str]:
    """The Twemoji image paths (relative to `TWEMOJI`) that the demo run held out: the trainer's split of the keys
    of `build_training_data(scenes=, seed=)`, computed from the keys alone (no scene is rendered)."""
    from vlm.readers.split import split

    width = max(6, len(str(scenes - 1)))
    with open(TWEMOJI / "pairs.csv", encoding="utf-8", newline="") as f:
        icons = list(dict.fromkeys(f"twemoji/{r['path']}" for r in csv.DictReader(f)))
    keys = [f"shapes/images/{i:0{width}d}.png" for i in range(scenes)] + icons
    _, val = split(keys, val_fraction, seed, key=str)
    return [k.removeprefix("twemoji/") for k in val if k.startswith("twemoji/")]


def replay_set(dest: str | Path, scenes: int = 2000) -> Path:
    """The demo model's own training recipe (`build_training_data` with `DEMO_RECIPE`'s seed and image size), made
    smaller (`scenes` of its 40,000 scenes, every icon) for replay in a fine-tune; built once, then reused.
    Returns `dest/pairs.csv`."""
    dest = Path(dest)
    if (dest / "pairs.csv").is_file():
        return dest / "pairs.csv"
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    build_training_data(tmp, scenes=scenes, seed=DEMO_RECIPE["seed"], image_size=DEMO_RECIPE["image_size"])
    tmp.rename(dest)  # complete or absent: a crash half-way leaves only the .tmp folder, rebuilt next time
    return dest / "pairs.csv"


DEMO_CORPUS_PAIRS = Path("runs/demo-corpus/pairs.csv")  # what `make demo` trains a corpus model on (RECIPES)


def replay_data(dest: str | Path, model: str | Path = DEMO_MODEL) -> tuple[Path, str]:
    """What a fine-tune of the demo model `model` replays, and a line saying what it is: the training data its card
    names (`provenance.config.data.train_data`; for a corpus's `pairs-artwork.csv`, the `pairs.csv` beside it, which
    adds the shapes) where it exists, relative to the working folder or the repository; for a corpus-trained model
    then the corpus `make demo` writes (`DEMO_CORPUS_PAIRS`); otherwise what can be rebuilt offline, `replay_set` under
    `dest`: all of the first recipe's data, but for a corpus-trained model (its card has a data card) only the
    shapes and Twemoji part of its corpus, which the line says."""
    record = checkpoint.read_config(model)
    prov = record.get("provenance", {})
    named = prov.get("config", {}).get("data", {}).get("train_data")
    corpus_model = "demo_data_card" in prov
    repo = Path(__file__).resolve().parent.parent

    def found(path: Path) -> Path | None:
        """The file `path` names, relative to the working folder or else the repository, if there."""
        for candidate in (path.expanduser(), repo / path):
            # A run that drew its shapes through keep_data names the corpus's pairs-artwork.csv; the corpus's
            # pairs.csv beside it holds the artwork and the shapes, all that the model was trained on.
            whole = candidate.with_name("pairs.csv")
            if candidate.name == "pairs-artwork.csv" and whole.is_file():
                return whole
            if candidate.is_file():
                return candidate
        return None

    own = found(Path(named)) if named else None
    if own is not None:
        return own, f"the demo model's own training data ({own})"
    made = found(DEMO_CORPUS_PAIRS) if corpus_model else None
    if made is not None:
        return made, f"the demo corpus as `make demo` builds it ({made}; the card names {named or 'no file'})"
    rebuilt = replay_set(dest)
    if corpus_model:
        return rebuilt, (
            f"part of the demo model's training data, rebuilt offline ({rebuilt}): its shapes and Twemoji icons, not "
            f"its icon sets, Apple emoji and translated names ({named or 'the demo corpus'} is not here; "
            "`vlm demo corpus` builds it)"
        )
    return rebuilt, f"the demo model's own training recipe, rebuilt smaller ({rebuilt})"


def build_reference(per_label: int = 4, image_size: int = 64) -> tuple[Path, Path]:
    """Write the demo model's reference set (see `REFERENCE`): `per_label` scenes of each of the 48 labels with the
    templates they are scored with (`SHAPES_HELD_OUT_TEMPLATES`), and the held-out icons with their names (the
    caption evaluations use). Deterministic; returns the two paths."""
    from vlm.synth import LABELS, single_object_scene

    tmp = REFERENCE_SHAPES.with_name(f".{REFERENCE_SHAPES.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "images").mkdir(parents=True)
    rows = []
    for t, label in enumerate(LABELS):
        colour, shape = label.split(" ")
        for j in range(per_label):
            i = t * per_label + j
            image = single_object_scene(shape, colour, image_size=image_size, seed=REFERENCE_SCENES_SEED + i)
            image.save(tmp / "images" / f"{i:04d}.png", format="PNG", optimize=True)
            rows.append((f"images/{i:04d}.png", label))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["path", "label"])
    writer.writerows(rows)
    atomic_write_text(tmp / "labels.csv", buf.getvalue())
    atomic_write_text(tmp / "templates.json", json.dumps(list(SHAPES_HELD_OUT_TEMPLATES), indent=2) + "\n")
    shutil.rmtree(REFERENCE_SHAPES, ignore_errors=True)
    tmp.rename(REFERENCE_SHAPES)
    held = set(held_out_icons())
    with open(TWEMOJI / "pairs.csv", encoding="utf-8", newline="") as f:
        icons = [(f"twemoji/{r['path']}", r["caption"].strip()) for r in csv.DictReader(f) if r["path"] in held]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["path", "caption"])
    writer.writerows(icons)
    atomic_write_text(REFERENCE_ICONS, buf.getvalue())
    return REFERENCE_SHAPES, REFERENCE_ICONS


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


# `make demo`: how the shipped model is made (the Makefile runs these; the model card quotes them).
RECIPES = {
    "corpus": ("vlm demo corpus runs/demo-corpus --category-captions --artwork-pairs --more-styles",
               "vlm demo collection runs/demo-corpus",
               "vlm train --config configs/demo.yaml", "vlm demo export runs/demo/final"),
    "shapes+twemoji": ("vlm demo data runs/demo-data", "vlm train --config configs/demo-first.yaml",
                       "vlm demo export runs/demo-first/final"),
}  # fmt: skip


def export(final_checkpoint: str | Path, figures: dict[str, Any], dest: str | Path = DEMO_MODEL,
           data_card: dict[str, Any] | None = None, showcase: dict[str, Any] | None = None) -> Path:  # fmt: skip
    """Copy a trained checkpoint to `dest` with fp16 weights, and write its model card (README.md). `data_card`: the
    data card of the `vlm demo corpus` folder it was trained on (its sources, licences and restrictions), if any;
    `showcase`: the app's examples picked from held-out results (`eval.demo.showcase`; read by `describe`)."""
    from vlm import models

    encoders = models.load(str(final_checkpoint), device="cpu", precision="fp32")
    provenance = {**encoders.provenance, "demo_figures": figures}
    if data_card is not None:
        provenance["demo_data_card"] = data_card
    if showcase is not None:
        provenance["demo_showcase"] = showcase
    path = models.save(encoders, dest, provenance=provenance, weights_dtype=torch.float16)
    record = checkpoint.read_config(path)
    atomic_write_text(path / "README.md", model_card(record, figures, data_card, showcase))
    return path


SHAPES_FIGURE = "shapes zero-shot top-1 (48-way)"  # the card's name for `eval.demo.shapes_zeroshot`
# What the app shows for a demo model whose card has no showcase (the first recipe's model).
FIRST_RECIPE_LABELS = ("red circle", "blue square", "green triangle", "yellow star", "grinning face", "cat face",
                       "pizza")  # fmt: skip


@dataclass(frozen=True)
class DemoDescription:
    """What the app says about a demo model and offers to try, from its card (`export`): `labels` for the Classify
    tab, `queries` for Search, and what it knows and does not, each backed by a held-out figure."""

    labels: tuple[str, ...]
    queries: tuple[str, ...]
    knows: str
    weak: str


KNOWN = 0.25  # a held-out figure (R@5, top-1) at or above this counts as "knows" (R@5 by chance: 0.003-0.005)


def describe(provenance: dict[str, Any]) -> DemoDescription:
    """The `DemoDescription` of a demo model from its provenance (`encoders.provenance`: `demo_figures`,
    `demo_showcase`). A skill counts as known when its held-out figure is at least `KNOWN` (and, for a language,
    at least half of English's); the others are said not to be known, with their figure."""
    figures, show = provenance.get("demo_figures", {}), provenance.get("demo_showcase")
    if not show:
        knew = "colours and shapes well, Twemoji names only a little"
        return DemoDescription(FIRST_RECIPE_LABELS, ("a red circle", "grinning face"), knew, "photos, other styles")
    knows: list[str] = []
    lacks: list[str] = []

    def sort(ok: bool, good: str, bad: str) -> None:
        (knows if ok else lacks).append(good if ok else bad)

    en = figures.get("held-out style text->image R@5", 0.0)
    sort(en >= KNOWN, f"emoji by name, also drawn in a style it never saw (the right one in the top 5 for {en:.0%} "
         "of names)", f"emoji drawn in styles it never saw (top 5 for {en:.0%} of names)")  # fmt: skip
    icons = figures.get("held-out icons text->image R@5", 0.0)
    sort(icons >= KNOWN, f"icons by name ({icons:.0%} in the top 5 on icons it never saw)",
         f"icons it never saw ({icons:.0%} in the top 5)")  # fmt: skip
    langs = {k[-3:-1]: v for k, v in figures.items() if k.startswith("held-out style text->image R@5 [") and
             k[-3:-1] != "en"}  # fmt: skip
    good = [lang for lang, v in langs.items() if v >= KNOWN and v >= en / 2]
    if good:
        knows.append(f"names in {', '.join(good)} as well as English")
    bad = [lang for lang in langs if lang not in good]
    if bad:
        lacks.append(f"names in {', '.join(bad)} (R@5 " + ", ".join(f"{langs[lang]:.0%}" for lang in bad) + ")")
    shapes = figures.get(SHAPES_FIGURE, 0.0)
    sort(shapes >= 0.5, f"colours and shapes ({shapes:.0%} zero-shot)", f"shapes ({shapes:.0%} zero-shot)")
    category = figures.get("emoji category zero-shot top-1")
    if category is not None:
        sort(category >= 0.5, f"emoji categories such as 'food & drink' ({category:.0%} of 10-way)",
             f"emoji categories such as 'food & drink' ({category:.0%} right of 10)")  # fmt: skip
    lacks.append("photos (it has never seen one)")
    examples = [*show.get("queries", ()), *show.get("queries_by_language", {}).values()]
    return DemoDescription(tuple(show.get("labels", ())), tuple(examples), ", ".join(knows) or "little yet",
                           ", ".join(lacks))  # fmt: skip


def _card_mix(cfg: dict[str, Any]) -> str:
    """What the card's data line adds for a run that also drew from `keep_data` or augmented the artwork's style."""
    data = cfg.get("data", {})
    out = ""
    if data.get("keep_data"):
        out += f"; and {data['keep_data']}, drawn as {data.get('keep_fraction', 0):.0%} of every batch"
    if data.get("style_augment"):
        out += (f"; style augmentation {', '.join(data['style_augment'])} on {data.get('style_augment_p', 0):.0%} of "
                f"the images under {', '.join(data.get('style_augment_prefixes') or ['any folder'])}")  # fmt: skip
    return out


def trained_sources(data_card: dict[str, Any]) -> tuple[list[str], list[str]]:
    """The emoji styles ("Apple") and the other training packages (the icon sets) of a corpus's data card, as the
    pins (`demo_sources`) name them; a package no longer pinned counts by its own name."""
    from vlm.demo_sources import PINNED

    pins = {s.package: s for s in PINNED}
    trained = [s["package"] for s in data_card.get("sources", []) if s.get("role") == "train"]
    styles = [pins[p].style for p in trained if p in pins and pins[p].style]
    return styles, [p for p in trained if p not in pins or not pins[p].style]


def model_card(record: dict[str, Any], figures: dict[str, Any], data_card: dict[str, Any] | None = None,
               showcase: dict[str, Any] | None = None) -> str:  # fmt: skip
    from vlm.demo_corpus import restrictions

    prov = record.get("provenance", {})
    cfg = prov.get("config", {})
    if data_card is not None:
        styles, icon_sets = trained_sources(data_card)
        knows = (
            f"It was trained on the demo corpus (`vlm demo corpus`): emoji drawn in {len(styles)} styles "
            f"({', '.join(styles)}) and {len(icon_sets)} icon sets with their names and keywords, emoji names in "
            "English, German, French, Spanish, Chinese and Japanese (CLDR), and synthetic coloured shapes. It has "
            "never seen a photo"
        )
        recipe = RECIPES["corpus"]
    else:
        knows = "It knows the synthetic shapes world and the Twemoji icon names, nothing else"
        recipe = RECIPES["shapes+twemoji"]
    lines = [
        "# vlm demo model",
        "",
        "A small CLIP-style model (open_clip architecture "
        f"`{record['model_name']}`) trained from scratch by this project's own trainer, shipped so that the app works "
        f"offline. {knows}: for real photos use a pretrained model "
        "(`--model ViT-B-32 --pretrained laion2b_s34b_b79k`).",
        "",
        "## How it was made",
        "",
        "```",
        f"make demo    # = the {len(recipe)} commands below" if data_card is not None else "# the first recipe:",
        *recipe,
        "```",
        "",
        f"- data: {prov.get('train_pairs')} training images ({prov.get('train_data')}), "
        f"{prov.get('val_pairs')} held out (a deterministic hash split of the same sources)" + _card_mix(cfg),
        f"- steps: {prov.get('steps')} at batch {prov.get('batch_size')}, seed {prov.get('seed')}, "
        f"lr {cfg.get('optim', {}).get('lr')}, loss {cfg.get('loss', {}).get('loss')}",
        f"- weights stored as float16 ({record['fingerprint']} is the fingerprint of the stored weights)",
        f"- trained by {prov.get('trained_by')} on {prov.get('date')}",
        "",
        "## Figures on held-out data",
        "",
    ]
    if data_card is not None:
        lines += [
            "None of these images was trained on: OpenMoji is a style no training image is drawn in (its English "
            "CLDR names are the captions; per language, its names in that language), the held-out icons are a "
            f"seeded {data_card['build']['held_out_fraction']:.0%} of every icon set (their names as captions), the "
            "emoji categories are emojibase's groups of the OpenMoji images, and the shapes are "
            "`bench.shapes_zeroshot`'s 480 scenes (`python -m bench.demo_quality` prints them all).",
            "",
        ]
    lines += ["| metric | value |", "| --- | --- |"]
    lines += [f"| {k} | {v:.3f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in figures.items()]
    if showcase:
        about = describe({"demo_figures": figures, "demo_showcase": showcase})
        lines += [
            "",
            "## What to try (the app's defaults)",
            "",
            f"It knows {about.knows}. It does not know {about.weak}.",
            "",
            "Picked from the held-out results above by `eval.demo.showcase`, not by hand: search queries whose "
            "held-out image comes first, "
            + ", ".join(f"`{q}`" for q in about.queries)
            + "; Classify labels whose held-out image picks them first, "
            + ", ".join(f"`{q}`" for q in about.labels)
            + ".",
        ]
    lines += ["", "## Licence of the training data", ""]
    if data_card is not None:
        lines += ["| package | version | role | licence |", "| --- | --- | --- | --- |"]
        lines += [f"| `{s['package']}` | {s['version']} | {s['role']} | {s['licence']} |" for s in data_card["sources"]]
        lines += ["", "Shapes: generated by `vlm.synth`. The corpus's data card (`DATA_CARD.md`) has the counts.", ""]
        lines += restrictions(data_card, "This model was")
    else:
        lines += [
            "Twemoji images: Copyright Twitter, Inc. and other contributors, CC-BY 4.0 "
            "(see `vlm/demo_data/twemoji/ATTRIBUTION.md`). Shapes: generated by `vlm.synth`.",
            "",
        ]
    lines += [
        "```json",
        json.dumps({"model_name": record["model_name"], "model_cfg": record["model_cfg"]}, indent=2),
        "```",
        "",
    ]
    return "\n".join(lines)


def collection_sets() -> dict[str, Path]:
    """The shipped image folders of the app's demo collection, by the name of their folder in the collection's home:
    each holds `pairs.csv` (path,caption), `images/` and its attribution."""
    return {"twemoji": TWEMOJI, "icons": ICONS}


def copy_collection_set(src: Path, target: Path) -> None:
    """Copy one of `collection_sets` (images, pairs.csv, attribution, licences) to `target`, all or nothing."""
    if not (src / "pairs.csv").is_file():
        raise DataError(f"the demo collection's images are missing from {src}; restore them from git")
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    shutil.rmtree(target, ignore_errors=True)  # an incomplete copy (no pairs.csv) of an older layout
    tmp.rename(target)  # the CSV is only visible once every image is there
