"""ONNX export and the ONNX Runtime encoders: the same embeddings as PyTorch, found next to the model, and clear
fallbacks (or errors, when asked for explicitly) for missing, stale and corrupt exports."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from indexing.collection import Collection
from indexing.errors import ModelMismatchError
from vlm import models
from vlm.cli import main
from vlm.errors import ModelError
from vlm.onnx_export import MANIFEST_NAME, export, read_manifest
from vlm.onnx_runtime import attach
from vlm.synth import generate

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_encoders) -> Path:
    """A tiny checkpoint folder with its export (fp32 and int8) in its onnx/ folder, made by the CLI."""
    folder = models.save(tiny_encoders, tmp_path_factory.mktemp("model") / "tiny")
    assert main(["export", "onnx", str(folder), "--quantize"]) == 0
    return folder


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shapes") / "data"
    generate(out, scenes=24, seed=5, image_size=48, progress=False)
    return out


def _cosines(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    return torch.nn.functional.cosine_similarity(a, b, dim=-1).numpy()


def test_onnx_embeddings_equal_pytorch_per_image_and_text(exported, shapes):
    torch_enc = models.load(str(exported), device="cpu")
    onnx_enc = models.load(str(exported), device="cpu", runtime="auto")
    assert onnx_enc.runtime == "onnx" and str(exported / "onnx") in onnx_enc.runtime_note
    assert onnx_enc.fingerprint == torch_enc.fingerprint  # the same model: its collections and queries mix freely
    # Real (rendered) images, in a batch size other than the export's check batch (the batch axis is dynamic).
    from PIL import Image

    images = sorted((shapes / "images").glob("*.png"))[:7]
    pixels = torch.stack([torch_enc.preprocess(Image.open(p).convert("RGB")) for p in images])
    assert _cosines(onnx_enc.encode_image(pixels), torch_enc.encode_image(pixels)).min() >= 0.9999
    texts = ["a red circle", "two blue squares above a green triangle", "", "x" * 500]  # long: truncated tokens
    assert _cosines(onnx_enc.encode_text(texts), torch_enc.encode_text(texts)).min() >= 0.9999
    raw = onnx_enc.encode_image(pixels, normalize=False)  # unnormalised features too
    assert torch.allclose(raw, torch_enc.encode_image(pixels, normalize=False), rtol=1e-3, atol=1e-4)

    int8 = models.load(str(exported), device="cpu", runtime="onnx-int8")
    assert int8.runtime == "onnx-int8" and int8.fingerprint == f"{torch_enc.fingerprint}-int8"
    assert _cosines(int8.encode_image(pixels), torch_enc.encode_image(pixels)).min() >= 0.99  # close, not equal
    record = read_manifest(exported / "onnx")
    assert record["fingerprint"] == torch_enc.fingerprint and record["checked"]["image_min_cosine"] >= 0.9999


def test_a_collection_uses_the_export_and_finds_what_pytorch_finds(tmp_path, exported, shapes):
    images = sorted((shapes / "images").glob("*.png"))
    kw = {"root": shapes, "device": "cpu"}
    with Collection.create(tmp_path / "onnx.coll", str(exported), **kw) as coll:  # runtime "auto" by default
        assert coll.encoders.runtime == "onnx"
        coll.add(images, embed=_small())
    with Collection.create(tmp_path / "torch.coll", str(exported), runtime="torch", **kw) as coll:
        coll.add(images, embed=_small())
    a = Collection.open(tmp_path / "onnx.coll", runtime="torch")  # same fingerprint: opens with either runtime
    b = Collection.open(tmp_path / "torch.coll")
    assert b.encoders.runtime == "onnx"
    ha, hb = a.search_text(["a red circle", "a blue square"], k=5), b.search_text(["a red circle", "a blue square"], 5)
    assert (ha.ids == hb.ids).all() and np.allclose(ha.scores, hb.scores, atol=1e-4)
    with pytest.raises(ModelMismatchError, match="-int8"):  # int8 is another model: refused on a fp32 collection
        Collection.open(tmp_path / "torch.coll", runtime="onnx-int8").search_text("a red circle", 1)


def test_an_int8_collection_reopens_with_int8_and_its_recall_against_fp32_is_measured(tmp_path, exported, shapes):
    from bench.int8 import recall_at

    assert recall_at(np.array([[1, 2, 3], [4, 5, 6]]), np.array([[3, 2, 9], [7, 8, 9]]), k=3) == pytest.approx(1 / 3)
    images = sorted((shapes / "images").glob("*.png"))
    kw = {"root": shapes, "device": "cpu"}
    for runtime in ("onnx", "onnx-int8"):
        with Collection.create(tmp_path / runtime, str(exported), runtime=runtime, **kw) as coll:
            coll.add(images, embed=_small())
    fp32, int8 = Collection.open(tmp_path / "onnx"), Collection.open(tmp_path / "onnx-int8")
    assert int8.encoders.runtime == "onnx-int8"  # "auto" reopens an int8 collection with int8
    queries = ["a red circle", "a blue square", "a green triangle"]
    a, b = fp32.search_text(queries, k=10).ids, int8.search_text(queries, k=10).ids
    by_hand = np.mean([len(set(x) & set(y)) / 10 for x, y in zip(a.tolist(), b.tolist(), strict=True)])
    assert recall_at(a, b) == pytest.approx(by_hand) and by_hand >= 0.5  # close vectors: mostly the same images


def _small():
    from indexing.config import EmbedConfig

    return EmbedConfig(batch_size=8, workers=0, shard_size=16)


def test_missing_stale_and_corrupt_exports_fall_back_or_fail_clearly(tmp_path, exported, tiny_encoders, caplog):
    plain = models.save(tiny_encoders, tmp_path / "plain")
    enc = models.load(str(plain), device="cpu", runtime="auto")  # no export: PyTorch, saying so
    assert enc.runtime == "torch" and "no ONNX export at" in enc.runtime_note
    with pytest.raises(ModelError, match="vlm export onnx"):
        models.load(str(plain), device="cpu", runtime="onnx")
    with pytest.raises(ModelError, match="no folder of its own"):
        attach(tiny_encoders, "onnx")  # an architecture name: nothing next to it

    torch.manual_seed(1)
    other = models.save(models.load("vlm-tiny", device="cpu"), tmp_path / "other")  # other weights ...
    shutil.copytree(exported / "onnx", other / "onnx")  # ... beside this model's export
    with caplog.at_level(logging.WARNING, logger="vlm"):
        enc = models.load(str(other), device="cpu", runtime="auto")
    assert enc.runtime == "torch" and "of other weights" in enc.runtime_note and "of other weights" in caplog.text
    with pytest.raises(ModelError, match="of other weights"):
        models.load(str(other), device="cpu", runtime="onnx")

    broken = tmp_path / "broken"
    shutil.copytree(exported, broken)
    (broken / "onnx" / "image.onnx").write_bytes((exported / "onnx" / "image.onnx").read_bytes()[:1000])
    enc = models.load(str(broken), device="cpu", runtime="auto")
    assert enc.runtime == "torch" and "cannot load" in enc.runtime_note and "image.onnx" in enc.runtime_note
    with pytest.raises(ModelError, match=r"ONNX Runtime cannot load .*image\.onnx"):
        models.load(str(broken), device="cpu", runtime="onnx")
    (broken / "onnx" / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(ModelError, match=r"unreadable .*onnx\.json"):
        models.load(str(broken), device="cpu", runtime="onnx")


def test_export_refuses_unwritable_and_foreign_folders(tmp_path, tiny_encoders, capsys):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ModelError, match="cannot write the ONNX export"):
        export(tiny_encoders, tmp_path / "file" / "onnx")  # a path under a file: no folder can be made there
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(ModelError, match="not an ONNX export"):
        export(tiny_encoders, mine)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"] and not list(tmp_path.glob(".*tmp"))
    assert main(["export", "onnx", "vlm-tiny"]) == 2  # no folder next to an architecture name, and no --out
    assert "pass --out DIR" in capsys.readouterr().err
    assert main(["export", "onnx", "vlm-tiny", "--out", str(tmp_path / "t")]) == 0
    assert json.loads(capsys.readouterr().out)["checked"]["text_min_cosine"] >= 0.9999
