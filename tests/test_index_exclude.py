"""Removing an image for good (`Collection.remove(exclude=True)`, `vlm index remove --exclude`): later syncs and adds
leave it out while its file stays on disk, a copy of it under another name too; the exclusion list is versioned with
the collection; `unexclude` lets it back in. Exact copies (same pixels) are remembered, so a sync passes them by, and
one takes its image's place when the image goes. Checked against a fresh build of the same files, as test_index_sync."""

from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from indexing import versions
from indexing.collection import Collection
from indexing.embed import EmbedConfig
from indexing.store import Store
from vlm.cli import main
from vlm.synth import generate

FAST = EmbedConfig(batch_size=8, workers=0, shard_size=16)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("exclude-shapes") / "data"
    generate(out, scenes=10, seed=6, image_size=32, progress=False)
    return out / "images"


def photos(tmp_path: Path, shapes: Path, n: int = 6) -> Path:
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    for i in range(n):
        shutil.copy(shapes / f"{i:06d}.png", folder / ("sub" if i % 2 else "") / f"{i}.png")
    return folder


def contents(coll: Collection) -> dict[str, np.ndarray]:
    """path -> vector of every image in the collection."""
    records = coll._v.store.files()
    vectors = coll._v.vectors.get(np.array([r.id for r in records], dtype=np.int64))
    return {r.path: v for r, v in zip(records, vectors, strict=True)}


def fresh(tmp_path: Path, encoders, folder: Path, leave_out: set[str]) -> dict[str, np.ndarray]:
    """What a fresh build of `folder` without the files `leave_out` holds."""
    files = [p for p in sorted(folder.rglob("*.png")) if p.relative_to(folder).as_posix() not in leave_out]
    with Collection.create(tmp_path / "fresh", encoders, root=folder) as coll:
        coll.add(files, embed=FAST, progress=False)
        out = contents(coll)
    shutil.rmtree(tmp_path / "fresh")
    return out


