"""Zero-shot classifier: prompt ensembling against a hand computation, probabilities, batching, cache, labels,
templates and the `vlm classify` command. Random-weight tiny models: only arithmetic and plumbing are tested here."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from vlm import templates as template_sets
from vlm.errors import ConfigError
from vlm.zeroshot import (
    ClassifierCache,
    build_classifier,
    classify,
    clean_labels,
    embed_images,
    parse_labels,
    top_k,
)

CLIP_BENCHMARK_TEMPLATES = (
    Path(__import__("clip_benchmark").__file__).parent / "datasets" / "en_zeroshot_classification_templates.json"
)


def hand_classifier(encoders, labels, templates) -> np.ndarray:
    """One prompt at a time through open_clip's own encode_text; normalise, average, normalise in NumPy."""
    rows = []
    for label in labels:
        embs = []
        for t in templates:
            with torch.no_grad():
                e = encoders.model.encode_text(encoders.tokenizer([t.format(c=label)])).double().numpy()[0]
            embs.append(e / np.linalg.norm(e))
        mean = np.mean(embs, axis=0)
        rows.append(mean / np.linalg.norm(mean))
    return np.stack(rows)


# -- ensembling and probabilities -----------------------------------------------------------------------------------


def test_ensembling_equals_a_hand_computation(tiny_encoders):
    labels = ["cat", "dog", "red car", "tree", "boat"]
    templates = ["a photo of a {c}.", "{c}", "art of the {c}"]
    clf = build_classifier(tiny_encoders, labels, templates)
    assert clf.weights.shape == (5, tiny_encoders.embed_dim) and clf.weights.dtype == torch.float32
    np.testing.assert_allclose(clf.weights.numpy(), hand_classifier(tiny_encoders, labels, templates), atol=2e-6)
    assert clf.labels == tuple(labels) and clf.templates == tuple(templates)
    assert clf.fingerprint == tiny_encoders.fingerprint and clf.truncated == ()


@pytest.mark.parametrize("batch_size", [1, 4, 7])
def test_batching_does_not_change_the_classifier(tiny_encoders, batch_size):
    """Chunks of 1, 1 and 2 labels (3 templates each) leave remainders; all equal the one-pass result."""
    labels, templates = ["a", "b", "c", "d", "e"], ["x {c}", "{c} y", "{c}"]
    whole = build_classifier(tiny_encoders, labels, templates, batch_size=256).weights
    chunked = build_classifier(tiny_encoders, labels, templates, batch_size=batch_size).weights
    torch.testing.assert_close(chunked, whole, atol=2e-6, rtol=0)


def test_probabilities_are_a_softmax_over_scaled_cosines(tiny_encoders):
    clf = build_classifier(tiny_encoders, ["red", "green", "blue"], "photo")
    image_emb = torch.nn.functional.normalize(torch.randn(7, tiny_encoders.embed_dim), dim=-1)
    logits = clf.logit_scale * image_emb.double().numpy() @ clf.weights.double().numpy().T
    expected = np.exp(logits - logits.max(1, keepdims=True))
    expected /= expected.sum(1, keepdims=True)
    np.testing.assert_allclose(clf.probs(image_emb).numpy(), expected, atol=1e-5)
    assert clf.logit_scale == pytest.approx(float(tiny_encoders.model.logit_scale.detach().exp().clamp(max=100)))


def test_classify_returns_the_top_k_of_the_probabilities(tiny_encoders):
    from vlm.synth import single_object_scene

    images = [single_object_scene(s, c, image_size=32, seed=i) for i, (s, c) in enumerate([("star", "red")] * 3)]
    labels = ["red star", "blue circle", "green square", "white cross"]
    preds = classify(tiny_encoders, images, ", ".join(labels), "plain", k=3)
    probs = build_classifier(tiny_encoders, labels, "plain").probs(embed_images(tiny_encoders, images)).numpy()
    for pred, row in zip(preds, probs, strict=True):
        order = np.argsort(-row)[:3]
        assert pred.labels == tuple(labels[i] for i in order)
        np.testing.assert_allclose(pred.probs, row[order], atol=1e-6)
    assert len(top_k(torch.tensor(probs), labels, 99)[0].labels) == 4  # k is capped at the label count
    with pytest.raises(ConfigError, match="top-k"):
        top_k(torch.tensor(probs), labels, 0)


# -- cache ------------------------------------------------------------------------------------------------------


