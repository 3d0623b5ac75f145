"""Date taken, camera and dimensions per image (indexing.photo, the store), the filters on them and `--sort date`
(on both collection backends, FAISS and Milvus): against Python references computed from what each test wrote into
its files; a store from before the columns existed still opens and a sync fills it; impossible ranges are refused
with the collection unchanged."""

from __future__ import annotations

import os
import sqlite3
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from collection_backends import BACKENDS, backend_for
from PIL import Image

from indexing.collection import Collection
from indexing.embed import EmbedConfig
from indexing.errors import IndexingError
from indexing.photo import header_meta, photo_meta
from indexing.sources import Item
from indexing.store import Filter, ImageRecord, Store
from vlm.cli import main
from vlm.readers.images import ImageRef

FAST = EmbedConfig(batch_size=8, workers=0, shard_size=16)
N = 24


def exif(date: str | None = None, camera: tuple[str, str] | None = None, orientation: int = 1) -> Image.Exif:
    e = Image.Exif()
    if orientation != 1:
        e[0x0112] = orientation
    if camera:
        e[271], e[272] = camera
    if date:
        e.get_ifd(0x8769)[36867] = date
    return e


def make_library(folder: Path) -> dict[str, dict]:
    """N photos of distinct sizes and colours: even ones with an EXIF date (odd ones dated by mtime), some with a
    camera, some rotated by EXIF. Returns what each file should read as: path -> date, camera, width, height."""
    rng = np.random.default_rng(3)
    truth = {}
    for i in range(N):
        sub = folder / ("2023" if i < N // 2 else "2024")
        sub.mkdir(parents=True, exist_ok=True)
        w, h = 40 + 7 * i, 30 + 3 * (i % 5)
        pixels = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        date = f"20{20 + i % 5}:{1 + i % 12:02d}:{1 + i:02d} {i % 24:02d}:15:00" if i % 2 == 0 else None
        camera = ("Canon", "Canon EOS 5D") if i % 3 == 0 else None
        orientation = 6 if i % 4 == 0 else 1
        path = sub / f"{i:03d}.jpg"
        Image.fromarray(pixels).save(path, quality=95, exif=exif(date, camera, orientation))
        mtime = 1_600_000_000 + 86_400 * 37 * i + 0.25
        os.utime(path, (mtime, mtime))
        taken = date.replace(":", "-", 2).replace(" ", "T") if date else None
        truth[f"{sub.name}/{path.name}"] = {
            "date": taken or datetime.fromtimestamp(int(mtime)).strftime("%Y-%m-%dT%H:%M:%S"),
            "camera": "Canon EOS 5D" if camera else None,
            "width": h if orientation == 6 else w,
            "height": w if orientation == 6 else h,
            "size": path.stat().st_size,
        }
    return truth


@pytest.fixture(scope="module", params=BACKENDS)
def library(request, tmp_path_factory, tiny_encoders):
    """The photos in a collection of each backend (tests/collection_backends.py): the filters and the date order
    are checked on both."""
    backend = backend_for(request, tmp_path_factory)
    folder = tmp_path_factory.mktemp("photos")
    truth = make_library(folder)
    coll = backend.create(folder.parent / f"{folder.name}.coll", tiny_encoders, root=folder)
    assert coll.add(folder, embed=FAST, progress=False).added == N
    return coll, folder, truth


def test_photo_meta_reads_exif_and_upright_size(tmp_path):
    path = tmp_path / "p.jpg"
    Image.new("RGB", (40, 20), "red").save(path, exif=exif("2021:07:04 10:11:12", ("Apple", "iPhone 12"), 6))
    decoded = photo_meta(ImageRef("file", str(path)).open())
    assert decoded == ("2021-07-04T10:11:12", "Apple iPhone 12", 20, 40)
    assert header_meta(str(path)) == decoded  # read from the header only, the quarter turn applied by hand
    Image.new("RGB", (8, 6)).save(path, exif=exif("0000:00:00 00:00:00"))
    assert photo_meta(Image.open(path)) == (None, None, 8, 6)  # a blank EXIF date is no date
    assert header_meta(str(tmp_path / "missing.jpg")) is None


def test_records_hold_the_metadata(library):
    coll, _, truth = library
    records = coll.records(coll.search_vector(np.ones(coll.dim), k=N).ids[0].tolist())
    assert {r.path for r in records.values()} == set(truth)
    for r in records.values():
        want = truth[r.path]
        assert (r.date, r.camera, r.width, r.height, r.size) == (
            want["date"], want["camera"], want["width"], want["height"], want["size"]
        )  # fmt: skip


def reference(truth: dict[str, dict], f: Filter) -> set[str]:
    def ok(path: str, t: dict) -> bool:
        return (
            (f.folder is None or path.startswith(f.folder.rstrip("/") + "/"))
            and (f.after is None or t["date"] >= f.after)
            and (f.before is None or t["date"] < f.before)
            and (f.min_width is None or t["width"] >= f.min_width)
            and (f.max_width is None or t["width"] <= f.max_width)
            and (f.min_height is None or t["height"] >= f.min_height)
            and (f.max_size is None or t["size"] <= f.max_size)
        )

    return {p for p, t in truth.items() if ok(p, t)}


FILTERS = [
    Filter(after="2021-01-01", before="2022-06-01"),
    Filter(after="2022-03-05 12:00"),
    Filter(before="2021-01-01"),
    Filter(folder="2024", min_width=100),
    Filter(min_width=60, max_width=150, min_height=32),
    Filter(after="2020-06-01", max_size=4000, folder="2023/"),
]


@pytest.mark.parametrize("where", FILTERS)
def test_filtered_search_equals_brute_force(library, where):
    coll, _, truth = library
    query = np.random.default_rng(len(str(where))).standard_normal(coll.dim)
    everything = coll.search_vector(query, k=N)  # exact (flat indexes): the brute-force ranking of all images
    allowed = reference(truth, where)
    assert allowed, "the filter should match something"
    want = [r.path for r in everything.records[0] if r.path in allowed][:5]
    got = coll.search_vector(query, k=5, filters=where)
    assert [r.path for r in got.records[0]] == want


def test_sort_by_date_is_a_cut_then_newest_first(library):
    coll, _, truth = library
    query = np.random.default_rng(9).standard_normal(coll.dim)
    everything = coll.search_vector(query, k=N)
    cut = float(np.median(everything.scores[0]))
    kept = [
        (truth[r.path]["date"], float(s), r.path)
        for r, s in zip(everything.records[0], everything.scores[0], strict=True)
    ]
    want = [p for d, s, p in sorted(kept, reverse=True) if s >= cut][:5]
    got = coll.search_vector(query, k=5, sort="date", min_score=cut)
    assert [r.path for r in got.records[0]] == want
    assert all(s >= cut for s in got.scores[0])
    where = Filter(folder="2023")
    got = coll.search_vector(query, k=3, sort="date", min_score=-1.0, filters=where)
    newest = sorted((t["date"], p) for p, t in truth.items() if p.startswith("2023/"))[::-1][:3]
    assert [r.path for r in got.records[0]] == [p for _, p in newest]
    with pytest.raises(IndexingError, match="unknown sort"):
        coll.search_vector(query, sort="size")


def test_impossible_or_malformed_filters_are_refused(library, capsys):
    coll, _, _ = library
    version = coll.version
    with pytest.raises(IndexingError, match="impossible date range"):
        Filter(after="2024-05-01", before="2024-05-01")
    with pytest.raises(IndexingError, match="is not a date"):
        Filter(after="May 2024")
    with pytest.raises(IndexingError, match="min_width 500 is above max_width 100"):
        Filter(min_width=500, max_width=100)
    with pytest.raises(IndexingError, match="whole number"):
        Filter(min_size=-1)
    if isinstance(coll, Collection):  # the CLI searches FAISS collections
        args = ["index", "search", str(coll.root), "--text", "x", "--after", "2024-06-01", "--before", "2024-01-01"]
        assert main(args) != 0
        assert "impossible date range" in capsys.readouterr().err
        assert Collection.open(coll.root).stats().count == N
    assert coll.version == version and coll.count == N


def test_a_store_without_the_new_columns_opens_and_sync_fills_it(tmp_path, tiny_encoders):
    folder = tmp_path / "photos"
    truth = make_library(folder)
    path = tmp_path / "c.coll"
    with Collection.create(path, tiny_encoders, root=folder) as coll:
        coll.add(folder, embed=FAST, progress=False)
        meta = coll.stats()
    store_file = path / f"v{meta.version:06d}" / "meta.sqlite"
    conn = sqlite3.connect(store_file)  # make it a store of the earlier format, as an older version wrote it
    for column in ("taken", "camera", "width", "height"):
        conn.execute(f"ALTER TABLE images DROP COLUMN {column}")
    conn.commit()
    conn.close()
    old = Store.open_readonly(store_file)
    assert old.missing_columns == ["taken", "camera", "width", "height"]
    coll = Collection.open(path, read_only=False, encoders=tiny_encoders)
    records = coll.records(range(N)).values()
    assert all(r.width is None and r.taken is None for r in records)
    # Dates fall back to the mtime; a dimension filter matches nothing that has no dimensions.
    mtime_dates = {r.path: datetime.fromtimestamp(int(r.mtime)).strftime("%Y-%m-%dT%H:%M:%S") for r in records}
    after = sorted(mtime_dates.values())[N // 2]
    got = coll.search_vector(np.ones(coll.dim), k=N, filters=Filter(after=after))
    assert {r.path for r in got.records[0]} == {p for p, d in mtime_dates.items() if d >= after}
    assert coll.search_vector(np.ones(coll.dim), k=N, filters=Filter(min_width=1)).records[0] == []
    result = coll.sync(folder, embed=FAST, progress=False)
    assert result.filled == N and result.added == result.changed == 0 and "date taken" in result.summary()
    for r in coll.records(range(N)).values():
        assert (r.date, r.width, r.height, r.camera) == tuple(
            truth[r.path][k] for k in ("date", "width", "height", "camera")
        )
    coll.close()


def test_old_records_construct_without_metadata():
    r = ImageRecord(1, "a.jpg", "file", None, None, "0" * 64, 10, 0.0, 0.0)
    assert r.taken is None and r.date == datetime.fromtimestamp(0).strftime("%Y-%m-%dT%H:%M:%S")


def test_draft_decoding_keeps_the_files_dimensions(tmp_path, tiny_encoders):
    folder = tmp_path / "big"
    folder.mkdir()
    Image.new("RGB", (200, 120), "blue").save(folder / "a.jpg", exif=exif("2022:02:02 02:02:02", None, 6))
    coll = Collection.create(tmp_path / "c.coll", tiny_encoders, root=folder)
    cfg = EmbedConfig(batch_size=8, workers=0, shard_size=16, draft_side=16)  # decoded at 1/4 scale
    coll.add(folder, embed=cfg, progress=False)
    (record,) = coll.records([0]).values()
    assert (record.width, record.height, record.taken) == (120, 200, "2022-02-02T02:02:02")
    coll.close()


def test_only_a_jpeg_has_its_header_read_again(tmp_path, monkeypatch):
    """The file's header is read for its stored size only where a draft decode may have shrunk the image: a JPEG.
    Reading a PNG's header for EXIF costs about a decode again (bench.embed on 512 px PNGs)."""
    from indexing import embed

    Image.new("RGB", (200, 120), "blue").save(tmp_path / "a.jpg")
    Image.new("RGB", (200, 120), "red").save(tmp_path / "b.png")
    Image.new("RGB", (200, 120), "red").save(tmp_path / "c.jpg.png", format="JPEG")  # content, not name, decides
    read = []
    monkeypatch.setattr(embed, "header_meta", lambda path: read.append(Path(path).name) or header_meta(path))
    refs = [Item(str(p), ImageRef("file", str(p))) for p in sorted(tmp_path.iterdir())]
    samples = [embed.ItemDataset(refs, lambda im: im.size, draft=16)[i] for i in range(3)]
    assert read == ["a.jpg", "c.jpg.png"]
    assert [s.meta.width for s in samples] == [200, 200, 200] and samples[0].pixels == (50, 30)  # 1/4 draft
