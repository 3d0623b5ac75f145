"""Labelled-data readers: class folders, CSV, Hugging Face datasets and CIFAR pickles (against torchvision's reader),
with bad rows and hostile pickles."""

from __future__ import annotations

import csv
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from eval.cifar import read_cifar
from eval.datasets import detect_format, read_labelled
from eval.images import LabelledDataset
from vlm.errors import ConfigError, DataError


def png(path: Path, value: int, size: int = 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), (value, 255 - value, 7)).save(path)
    return path


def pixel(data, i: int) -> int:
    return data.images.open(i).getpixel((0, 0))[0]


# -- class folders ---------------------------------------------------------------------------------------------


def test_class_folder(tmp_path):
    root = tmp_path / "data"
    png(root / "zebra_fish" / "1.png", 10)
    png(root / "zebra_fish" / "sub" / "2.png", 20)
    png(root / "apple" / "3.png", 30)
    (root / "empty_class").mkdir()
    (root / "apple" / "notes.txt").write_text("not an image")
    (root / "apple" / ".hidden.png").write_bytes(b"")
    (root / "apple" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    png(tmp_path / "outside" / "x.png", 40)
    os.symlink(tmp_path / "outside" / "x.png", root / "apple" / "link.png")
    data = read_labelled(root)
    assert data.classes == ("apple", "empty class", "zebra fish")  # sorted folders, "_" read as a space
    got = sorted((int(t), pixel(data, i)) for i, t in enumerate(data.targets))
    assert got == [(0, 30), (2, 10), (2, 20)]
    assert sorted(b.reason for b in data.bad) == ["path escapes the dataset root", "truncated image"]
    np.testing.assert_array_equal(data.class_counts(), [1, 0, 2])
    ds = LabelledDataset(data, lambda im: torch.tensor(np.asarray(im)).permute(2, 0, 1))
    image, target = ds[0]
    assert image.shape == (3, 8, 8) and isinstance(target, int) and ds.classes == list(data.classes)


def test_folder_without_classes_is_an_error(tmp_path):
    png(tmp_path / "a.png", 1)
    with pytest.raises(DataError, match="no class sub-folders"):
        read_labelled(tmp_path)


# -- CSV -------------------------------------------------------------------------------------------------------


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def test_csv_with_an_id_column_keeps_the_source_class_order(tmp_path):
    for i in range(5):
        png(tmp_path / "img" / f"{i}.png", 10 * i)
    rows = [["img/0.png", "Trouser", 1], ["img/1.png", "T-shirt/top", 0], ["img/2.png", "Bag", 8],
            ["img/3.png", "Trouser", 1], ["img/4.png", "", 0], ["img/missing.png", "Bag", 8]]  # fmt: skip
    data = read_labelled(write_csv(tmp_path / "labels.csv", ["path", "label", "label_id"], rows))
    assert data.classes == ("T-shirt/top", "Trouser", "Bag")  # by id: 0, 1, 8 (renumbered densely)
    assert data.targets.tolist() == [1, 0, 2, 1]
    assert [pixel(data, i) for i in range(len(data))] == [0, 10, 20, 30]
    assert sorted(b.reason for b in data.bad) == ["empty label", "missing file"]


def test_csv_without_ids_sorts_names_and_accepts_integer_ids_with_names(tmp_path):
    for i in range(3):
        png(tmp_path / f"{i}.png", i)
    data = read_labelled(write_csv(tmp_path / "a.csv", ["image", "class"], [["0.png", "dog"], ["1.png", "cat"]]))
    assert data.classes == ("cat", "dog") and data.targets.tolist() == [1, 0]
    ids = write_csv(tmp_path / "b.csv", ["image", "label"], [["0.png", 2], ["1.png", 0], ["2.png", "bird"]])
    data = read_labelled(ids, class_names=["cat", "dog", "bird"])
    assert data.classes == ("cat", "dog", "bird") and data.targets.tolist() == [2, 0, 2]
    with pytest.raises(DataError, match="neither one of the class names"):
        read_labelled(ids, class_names=["cat", "dog"])


def test_csv_conflicts_are_errors(tmp_path):
    png(tmp_path / "0.png", 0)
    png(tmp_path / "1.png", 1)
    two = write_csv(tmp_path / "two.csv", ["path", "label"], [["0.png", "cat"], ["0.png", "dog"]])
    with pytest.raises(DataError, match="several labels"):
        read_labelled(two)
    ids = write_csv(tmp_path / "ids.csv", ["path", "label", "label_id"], [["0.png", "cat", 0], ["1.png", "cat", 1]])
    with pytest.raises(DataError, match="has label_id 1 here, 0 before"):
        read_labelled(ids)
    same = write_csv(tmp_path / "same.csv", ["path", "label", "label_id"], [["0.png", "cat", 0], ["1.png", "dog", 0]])
    with pytest.raises(DataError, match="names two labels"):
        read_labelled(same)
    with pytest.raises(DataError, match="cannot find the label column"):
        read_labelled(write_csv(tmp_path / "nolabel.csv", ["path", "caption"], [["0.png", "x"]]))
    with pytest.raises(DataError, match="no usable"):
        read_labelled(write_csv(tmp_path / "none.csv", ["path", "label"], [["gone.png", "x"]]))
    ok = write_csv(tmp_path / "ok.csv", ["path", "label"], [["0.png", "b"], ["1.png", "a"]])
    data = read_labelled(ok, class_names=["a", "b", "c"])  # a class without images still competes
    assert data.classes == ("a", "b", "c") and data.targets.tolist() == [1, 0]


def test_class_names_must_match_the_class_count(tmp_path):
    png(tmp_path / "x" / "0.png", 0)
    png(tmp_path / "y" / "0.png", 1)
    assert read_labelled(tmp_path, class_names=["ex", "why"]).classes == ("ex", "why")
    with pytest.raises(DataError, match="3 class names given for 2 classes"):
        read_labelled(tmp_path, class_names=["a", "b", "c"])


def test_format_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown labelled-data format"):
        read_labelled(tmp_path, format="xml")
    with pytest.raises(DataError, match="labels file not found"):
        read_labelled(tmp_path / "nothing.csv")
    with pytest.raises(DataError, match="dataset not found"):
        detect_format(tmp_path / "nothing.bin")
    (tmp_path / "x.bin").write_bytes(b"1")
    with pytest.raises(DataError, match="cannot tell the format"):
        detect_format(tmp_path / "x.bin")


# -- Hugging Face ------------------------------------------------------------------------------------------------


def test_hugging_face_dataset(tmp_path):
    datasets = pytest.importorskip("datasets")
    images = [Image.new("RGB", (6, 6), (v, v, v)) for v in (5, 50, 100, 150, 200)]
    features = datasets.Features({"img": datasets.Image(), "y": datasets.ClassLabel(names=["ant", "bee", "cow"])})
    train = datasets.Dataset.from_dict({"img": images[:2], "y": [0, 1]}, features=features)
    test = datasets.Dataset.from_dict({"img": images[2:], "y": [2, -1, 0]}, features=features)
    datasets.DatasetDict({"train": train, "test": test}).save_to_disk(str(tmp_path / "hf"))
    data = read_labelled(tmp_path / "hf")  # the test split by default
    assert data.classes == ("ant", "bee", "cow") and data.targets.tolist() == [2, 0]
    assert [pixel(data, i) for i in range(len(data))] == [100, 200]
    assert [b.reason for b in data.bad] == ["missing label"]  # ClassLabel -1
    assert read_labelled(tmp_path / "hf", split="train").targets.tolist() == [0, 1]
    with pytest.raises(DataError, match="has splits"):
        read_labelled(tmp_path / "hf", split="val")
    ints = datasets.Dataset.from_dict({"image": images[:2], "label": [1, 0]})
    ints = ints.cast_column("image", datasets.Image())
    ints.save_to_disk(str(tmp_path / "ints"))
    with pytest.raises(DataError, match="pass class_names"):
        read_labelled(tmp_path / "ints")
    assert read_labelled(tmp_path / "ints", class_names=["x", "y"]).targets.tolist() == [1, 0]


# -- CIFAR -----------------------------------------------------------------------------------------------------


def fake_cifar10(root: Path, n: int = 7, py2_style: bool = False) -> Path:
    """The CIFAR-10 python layout with tiny random batches. `py2_style`: bytes keys and names written with pickle
    protocol 2 (Python 3 then rebuilds bytes through `_codecs.encode`); else str keys, as torchvision reads them."""

    def key(k: str) -> str | bytes:
        return k.encode() if py2_style else k

    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]
    for k, name in enumerate(names):
        batch = {key("batch_label"): key(name), key("labels"): rng.integers(0, 10, n).tolist(),
                 key("data"): rng.integers(0, 256, (n + k, 3072), dtype=np.uint8)[:n],
                 key("filenames"): [key(f"{i}.png") for i in range(n)]}  # fmt: skip
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2 if py2_style else 4))
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    meta = {key("label_names"): [key(n) for n in names], key("num_vis"): 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2 if py2_style else 4))
    return folder


