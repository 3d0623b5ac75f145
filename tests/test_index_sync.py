"""indexing.sync / Collection.sync / `vlm index sync`: a synced collection equals a fresh build of the folder (ids
aside, vectors compared); moves and touches are not embedded again; files that vanish or folders that cannot be
listed lose nothing; a SIGKILL mid-sync reopens consistent and a rerun completes to the same collection."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from indexing import embed as embedding
from indexing import sync as sync_module
from indexing.collection import Collection
from indexing.embed import EmbedConfig
from indexing.errors import IndexingError
from vlm import models
from vlm.synth import generate

ROOT = Path(__file__).resolve().parents[1]
FAST = EmbedConfig(batch_size=8, workers=0, shard_size=16)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shapes") / "data"
    generate(out, scenes=140, seed=5, image_size=48, progress=False)
    return out / "images"


def shape(shapes: Path, i: int) -> Path:
    return shapes / f"{i:06d}.png"


def make_photos(folder: Path, shapes: Path, n: int = 30) -> Path:
    """Images 0..n-1 of the shapes world in two subfolders, two of them with a sidecar caption."""
    for i in range(n):
        sub = folder / ("a" if i % 2 else "b")
        sub.mkdir(parents=True, exist_ok=True)
        shutil.copy(shape(shapes, i), sub / f"{i:03d}.png")
    (folder / "a" / "001.txt").write_text("a caption\n")
    (folder / "b" / "004.txt").write_text("another caption\n")
    return folder


def edit_photos(folder: Path, shapes: Path) -> None:
    """One of each change a sync must follow; images 100+ never appear in the first build."""
    shutil.copy(shape(shapes, 100), folder / "a" / "003.png")  # edited in place: new pixels
    st = (folder / "a" / "005.png").stat()
    os.utime(folder / "a" / "005.png", (st.st_atime, st.st_mtime + 10))  # touched: same pixels
    (folder / "b" / "006.png").unlink()  # deleted
    (folder / "b" / "004.txt").unlink()  # caption dropped
    (folder / "a" / "007.txt").write_text("a new caption\n")  # caption added
    (folder / "c").mkdir()
    (folder / "b" / "008.png").rename(folder / "c" / "moved.png")  # moved
    (folder / "a" / "009.png").rename(folder / "a" / "renamed.png")  # renamed
    for i in range(101, 105):  # new
        shutil.copy(shape(shapes, i), folder / "c" / f"new{i}.png")


def contents(coll: Collection) -> dict[str, tuple]:
    """path -> (sha256, caption, size, mtime, vector): everything but ids and times of adding."""
    ids = coll._v.store.ids()
    vectors = coll._v.vectors.get(ids)
    records = coll.records(ids.tolist())
    return {
        records[i].path: (records[i].sha256, records[i].caption, records[i].size, records[i].mtime, vectors[row])
        for row, i in enumerate(ids.tolist())
    }


def assert_same_collection(a: Collection, b: Collection) -> None:
    ca, cb = contents(a), contents(b)
    assert sorted(ca) == sorted(cb)
    for path in ca:
        assert ca[path][:4] == cb[path][:4], path
        np.testing.assert_allclose(ca[path][4], cb[path][4], atol=1e-5, err_msg=path)
    a.verify()
    b.verify()


def test_sync_after_edit_delete_move_add_equals_a_fresh_build(tmp_path, shapes, tiny_encoders):
    photos = make_photos(tmp_path / "photos", shapes)
    coll = Collection.create(tmp_path / "c", tiny_encoders, root=photos)
    coll.add(photos, embed=FAST, progress=False)
    before = {r.path: r.id for r in coll.records(coll._v.store.ids().tolist()).values()}
    version = coll.stats().version
    edit_photos(photos, shapes)

    result = coll.sync(photos, embed=FAST, progress=False)
    assert (result.added, result.changed, result.touched, result.recaptioned) == (4, 1, 1, 2)
    assert sorted(result.moved) == [("a/009.png", "a/renamed.png"), ("b/008.png", "c/moved.png")]
    assert result.removed == ["b/006.png"] and not result.bad and not result.duplicates
    assert result.embed.images == 5  # the 4 new files and the edited one; moves and touches are not embedded
    assert result.version == version + 1  # one new version for the whole sync
    after = {r.path: r.id for r in coll.records(coll._v.store.ids().tolist()).values()}
    assert after["c/moved.png"] == before["b/008.png"] and after["a/005.png"] == before["a/005.png"]
    assert after["a/003.png"] not in before.values()  # re-embedded: a new id

    fresh = Collection.create(tmp_path / "fresh", tiny_encoders, root=photos)
    fresh.add(photos, embed=FAST, progress=False)
    assert_same_collection(coll, fresh)

    again = coll.sync(photos, embed=FAST, progress=False)
    assert again.unchanged == coll.stats().count == 33 and again.version == result.version  # nothing to commit
    assert again.summary() == f"synced (version {result.version}): 33 unchanged"


def test_sync_of_a_subfolder_leaves_the_rest_alone_and_a_non_folder_is_refused(tmp_path, shapes, tiny_encoders):
    photos = make_photos(tmp_path / "photos", shapes, n=10)
    coll = Collection.create(tmp_path / "c", tiny_encoders, root=photos)
    coll.add(photos, embed=FAST, progress=False)
    (photos / "a" / "001.png").unlink()
    (photos / "b" / "002.png").unlink()
    result = coll.sync(photos / "b", embed=FAST, progress=False)
    assert result.removed == ["b/002.png"] and "a/001.png" in contents(coll)
    with pytest.raises(IndexingError, match=r"sync takes folders.*use `add`"):
        coll.sync(photos / "a" / "003.png", embed=FAST, progress=False)
    with pytest.raises(IndexingError, match="sync takes folders"):
        coll.sync(tmp_path / "unmounted", embed=FAST, progress=False)
    assert coll.stats().count == 9


def test_files_that_vanish_while_syncing_are_reported_and_lose_nothing(tmp_path, shapes, tiny_encoders, monkeypatch):
    photos = make_photos(tmp_path / "photos", shapes, n=10)
    coll = Collection.create(tmp_path / "c", tiny_encoders, root=photos)
    coll.add(photos, embed=FAST, progress=False)
    shutil.copy(shape(shapes, 100), photos / "a" / "003.png")  # changed, then gone before it is read
    shutil.copy(shape(shapes, 101), photos / "a" / "new1.png")  # new, gone after listing
    shutil.copy(shape(shapes, 102), photos / "a" / "new2.png")  # new, gone between planning and embedding
    shutil.copy(shape(shapes, 103), photos / "a" / "new3.png")  # new, stays

    real_gather, real_embed = sync_module.gather, embedding.embed

    def gather_then_delete(*args, **kwargs):
        listed = real_gather(*args, **kwargs)
        (photos / "a" / "new1.png").unlink()
        return listed

    def delete_then_embed(*args, **kwargs):
        (photos / "a" / "003.png").unlink()
        (photos / "a" / "new2.png").unlink()
        return real_embed(*args, **kwargs)

    monkeypatch.setattr(sync_module, "gather", gather_then_delete)
    monkeypatch.setattr(embedding, "embed", delete_then_embed)
    old = contents(coll)["a/003.png"]
    result = coll.sync(photos, embed=FAST, progress=False)
    assert sorted((b.item, b.reason) for b in result.bad) == [
        ("a/003.png", "missing file"),
        ("a/new1.png", "missing file"),
        ("a/new2.png", "missing file"),
    ]
    assert "a/003.png: missing file" in str(next(b for b in result.bad if b.item == "a/003.png"))
    assert result.added == 1 and result.changed == 0 and not result.removed
    now = contents(coll)
    assert now["a/003.png"][0] == old[0]  # the record whose new content could not be read is kept as it was
    assert "a/new3.png" in now and "a/new1.png" not in now
    coll.verify()
    # The next sync sees that a/003.png is gone.
    monkeypatch.undo()
    assert coll.sync(photos, embed=FAST, progress=False).removed == ["a/003.png"]


def test_a_folder_that_cannot_be_listed_keeps_its_images(tmp_path, shapes, tiny_encoders, monkeypatch):
    photos = make_photos(tmp_path / "photos", shapes, n=10)
    coll = Collection.create(tmp_path / "c", tiny_encoders, root=photos)
    coll.add(photos, embed=FAST, progress=False)
    real_scandir = os.scandir
    locked = str(photos / "a")

    def scandir(path="."):
        if isinstance(path, str | os.PathLike) and os.fspath(path) == locked:
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)  # root can list anything, so the refusal is simulated
    version = coll.stats().version
    result = coll.sync(photos, embed=FAST, progress=False)
    assert not result.removed and len(result.kept) == 5 and result.version == version  # nothing committed
    assert [(b.item, b.reason) for b in result.bad] == [("a", "cannot list folder (Permission denied)")]
    assert coll.stats().count == 10


def test_cli_sync(tmp_path, shapes, tiny_encoders, capsys):
    from vlm.cli import main

    model = models.save(tiny_encoders, tmp_path / "model")
    photos = make_photos(tmp_path / "photos", shapes, n=6)
    main(["index", "build", str(tmp_path / "c"), str(photos), "--model", str(model), "--workers", "0"])
    (photos / "a" / "001.png").unlink()
    shutil.copy(shape(shapes, 100), photos / "a" / "new.png")
    capsys.readouterr()
    main(["index", "sync", str(tmp_path / "c"), str(photos), "--workers", "0"])
    out = capsys.readouterr().out
    assert "1 added" in out and "1 removed" in out and "removed: a/001.png" in out


SYNC_SCRIPT = """
import sys
from indexing.collection import Collection
from indexing.embed import EmbedConfig
from vlm import models


