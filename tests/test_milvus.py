"""The Milvus backend's own behaviour, on Milvus Lite: `vlm index export-milvus` moves a FAISS collection over
(records, vectors and search results equal; a rerun copies nothing twice; removed ids stay unused), refuses a target
built with another model, and a URI that does not answer is a clear error within the timeout. What both backends
share is tests/test_collection_api.py."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from collection_backends import MILVUS_MISSING

from indexing.backend import Change
from indexing.collection import Collection
from indexing.embed import EmbedConfig
from indexing.errors import IndexingError, ModelMismatchError
from indexing.milvus import MilvusCollection  # pymilvus is imported when a collection is opened, not here
from indexing.results import ModelSpec
from indexing.store import ImageRecord
from vlm import models
from vlm.cli import main
from vlm.synth import generate

pytestmark = pytest.mark.skipif(
    bool(MILVUS_MISSING), reason=f"needs {' and '.join(MILVUS_MISSING)}: pip install -e '.[milvus]'"
)
FAST = EmbedConfig(batch_size=8, workers=0, shard_size=16)


@pytest.fixture(scope="module")
def source(tmp_path_factory, tiny_encoders) -> Collection:
    """A FAISS collection of 60 images, float16 vectors, two removed (ids 0..59, next_id 60)."""
    data = tmp_path_factory.mktemp("shapes") / "data"
    generate(data, scenes=60, seed=4, image_size=48, progress=False)
    coll = Collection.create(tmp_path_factory.mktemp("src") / "photos.coll", tiny_encoders, root=data, dtype="float16")
    coll.add(data / "pairs.csv", embed=FAST, progress=False)
    coll.remove(ids=[7, 59])
    return coll


@pytest.fixture(scope="module")
def db(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("milvus") / "export.db"


def test_export_moves_records_and_vectors_and_searches_the_same(source, db, tiny_encoders, capsys):
    assert main(["index", "export-milvus", str(source.root), str(db)]) == 0  # HNSW, the default index
    assert "exported 58 image(s) to Milvus collection 'photos_coll'" in capsys.readouterr().out
    target = MilvusCollection.open(db, "photos_coll", read_only=False, encoders=tiny_encoders)
    assert target.count == source.count == 58 and target.model == source.model and target.root_dir == source.root_dir
    records, vectors = zip(*source.rows(batch=25), strict=True)
    records, vectors = [r for batch in records for r in batch], np.concatenate(vectors)
    ids = [r.id for r in records]
    assert target.records(ids) == {r.id: r for r in records}  # every field, ids kept
    stored = target.records_view.vectors(ids)
    np.testing.assert_array_equal(np.array([stored[i] for i in ids], dtype=np.float32), vectors)
    queries = tiny_encoders.encode_text(["a red circle", "a blue square", "a green star"]).numpy()
    want, got = source.search_vector(queries, k=10), target.search_vector(queries, k=10)
    assert np.array_equal(got.ids, want.ids)
    np.testing.assert_allclose(got.scores, want.scores, atol=1e-5)
    # Again: everything is there already. Then a new image gets an id the source never gave (7 and 59 stay unused).
    again = main(["index", "export-milvus", str(source.root), str(db), "--name", "photos_coll"])
    assert again == 0 and "exported 0 image(s)" in capsys.readouterr().out and target.count == 58
    extra = Path(source.root_dir) / "images" / "000000.png"
    target.remove(ids=[0])
    assert target.add(extra, embed=FAST, progress=False).ids.tolist() == [60]


def test_export_into_a_collection_of_another_model_is_refused(source, db, capsys):
    torch.manual_seed(123)
    other = models.load("vlm-tiny", device="cpu")
    target = MilvusCollection.create(db, "other_model", other)
    assert main(["index", "export-milvus", str(source.root), str(db), "--name", "other_model"]) != 0
    err = capsys.readouterr().err
    assert "fingerprint" in err and other.fingerprint in err and source.model.fingerprint in err
    assert target.count == 0
    from indexing.milvus_export import export

    with pytest.raises(ModelMismatchError):
        export(source, str(db), "other_model")


@pytest.fixture
def silent_port():
    """A TCP port that accepts connections and never answers (a firewall or a hung server looks like this)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield s.getsockname()[1]


