"""Classification metrics against scikit-learn, and the report writers (JSON, Markdown, confusion PNG)."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import sklearn.metrics as skm
import torch
from PIL import Image

from eval.metrics import (
    classification_metrics,
    confusion_matrix,
    mean_per_class_recall,
    per_class_recall,
    topk_accuracy,
)
from eval.report import markdown_table, metrics_markdown, write_report


def random_case(n: int, c: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    scores = torch.tensor(rng.normal(size=(n, c)), dtype=torch.float32)
    targets = torch.tensor(rng.integers(0, c, size=n))
    return scores, targets


@pytest.mark.parametrize("n, c", [(37, 7), (101, 12), (9, 6)])
def test_topk_accuracy_matches_sklearn(n, c):
    scores, targets = random_case(n, c, n)
    got = topk_accuracy(scores, targets, (1, 2, 5))
    for k in (1, 2, 5):
        expected = skm.top_k_accuracy_score(targets.numpy(), scores.numpy(), k=k, labels=np.arange(c))
        assert got[k] == pytest.approx(expected)


def test_topk_beyond_the_class_count_is_nan_as_in_clip_benchmark():
    scores, targets = random_case(10, 3, 0)
    got = topk_accuracy(scores, targets, (1, 5))
    assert not math.isnan(got[1]) and math.isnan(got[5])
    assert math.isnan(classification_metrics(scores, targets)["acc5"])


@pytest.mark.parametrize("n, c", [(37, 7), (64, 10)])
def test_confusion_and_recall_match_sklearn(n, c):
    scores, targets = random_case(n, c, c)
    preds = scores.argmax(1).numpy()
    y = targets.numpy()
    cm = confusion_matrix(y, preds, c)
    np.testing.assert_array_equal(cm, skm.confusion_matrix(y, preds, labels=np.arange(c)))
    present = np.unique(y)
    np.testing.assert_allclose(
        per_class_recall(cm)[present], skm.recall_score(y, preds, labels=present, average=None, zero_division=0)
    )
    assert mean_per_class_recall(cm) == pytest.approx(skm.balanced_accuracy_score(y, preds))
    metrics = classification_metrics(scores, targets)
    assert metrics["acc1"] == pytest.approx(skm.accuracy_score(y, preds))
    assert metrics["mean_per_class_recall"] == pytest.approx(skm.balanced_accuracy_score(y, preds))


def test_mean_per_class_recall_skips_classes_absent_from_the_targets():
    """Class 3 is predicted but never true: scikit-learn drops it (with a warning) and so do we."""
    y = np.array([0, 0, 1, 1, 1, 2, 2])
    preds = np.array([0, 3, 1, 1, 0, 2, 3])
    cm = confusion_matrix(y, preds, 5)
    assert math.isnan(per_class_recall(cm)[3]) and math.isnan(per_class_recall(cm)[4])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = skm.balanced_accuracy_score(y, preds)
    assert mean_per_class_recall(cm) == pytest.approx(expected)


def test_bad_shapes_and_ids_are_refused():
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        confusion_matrix(np.array([0, 3]), np.array([0, 1]), 3)
    with pytest.raises(ValueError, match="equal-length"):
        confusion_matrix(np.array([0, 1]), np.array([0]), 3)
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        topk_accuracy(torch.zeros(4, 3), torch.zeros(5, dtype=torch.long))


def test_markdown_and_report_files(tmp_path):
    table = markdown_table([{"metric": "acc1", "value": 0.91234}, {"metric": "a|b", "value": float("nan")}])
    assert table.splitlines() == ["| metric | value |", "|---|---|", "| acc1 | 91.23 |", "| a\\|b | n/a |"]
    assert "### zs" in metrics_markdown({"acc1": 0.5}, title="zs")
    cm = np.array([[3, 1, 0], [0, 2, 2], [0, 0, 0]])
    metrics = {"acc1": 0.625, "acc5": float("nan")}
    files = write_report(tmp_path / "out", "zeroshot", metrics, {"model": "m"}, confusion=cm, classes=["a", "b", "c"])
    record = json.loads(files.json.read_text())
    assert record["metrics"] == {"acc1": 0.625, "acc5": None} and record["model"] == "m"
    assert "| acc1 | 62.50 |" in files.markdown.read_text()
    with Image.open(files.confusion) as im:
        assert im.format == "PNG" and im.width > 100
    many = write_report(
        tmp_path / "big", "z", {}, {}, confusion=np.eye(60, dtype=int), classes=[str(i) for i in range(60)]
    )
    assert many.confusion.stat().st_size > 0
    assert write_report(tmp_path / "r", "retrieval", {"x": 0.1}, {}).confusion is None
