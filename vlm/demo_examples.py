"""First-visit examples for the demo model: a few shipped images, each with labels to classify it against and, for
the synthetic scenes, phrases to segment, chosen from what the model's card says it knows (`vlm.demo.describe`).

Nothing is hard-coded: the labels come from the card of the model that answers (a new demo model brings its own),
and the images from the shipped data whose caption or label is one of them (`vlm/demo_data`: the synthetic
reference scenes' labels.csv, the collection sets' pairs.csv). A label without a shipped image is skipped.

    for ex in demo_examples(encoders.provenance):
        ex.image, ex.label, ex.labels, ex.phrases
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlm import demo
from vlm.synth import LABELS as SHAPE_LABELS

MAX_EXAMPLES = 4  # at most half of them synthetic scenes, so the icons and emoji show too


@dataclass(frozen=True)
class DemoExample:
    image: Path  # a shipped image whose own label or caption is `label`
    label: str
    labels: tuple[str, ...]  # to classify it against: the card's labels (`label` among them)
    phrases: tuple[str, ...]  # to segment (synthetic scenes only): its own object, then one not in it; else ()


def shipped_images() -> dict[str, Path]:
    """Every shipped image by its label or caption (the first image of each): the reference scenes, then the
    collection sets."""
    found: dict[str, Path] = {}
    tables = [(demo.REFERENCE_SHAPES, "labels.csv", "label")]
    tables += [(folder, "pairs.csv", "caption") for folder in demo.collection_sets().values()]
    for folder, name, column in tables:
        if not (folder / name).is_file():
            continue
        with open(folder / name, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                found.setdefault(row[column].strip(), folder / row["path"])
    return found


def phrase(label: str) -> str:
    return f"{'an' if label[0] in 'aeiou' else 'a'} {label}"


def absent_phrase(label: str) -> str:
    """A shape label sharing neither colour nor shape with `label` (a colour-shape label), as a phrase."""
    colour, shape = label.split(" ")
    return phrase(next(x for x in SHAPE_LABELS if colour not in x.split(" ") and shape not in x.split(" ")))


def demo_examples(provenance: dict[str, Any], limit: int = MAX_EXAMPLES) -> list[DemoExample]:
    """Up to `limit` examples for the demo model with this provenance (`Encoders.provenance`), in the card's order
    of labels, at most half of them synthetic scenes."""
    labels = demo.describe(provenance).labels
    images = shipped_images()
    shapes = [x for x in labels if x in SHAPE_LABELS and x in images][: limit // 2]
    others = [x for x in labels if x not in SHAPE_LABELS and x in images][: limit - len(shapes)]
    out = []
    for label in [*others, *shapes]:
        phrases = (phrase(label), absent_phrase(label)) if label in SHAPE_LABELS else ()
        out.append(DemoExample(images[label], label, labels, phrases))
    return out
