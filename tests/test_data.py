"""vlm.data: every reader on the same content, every bad-row reason with its line, splits, seeded datasets.

Fixtures are built on the fly in tmp_path; the expected values come from what the fixture wrote (pixel arrays,
caption lists, line numbers counted by hand), never from the code under test.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import random
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vlm import data
from vlm.config import DataConfig
from vlm.data import Pair, PairDataset, read_pairs
from vlm.errors import DataError
from vlm.readers import webdataset
from vlm.readers.images import ImageDataset, ImageRef
from vlm.readers.rows import BadRow

# The same five pairs, written in every format. Pair 1 has two captions, pair 3 three.
CONTENT = [
    ("img0.png", ["a red square"]),
    ("img1.png", ["two captions", "for this one"]),
    ("img2.png", ["a noisy picture"]),
    ("img3.png", ["one", "two", "three"]),
    ("img4.png", ["the last pair"]),
]


def _pixels(i: int, size=(13, 9)) -> np.ndarray:
    return np.random.default_rng(i).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)


def _png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _write_images(folder: Path) -> dict[str, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for i, (name, _) in enumerate(CONTENT):
        arrays[name] = _pixels(i)
        Image.fromarray(arrays[name]).save(folder / name)
    return arrays


def _expected() -> list:
    return sorted((_pixels(i).tobytes(), tuple(caps)) for i, (_, caps) in enumerate(CONTENT))


def _canonical(table: data.PairTable) -> list:
    return sorted((np.asarray(p.image.open()).tobytes(), p.captions) for p in table.pairs)


def _rows(images_prefix: str = "images/") -> list[tuple[str, str]]:
    return [(images_prefix + name, cap) for name, caps in CONTENT for cap in caps]


# ---------------------------------------------------------------------------------------------------------------
# Builders: one per format, all from CONTENT.


def build_csv(d: Path, delimiter: str = ",") -> Path:
    _write_images(d / "images")
    path = d / ("pairs.csv" if delimiter == "," else "pairs.tsv")
    lines = ["filepath" + delimiter + "title"] + [img + delimiter + cap for img, cap in _rows()]
    path.write_text("\n".join(lines) + "\n")
    return path


def build_jsonl(d: Path) -> Path:
    _write_images(d / "images")
    path = d / "pairs.jsonl"
    lines = []
    for name, caps in CONTENT:
        obj = {"caption": caps[0]} if len(caps) == 1 else {"captions": caps}  # both spellings in one file
        lines.append(json.dumps({"image": "images/" + name, **obj}))
    path.write_text("\n".join(lines) + "\n")
    return path


def build_folder(d: Path) -> Path:
    folder = d / "folder"
    _write_images(folder / "sub")  # recursive
    for name, caps in CONTENT:
        (folder / "sub" / name).with_suffix(".txt").write_text("\n\n".join(caps) + "\n")
    (folder / "README.md").write_text("not part of the data")
    return folder


def build_tar(d: Path, shards: int = 2) -> Path:
    folder = d / "shards"
    folder.mkdir(parents=True)
    for s in range(shards):
        with tarfile.open(folder / f"{s:03d}.tar", "w") as tf:
            for i, (name, caps) in enumerate(CONTENT):
                if i % shards != s:
                    continue
                stem = Path(name).stem
                _tar_add(tf, f"{stem}.png", _png_bytes(_pixels(i)))
                if i == 4:  # a .json caption instead of .txt
                    _tar_add(tf, f"{stem}.json", json.dumps({"caption": caps[0]}).encode())
                else:
                    _tar_add(tf, f"{stem}.txt", "\n".join(caps).encode())
    return folder


def _tar_add(tf: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tf.addfile(info, io.BytesIO(payload))


def _hf_image_dataset(d: Path):
    import datasets

    features = datasets.Features({"image": datasets.Image(), "captions": datasets.List(datasets.Value("string"))})
    images = [{"bytes": _png_bytes(_pixels(i)), "path": name} for i, (name, _) in enumerate(CONTENT)]
    return datasets.Dataset.from_dict({"image": images, "captions": [c for _, c in CONTENT]}, features=features)


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")


def build_hf_disk(d: Path) -> Path:
    ds = _hf_image_dataset(d)
    datasets_dict = __import__("datasets").DatasetDict({"train": ds, "test": ds.select([0])})
    datasets_dict.save_to_disk(d / "hf-disk")
    return d / "hf-disk"


def build_hf_parquet(d: Path) -> Path:
    _hf_image_dataset(d).to_parquet(d / "pairs.parquet")
    return d / "pairs.parquet"


def build_hf_parquet_paths(d: Path) -> Path:
    """Path strings in a parquet file, one caption per row: rows are grouped by image as in CSV."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    _write_images(d / "images")
    rows = _rows()
    pq.write_table(pa.table({"image_path": [r[0] for r in rows], "text": [r[1] for r in rows]}), d / "paths.parquet")
    return d / "paths.parquet"


