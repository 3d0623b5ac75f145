"""Our evaluators against clip-benchmark's own metric functions, in-process, fp32, on a tiny model trained here for
a few seconds (so its predictions are neither constant nor random) and on synthetic data with batch remainders."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.agreement import reference_retrieval, reference_zeroshot
from eval.images import ArrayImages, LabelledData
from eval.retrieval import evaluate_pairs
from eval.zeroshot import evaluate_zeroshot
from vlm import models
from vlm.config import TrainConfig, from_dict
from vlm.data import read_pairs
from vlm.synth import COLOURS, SHAPES, generate, single_object_scene
from vlm.zeroshot import build_classifier

pytest.importorskip("clip_benchmark")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("agree") / "shapes"
    generate(out, scenes=90, seed=11, image_size=32, progress=False)
    return out


@pytest.fixture(scope="module")
def trained(shapes, tmp_path_factory) -> models.Encoders:
    from vlm.train import train

    cfg = from_dict(
        TrainConfig,
        {
            "output_dir": str(tmp_path_factory.mktemp("agree-run") / "run"),
            "batch_size": 16, "steps": 25, "seed": 0, "save_every": 0, "val_every": 0, "tensorboard": False,
            "model": {"model": "vlm-tiny"},
            "data": {"train_data": str(shapes / "pairs.csv"), "workers": 0, "val_fraction": 0.0},
            "optim": {"lr": 2e-3, "warmup_steps": 3},
        },
    )  # fmt: skip
    result = train(cfg, progress=False)
    return models.load(str(result.final_checkpoint), device="cpu", precision="fp32")


def colour_scenes(n: int, classes: tuple[str, ...]) -> LabelledData:
    """n single-object scenes whose class is the colour; shapes vary."""
    targets = np.arange(n) % len(classes)
    images = np.stack([
        np.asarray(single_object_scene(SHAPES[i % len(SHAPES)], classes[t], image_size=32, seed=1000 + i))
        for i, t in enumerate(targets)
    ])  # fmt: skip
    return LabelledData(ArrayImages(images), targets, classes, "colour scenes")


def test_classifier_weights_equal_clip_benchmark(trained):
    from clip_benchmark.metrics.zeroshot_classification import zero_shot_classifier

    labels, templates = ["red", "a blue thing", "green"], ["a {c}.", "{c}", "there is a {c}"]
    ref = zero_shot_classifier(trained.model, trained.tokenizer, labels, templates, "cpu", amp=False)  # (D, C)
    ours = build_classifier(trained, labels, templates).weights  # (C, D)
    torch.testing.assert_close(ours, ref.T.float(), atol=1e-6, rtol=0)


@pytest.mark.parametrize("classes", [COLOURS, COLOURS[:3]])  # 8 classes; 3 classes (acc5 undefined: NaN in both)
def test_zeroshot_metrics_equal_clip_benchmark(trained, classes):
    data = colour_scenes(43, classes)
    ours = evaluate_zeroshot(trained, data, ["a {c} shape", "{c}"], batch_size=16).metrics
    theirs = reference_zeroshot(trained, data, ["a {c} shape", "{c}"], batch_size=16)
    assert set(theirs) == set(ours)
    for key, ref in theirs.items():
        if math.isnan(ref):
            assert math.isnan(ours[key]) and key == "acc5"
        else:
            assert ours[key] == pytest.approx(ref, abs=1e-9), key
    assert 0 < ours["acc1"] < 1  # a non-trivial case: some right, some wrong


def test_retrieval_metrics_equal_clip_benchmark(trained, shapes):
    pairs = read_pairs(shapes / "pairs.csv", progress=False).pairs[:83]  # 3 captions each; 83 = 5 x 16 + 3
    ours = evaluate_pairs(trained, pairs, ks=(1, 5, 10), batch_size=16)
    theirs = reference_retrieval(trained, pairs, (1, 5, 10), batch_size=16)
    for key, ref in theirs.items():
        assert ours[key] == pytest.approx(ref, abs=1e-6), key  # clip-benchmark averages in float32
    assert 0 < ours["text_retrieval_recall@5"] < 1


def test_identical_icons_are_merged_into_one_image_with_all_their_names(tmp_path):
    """bench.agreement merges pixel-identical images (ties make recall@1 ill-defined); a re-saved copy with other
    metadata is identical, an image differing in one pixel is not."""
    from PIL import Image

    from bench.agreement import merge_identical_images

    pixels = np.asarray(single_object_scene("star", "red", image_size=32, seed=3))
    Image.fromarray(pixels).save(tmp_path / "a.png")
    Image.fromarray(pixels).save(tmp_path / "b.png", pnginfo=_png_text("comment", "a re-saved twin"))
    changed = pixels.copy()
    changed[0, 0] ^= 1
    Image.fromarray(changed).save(tmp_path / "c.png")
    (tmp_path / "pairs.csv").write_text("image,caption\na.png,red star\nb.png,a star\nb.png,red star\nc.png,other\n")
    pairs = read_pairs(tmp_path / "pairs.csv", progress=False).pairs
    merged = merge_identical_images(pairs)
    assert [(p.key, p.captions) for p in merged] == [("a.png", ("red star", "a star")), ("c.png", ("other",))]


def _png_text(key: str, value: str):
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text(key, value)
    return info
