"""vlm.readers: the split, the bad-row summary, column choice and JSON lines, shared by every reader.
(`RootedPaths` has its own file, tests/test_readers_paths.py; images, 🤗 and shards are tested through the readers.)"""

from __future__ import annotations

import hashlib
import io
import random

import pytest

from vlm.errors import ConfigError, DataError
from vlm.readers import rows
from vlm.readers.rows import BadRow
from vlm.readers.split import split, stable_hash
from vlm.readers.tables import json_lines, pick_column


def test_stable_hash_is_blake2b_of_the_joined_parts():
    digest = hashlib.blake2b(b"3\x1fimages/a.png", digest_size=8).digest()
    assert stable_hash(3, "images/a.png") == int.from_bytes(digest, "big") >> 1


def test_split_holds_out_the_keys_ranked_first_whatever_their_order():
    keys = [f"k{i}" for i in range(37)]
    train, val = split(keys, 0.25, seed=5, key=str)
    ranked = sorted(keys, key=lambda k: (stable_hash(5, k), k))
    assert set(val) == set(ranked[: round(0.25 * 37)]) and train + val != keys
    assert [k for k in keys if k in set(val)] == val  # input order kept
    shuffled = random.Random(0).sample(keys, len(keys))
    assert set(split(shuffled, 0.25, seed=5, key=str)[1]) == set(val)


def test_grouped_split_keeps_a_group_on_one_side():
    items = [(f"img{i // 3}", i) for i in range(30)]  # 10 images, 3 phrases each
    train, val = split(items, 0.3, seed=1, key=lambda x: x[0], grouped=True, what="images")
    assert len({g for g, _ in val}) == 3 and not {g for g, _ in train} & {g for g, _ in val}


def test_split_errors():
    with pytest.raises(ConfigError, match="val_fraction"):
        split(["a"], 1.0, seed=0, key=str)
    with pytest.raises(DataError, match="'a' appears more than once"):
        split(["a", "a", "b"], 0.5, seed=0, key=str)
    with pytest.raises(DataError, match="of 2 images leaves no training images"):
        split(["a", "a", "b"], 0.9, seed=0, key=str, grouped=True, what="images")


def test_one_summary_of_bad_rows():
    bad = [BadRow("x.csv", 2, "a.png", "missing file"), BadRow("x.csv", 3, "b.png", "image too large (9 x 9)")]
    bad.append(BadRow("x.csv", 4, "c.png", "missing file"))
    assert rows.summary("read 5 pairs from x.csv", []) == "read 5 pairs from x.csv; no bad rows"
    assert (
        rows.summary("read 5 pairs from x.csv", bad[:1]) == "read 5 pairs from x.csv; skipped 1 bad row: 1 missing file"
    )
    assert rows.count_kinds(bad) == "2 missing file, 1 image too large"
    assert rows.count_kinds(bad, most=1) == "2 missing file"


def test_pick_column():
    assert pick_column(["URL", "Caption"], None, ("url",), "image", "f.csv") == "URL"
    with pytest.raises(DataError, match=r"f.csv: cannot find the label column: no label column among \['a'\]"):
        pick_column(["a"], None, ("label",), "label", "f.csv")
    with pytest.raises(DataError, match=r"has no image column 'img'; columns found: \['a'\]"):
        pick_column(["a"], "img", ("image",), "image", "f.csv")


def test_json_lines_report_bad_lines_and_skip_blank_ones():
    text = '{"image": "a.png"}\n\n[1, 2]\n{"image": \n'
    found = list(json_lines(io.StringIO(text)))
    assert found[0] == (1, {"image": "a.png"}, None)
    assert found[1] == (3, None, "malformed row: not a JSON object (list)")
    assert found[2][0] == 4 and found[2][2].startswith("malformed row: invalid JSON")
