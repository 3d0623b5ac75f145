"""vlm.demo_examples: first-visit examples come from the card's labels and the shipped data, checked against the
shipped CSVs read here; a card with other labels (a new demo model) gets other examples."""

import csv

from vlm import demo
from vlm.demo_examples import MAX_EXAMPLES, demo_examples
from vlm.synth import LABELS


def shipped_rows() -> list[tuple[str, str]]:
    """(label or caption, image path) of every shipped image, read from the CSVs."""
    rows = []
    with open(demo.REFERENCE_SHAPES / "labels.csv", newline="", encoding="utf-8") as f:
        rows += [(r["label"], str(demo.REFERENCE_SHAPES / r["path"])) for r in csv.DictReader(f)]
    for folder in demo.collection_sets().values():
        with open(folder / "pairs.csv", newline="", encoding="utf-8") as f:
            rows += [(r["caption"], str(folder / r["path"])) for r in csv.DictReader(f)]
    return rows


def check(examples, labels):
    rows = set(shipped_rows())
    assert 0 < len(examples) <= MAX_EXAMPLES
    assert sum(ex.label in LABELS for ex in examples) <= MAX_EXAMPLES // 2
    for ex in examples:
        assert ex.image.is_file() and (ex.label, str(ex.image)) in rows  # the image is one of its label
        assert ex.label in labels and ex.labels == tuple(labels)
        if ex.label in LABELS:
            colour, shape = ex.label.split(" ")
            present, absent = ex.phrases
            assert present.endswith(f" {ex.label}") and absent.split(" ")[-2:] != [colour, shape]
            assert colour not in absent and shape not in absent  # shares nothing with the scene's one object
        else:
            assert ex.phrases == ()


def test_the_first_recipes_card_gives_shapes_and_emoji():
    examples = demo_examples({})
    check(examples, demo.FIRST_RECIPE_LABELS)
    assert {ex.label for ex in examples} & set(LABELS) and {ex.label for ex in examples} - set(LABELS)


def test_a_new_cards_labels_give_its_own_examples():
    captions = [c for c, _ in shipped_rows() if c not in LABELS]
    labels = ["no such thing", captions[10], "purple diamond", captions[200], "white circle", "green square"]
    provenance = {"demo_showcase": {"labels": labels, "queries": []}, "demo_figures": {}}
    examples = demo_examples(provenance)
    check(examples, labels)
    assert [ex.label for ex in examples] == [captions[10], captions[200], "purple diamond", "white circle"]