BUILDERS = {
    "csv": build_csv,
    "tsv": lambda d: build_csv(d, "\t"),
    "jsonl": build_jsonl,
    "folder": build_folder,
    "webdataset": build_tar,
    "hf-disk": build_hf_disk,
    "hf-parquet": build_hf_parquet,
    "hf-parquet-paths": build_hf_parquet_paths,
}


@pytest.mark.parametrize("fmt", list(BUILDERS))
def test_every_format_gives_the_same_pairs(tmp_path, fmt, hf_cache):
    source = BUILDERS[fmt](tmp_path)
    table = read_pairs(source, progress=False)
    assert table.bad == []
    assert _canonical(table) == _expected()
    assert len({p.key for p in table.pairs}) == len(CONTENT)
    assert table.summary() == f"read 5 pairs from {source}; no bad rows"
    # References survive pickling (DataLoader workers) and still open.
    for pair in table.pairs:
        assert pickle.loads(pickle.dumps(pair)) == pair


def test_detected_formats(tmp_path, hf_cache):
    expected = {"csv": "csv", "tsv": "tsv", "jsonl": "jsonl", "folder": "folder", "webdataset": "webdataset"}
    expected |= {"hf-disk": "hf", "hf-parquet": "hf", "hf-parquet-paths": "hf"}
    for name, fmt in expected.items():
        (tmp_path / name).mkdir()
        assert data.detect_format(BUILDERS[name](tmp_path / name)) == fmt, name
    assert data.detect_format(str(tmp_path / "webdataset" / "shards" / "{000..001}.tar")) == "webdataset"
    assert data.detect_format("someorg/some-dataset") == "hf"
    with pytest.raises(DataError, match="not found"):
        data.detect_format(tmp_path / "nope.csv")


def test_describe_names_the_source(tmp_path, hf_cache):
    tar_table = read_pairs(build_tar(tmp_path / "t"), progress=False)
    assert {p.image.describe() for p in tar_table.pairs} >= {"000.tar:img0.png", "001.tar:img1.png"}
    hf_table = read_pairs(build_hf_disk(tmp_path / "h"), progress=False)
    assert hf_table.pairs[2].image.describe() == f"hf:{tmp_path / 'h' / 'hf-disk'}/train[row 2]"
    file_table = read_pairs(build_csv(tmp_path / "c"), progress=False)
    assert file_table.pairs[0].image.describe() == str((tmp_path / "c" / "images" / "img0.png").resolve())


def test_webdataset_by_file_and_brace_pattern(tmp_path):
    folder = build_tar(tmp_path, shards=3)
    whole = read_pairs(str(folder / "{000..002}.tar"), progress=False)
    assert _canonical(whole) == _expected()
    one = read_pairs(folder / "001.tar", progress=False)
    assert sorted(p.captions for p in one.pairs) == sorted(tuple(CONTENT[i][1]) for i in (1, 4))
    with pytest.raises(DataError, match="1 of 4 shards not found"):
        read_pairs(str(folder / "{000..003}.tar"), progress=False)


@pytest.mark.parametrize(
    "pattern", ["s/{000..012}.tar", "s/{8..11}-{a,b}.tar", "{1..3}", "x{a,bc,}y", "s/{010..008}.tar", "plain.tar"]
)
def test_brace_fallback_matches_braceexpand(pattern):
    braceexpand = pytest.importorskip("braceexpand")
    assert webdataset.expand_braces_simple(pattern) == list(braceexpand.braceexpand(pattern))


# ---------------------------------------------------------------------------------------------------------------
# Bad rows: exact reasons and line numbers.


