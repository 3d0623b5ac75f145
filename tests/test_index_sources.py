"""indexing.sources: folders, lists and files become items; paths may not leave their root."""

from __future__ import annotations

import json
import os

import pytest
from PIL import Image

from indexing.sources import gather
from vlm.errors import DataError


def png(path, colour=(255, 0, 0)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path)
    return path


def test_folder_with_optional_captions_and_hidden_entries(tmp_path):
    root = tmp_path / "photos"
    png(root / "b.png")
    png(root / "a.jpg")
    (root / "a.txt").write_text("first line\n\n second line \n")
    png(root / "sub" / "c.png")
    png(root / ".hidden" / "d.png")
    png(root / ".e.png")
    (root / "notes.md").write_text("not an image")
    found = gather(root, root=root)
    assert [i.key for i in found.items] == ["a.jpg", "b.png", "sub/c.png"]
    assert [i.caption for i in found.items] == ["first line\nsecond line", None, None]
    assert found.items[0].ref.path == os.path.realpath(root / "a.jpg") and not found.bad


def test_keys_are_absolute_outside_the_root_and_each_key_appears_once(tmp_path):
    inside, outside = png(tmp_path / "root" / "x.png"), png(tmp_path / "elsewhere" / "y.png")
    found = gather([inside, outside, inside], root=tmp_path / "root")
    assert [i.key for i in found.items] == ["x.png", os.path.realpath(outside)]
    assert [i.key for i in gather(tmp_path / "root").items] == [os.path.realpath(inside)]


def test_csv_paths_may_not_escape_their_folder(tmp_path):
    data = tmp_path / "data"
    png(data / "ok.png")
    secret = png(tmp_path / "secret.png")
    (data / "link.png").symlink_to(secret)
    (data / "list.csv").write_text(
        "filepath,title\n"
        "ok.png,a red square\n"
        "../secret.png,escape\n"
        f"{secret},absolute\n"
        "link.png,symlink out\n"
        "missing.png,gone\n"
        ",no path\n"
    )
    found = gather(data / "list.csv", root=data)
    assert [(i.key, i.caption) for i in found.items] == [("ok.png", "a red square")]
    reasons = [(b.row, b.reason) for b in found.bad]
    assert reasons == [
        (3, "path escapes the dataset root"),
        (4, "path escapes the dataset root"),
        (5, "path escapes the dataset root"),
        (6, "missing file"),
        (7, "empty image path"),
    ]


def test_csv_without_a_caption_column_and_jsonl(tmp_path):
    png(tmp_path / "a.png")
    png(tmp_path / "b.png")
    (tmp_path / "only.csv").write_text("image\na.png\nb.png\n")
    assert [(i.key, i.caption) for i in gather(tmp_path / "only.csv", root=tmp_path).items] == [
        ("a.png", None),
        ("b.png", None),
    ]
    lines = [{"image": "a.png", "captions": ["one", "two"]}, "not json", {"path": "b.png"}]
    (tmp_path / "l.jsonl").write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    found = gather(tmp_path / "l.jsonl", root=tmp_path)
    assert [(i.key, i.caption) for i in found.items] == [("a.png", "one\ntwo"), ("b.png", None)]
    assert [(b.row, b.kind) for b in found.bad] == [(2, "malformed row")]


def test_missing_input_is_an_error(tmp_path):
    with pytest.raises(DataError, match="not found"):
        gather(tmp_path / "nope")