def same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(np.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_an_excluded_image_stays_out_of_syncs_and_adds_until_unexcluded(tmp_path, shapes, tiny_encoders):
    folder = photos(tmp_path, shapes)
    coll = Collection.create(tmp_path / "c", tiny_encoders, root=folder)
    coll.sync(folder, embed=FAST, progress=False)
    before = coll.version
    result = coll.remove(paths=[folder / "sub" / "1.png", "2.png"], exclude=True)
    assert sorted(result.excluded) == ["2.png", "sub/1.png"] and len(result.removed) == 2
    assert (folder / "2.png").exists()  # the file stays on disk
    # Versioned with the collection: the version before the removal has no exclusion list (a reader of it sees
    # none); the new one has it, and it survives reopening (below).
    assert versions.load_version(coll.root, versions.version_name(before)).store.excluded() == {}

    synced = coll.sync(folder, embed=FAST, progress=False)
    assert synced.added == 0 and sorted(synced.excluded) == ["2.png", "sub/1.png"]
    assert "2 excluded" in synced.summary()
    assert same(contents(coll), fresh(tmp_path, tiny_encoders, folder, {"2.png", "sub/1.png"}))
    added = coll.add(folder, embed=FAST, progress=False)  # an add of the folder leaves them out too
    assert added.added == 0 and sorted(added.excluded) == ["2.png", "sub/1.png"]

    # The same pixels under another name (a phone re-syncing a photo deleted from the library) stay out too, and
    # that name joins the list, so the next sync does not embed it again.
    shutil.copy(folder / "2.png", folder / "sub" / "2 (1).png")
    shutil.copy(shapes / "000007.png", folder / "7.png")
    synced = coll.sync(folder, embed=FAST, progress=False)
    assert synced.added == 1 and synced.excluded_copies == [("sub/2 (1).png", "2.png")]
    assert coll.sync(folder, embed=FAST, progress=False).embed is None  # nothing left to embed
    assert {e.path for e in coll.excluded()} == {"2.png", "sub/1.png", "sub/2 (1).png"}

    coll.close()
    coll = Collection.open(tmp_path / "c", read_only=False, encoders=tiny_encoders)
    assert len(coll.excluded()) == 3

    found, missing = coll.unexclude([folder / "2.png", "not-there.png"])  # its copy comes off with it
    assert (found, missing) == (["2.png", "sub/2 (1).png"], ["not-there.png"])
    synced = coll.sync(folder, embed=FAST, progress=False)
    assert synced.added == 1 and synced.duplicates == [("sub/2 (1).png", "2.png")]  # the copy is a plain duplicate
    assert same(contents(coll), fresh(tmp_path, tiny_encoders, folder, {"sub/1.png", "sub/2 (1).png"}))
    found, _ = coll.unexclude(everything=True)
    assert found == ["sub/1.png"] and coll.excluded() == []
    assert coll.sync(folder, embed=FAST, progress=False).added == 1
    coll.verify()
    coll.close()


def test_a_plain_remove_is_undone_by_the_next_sync(tmp_path, shapes, tiny_encoders):
    folder = photos(tmp_path, shapes, n=3)
    with Collection.create(tmp_path / "c", tiny_encoders, root=folder) as coll:
        coll.sync(folder, embed=FAST, progress=False)
        assert coll.remove(paths=["2.png"]).excluded == []
        assert coll.sync(folder, embed=FAST, progress=False).added == 1
        assert coll.excluded() == []


def test_an_older_store_without_the_list_opens_and_gets_one(tmp_path, shapes, tiny_encoders):
    folder = photos(tmp_path, shapes, n=3)
    path = tmp_path / "c"
    with Collection.create(path, tiny_encoders, root=folder) as coll:
        coll.sync(folder, embed=FAST, progress=False)
        store_file = coll._v.folder / "meta.sqlite"
    conn = sqlite3.connect(store_file)  # as a store written before exclusion lists existed
    conn.execute("DROP TABLE excluded")
    conn.commit()
    conn.close()
    assert Store.open_readonly(store_file).excluded() == {}
    with Collection.open(path, read_only=False, encoders=tiny_encoders) as coll:
        assert coll.excluded() == [] and coll.sync(folder, embed=FAST, progress=False).added == 0
        coll.remove(paths=["0.png"], exclude=True)
        assert [e.path for e in coll.excluded()] == ["0.png"]
        assert coll.sync(folder, embed=FAST, progress=False).excluded == ["0.png"]


def test_cli_remove_exclude_list_and_unexclude(tmp_path, shapes, tiny_encoders, capsys):
    folder = photos(tmp_path, shapes, n=3)
    coll_path = str(tmp_path / "c")
    with Collection.create(coll_path, tiny_encoders, root=folder) as coll:
        coll.sync(folder, embed=FAST, progress=False)
    assert main(["index", "remove", coll_path, "--path", str(folder / "0.png"), "--exclude"]) == 0
    assert "excluded: later syncs and adds leave them out" in capsys.readouterr().out
    assert main(["index", "excluded", coll_path]) == 0
    out = capsys.readouterr().out
    assert "1 image(s) excluded" in out and "0.png" in out
    assert main(["index", "unexclude", coll_path]) == 2  # neither paths nor --all
    assert "or --all" in capsys.readouterr().err
    assert main(["index", "unexclude", coll_path, "0.png", "9.png"]) == 0
    out = capsys.readouterr().out
    assert "1 path(s) taken off" in out and "not excluded: 9.png" in out
    assert main(["index", "excluded", coll_path, "--json"]) == 0
    assert capsys.readouterr().out.strip() == "[]"


def test_exact_copies_are_remembered_not_embedded_again_and_take_over_when_their_image_goes(
    tmp_path, shapes, tiny_encoders
):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        shutil.copy(shapes / f"{i:06d}.png", folder / f"{i}.png")
    shutil.copy(folder / "0.png", folder / "c.png")  # byte-identical copy
    Image.open(folder / "0.png").save(folder / "d.png", compress_level=1)  # same pixels, other bytes
    coll = Collection.create(tmp_path / "c", tiny_encoders, root=folder)
    first = coll.sync(folder, embed=FAST, progress=False)
    assert first.added == 3 and sorted(first.duplicates) == [("c.png", "0.png"), ("d.png", "0.png")]
    assert coll.exact_copies() == [("c.png", "0.png"), ("d.png", "0.png")]
    again = coll.sync(folder, embed=FAST, progress=False)  # nothing to decode or embed: the copies are known
    assert again.embed is None and again.unchanged == 5 and not again.duplicates and again.version == first.version
    assert coll.add(folder, embed=FAST, progress=False).embed is None  # an add passes them by too
    st = (folder / "c.png").stat()
    os.utime(folder / "c.png", (st.st_atime, st.st_mtime + 5))  # touched: looked at again, still a copy
    touched = coll.sync(folder, embed=FAST, progress=False)
    assert touched.embed.images == 1 and touched.duplicates == [("c.png", "0.png")]
    (folder / "0.png").unlink()  # the image goes: a copy takes its place, as in a fresh build
    synced = coll.sync(folder, embed=FAST, progress=False)
    assert synced.removed == ["0.png"] and synced.added == 1
    assert same(contents(coll), fresh(tmp_path, tiny_encoders, folder, {"d.png"}))
    assert coll.exact_copies() == [("d.png", "c.png")]
    (folder / "d.png").unlink()
    coll.sync(folder, embed=FAST, progress=False)
    assert coll.exact_copies() == [] and coll._v.store.twins() == {}
    coll.close()


def test_the_app_library_carries_a_removal_to_another_models_collection(tmp_path, shapes, tiny_encoders):
    from indexing.library import Library
    from vlm import models

    folder = photos(tmp_path, shapes, n=4)
    library = Library.choose(images=[folder], collection=None, cache_dir=tmp_path / "cache")
    first = library.open_for(tiny_encoders, progress=False)
    assert first.count == 4
    first.remove(paths=["2.png"], exclude=True)  # what the app's Remove does
    first.close()
    torch.manual_seed(1)
    other = models.load("vlm-tiny", device="cpu")  # another model: its own collection of the same folder
    assert other.fingerprint != tiny_encoders.fingerprint
    second = library.open_for(other, progress=False)
    assert second.root != first.root and [e.path for e in second.excluded()] == ["2.png"]
    assert {r.path for r in second.records(range(10)).values()} == {"0.png", "sub/1.png", "sub/3.png"}
    second.close()