def _snapshot(root: Path) -> dict:
    return {str(p): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in root.rglob("*")}


@pytest.fixture
def messy(tmp_path, monkeypatch):
    """A folder with one example of every problem, next to good images."""
    d = tmp_path / "data"
    d.mkdir()
    Image.fromarray(_pixels(0)).save(d / "good.png")
    Image.fromarray(_pixels(1)).save(d / "good2.jpg", quality=95)
    full = io.BytesIO()
    Image.fromarray(_pixels(2, (30, 30))).save(full, format="JPEG", quality=95)
    (d / "trunc.jpg").write_bytes(full.getvalue()[: len(full.getvalue()) // 2])
    (d / "empty.png").write_bytes(b"")
    (d / "text.jpg").write_text("this is not a JPEG")
    Image.fromarray(_pixels(3)).save(tmp_path / "outside.png")
    os.symlink(tmp_path / "outside.png", d / "link.png")
    Image.fromarray(_pixels(4, (40, 40))).save(d / "big.png")  # 1,600 px: between the limit and twice it
    Image.fromarray(_pixels(5, (64, 64))).save(d / "bigger.png")  # 4,096 px: over twice the limit
    (d / "sub").mkdir()
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    return d


# (line, image cell, caption cell or raw line, reason); None reason = a good row.
CSV_ROWS = [
    (2, "good.png", "a good image", None),
    (3, "good2.jpg", '"two\nlines"', None),  # a quoted caption over lines 3-4
    (5, "trunc.jpg", "cut short", "truncated image"),
    (6, "empty.png", "zero bytes", "empty file"),
    (7, "text.jpg", "text", "not an image"),
    (8, "../outside.png", "escape", "path escapes the dataset root"),
    (9, "link.png", "symlink out", "path escapes the dataset root"),
    (10, "good.png", "   ", "empty caption"),
    (11, "good.png", "x,y", "malformed row: expected 2 fields, found 3"),
    # line 12 is blank
    (13, "missing.png", "gone", "missing file"),
    (14, "big.png", "huge", "image too large (40 x 40)"),
    (15, "bigger.png", "huger", "image too large (4,096 pixels)"),
    (16, "OUTSIDE_ABS", "absolute", "path escapes the dataset root"),
    (17, "sub", "a folder", "not a file"),
    (18, "sub/../good.png", "same image by another path", None),
]


def _write_messy_csv(d: Path) -> Path:
    lines = ["image,caption"]
    for line, image, caption, _ in CSV_ROWS:
        image = str(d.parent / "outside.png") if image == "OUTSIDE_ABS" else image
        while "\n".join(lines).count("\n") + 2 < line:  # physical lines so far, the quoted caption counting 2
            lines.append("")
        lines.append(f"{image},{caption}")
    path = d / "pairs.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_csv_bad_rows_have_exact_reasons_and_lines(messy):
    path = _write_messy_csv(messy)
    before = _snapshot(messy.parent)
    with pytest.warns(Image.DecompressionBombWarning):
        table = read_pairs(path, progress=False, workers=2)
    assert [(b.row, b.reason) for b in table.bad] == [(r[0], r[3]) for r in CSV_ROWS if r[3] is not None]
    assert all(b.source == str(path) for b in table.bad)
    assert table.bad[0].item == "trunc.jpg" and table.bad[3].item == "../outside.png"
    assert {p.key: p.captions for p in table.pairs} == {
        "good.png": ("a good image", "same image by another path"),
        "good2.jpg": ("two\nlines",),
    }
    assert table.summary() == (
        f"read 2 pairs from {path}; skipped 12 bad rows: 3 path escapes the dataset root, 2 image too large, "
        "1 truncated image, 1 empty file, 1 not an image, 1 empty caption, 1 malformed row, 1 missing file, "
        "1 not a file"
    )
    assert "line 8: ../outside.png: path escapes the dataset root" in table.bad_report()
    assert _snapshot(messy.parent) == before  # nothing modified or deleted


def test_strict_raises_on_the_first_bad_row(messy):
    path = _write_messy_csv(messy)
    with pytest.raises(DataError, match=r"pairs.csv, line 5: trunc.jpg: truncated image"):
        read_pairs(path, strict=True, progress=False)
    with pytest.raises(DataError, match=r"line 6: empty.png: empty file"):
        read_pairs(path, strict=True, verify_images=False, progress=False)


def test_without_verification_only_cheap_checks_run(messy):
    path = _write_messy_csv(messy)
    table = read_pairs(path, verify_images=False, progress=False)
    assert "truncated image" not in {b.reason for b in table.bad}
    assert {"missing file", "empty file", "path escapes the dataset root"} <= {b.reason for b in table.bad}
    bad_ref = next(p.image for p in table.pairs if p.key == "trunc.jpg")
    with pytest.raises(DataError, match=r"trunc.jpg: truncated image"):
        bad_ref.open()


def test_root_option_moves_the_boundary(messy):
    (messy / "pairs.csv").write_text("image,caption\noutside.png,now inside\ndata/good.png,also inside\n")
    table = read_pairs(messy / "pairs.csv", progress=False, root=messy.parent)
    assert [p.key for p in table.pairs] == ["outside.png", "data/good.png"]
    (messy / "pairs.csv").write_text("image,caption\n../outside.png,escapes the default root\n")
    with pytest.raises(DataError, match=r"no usable pairs.*1 path escapes the dataset root"):
        read_pairs(messy / "pairs.csv", progress=False)


def test_jsonl_bad_rows(messy):
    lines = [
        '{"image": "good.png", "caption": "fine"}',
        '{"image": "good.png", "caption": ',
        "[1, 2]",
        '{"image": "good2.jpg", "caption": 5}',
        '{"caption": "no image"}',
        "",
        '{"image": "good2.jpg", "captions": ["", "  "]}',
        '{"image": 7, "caption": "number"}',
        '{"image": "good2.jpg", "alt": "no caption key"}',
        '{"image": "good.png", "captions": ["fine", "second", "fine"]}',
        '{"image": "../outside.png", "caption": "escape"}',
    ]
    path = messy / "pairs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    table = read_pairs(path, progress=False)
    got = [(b.row, b.reason) for b in table.bad]
    assert got[0][0] == 2 and got[0][1].startswith("malformed row: invalid JSON (Expecting value")
    assert got[1:] == [
        (3, "malformed row: not a JSON object (list)"),
        (4, "malformed row: caption is not a string (int)"),
        (5, "malformed row: no 'image' field"),
        (7, "empty caption"),
        (8, "malformed row: 'image' is not a string"),
        (9, "malformed row: no caption field (keys: image, alt)"),
        (11, "path escapes the dataset root"),
    ]
    assert [(p.key, p.captions) for p in table.pairs] == [("good.png", ("fine", "second"))]


def test_folder_bad_rows(tmp_path):
    folder = tmp_path / "f"
    folder.mkdir()
    Image.fromarray(_pixels(0)).save(folder / "ok.png")
    (folder / "ok.txt").write_text("a caption\n")
    Image.fromarray(_pixels(1)).save(folder / "nocap.png")
    Image.fromarray(_pixels(2)).save(folder / "blank.png")
    (folder / "blank.txt").write_text("\n  \n")
    (folder / "zero.png").write_bytes(b"")
    (folder / "zero.txt").write_text("zero")
    (folder / "fake.jpg").write_text("text")
    (folder / "fake.txt").write_text("fake")
    table = read_pairs(folder, progress=False)
    assert {(b.item, b.reason) for b in table.bad} == {
        ("nocap.png", "missing caption file"),
        ("blank.png", "empty caption"),
        ("zero.png", "empty file"),
        ("fake.jpg", "not an image"),
    }
    assert [(p.key, p.captions) for p in table.pairs] == [("ok.png", ("a caption",))]


def test_tar_bad_members_and_a_truncated_shard(tmp_path):
    shard = tmp_path / "bad.tar"
    with tarfile.open(shard, "w") as tf:
        _tar_add(tf, "ok.png", _png_bytes(_pixels(0)))
        _tar_add(tf, "ok.txt", b"fine")
        _tar_add(tf, "zero.jpg", b"")
        _tar_add(tf, "zero.txt", b"zero")
        _tar_add(tf, "fake.webp", b"text, not webp")
        _tar_add(tf, "fake.txt", b"fake")
        _tar_add(tf, "orphan.txt", b"no image")
        _tar_add(tf, "nocap.png", _png_bytes(_pixels(1)))
        _tar_add(tf, "last.txt", b"cut")  # before its image, so cutting the image keeps the caption
        _tar_add(tf, "last.png", _png_bytes(_pixels(2, (50, 50))))
    with tarfile.open(shard) as tf:
        last = tf.getmember("last.png")
    raw = shard.read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(raw[: last.offset_data + last.size // 2])  # the shard ends inside last.png
    table = read_pairs(shard, progress=False)
    assert {(b.item, b.reason) for b in table.bad} == {
        ("bad.tar:zero.jpg", "empty file"),
        ("bad.tar:fake.webp", "not an image"),
        ("bad.tar:orphan", "missing image"),
        ("bad.tar:nocap.png", "missing caption"),
    }
    assert sorted(p.key for p in table.pairs) == ["bad.tar:last", "bad.tar:ok"]
    truncated = read_pairs(cut, progress=False)
    assert ("cut.tar:last.png", "truncated image") in {(b.item, b.reason) for b in truncated.bad}
    assert "cut.tar:ok" in {p.key for p in truncated.pairs}


def test_hf_bad_rows(tmp_path, hf_cache):
    import datasets

    features = datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string")})
    good = _png_bytes(_pixels(0))
    rows = {
        "image": [{"bytes": good, "path": "a.png"}, {"bytes": b"not an image", "path": "b.png"}, {"bytes": good}],
        "caption": ["fine", "bad bytes", None],
    }
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(tmp_path / "ds")
    table = read_pairs(tmp_path / "ds", progress=False)
    assert [(b.item, b.reason) for b in table.bad] == [("row 2", "empty caption"), ("row 1", "not an image")]
    assert [p.key for p in table.pairs] == ["0"]


def test_hf_image_paths_without_bytes_stay_inside_the_root(tmp_path, hf_cache):
    import datasets

    arrays = _write_images(tmp_path / "elsewhere")
    ds = datasets.Dataset.from_dict(
        {"image": [str(tmp_path / "elsewhere" / n) for n, _ in CONTENT], "caption": ["c"] * len(CONTENT)}
    ).cast_column("image", datasets.Image())
    (tmp_path / "pq").mkdir()
    ds.to_parquet(tmp_path / "pq" / "x.parquet")  # to_parquet stores the paths, not the bytes
    with pytest.raises(DataError, match="5 path escapes the dataset root"):
        read_pairs(tmp_path / "pq" / "x.parquet", progress=False)
    table = read_pairs(tmp_path / "pq" / "x.parquet", root=tmp_path, progress=False)
    assert np.array_equal(np.asarray(table.pairs[0].image.open()), arrays["img0.png"])


def test_unreadable_sources_raise_naming_the_file(tmp_path, monkeypatch):
    with pytest.raises(DataError, match=r"nope\.csv"):
        read_pairs(tmp_path / "nope.csv", format="csv", progress=False)
    (tmp_path / "latin1.csv").write_bytes("image,caption\na.png,caf\xe9\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1.csv is not UTF-8"):
        read_pairs(tmp_path / "latin1.csv", progress=False)
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match=r"empty\.csv is empty"):
        read_pairs(tmp_path / "empty.csv", progress=False)
    (tmp_path / "cols.csv").write_text("url,label\na.png,x\n")
    with pytest.raises(DataError, match=r"no image column among \['url', 'label'\]"):
        read_pairs(tmp_path / "cols.csv", progress=False)
    with pytest.raises(DataError, match=r"no caption column 'alt'.*\['url', 'label'\]"):
        read_pairs(tmp_path / "cols.csv", image_key="url", caption_key="alt", progress=False)
    (tmp_path / "pairs.xyz").write_text("")
    with pytest.raises(DataError, match="cannot tell the format"):
        read_pairs(tmp_path / "pairs.xyz", progress=False)
    from vlm import models

    monkeypatch.setattr(models, "hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(DataError, match="Hugging Face Hub cannot be reached"):
        read_pairs("someorg/some-dataset", progress=False)


def test_grouping_keeps_file_order_and_drops_duplicates(tmp_path):
    _write_images(tmp_path / "images")
    rows = ["image,caption", "images/img1.png,b", "images/img0.png,a", "./images/img1.png,c", "images/img1.png,b"]
    (tmp_path / "p.csv").write_text("\n".join(rows) + "\n")
    table = read_pairs(tmp_path / "p.csv", progress=False)
    assert [(p.key, p.captions) for p in table.pairs] == [("images/img1.png", ("b", "c")), ("images/img0.png", ("a",))]


# ---------------------------------------------------------------------------------------------------------------
# Colour modes.


def test_modes_become_rgb(tmp_path):
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (255, 0, 0, 0)  # fully transparent red -> white
    rgba[0, 1] = (0, 0, 255, 255)  # opaque blue stays blue
    rgba[1, 0] = (0, 0, 0, 128)  # half-transparent black -> mid grey
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    out = np.asarray(ImageRef("file", str(tmp_path / "rgba.png")).open())
    assert out[0, 0].tolist() == [255, 255, 255] and out[0, 1].tolist() == [0, 0, 255]
    assert abs(int(out[1, 0, 0]) - round(255 * (1 - 128 / 255))) <= 1

    pal = Image.new("P", (2, 1))
    pal.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    pal.putpixel((0, 0), 0)
    pal.putpixel((1, 0), 1)
    pal.save(tmp_path / "pal.png", transparency=0)
    assert np.asarray(ImageRef("file", str(tmp_path / "pal.png")).open()).tolist() == [
        [[255, 255, 255], [200, 100, 50]]
    ]

    sixteen = np.array([[0, 257 * 100, 65535]], dtype=np.uint16)
    Image.fromarray(sixteen).save(tmp_path / "16.png")
    assert np.asarray(ImageRef("file", str(tmp_path / "16.png")).open())[..., 0].tolist() == [[0, 100, 255]]

    Image.fromarray(np.full((3, 3), 77, np.uint8), "L").save(tmp_path / "l.png")
    assert (np.asarray(ImageRef("file", str(tmp_path / "l.png")).open()) == 77).all()

    cmyk = Image.new("CMYK", (2, 2), (0, 255, 255, 0))
    cmyk.save(tmp_path / "cmyk.tif")
    got = ImageRef("file", str(tmp_path / "cmyk.tif")).open()
    assert got.mode == "RGB" and np.array_equal(np.asarray(got), np.asarray(cmyk.convert("RGB")))


# ---------------------------------------------------------------------------------------------------------------
# Splits.


def _fake_pairs(n: int) -> list[Pair]:
    return [Pair(f"k{i}", ImageRef("file", f"/x/{i}.png"), (f"c{i}",)) for i in range(n)]


def test_split_is_deterministic_order_independent_and_exact():
    pairs = _fake_pairs(23)
    train, val = data.split(pairs, 0.3, seed=1)
    assert len(val) == round(0.3 * 23) == 7 and len(train) == 16
    assert {p.key for p in train} | {p.key for p in val} == {p.key for p in pairs}
    assert not {p.key for p in train} & {p.key for p in val}
    assert data.split(pairs, 0.3, seed=1) == (train, val)
    shuffled = pairs[:]
    random.Random(5).shuffle(shuffled)
    train2, val2 = data.split(shuffled, 0.3, seed=1)
    assert {p.key for p in val2} == {p.key for p in val}
    assert [p.key for p in train2] == [p.key for p in shuffled if p.key not in {q.key for q in val}]  # input order
    assert {p.key for p in data.split(pairs, 0.3, seed=2)[1]} != {p.key for p in val}
    assert data.split(pairs, 0.0) == (pairs, [])


def test_split_rejects_what_it_cannot_do():
    with pytest.raises(ValueError, match="val_fraction"):
        data.split(_fake_pairs(3), 1.0)
    with pytest.raises(DataError, match="no training pairs"):
        data.split(_fake_pairs(1), 0.6)
    with pytest.raises(DataError, match="'k0' appears more than once"):
        data.split(_fake_pairs(2) + _fake_pairs(1), 0.5)


# ---------------------------------------------------------------------------------------------------------------
# Datasets.


@pytest.fixture
def big_pairs(tmp_path):
    """Five 40x40 noise images (so random crops differ), pair 3 with three captions."""
    pairs = []
    for i, (name, caps) in enumerate(CONTENT):
        Image.fromarray(_pixels(i, (40, 40))).save(tmp_path / name)
        pairs.append(Pair(name, ImageRef("file", str(tmp_path / name)), tuple(caps)))
    return pairs


def test_pair_dataset_is_seeded_per_epoch_and_index(big_pairs, tiny_encoders):
    enc = tiny_encoders
    ds = PairDataset(big_pairs, enc.preprocess_train, enc.tokenizer, seed=3)
    assert len(ds) == 5
    torch_state, py_state = torch.get_rng_state(), random.getstate()
    image, tokens = ds[(0, 3)]
    assert torch.equal(torch.get_rng_state(), torch_state) and random.getstate() == py_state  # trainer undisturbed
    assert image.shape == (3, 32, 32) and tokens.shape == (enc.context_length,)
    again = ds[(0, 3)]
    assert torch.equal(again[0], image) and torch.equal(again[1], tokens)
    # Tokens are one of the pair's captions, tokenized by open_clip's tokenizer.
    by_caption = {c: enc.tokenizer([c])[0] for c in CONTENT[3][1]}
    chosen = set()
    images = []
    for epoch in range(12):
        img, tok = ds[(epoch, 3)]
        chosen |= {c for c, t in by_caption.items() if torch.equal(t, tok)}
        images.append(img)
    assert len(chosen) > 1
    assert any(not torch.equal(images[0], im) for im in images[1:])
    with pytest.raises(TypeError, match=r"\(epoch, index\)"):
        ds[3]


def test_first_caption_p_draws_the_first_caption_that_often_and_0_changes_nothing(big_pairs):
    def captions(**kw):
        ds = PairDataset(big_pairs, lambda im: 0, lambda caps: caps, seed=3, **kw)  # the caption itself as tokens
        return [ds[(epoch, 3)][1] for epoch in range(2000)]

    caps = CONTENT[3][1]
    assert len(caps) > 1
    assert captions(first_caption_p=0.0) == captions()  # the default draw, sample for sample
    assert set(captions(first_caption_p=1.0)) == {caps[0]}
    drawn = captions(first_caption_p=0.5)
    expected = 0.5 + 0.5 / len(caps)  # the first caption by choice, or by the uniform draw
    sd = (expected * (1 - expected) / len(drawn)) ** 0.5
    assert abs(drawn.count(caps[0]) / len(drawn) - expected) < 4 * sd
    assert set(drawn) == set(caps)
    with pytest.raises(ValueError, match="first_caption_p"):
        DataConfig(train_data="x.csv", first_caption_p=1.5)


def test_pair_dataset_same_samples_with_workers(big_pairs, tiny_encoders):
    enc = tiny_encoders
    ds = PairDataset(big_pairs, enc.preprocess_train, enc.tokenizer, seed=0)
    order = [(e, i) for e in (0, 1) for i in (4, 0, 3, 1, 2)]

    def batches(workers):
        loader = torch.utils.data.DataLoader(ds, batch_size=3, sampler=order, num_workers=workers)
        return list(loader)

    main, parallel = batches(0), batches(2)
    assert len(main) == len(parallel) == 4  # 10 samples in batches of 3
    for (a_img, a_tok), (b_img, b_tok) in zip(main, parallel, strict=True):
        assert torch.equal(a_img, b_img) and torch.equal(a_tok, b_tok)


def test_pair_dataset_names_a_failing_image(tmp_path):
    (tmp_path / "bad.png").write_text("not a png")
    ds = PairDataset([Pair("bad.png", ImageRef("file", str(tmp_path / "bad.png")), ("c",))], lambda x: x, str.split)
    with pytest.raises(DataError, match=r"bad.png: not an image"):
        ds[(0, 0)]


def test_image_dataset_matches_the_plain_transform(big_pairs, tiny_encoders):
    enc = tiny_encoders
    ds = ImageDataset([p.image for p in big_pairs], enc.preprocess)
    assert len(ds) == 5
    reference = enc.preprocess(Image.open(big_pairs[2].image.path).convert("RGB"))
    assert torch.equal(ds[2], reference)


def test_bad_row_str_and_kind():
    bad = BadRow("p.csv", 4, "a.png", "malformed row: expected 2 fields, found 3")
    assert bad.kind == "malformed row" and str(bad) == "p.csv, line 4: a.png: malformed row: expected 2 fields, found 3"
    assert BadRow("f", None, "x.png", "image too large (9 x 9)").kind == "image too large"
