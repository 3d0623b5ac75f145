"""`vlm index build|add|remove|search|info` on synthetic data, and a torchrun build equal to a one-process build."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from indexing.collection import Collection
from indexing.embed import EmbedConfig
from vlm import models
from vlm.cli import main
from vlm.synth import generate

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shapes") / "data"
    generate(out, scenes=40, seed=4, image_size=32, progress=False)
    return out


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_encoders) -> Path:
    return models.save(tiny_encoders, tmp_path_factory.mktemp("model") / "tiny")


def test_build_add_search_remove_info(tmp_path, shapes, model_dir, capsys):
    coll = str(tmp_path / "c")
    first = [str(shapes / "images" / f"{i:06d}.png") for i in range(30)]
    flags = ["--workers", "0", "--batch-size", "8", "--shard-size", "16"]
    assert main(["index", "build", coll, *first, "--model", str(model_dir), "--root", str(shapes), *flags]) == 0
    assert "added 30 image(s) (version 1)" in capsys.readouterr().out
    assert main(["index", "add", coll, str(shapes / "pairs.csv"), *flags]) == 0
    assert "added 10 image(s) (version 2); skipped 30 already present" in capsys.readouterr().out
    assert main(["index", "search", coll, "--text", "a red circle", "-k", "3", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["rank"] for r in rows] == [1, 2, 3] and all(r["path"].startswith("images/") for r in rows)
    assert rows[0]["score"] >= rows[1]["score"] >= rows[2]["score"]
    image = str(shapes / "images" / "000007.png")
    assert main(["index", "search", coll, "--image", image, "-k", "1", "--path-prefix", "images/00000"]) == 0
    assert "images/000007.png" in capsys.readouterr().out  # an image is its own nearest neighbour
    assert main(["index", "search", coll, "--query", f"{image} + 0.01*'a red circle'", "-k", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["path"] == "images/000007.png"  # the image term dominates
    assert main(["index", "search", coll, "--text", "a red circle", "--sort", "date", "--min-score", "0.999"]) == 0
    assert "no matching image scores at least 0.999 (the relevance cut-off of --sort date: --min-score)" in (
        capsys.readouterr().out
    )
    assert main(["index", "search", coll, "--text", "a red circle", "--sort", "date", "--min-score", "-1"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 10  # -k 10 by default, newest first
    assert main(["index", "search", coll, "--query", '"a red circle" + nowhere.png']) != 0
    assert "query image not found: nowhere.png" in capsys.readouterr().err
    assert main(["index", "remove", coll, "--id", "7", "--path", "images/000008.png", "nope.png"]) == 0
    out = capsys.readouterr().out
    assert "removed 2 image(s) (version 3)" in out and "not in the collection: nope.png" in out
    assert main(["index", "info", coll, "--verify"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (
        info["count"] == 38
        and info["verified"]
        and info["model"]["fingerprint"] == models.load(str(model_dir), device="cpu").fingerprint
    )


def test_a_collection_built_from_loaded_encoders_opens_without_them(tmp_path, shapes, model_dir, capsys, tiny_encoders):
    """The app embeds with the model it holds (an Encoders object): the collection records what that was loaded
    from, so `vlm index search` opens it; weights no load gives back (random, changed in memory) stay in-memory."""
    encoders = models.load(str(model_dir), device="cpu")
    images = [str(shapes / "images" / f"{i:06d}.png") for i in range(6)]
    with Collection.create(tmp_path / "c", encoders, root=shapes) as coll:
        coll.add(images, embed=EmbedConfig(workers=0, batch_size=8), progress=False)
        expected = coll.search_text(["a red circle"], 3)
    assert Collection.open(tmp_path / "c").model.model == str(model_dir.resolve())
    assert main(["index", "search", str(tmp_path / "c"), "--text", "a red circle", "-k", "3", "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert [h["path"] for h in found] == [r.path for r in expected.records[0]]

    changed = dataclasses.replace(encoders, loaded_from=("", None))  # e.g. `vlm.lora.merged_encoders`
    for name, enc in (("random", tiny_encoders), ("changed", changed)):
        assert enc.random_weights == (name == "random")
        Collection.create(tmp_path / name, enc).close()
        assert Collection.open(tmp_path / name).model.model is None
        assert main(["index", "search", str(tmp_path / name), "--text", "a red circle"]) == 2
        assert "in-memory model" in capsys.readouterr().err


def test_errors_are_reported_without_a_traceback(tmp_path, shapes, capsys):
    assert main(["index", "info", str(tmp_path / "nothing")]) == 2
    assert "is not a collection" in capsys.readouterr().err
    assert (
        main(["index", "build", str(tmp_path / "c"), str(shapes), "--model", "vlm-tiny", "--target-recall", "x"]) == 2
    )
    assert "target_recall" in capsys.readouterr().err


@pytest.mark.slow
def test_torchrun_build_equals_one_process_build(tmp_path, shapes, model_dir):
    torchrun = Path(sys.executable).parent / "torchrun"
    if not torchrun.exists():
        pytest.skip("torchrun is not installed next to this Python")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    common = [str(shapes / "pairs.csv"), "--model", str(model_dir), "--workers", "0", "--shard-size", "8"]
    one = [sys.executable, "-m", "vlm", "index", "build", str(tmp_path / "one"), *common]
    subprocess.run(one, check=True, env=env, capture_output=True, timeout=300)
    two = [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "vlm", "index", "build"]
    run = subprocess.run([*two, str(tmp_path / "two"), *common], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    a, b = Collection.open(tmp_path / "one"), Collection.open(tmp_path / "two")
    ids = a._v.store.ids()
    assert np.array_equal(ids, b._v.store.ids()) and len(ids) == 40
    assert [r.path for r in a.records(ids).values()] == [r.path for r in b.records(ids).values()]
    np.testing.assert_allclose(a._v.vectors.get(ids), b._v.vectors.get(ids), atol=1e-6)
    assert not (tmp_path / "two" / "staging").exists()
    shutil.rmtree(tmp_path / "one")