def sync(path, photos, encoders):
    with Collection.open(path, read_only=False, encoders=encoders) as coll:
        coll.sync(photos, embed=EmbedConfig(batch_size=8, workers=1, shard_size=16), progress=False)


if __name__ == "__main__":
    import time

    encoders = models.load(sys.argv[4], device="cpu")
    start = time.perf_counter()
    sync(sys.argv[1], sys.argv[3], encoders)  # uninterrupted, to time it
    print("ready", time.perf_counter() - start, flush=True)
    sync(sys.argv[2], sys.argv[3], encoders)  # killed at a random moment
    print("done", flush=True)
"""


@pytest.mark.parametrize("seeds", [[0], pytest.param([1, 2, 3], marks=pytest.mark.slow)], ids=["seed0", "more"])
def test_sigkill_mid_sync_reopens_consistent_and_a_rerun_completes(tmp_path, shapes, tiny_encoders, seeds):
    import runpy

    model = models.save(tiny_encoders, tmp_path / "model")
    photos = make_photos(tmp_path / "photos", shapes)
    base = tmp_path / "base"
    with Collection.create(base, tiny_encoders, root=photos) as coll:
        coll.add(photos, embed=FAST, progress=False)
        before = coll.stats().count
    edit_photos(photos, shapes)
    for i in range(105, 140):  # enough to embed for a kill to land mid-way: 3 shards
        shutil.copy(shape(shapes, i), photos / "b" / f"more{i}.png")
    script = tmp_path / "sync.py"
    script.write_text(SYNC_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    seen = {}
    for seed in seeds:
        straight, killed = tmp_path / f"straight{seed}", tmp_path / f"killed{seed}"
        shutil.copytree(base, straight)
        shutil.copytree(base, killed)
        cmd = [sys.executable, str(script), str(straight), str(killed), str(photos), str(model)]
        proc = subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True
        )
        word, seconds = proc.stdout.readline().split()
        assert word == "ready"
        delay = random.Random(seed).uniform(0.0, float(seconds))
        time.sleep(delay)
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        with Collection.open(killed, encoders=tiny_encoders) as reader:
            reader.verify()
            count = reader.stats().count
        with Collection.open(straight, encoders=tiny_encoders) as done:
            after = done.stats().count
        assert count in (before, after), "a sync was half-applied"
        seen[seed] = (round(delay, 2), "done" not in out, count, len(list((killed / "staging").glob("shard_*"))))
        runpy.run_path(str(script))["sync"](str(killed), str(photos), tiny_encoders)  # rerun, in this process
        with (
            Collection.open(killed, encoders=tiny_encoders) as a,
            Collection.open(straight, encoders=tiny_encoders) as b,
        ):
            assert_same_collection(a, b)
        assert not (killed / "staging").exists()
    fresh = Collection.create(tmp_path / "fresh", tiny_encoders, root=photos)
    fresh.add(photos, embed=FAST, progress=False)
    with Collection.open(tmp_path / f"straight{seeds[0]}", encoders=tiny_encoders) as synced:
        assert_same_collection(synced, fresh)
    print(f"killed after (s, before the end, committed images, staged shards): {seen}")
