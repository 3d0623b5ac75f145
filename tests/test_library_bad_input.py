"""Bad input to a photo library, end to end: an unreadable HEIC during a sync, and query arithmetic in the app
with a missing image or an empty term; each a clear message, the collection unchanged (same version, same images)."""

from __future__ import annotations

import shutil

import pillow_heif
import pytest
from PIL import Image

from indexing.collection import Collection
from indexing.embed import EmbedConfig
from ui.inputs import server_path
from ui.search import is_arithmetic, query_vector
from vlm.errors import ConfigError
from vlm.query import QueryError
from vlm.synth import generate

FAST = EmbedConfig(batch_size=8, workers=0, shard_size=16)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    base = tmp_path_factory.mktemp("bad")
    generate(base / "shapes", scenes=4, seed=1, image_size=48, progress=False)
    folder = base / "photos"
    folder.mkdir()
    for i in range(4):
        shutil.copy(base / "shapes" / "images" / f"{i:06d}.png", folder / f"{i}.png")
    return folder


def test_an_unreadable_heic_in_a_sync_is_reported_and_changes_nothing_else(tmp_path, photos, tiny_encoders):
    folder = tmp_path / "photos"
    shutil.copytree(photos, folder)
    coll = Collection.create(tmp_path / "c.coll", tiny_encoders, root=folder)
    coll.add(folder, embed=FAST, progress=False)
    before = {r.path: r for r in coll.records(range(10)).values()}
    version = coll.stats().version
    pillow_heif.from_pillow(Image.open(folder / "0.png").convert("RGB")).save(str(tmp_path / "good.heic"))
    data = (tmp_path / "good.heic").read_bytes()
    (folder / "cut.heic").write_bytes(data[: len(data) // 2])
    result = coll.sync(folder, embed=FAST, progress=False)
    assert len(result.bad) == 1 and "cut.heic" in str(result.bad[0])
    assert result.added == 0 and not result.removed and "1 unusable" in result.summary()
    assert coll.stats().version == version  # nothing to commit: the collection is as it was
    assert {r.path: r for r in coll.records(range(10)).values()} == before
    coll.close()


def test_query_arithmetic_in_the_app_names_the_bad_term(tmp_path, photos, tiny_encoders):
    assert is_arithmetic('"a beach" + 0.5*x.jpg') and is_arithmetic("sea - people") and not is_arithmetic("a red-hat")
    allowed = [photos]
    with pytest.raises(ConfigError, match="does not exist or is outside the folders"):
        query_vector(f"sea + {photos / 'missing.jpg'}", tiny_encoders, allowed)
    outside = tmp_path / "outside.png"
    shutil.copy(photos / "1.png", outside)  # exists, but not where the app may read: the same message
    with pytest.raises(ConfigError, match="does not exist or is outside the folders"):
        query_vector(f"sea + {outside}", tiny_encoders, allowed)
    with pytest.raises(QueryError, match="empty term"):
        query_vector("sea + ", tiny_encoders, allowed)
    vector = query_vector(f"sea + 0.5*{photos / '1.png'}", tiny_encoders, allowed)
    assert vector.shape == (tiny_encoders.embed_dim,)
    assert server_path(str(photos / "1.png"), allowed) == (photos / "1.png").resolve()
