"""indexing.store: the SQLite metadata of one collection version."""

from __future__ import annotations

import os
import sqlite3
import threading

import numpy as np
import pytest

from indexing.errors import IndexingError
from indexing.store import Filter, ImageRecord, Store


def record(i: int, path: str, caption: str | None) -> ImageRecord:
    return ImageRecord(i, path, "file", None, caption, f"{i:064x}", 100 + i, 1.5 * i, 2.0)


@pytest.fixture()
def published(tmp_path):
    paths = [f"{folder}/img_{i:04d}.png" for i, folder in enumerate(["cats", "dogs", "cats/kittens", "birds"] * 300)]
    captions = [None if i % 5 == 0 else f"A {'Red' if i % 3 else 'blue'} thing number {i}" for i in range(1200)]
    rows = [record(i * 2 + 1, p, c) for i, (p, c) in enumerate(zip(paths, captions, strict=True))]
    store = Store.create(tmp_path / "a.sqlite")
    store.insert(rows)
    store.close()
    return Store.open_readonly(tmp_path / "a.sqlite"), rows


def test_filters_match_a_python_reference(published):
    store, rows = published
    cases = [
        Filter(path_prefix="cats/"),
        Filter(path_contains="kitten"),
        Filter(caption_contains="red THING"),
        Filter(path_prefix="cats", caption_contains="blue"),
        Filter(path_prefix="%"),  # no LIKE wildcards: a literal prefix
        Filter(),
    ]
    for where in cases:
        expected = [
            r.id
            for r in rows
            if (not where.path_prefix or r.path.startswith(where.path_prefix))
            and (not where.path_contains or where.path_contains in r.path)
            and (not where.caption_contains or where.caption_contains.lower() in (r.caption or "").lower())
        ]
        assert store.filter_ids(where).tolist() == sorted(expected), where


def test_lookups_beyond_one_query_batch(published):
    store, rows = published
    wanted = [r.path for r in rows[::2]] + ["missing.png"]  # 601 values: more than one IN (...) batch
    found = store.by_paths(wanted)
    assert set(found) == set(wanted[:-1]) and all(found[r.path] == r for r in rows[::2])
    assert set(store.by_hashes([r.sha256 for r in rows[:700]])) == {r.sha256 for r in rows[:700]}
    assert store.get([1, 3, 99999]) == {1: rows[0], 3: rows[1]}
    assert store.ids().tolist() == [r.id for r in rows] and store.count() == 1200


def test_published_store_is_never_changed_and_copies_are_independent(published, tmp_path):
    store, _ = published
    with pytest.raises(IndexingError, match="never changed"):
        store.delete([1])
    copy = store.copy_to(tmp_path / "b.sqlite")
    copy.delete([1, 3])
    copy.insert([record(5000, "new.png", "x")])
    copy.close()
    assert store.count() == 1200 and Store.open_readonly(tmp_path / "b.sqlite").count() == 1199
    with pytest.raises(IndexingError, match="overwrite"):
        store.copy_to(tmp_path / "b.sqlite")


def test_unique_paths_and_hashes(tmp_path):
    store = Store.create(tmp_path / "c.sqlite")
    store.insert([record(1, "a.png", None)])
    with pytest.raises(Exception, match="UNIQUE"):
        store.insert([record(2, "a.png", None)])


def test_concurrent_reads_from_threads(published):
    store, _ = published
    expected = store.filter_ids(Filter(path_prefix="dogs/"))
    results, errors = [], []

    def worker():
        try:
            for _ in range(50):
                results.append(np.array_equal(store.filter_ids(Filter(path_prefix="dogs/")), expected))
        except Exception as e:  # surfaced below: a thread's exception would otherwise vanish
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 300 and all(results)


def bytes_read() -> int:
    """Bytes this process has read through read()/pread() (/proc/self/io; SQLite reads its pages so)."""
    with open("/proc/self/io") as f:
        return int(next(x for x in f.read().splitlines() if x.startswith("rchar:")).split()[1])


@pytest.mark.skipif(not os.path.exists("/proc/self/io"), reason="counts bytes read through Linux /proc/self/io")
def test_opening_reads_a_few_pages_whatever_the_size_and_still_checks_the_file(tmp_path):
    store = Store.create(tmp_path / "big.sqlite")
    store.insert([record(i, f"folder/{i:06d}.png", f"caption {i} " * 4) for i in range(20_000)])
    store.close()
    size = (tmp_path / "big.sqlite").stat().st_size
    before = bytes_read()
    opened = Store.open_readonly(tmp_path / "big.sqlite")
    read = bytes_read() - before
    # 16.6 KB of a 5.7 MB store; the count(*) probe it replaced read 1.7 MB (a whole index).
    assert size > 2_000_000 and read < 64 * 1024, (size, read)
    assert opened.count() == 20_000
    (tmp_path / "junk.sqlite").write_bytes(b"not a database" * 100)
    with pytest.raises(IndexingError, match="cannot read the metadata store"):
        Store.open_readonly(tmp_path / "junk.sqlite")
    other = sqlite3.connect(tmp_path / "other.sqlite")
    other.execute("CREATE TABLE t (x)")
    other.close()
    with pytest.raises(IndexingError, match="cannot read the metadata store"):
        Store.open_readonly(tmp_path / "other.sqlite")
