"""Segmentation metrics against independent computations, and the `vlm eval segmentation` report."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import jaccard_score

from eval.segmentation import evaluate_segmentation, intersection_union, ious, segmentation_metrics
from vlm import synth
from vlm.cli import main
from vlm.segment import segment
from vlm.segment.data import read_segmentation


def _random_masks(n, seed=0):
    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(n):
        shape = tuple(int(v) for v in rng.integers(3, 30, 2))  # sizes differ, so oIoU weighs them
        gt = rng.random(shape) < rng.uniform(0.05, 0.6)
        pred = gt ^ (rng.random(shape) < rng.uniform(0.0, 0.5))  # flip a random share of the pixels
        pairs.append((pred, gt))
    empty = np.zeros((4, 5), bool)
    pairs.append((empty, empty))  # nothing to find, nothing found: IoU 1
    pairs.append((empty, ~empty))  # nothing found: IoU 0
    return pairs


def test_metrics_equal_sklearn_and_brute_force():
    pairs = _random_masks(23)
    inter_union = [intersection_union(p, g) for p, g in pairs]
    got = segmentation_metrics([i for i, _ in inter_union], [u for _, u in inter_union])
    per = np.array([jaccard_score(g.ravel(), p.ravel(), zero_division=1.0) for p, g in pairs])
    total_inter = sum(int(np.logical_and(p, g).sum()) for p, g in pairs)
    total_union = sum(int(np.logical_or(p, g).sum()) for p, g in pairs)
    assert got["mIoU"] == pytest.approx(per.mean(), abs=1e-12)
    assert got["oIoU"] == pytest.approx(total_inter / total_union, abs=1e-12)
    for t in (0.5, 0.7, 0.9):
        assert got[f"precision@{t:g}"] == pytest.approx(np.mean(per >= t), abs=1e-12)
    assert got["samples"] == len(pairs)


def test_precision_counts_an_iou_equal_to_the_threshold():
    # IoU exactly 0.5, 0.7 and 0.9: |I| / |U| = 5/10, 7/10, 9/10
    got = segmentation_metrics([5, 7, 9, 0], [10, 10, 10, 10])
    assert got["precision@0.5"] == 0.75 and got["precision@0.7"] == 0.5 and got["precision@0.9"] == 0.25
    assert got["mIoU"] == pytest.approx((0.5 + 0.7 + 0.9) / 4) and got["oIoU"] == pytest.approx(21 / 40)
    np.testing.assert_array_equal(ious([0, 3], [0, 4]), [1.0, 0.75])
    with pytest.raises(ValueError, match="no samples"):
        segmentation_metrics([], [])
    with pytest.raises(ValueError, match="shape"):
        intersection_union(np.zeros((2, 2), bool), np.zeros((2, 3), bool))


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    out = tmp_path_factory.mktemp("evalseg") / "data"
    synth.generate(out, scenes=5, seed=2, image_size=48, progress=False)
    return out


def test_evaluation_scores_what_segment_predicts(shapes, tiny_encoders):
    samples = read_segmentation(shapes / "phrases.csv").samples
    result = evaluate_segmentation(tiny_encoders, samples, method="dense", examples=2, threshold=0.3)
    assert [r["key"] for r in result.rows] == [s.key for s in samples] and len(result.examples) == 2
    per = []
    for s in samples:  # independently: one segment() call per sample, masks read with PIL
        pred = segment(tiny_encoders, s.image.path, [s.phrase], threshold=0.3).masks[0]
        gt = np.asarray(Image.open(s.mask.path)) > 127
        per.append(jaccard_score(gt.ravel(), pred.ravel(), zero_division=1.0))
    np.testing.assert_allclose([r["iou"] for r in result.rows], per, atol=1e-12)
    assert result.metrics["mIoU"] == pytest.approx(np.mean(per), abs=1e-12)
    assert result.settings == {"method": "dense", "threshold": 0.3}


def test_cli_writes_json_markdown_and_pictures(shapes, tmp_path, capsys):
    out = tmp_path / "report"
    args = ["eval", "segmentation", "--data", str(shapes / "phrases.csv"), "--model", "vlm-tiny", "--out", str(out),
            "--examples", "3", "--limit", "4", "--device", "cpu"]  # fmt: skip
    assert main(args) == 0
    printed = json.loads(capsys.readouterr().out)
    record = json.loads((out / "segmentation.json").read_text())
    assert record["metrics"] == {k: v for k, v in printed.items() if k not in ("report", "json")}
    assert len(record["samples"]) == 4 and len(record["examples"]) == 3
    for rel in record["examples"]:
        picture = Image.open(out / rel)
        assert picture.size == (3 * 48 + 8, 48)  # truth | prediction | heat map
    md = (out / "segmentation.md").read_text()
    assert "| mIoU |" in md and "examples/00_" in md


def test_cli_errors_are_clear(shapes, tmp_path, capsys):
    base = ["eval", "segmentation", "--data", str(shapes / "phrases.csv"), "--out", str(tmp_path / "r")]
    assert main([*base, "--model", "vlm-tiny", "--method", "decoder"]) == 2
    assert "needs --decoder" in capsys.readouterr().err
    assert main(["eval", "segmentation", "--data", str(tmp_path / "none.csv"), "--model", "vlm-tiny"]) == 2
    assert "not found" in capsys.readouterr().err