def test_a_uri_that_does_not_answer_is_a_clear_error_within_the_timeout(source, silent_port, capsys):
    from indexing.milvus_client import MilvusConfig, MilvusUnavailableError

    uri = f"http://127.0.0.1:{silent_port}"
    start = time.monotonic()
    code = main(["index", "export-milvus", str(source.root), uri, "--timeout", "1.5"])
    took = time.monotonic() - start
    err = capsys.readouterr().err
    assert code != 0 and f"Milvus at {uri} did not answer within 1.5 s" in err and "19530" in err
    assert took < 15  # the timeout, not a hang (generous: the machine may be loaded)
    with pytest.raises(MilvusUnavailableError, match="did not answer"):
        MilvusCollection.open(uri, "photos", config=MilvusConfig(timeout_s=1.0))
    with socket.socket() as s:  # nothing listening at all: refused at once
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    with pytest.raises(MilvusUnavailableError, match=f"127.0.0.1:{closed}"):
        MilvusCollection.open(f"http://127.0.0.1:{closed}", "photos", config=MilvusConfig(timeout_s=1.0))
    with pytest.raises(MilvusUnavailableError) as e:  # a password in the URI is not repeated in the message
        MilvusCollection.open(f"http://me:s3cret@127.0.0.1:{closed}", "photos", config=MilvusConfig(timeout_s=1.0))
    assert "s3cret" not in str(e.value) and f"http://***@127.0.0.1:{closed}" in str(e.value)


def test_cli_builds_searches_syncs_and_describes_a_milvus_collection(tmp_path, db, tiny_encoders, capsys):
    data = tmp_path / "data"
    generate(data, scenes=12, seed=6, image_size=48, progress=False)
    photos = data / "images"
    model = models.save(tiny_encoders, tmp_path / "model")
    db, milvus = str(db), ["--milvus", "shapes"]  # the module's Milvus Lite file: its server is running
    build = ["index", "build", db, str(photos), "--model", str(model), *milvus, "--index-type", "IVF_FLAT"]
    assert main([*build, "--batch-size", "4", "--workers", "0"]) == 0
    assert "added 12 image(s)" in capsys.readouterr().out
    assert main(["index", "search", db, *milvus, "--text", "a red circle", "-k", "3", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    want = tiny_encoders.encode_text(["a red circle"]).numpy()[0]
    with MilvusCollection.open(db, "shapes", encoders=tiny_encoders) as coll:
        exact = coll.search_vector(want, k=3, nprobe=1024)
        assert coll.config.index_type == "IVF_FLAT"  # from the collection, whatever the opener's default
    assert [r["id"] for r in rows] == exact.ids[0].tolist()
    (photos / "000003.png").unlink()
    assert main(["index", "sync", db, str(photos), *milvus, "--workers", "0"]) == 0
    assert "1 removed, 11 unchanged" in capsys.readouterr().out
    assert main(["index", "remove", db, *milvus, "--path", "000004.png"]) == 0
    assert main(["index", "info", db, *milvus]) == 0
    info = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert (
        info["count"] == 10
        and info["index"] == "IVF_FLAT"
        and info["model"]["fingerprint"] == tiny_encoders.fingerprint
    )
    assert main(["index", "info", db, *milvus, "--verify"]) != 0


def test_a_caption_longer_than_milvus_keeps_is_refused_before_anything_is_written(db):
    spec = ModelSpec(model=None, pretrained=None, source="test", fingerprint="f", embed_dim=4)
    coll = MilvusCollection.create_empty(db, "long_caption", spec)
    ok = ImageRecord(0, "a.png", "file", None, "short", "0" * 64, 1, 0.0, 0.0)
    long = ImageRecord(1, "b.png", "file", None, "x" * 70_000, "1" * 64, 1, 0.0, 0.0)
    with pytest.raises(IndexingError, match=r"b\.png: its caption is longer than Milvus.s 65535 bytes"):
        coll.commit(Change([ok, long], np.eye(4)[:2]))
    assert coll.count == 0 and coll.next_id == 0 and coll.version == 0