def test_cache_is_keyed_by_model_labels_and_templates(tiny_encoders):
    cache = ClassifierCache(max_entries=2)
    a = build_classifier(tiny_encoders, ["cat", "dog"], "photo", cache=cache)
    assert build_classifier(tiny_encoders, [" cat", "dog "], "photo", cache=cache) is a  # same labels once cleaned
    assert (cache.hits, cache.misses) == (1, 1)
    b = build_classifier(tiny_encoders, ["cat", "dog"], "plain", cache=cache)
    assert b is not a
    other = dataclasses.replace(tiny_encoders, fingerprint="another-model")
    c = build_classifier(other, ["cat", "dog"], "photo", cache=cache)
    assert c is not a and len(cache) == 2  # LRU: `a` was evicted
    assert build_classifier(tiny_encoders, ["cat", "dog"], "photo", cache=cache) is not a
    small = ClassifierCache(max_bytes=1)  # always keeps the newest entry, however large
    build_classifier(tiny_encoders, ["cat"], "photo", cache=small)
    build_classifier(tiny_encoders, ["dog"], "photo", cache=small)
    assert len(small) == 1


# -- labels ------------------------------------------------------------------------------------------------------


def test_labels_are_cleaned():
    clean = clean_labels("  red   circle, blue star,, Red Circle ,\n\tgreen square \n, ")
    assert clean.labels == ("red circle", "blue star", "green square")
    assert clean.duplicates == ("Red Circle",) and clean.empty == 4  # "", "", "" and " "
    assert clean_labels(["a", "b"]).labels == ("a", "b")
    assert parse_labels("a,b\nc") == ["a", "b", "c"]


@pytest.mark.parametrize("bad", ["", ",,, ,", "\n\n", [], ["  "]])
def test_no_usable_label_is_an_error(bad):
    with pytest.raises(ConfigError, match="no usable labels"):
        clean_labels(bad)


def test_strict_cleaning_refuses_duplicates_and_empties(tiny_encoders):
    with pytest.raises(ConfigError, match="repeats 'cat'"):
        clean_labels(["cat", "dog", "CAT"], strict=True)
    with pytest.raises(ConfigError, match="label 1 is empty"):
        build_classifier(tiny_encoders, ["cat", " ", "dog"], "photo")  # a dataset's class ids must not shift
    with pytest.raises(ConfigError, match="not a string"):
        clean_labels(["cat", 3])


def test_five_thousand_labels(tiny_encoders):
    labels = [f"thing {i}" for i in range(5000)]
    clf = build_classifier(tiny_encoders, labels, "plain", batch_size=512)
    assert clf.weights.shape == (5000, tiny_encoders.embed_dim)
    np.testing.assert_allclose(clf.weights[[0, 4321, 4999]].numpy(), hand_classifier(
        tiny_encoders, [labels[0], labels[4321], labels[4999]], ["{c}"]), atol=2e-6)  # fmt: skip


def test_labels_too_long_for_the_context_are_reported(tiny_encoders, caplog):
    """vlm-tiny's context is 32 tokens: start + 30 one-token words + end fits exactly; 31 words are cut."""
    assert tiny_encoders.context_length == 32
    fits, cut = " ".join(["cat"] * 30), " ".join(["cat"] * 31)
    assert len(tiny_encoders.tokenizer.encode(cut)) == 31  # "cat" is one token, so the boundary is exact
    clf = build_classifier(tiny_encoders, ["dog", fits, cut], "plain")
    assert clf.truncated == (cut,)
    assert "cut them" in caplog.text
    # What the model saw for the long label is its first 30 words: the tokenizer's truncation.
    torch.testing.assert_close(clf.weights[2], clf.weights[1], atol=1e-5, rtol=0)


# -- templates ---------------------------------------------------------------------------------------------------


def test_shipped_template_sets_match_the_references():
    reference = json.loads(CLIP_BENCHMARK_TEMPLATES.read_text())
    assert template_sets.load("cifar10") == tuple(reference["cifar10"])
    assert template_sets.load("cifar100") == tuple(reference["cifar100"])
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    assert [t.format(c="X") for t in template_sets.load("imagenet")] == [f("X") for f in OPENAI_IMAGENET_TEMPLATES]
    for name in template_sets.available():
        assert all("{c}" in t for t in template_sets.load(name))
    assert {"cifar10", "cifar100", "imagenet", "generic"} <= set(template_sets.available())