@pytest.mark.parametrize("split", ["train", "test"])
def test_cifar10_matches_torchvision(tmp_path, split, monkeypatch):
    from torchvision.datasets import CIFAR10

    monkeypatch.setattr("torchvision.datasets.cifar.check_integrity", lambda *args, **kwargs: True)  # fake files
    fake_cifar10(tmp_path)
    ours = read_labelled(tmp_path, split=split)
    theirs = CIFAR10(str(tmp_path), train=split == "train", download=False)
    assert ours.classes == tuple(theirs.classes)
    assert ours.targets.tolist() == list(theirs.targets)
    assert len(ours) == len(theirs) == (35 if split == "train" else 7)
    for i in (0, 3, len(ours) - 1):
        np.testing.assert_array_equal(np.asarray(ours.images.open(i)), np.asarray(theirs[i][0]))
    py2 = read_labelled(fake_cifar10(tmp_path / "py2", py2_style=True).parent, split=split)
    assert py2.classes == ours.classes and py2.targets.tolist() == ours.targets.tolist()


def test_cifar100_fine_and_coarse_labels(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for name, n in (("train", 5), ("test", 3)):
        batch = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "fine_labels": [0, 1, 2, 1, 0][:n],
                 "coarse_labels": [1, 0, 1, 1, 0][:n]}  # fmt: skip
        (folder / name).write_bytes(pickle.dumps(batch))
    meta = {"fine_label_names": ["aquarium_fish", "maple_tree", "cup"], "coarse_label_names": ["fish", "trees"]}
    (folder / "meta").write_bytes(pickle.dumps(meta))
    data = read_labelled(tmp_path)
    assert data.classes == ("aquarium fish", "maple tree", "cup") and data.targets.tolist() == [0, 1, 2]
    coarse = read_cifar(folder, "train", label_key="coarse_labels")
    assert coarse.classes == ("fish", "trees") and coarse.targets.tolist() == [1, 0, 1, 1, 0]


class Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_hostile_and_malformed_pickles_are_refused(tmp_path):
    folder = fake_cifar10(tmp_path)
    marker = tmp_path / "pwned"
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [Exploit(marker)]}))
    with pytest.raises(DataError, match=r"refusing to load posix\.system"):
        read_labelled(tmp_path)
    assert not marker.exists()
    (folder / "batches.meta").write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(DataError, match="not the dict"):
        read_labelled(tmp_path)
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": ["a"] * 10}))
    (folder / "test_batch").write_bytes(pickle.dumps({"data": np.zeros((2, 3072), np.float32), "labels": [0, 1]}))
    with pytest.raises(DataError, match="uint8"):
        read_cifar(folder)
    (folder / "test_batch").write_bytes(pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [0]}))
    with pytest.raises(DataError, match="must be 2 integers"):
        read_cifar(folder)
    (folder / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="not a CIFAR pickle"):
        read_cifar(folder)
    with pytest.raises(ConfigError, match="'train' or 'test'"):
        read_cifar(folder, "val")
