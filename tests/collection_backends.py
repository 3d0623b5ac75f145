"""The two collection backends behind one face for the shared tests: `backend` fixtures yield a `Backend` whose
`create`/`open` make or reopen a collection at a test's place (a folder for FAISS; a collection in a Milvus Lite
file shared by the test module, one Milvus Lite server per module, since each start costs ~1-2 s).

Milvus tests skip when pymilvus or milvus-lite is missing (`pip install -e '.[milvus]'`; CI installs it)."""

from __future__ import annotations

import importlib.util
import itertools
import re
from pathlib import Path

import pytest

from indexing.backend import ImageCollection
from indexing.collection import Collection

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
