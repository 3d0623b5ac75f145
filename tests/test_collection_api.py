"""The collection API, one suite run against both backends (tests/collection_backends.py): the FAISS collection
(indexing.collection) and Milvus (indexing.milvus, on Milvus Lite). Round trips, exact search against NumPy over
vectors computed independently, filters, duplicates, model mismatch, read-only opens, sync, image lookups.
FAISS-only behaviour (versions, locks, index choice, crash safety): tests/test_collection.py; Milvus-only (export,
a URI that does not answer): tests/test_milvus.py."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import torch
from collection_backends import (  # noqa: F401 (fixtures)
    BACKENDS,
    FAST,
    backend_for,
    brute_force,
    image_files,
    model_dir_fixture,
    reference_vectors,
    shape_vectors_fixture,
    shapes_fixture,
)
from faiss.contrib.evaluation import check_ref_knn_with_draws
from PIL import Image

from indexing.errors import IndexingError, ModelMismatchError
from indexing.store import Filter
from vlm import models


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request, tmp_path_factory):
    return backend_for(request, tmp_path_factory)


def test_round_trip_add_search_remove_reopen(backend, tmp_path, shapes, tiny_encoders, shape_vectors):
    coll = backend.create(tmp_path / "c", tiny_encoders, root=shapes)
    result = coll.add(shapes / "images", embed=FAST, progress=False)
    files = image_files(shapes)
    assert result.added == len(files) == 150 and result.ids.tolist() == list(range(150))
    assert coll.count == 150
    # Exact search equals NumPy brute force over vectors computed independently.
    vectors = shape_vectors
    queries = tiny_encoders.encode_text(["a red circle", "two blue squares", "a white star"]).numpy()
    hits = coll.search_vector(queries, k=12)
    check_ref_knn_with_draws(*brute_force(queries, vectors, np.arange(150), 12), hits.scores, hits.ids, rtol=1e-4)
    assert [r.id for r in hits.records[0]] == hits.ids[0].tolist()
    assert hits.records[0][0].path == f"images/{hits.ids[0, 0]:06d}.png"
    # Remove by id and by path (stored, or a file path that resolves to it), then reopen read-only.
    gone = coll.remove(ids=[3, 4], paths=["images/000010.png", shapes / "images" / "000011.png", "nope.png"])
    assert gone.removed.tolist() == [3, 4, 10, 11] and gone.not_found == ["nope.png"]
    after = coll.search_vector(queries, k=150)
    assert not np.isin(after.ids, [3, 4, 10, 11]).any() and (after.ids[:, :146] >= 0).all()
    keep = np.setdiff1d(np.arange(150), [3, 4, 10, 11])
    check_ref_knn_with_draws(*brute_force(queries, vectors[keep], keep, 20), after.scores[:, :20], after.ids[:, :20])
    coll.close()
    reader = backend.open(tmp_path / "c", encoders=tiny_encoders)
    again = reader.search_vector(queries, k=150)
    assert np.array_equal(again.ids, after.ids) and reader.count == 146
    with pytest.raises(IndexingError, match="read-only"):
        reader.remove(ids=[1])
    # Adding the folder again re-adds only what was removed, under new ids (ids are never reused).
    writer = backend.open(tmp_path / "c", read_only=False, encoders=tiny_encoders)
    readded = writer.add(shapes / "images", embed=FAST, progress=False)
    assert readded.added == 4 and readded.already_present == 146 and readded.ids.tolist() == [150, 151, 152, 153]
    assert reader.refresh() and reader.count == 150


def test_duplicates_and_unusable_files_are_reported_not_added(backend, tmp_path, shapes, tiny_encoders):
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(5):
        shutil.copy(shapes / "images" / f"{i:06d}.png", folder / f"{i}.png")
    shutil.copy(shapes / "images" / "000001.png", folder / "copy_of_1.png")
    Image.open(shapes / "images" / "000002.png").save(folder / "same_pixels_as_2.bmp")
    (folder / "broken.png").write_bytes((folder / "3.png").read_bytes()[:50])
    (folder / "empty.png").write_bytes(b"")
    coll = backend.create(tmp_path / "c", tiny_encoders, root=folder)
    result = coll.add(folder, embed=FAST, progress=False)
    assert result.added == 5
    assert sorted(result.duplicates) == [("copy_of_1.png", "1.png"), ("same_pixels_as_2.bmp", "2.png")]
    assert sorted((b.item, b.reason) for b in result.bad) == [
        ("broken.png", "truncated image"),
        ("empty.png", "empty file"),
    ]
    # An image already in the collection, under a new name in a later add, is a duplicate too.
    shutil.copy(folder / "4.png", tmp_path / "later.png")
    later = coll.add(tmp_path / "later.png", embed=FAST, progress=False)
    assert later.added == 0 and later.duplicates == [(str((tmp_path / "later.png").resolve()), "4.png")]
    # The keyed lookups (shared by both backends over their `select`): the copy is not stored, its twin is.
    view = coll.records_view
    one = view.by_paths(["1.png", "copy_of_1.png", "nope.png"])
    assert list(one) == ["1.png"] and one["1.png"].caption is None
    record = one["1.png"]
    assert view.get([record.id, 999]) == {record.id: record} and view.by_hashes([record.sha256]) == {
        record.sha256: record
    }
    with pytest.raises(IndexingError, match="looked up by one of id, path, sha256, not by 'caption'"):
        view.select("caption", ["x"])


def test_a_different_model_is_refused(backend, tmp_path, shapes, tiny_encoders, model_dir):
    torch.manual_seed(123)
    other = models.load("vlm-tiny", device="cpu")
    coll = backend.create(tmp_path / "c", str(model_dir), root=shapes, device="cpu")
    coll.add(shapes / "images" / "000000.png", embed=FAST, progress=False)
    coll.close()
    with pytest.raises(ModelMismatchError) as e:
        backend.open(tmp_path / "c", encoders=other)
    assert tiny_encoders.fingerprint in str(e.value) and other.fingerprint in str(e.value)
    assert "vlm index build" in str(e.value)
    reader = backend.open(tmp_path / "c", device="cpu")  # loads the recorded checkpoint: same fingerprint
    with pytest.raises(ModelMismatchError):
        reader.search_vector(other.encode_text(["x"]).numpy(), fingerprint=other.fingerprint)
    assert reader.search_text("a red circle", k=1).ids.tolist() == [[0]]
    assert reader.model.fingerprint == reader.encoders.fingerprint == tiny_encoders.fingerprint


def test_filtered_search_equals_brute_force_over_the_matching_images(
    backend, tmp_path, shapes, tiny_encoders, shape_vectors
):
    coll = backend.create(tmp_path / "c", tiny_encoders, root=shapes)
    coll.add(shapes / "pairs.csv", embed=FAST, progress=False)
    vectors = shape_vectors
    captions = {r.id: r.caption for r in coll.records(range(150)).values()}
    queries = tiny_encoders.encode_text(["a red circle", "a green cross"]).numpy()
    filters = [Filter(path_prefix="images/00001"), Filter(caption_contains="RED"), Filter(path_contains="0")]
    filters += [Filter(path_prefix="images\\0"), Filter(path_contains="_"), Filter(folder="images", path_contains="5")]
    for where in filters:
        allowed = np.array(
            [
                i
                for i in range(150)
                if (not where.path_prefix or f"images/{i:06d}.png".startswith(where.path_prefix))
                and (not where.folder or f"images/{i:06d}.png".startswith(where.folder + "/"))
                and (not where.path_contains or where.path_contains in f"images/{i:06d}.png")
                and (not where.caption_contains or "red" in captions[i].lower())
            ],
            dtype=np.int64,
        )
        hits = coll.search_vector(queries, k=8, filters=where)
        if len(allowed):
            want = brute_force(queries, vectors[allowed], allowed, 8)
            check_ref_knn_with_draws(*want, hits.scores, hits.ids, rtol=1e-4)
        else:  # "_" and "\" are no wildcards: nothing matches
            assert (hits.ids == -1).all() and np.isneginf(hits.scores).all() and hits.records == [[], []]


def test_image_path_only_returns_images_in_the_collection(backend, tmp_path, shapes, tiny_encoders):
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(shapes / "images" / "000000.png", data / "a.png")
    (data / "list.csv").write_text(f"image\na.png\n../outside.png\n{shapes / 'images' / '000001.png'}\n")
    shutil.copy(shapes / "images" / "000001.png", tmp_path / "outside.png")
    coll = backend.create(tmp_path / "c", tiny_encoders, root=data)
    result = coll.add(data / "list.csv", embed=FAST, progress=False)
    assert result.added == 1 and [b.reason for b in result.bad] == ["path escapes the dataset root"] * 2
    assert coll.image_path(0) == (data / "a.png").resolve()
    assert coll.image_path(1) is None and coll.image_path(-1) is None
    assert coll.open_image(0).size == (48, 48)
    with pytest.raises(IndexingError, match="no image with id 7"):
        coll.open_image(7)


def test_sync_follows_edits_moves_and_deletions(backend, tmp_path, shapes, tiny_encoders, shape_vectors):
    photos = tmp_path / "photos"
    for sub, ids in (("a", range(0, 6)), ("b", range(6, 10))):
        (photos / sub).mkdir(parents=True)
        for i in ids:
            shutil.copy(shapes / "images" / f"{i:06d}.png", photos / sub / f"{i}.png")
    coll = backend.create(tmp_path / "c", tiny_encoders, root=photos)
    coll.add(photos, embed=FAST, progress=False)
    before = {r.path: r.id for r in coll.records(range(10)).values()}
    shutil.copy(shapes / "images" / "000020.png", photos / "a" / "1.png")  # edited: new pixels
    (photos / "a" / "2.png").rename(photos / "b" / "moved.png")  # moved: same pixels
    (photos / "b" / "7.png").unlink()  # deleted
    shutil.copy(shapes / "images" / "000021.png", photos / "b" / "new.png")  # new
    result = coll.sync(photos, embed=FAST, progress=False)
    assert (result.added, result.changed, result.moved, result.removed) == (
        1,
        1,
        [("a/2.png", "b/moved.png")],
        ["b/7.png"],
    )
    assert result.embed.images == 2 and coll.count == 10
    records = {r.path: r for r in coll.records(range(12)).values()}
    assert records["b/moved.png"].id == before["a/2.png"] and "b/7.png" not in records
    assert {records["a/1.png"].id, records["b/new.png"].id} == {10, 11}
    # The vectors follow the pixels: each image is its own nearest neighbour, by its reference vector.
    truth = {"a/0.png": 0, "a/1.png": 20, "b/moved.png": 2, "b/new.png": 21, "b/9.png": 9}
    hits = coll.search_vector(shape_vectors[list(truth.values())], k=1)
    assert [r[0].path for r in hits.records] == list(truth)
    np.testing.assert_allclose(hits.scores[:, 0], 1.0, atol=1e-4)


def test_sort_by_date_is_a_cut_then_newest_first(backend, tmp_path, shapes, tiny_encoders, shape_vectors):
    folder = tmp_path / "in"
    folder.mkdir()
    for i, f in enumerate(image_files(shapes)[:40]):  # mtimes in a shuffled order: dates are not in id order
        shutil.copy(f, folder / f.name)
        t = 1_600_000_000 + 86_400 * ((i * 17) % 40)
        os.utime(folder / f.name, (t, t))
    coll = backend.create(tmp_path / "c", tiny_encoders, root=folder)
    coll.add(sorted(folder.glob("*.png")), embed=FAST, progress=False)
    query = shape_vectors[5]
    everything = coll.search_vector(query, k=40)
    cut = float(np.median(everything.scores[0]))
    kept = [(r.date, float(s), r.id) for r, s in zip(everything.records[0], everything.scores[0], strict=True)]
    want = [i for d, s, i in sorted(kept, reverse=True) if s >= cut][:5]
    got = coll.search_vector(query, k=5, sort="date", min_score=cut)
    assert got.ids[0].tolist() == want and all(s >= cut for s in got.scores[0])
    with pytest.raises(IndexingError, match="unknown sort"):
        coll.search_vector(query, sort="size")


def test_path_filters_take_wildcards_quotes_and_backslashes_literally(backend, tmp_path, shapes, tiny_encoders):
    names = ["a_b.png", "axb.png", "a%b.png", "ab%.png", "back\\slash.png", "backslash.png", 'q"uote.png', "q.png"]
    folder = tmp_path / "in"
    folder.mkdir()
    for i, name in enumerate(names):
        shutil.copy(shapes / "images" / f"{i:06d}.png", folder / name)
    coll = backend.create(tmp_path / "c", tiny_encoders, root=folder)
    assert coll.add(folder, embed=FAST, progress=False).added == len(names)
    query = np.ones(coll.dim, dtype=np.float32)
    for text in ["a_", "a%", "%", "_", "back\\", "k\\s", 'q"', '"', "\\"]:
        for where, want in (
            (Filter(path_prefix=text), {n for n in names if n.startswith(text)}),
            (Filter(path_contains=text), {n for n in names if text in n}),
            (Filter(path_contains=text, caption_contains="x"), set()),  # no captions: nothing
        ):
            got = coll.search_vector(query, k=len(names), filters=where)
            assert {r.path for r in got.records[0]} == want, where


def test_an_excluded_image_stays_out_until_unexcluded(backend, tmp_path, shapes, tiny_encoders):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(4):
        shutil.copy(shapes / "images" / f"{i:06d}.png", photos / f"{i}.png")
    coll = backend.create(tmp_path / "c", tiny_encoders, root=photos)
    coll.sync(photos, embed=FAST, progress=False)
    assert coll.remove(paths=["1.png"], exclude=True).excluded == ["1.png"]
    shutil.copy(photos / "1.png", photos / "1 (copy).png")  # its pixels under a new name
    result = coll.sync(photos, embed=FAST, progress=False)
    assert (result.added, result.excluded, result.excluded_copies) == (0, ["1.png"], [("1 (copy).png", "1.png")])
    assert coll.add(photos, embed=FAST, progress=False).added == 0 and coll.count == 3
    coll.close()
    coll = backend.open(tmp_path / "c", read_only=False, encoders=tiny_encoders)  # the list was published
    assert [e.path for e in coll.excluded()] == ["1 (copy).png", "1.png"]
    assert coll.unexclude(["1.png", "9.png"]) == (["1.png", "1 (copy).png"], ["9.png"])  # the copy too
    result = coll.sync(photos, embed=FAST, progress=False)
    assert result.added == 1 and len(result.duplicates) == 1 and coll.excluded() == []
    paths = {r.path for r in coll.records(range(10)).values()}  # the picture back once, under one of its names
    assert paths - {"1.png", "1 (copy).png"} == {"0.png", "2.png", "3.png"} and len(paths) == 4
    coll.close()