def test_template_sources_and_errors(tmp_path):
    assert template_sets.resolve("an icon of a {c}") == ("an icon of a {c}",)
    assert template_sets.resolve(None) == template_sets.load("generic")
    assert template_sets.resolve(["{c}!", "{c}!", "{{{c}}}"]) == ("{c}!", "{{{c}}}")  # duplicates dropped
    good = tmp_path / "mine.json"
    good.write_text(json.dumps(["a sketch of {c}", "{c}"]))
    assert template_sets.resolve(str(good)) == ("a sketch of {c}", "{c}")
    with pytest.raises(ConfigError, match="unknown template set"):  # text from the web never names a file
        template_sets.resolve(str(good), files=False)
    with pytest.raises(ConfigError, match=r"unknown template set 'nope'. Available: \['cifar10'"):
        template_sets.resolve("nope")
    cases = {
        "a photo of {x}": "fields other than|no \\{c\\}",
        "a photo": "unknown template set",  # no brace: read as a set name
        "a {} photo of {c}": "fields other than",
        "a {c} photo {": "malformed",
        "{c.upper}": "fields other than",
        "{c:>999999999}": "a bare \\{c\\}",
        "{c!s}": "a bare \\{c\\}",
        "{c}{c}{c}{c}": "at most 3",
        "{c}" + "x" * 300: "303 characters long",
    }
    for spec, message in cases.items():
        with pytest.raises(ConfigError, match=message):
            template_sets.resolve(spec)
    with pytest.raises(ConfigError, match="empty"):
        template_sets.resolve([])
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="cannot parse"):
        template_sets.resolve(str(bad))
    with pytest.raises(ConfigError, match="list of template strings"):
        template_sets.validate("{c}")
    with pytest.raises(ConfigError, match="not found"):
        template_sets.resolve(str(tmp_path / "missing.json"))


# -- CLI ---------------------------------------------------------------------------------------------------------


def test_classify_command(tmp_path, capsys):
    from vlm.cli import main
    from vlm.synth import single_object_scene

    image = tmp_path / "star.png"
    single_object_scene("star", "red", image_size=32, seed=5).save(image)
    assert main(["classify", str(image), "--labels", "red star, blue circle, red star", "--model", "vlm-tiny",
                 "--templates", "plain", "--top-k", "5", "--json"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    record = json.loads(out[out.index("[") :])
    assert sorted(record[0]["labels"]) == ["blue circle", "red star"]
    assert sum(record[0]["probs"]) == pytest.approx(1.0, abs=1e-5)
    assert "dropped 1 duplicate" in out
    assert main(["classify", str(image), "--labels", " , ,", "--model", "vlm-tiny"]) == 2
    assert "no usable labels" in capsys.readouterr().err
    assert main(["classify", str(image), "--labels", "a, b", "--templates", "nope", "--model", "vlm-tiny"]) == 2
    assert "Available:" in capsys.readouterr().err
    assert main(["classify", str(tmp_path / "missing.png"), "--labels", "a, b", "--model", "vlm-tiny"]) == 2
    assert "missing file" in capsys.readouterr().err


def test_eval_commands_write_reports(tmp_path, capsys):
    from vlm.cli import main
    from vlm.synth import single_object_scene

    rows = ["path,caption"]
    for i, (shape, colour) in enumerate([("star", "red"), ("circle", "blue"), ("square", "green")] * 3):
        (tmp_path / "data" / colour).mkdir(parents=True, exist_ok=True)
        single_object_scene(shape, colour, image_size=32, seed=i).save(tmp_path / "data" / colour / f"{i}.png")
        rows += [f"data/{colour}/{i}.png,a {colour} {shape}", f"data/{colour}/{i}.png,{shape} number {i}"]
    (tmp_path / "pairs.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "report"
    args = ["--model", "vlm-tiny", "--workers", "0", "--batch-size", "4", "--out", str(out)]
    assert main(["eval", "zeroshot", str(tmp_path / "data"), "--templates", "a {c} shape", *args]) == 0
    record = json.loads((out / "zeroshot.json").read_text())
    assert record["classes"] == ["blue", "green", "red"] and record["images"] == 9
    assert set(record["metrics"]) == {"acc1", "acc5", "mean_per_class_recall"} and record["metrics"]["acc5"] is None
    assert (out / "zeroshot_confusion.png").stat().st_size > 0
    assert "| acc1 |" in capsys.readouterr().out
    assert main(["eval", "retrieval", str(tmp_path / "pairs.csv"), "--ks", "1", "5", *args]) == 0
    record = json.loads((out / "retrieval.json").read_text())
    assert (record["images"], record["captions"]) == (9, 18)
    assert set(record["metrics"]) >= {"image_retrieval_recall@5", "text_retrieval_recall@1"}
    assert main(["eval", "zeroshot", str(tmp_path / "data"), "--templates", "no field", *args]) == 2
    assert "unknown template set" in capsys.readouterr().err


def test_a_bare_label_drops_case_spacing_and_a_leading_article_only():
    bare = template_sets.bare_label
    assert bare("A  Red circle ") == bare("red circle") == bare("the red circle") == "red circle"
    assert bare("An apple") == "apple" and bare("a") == "a"  # a lone article is a label of its own
    assert bare("another red circle") == "another red circle" and bare("red the circle") == "red the circle"
