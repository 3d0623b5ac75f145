"""The two collection backends behind one face for the shared tests: `backend` fixtures yield a `Backend` whose
`create`/`open` make or reopen a collection at a test's place (a folder for FAISS; a collection in a Milvus Lite
file shared by the test module, one Milvus Lite server per module, since each start costs ~1-2 s).

Milvus tests skip when pymilvus or milvus-lite is missing (`pip install -e '.[milvus]'`; CI installs it)."""

from __future__ import annotations

import importlib.util
import itertools
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from indexing.backend import ImageCollection
from indexing.collection import Collection
from indexing.embed import EmbedConfig
from vlm import models
from vlm.synth import generate

BACKENDS = ["faiss", "milvus"]
MILVUS_MISSING = [m for m in ("pymilvus", "milvus_lite") if importlib.util.find_spec(m) is None]
_names = itertools.count()


class Backend:
    def __init__(self, name: str, db: Path | None = None):
        self.name, self.db = name, db

    def _milvus_name(self, where: Path) -> str:
        return re.sub(r"\W", "_", where.name)[:60] + f"_{next(_names)}"

    def create(self, where: Path, model, **kwargs) -> ImageCollection:
        """A new collection for `where` (a fresh path per collection in the test), embedded by `model`."""
        if self.name == "faiss":
            return Collection.create(where, model, **kwargs)
        from indexing.milvus import MilvusCollection, MilvusConfig

        if "index" in kwargs:
            raise TypeError("IndexConfig is the FAISS backend's")
        name = self._milvus_name(where)
        where.mkdir(parents=True, exist_ok=True)
        (where / "milvus-name").write_text(name)  # so that `open(where)` finds it again
        return MilvusCollection.create(self.db, name, model, config=MilvusConfig(index_type="FLAT"), **kwargs)

    def open(self, where: Path, **kwargs) -> ImageCollection:
        if self.name == "faiss":
            return Collection.open(where, **kwargs)
        from indexing.milvus import MilvusCollection, MilvusConfig

        name = (where / "milvus-name").read_text()
        return MilvusCollection.open(self.db, name, config=MilvusConfig(index_type="FLAT"), **kwargs)


def backend_for(request, tmp_path_factory) -> Backend:
    """The body of a module's `backend` fixture, parametrised over BACKENDS."""
    if request.param == "faiss":
        return Backend("faiss")
    if MILVUS_MISSING:
        pytest.skip(f"the Milvus backend needs {' and '.join(MILVUS_MISSING)}: pip install -e '.[milvus]'")
    return Backend("milvus", tmp_path_factory.mktemp("milvus") / "collections.db")


# The set-up both collection suites use (tests/test_collection.py, tests/test_collection_api.py). The fixtures are
# imported by their *_fixture names and requested by `name`, so a test's argument does not shadow the import.
FAST = EmbedConfig(batch_size=8, workers=0, shard_size=16)


@pytest.fixture(scope="module", name="shapes")
def shapes_fixture(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shapes") / "data"
    generate(out, scenes=150, seed=2, image_size=48, progress=False)
    return out


@pytest.fixture(scope="module", name="model_dir")
def model_dir_fixture(tmp_path_factory, tiny_encoders) -> Path:
    """The tiny model as a checkpoint, so that a collection (or a subprocess) loads exactly the same weights."""
    return models.save(tiny_encoders, tmp_path_factory.mktemp("model") / "tiny")


def reference_vectors(encoders, paths) -> np.ndarray:
    """open_clip's model on PIL-decoded images in one batch: independent of the DataLoader pipeline."""
    pixels = torch.stack([encoders.preprocess(Image.open(p).convert("RGB")) for p in paths])
    with torch.no_grad():
        return F.normalize(encoders.model.encode_image(pixels).float(), dim=-1).numpy()


@pytest.fixture(scope="module", name="shape_vectors")
def shape_vectors_fixture(shapes, tiny_encoders) -> np.ndarray:
    """(150, 64): the reference vectors of the shapes images, in file order (= id order when added in order)."""
    return reference_vectors(tiny_encoders, image_files(shapes))


def brute_force(queries, vectors, ids, k):
    scores = queries.astype(np.float64) @ vectors.astype(np.float64).T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1).astype(np.float32), ids[order]


def image_files(data: Path) -> list[Path]:
    return sorted((data / "images").glob("*.png"))
