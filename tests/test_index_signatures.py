"""The pixel signatures of near-duplicates kept in a collection's folder (`indexing.signatures`): a reopened
collection finds the same groups without decoding any image; a damaged cache file is recomputed with a warning and
the same groups; a file edited in place and synced is compared by its new pixels (the key is the pixel hash), so a
new copy is found and the old picture's signature is not used; stale entries are pruned."""

from __future__ import annotations

import logging
import sqlite3

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from indexing import duplicates, signatures
from indexing.collection import Collection
from indexing.embed import EmbedConfig
from indexing.signatures import SIGNATURES, SignatureCache
from vlm.synth import generate

FAST = EmbedConfig(batch_size=8, workers=0, shard_size=16)


@pytest.fixture
def decoded(monkeypatch):
    """The sizes of the images `indexing.duplicates` decodes, in order."""
    seen: list[tuple[int, int]] = []
    signature = duplicates.signature
    monkeypatch.setattr(duplicates, "signature", lambda image: seen.append(image.size) or signature(image))
    return seen


@pytest.fixture
def library(tmp_path, tiny_encoders):
    """Four scenes; the first two with a half-size and a brightened copy."""
    generate(tmp_path / "shapes", scenes=4, seed=5, image_size=80, progress=False)
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(4):
        image = Image.open(tmp_path / "shapes" / "images" / f"{i:06d}.png").convert("RGB")
        image.save(folder / f"s{i}.png")
        if i < 2:
            image.resize((40, 40), Image.Resampling.BICUBIC).save(folder / f"s{i}_half.png")
            ImageEnhance.Brightness(image).enhance(1.25).save(folder / f"s{i}_bright.png")
    c = Collection.create(tmp_path / "c.coll", tiny_encoders, root=folder)
    c.add(folder, embed=FAST, progress=False)
    return c, folder


def paths(groups) -> list[list[str]]:
    return sorted(sorted(r.path for r in g.records) for g in groups)


FAMILIES = [["s0.png", "s0_bright.png", "s0_half.png"], ["s1.png", "s1_bright.png", "s1_half.png"]]


def test_a_reopened_collection_decodes_no_image(library, decoded, tiny_encoders):
    c, _ = library
    assert paths(c.duplicates()) == FAMILIES
    assert len(decoded) >= 8  # every image for the proposals (and those with a candidate for the check)
    c.close()
    decoded.clear()
    again = Collection.open(c.root, encoders=tiny_encoders)  # a new process sees only the folder
    assert paths(again.duplicates()) == FAMILIES
    assert decoded == []
    assert paths(again.duplicates(pixels=duplicates.PixelCheck(residual=None))) == FAMILIES
    assert decoded == []


def test_a_damaged_cache_is_recomputed(library, decoded, tiny_encoders, caplog):
    c, _ = library
    first = paths(c.duplicates())
    c.close()
    cache = c.root / SIGNATURES
    with sqlite3.connect(cache) as conn:  # one entry of the wrong size: ignored, that image decoded again
        conn.execute("UPDATE coarse SET signature = x'00' WHERE rowid = 1")
    conn.close()
    decoded.clear()
    with caplog.at_level(logging.WARNING, logger="indexing.signatures"):
        assert paths(Collection.open(c.root, encoders=tiny_encoders).duplicates()) == first
    assert len(decoded) == 1 and "wrong size" in caplog.text
    cache.write_bytes(b"not a database" * 100)  # not SQLite at all: deleted, every image decoded again
    decoded.clear()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="indexing.signatures"):
        assert paths(Collection.open(c.root, encoders=tiny_encoders).duplicates()) == first
    assert len(decoded) >= 8 and "damaged" in caplog.text
    decoded.clear()
    assert paths(Collection.open(c.root, encoders=tiny_encoders).duplicates()) == first
    assert decoded == []  # written afresh


def test_a_file_edited_in_place_is_compared_by_its_new_pixels(library, decoded, tiny_encoders):
    """s3.png is overwritten with a darkened copy of s0 and s0_bright.png with a half-size copy of scene 2: after a
    sync, the old pictures' signatures (same paths) must not be used, and only the two new pictures are decoded."""
    c, folder = library
    assert paths(c.duplicates()) == FAMILIES
    c.close()
    s0, s2 = Image.open(folder / "s0.png"), Image.open(folder / "s2.png")
    ImageEnhance.Brightness(s0).enhance(0.8).save(folder / "s3.png")
    s2.resize((40, 40), Image.Resampling.BICUBIC).save(folder / "s0_bright.png")
    writer = Collection.open(c.root, read_only=False, encoders=tiny_encoders)
    writer.sync(folder, embed=FAST, progress=False)
    decoded.clear()
    assert paths(writer.duplicates()) == [
        ["s0.png", "s0_half.png", "s3.png"],
        ["s0_bright.png", "s2.png"],
        ["s1.png", "s1_bright.png", "s1_half.png"],
    ]
    assert sorted(decoded) == [
        (40, 40),
        (40, 40),
        (80, 80),
        (80, 80),
    ]  # the two new pictures, for the proposals and the check
    writer.close()


def test_stale_entries_are_pruned(tmp_path, monkeypatch):
    monkeypatch.setattr(signatures, "STALE_SPARE", 0)
    cache = SignatureCache(tmp_path / SIGNATURES, "coarse", (2, 3), np.float32)
    rng = np.random.default_rng(0)
    values = {f"{n:064x}": rng.normal(size=(2, 3)).astype(np.float32) for n in range(30)}
    cache.put(values)
    got = cache.get([*list(values)[:5], "f" * 64])
    assert set(got) == set(list(values)[:5]) and all(np.array_equal(got[k], values[k]) for k in got)
    assert cache.prune(set(list(values)[:28])) == 0  # 2 stale entries, within the slack
    assert cache.prune(set(list(values)[:10])) == 20
    assert len(cache) == 10 and set(cache.get(values)) == set(list(values)[:10])
    with pytest.raises(ValueError):
        cache.put({"a" * 64: np.zeros((3, 2), np.float32)})


def test_a_collection_prunes_the_entries_of_removed_images(library, monkeypatch):
    monkeypatch.setattr(signatures, "STALE_SPARE", 0)
    c, _ = library
    c.duplicates()
    cache = SignatureCache(c.root / SIGNATURES, "coarse", duplicates.COARSE_SHAPE, np.float32)
    assert len(cache) == 8
    c.remove(paths=["s2.png", "s3.png", "s1_half.png"])
    c.duplicates()
    kept = {r.sha256 for r in c.records_view.get(c.records_view.ids().tolist()).values()}
    assert len(kept) == 5 and set(cache.get([*kept, *(f"{n:064x}" for n in range(3))])) == kept
    assert len(cache) == 5
