"""(image, phrase, mask) readers: synth phrases.csv, mask folders, COCO/RefCOCO JSON; COCO mask decoding."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from vlm import synth
from vlm.errors import DataError
from vlm.segment.data import SegDataset, load_pair, read_segmentation, split_by_image
from vlm.segment.masks import polygon_mask, read_mask_png, rle_decode, rle_from_string


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes") / "data"
    synth.generate(out, scenes=12, seed=3, image_size=64, progress=False)
    return out


def test_synth_phrases_read_with_the_masks_synth_drew(shapes):
    table = read_segmentation(shapes / "phrases.csv")
    spec_rows = [json.loads(line) for line in (shapes / "scenes.jsonl").read_text().splitlines()]
    want = [(r["path"], o["phrase"]) for r in spec_rows for o in r["objects"] if o["phrase"]]
    assert [(s.group, s.phrase) for s in table.samples] == want
    for sample in table.samples[:5]:
        image, mask = load_pair(sample)
        index = int(sample.group.split("/")[1].split(".")[0])
        rendered = synth.render_scene(synth.sample_scene(synth.scene_rng(3, index), 64, index))
        k = int(sample.mask.path.rsplit("_", 1)[1].split(".")[0])
        np.testing.assert_array_equal(mask, rendered.masks[k])
        assert image.size == (64, 64)
    # the folder holding phrases.csv reads the same
    assert [s.key for s in read_segmentation(shapes).samples] == [s.key for s in table.samples]


def _write_refseg_like(root, with_csv):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rgb = np.random.default_rng(0).integers(0, 256, (6, 9, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(root / "images" / "a.png")
    m = np.zeros((6, 9), np.uint8)
    m[1:4, 2:7] = 255
    Image.fromarray(m).save(root / "masks" / "a__dining_table.png")
    Image.fromarray(255 - m).save(root / "masks" / "a__person.png")
    Image.fromarray(m[:5]).save(root / "masks" / "a__wrong_size.png")
    Image.fromarray(m).save(root / "masks" / "orphan__cat.png")
    if with_csv:
        (root / "phrases.csv").write_text(
            "path,mask_path,phrase,source\n"
            "images/a.png,masks/a__dining_table.png,dining table,x\n"
            "images/a.png,masks/a__person.png,  person ,x\n"
            "images/a.png,masks/missing.png,cat,x\n"
            "images/a.png,masks/a__person.png,,x\n"
            "../outside.png,masks/a__person.png,dog,x\n"
        )
    return m > 0


def test_csv_of_images_phrases_and_masks_reports_bad_rows(tmp_path):
    truth = _write_refseg_like(tmp_path, with_csv=True)
    table = read_segmentation(tmp_path / "phrases.csv")
    assert [s.phrase for s in table.samples] == ["dining table", "person"]
    np.testing.assert_array_equal(table.samples[0].mask.open(), truth)
    np.testing.assert_array_equal(table.samples[1].mask.open(), ~truth)
    assert [(b.row, b.reason) for b in table.bad] == [
        (4, "mask: missing file"),
        (5, "empty phrase"),
        (6, "path escapes the dataset root"),
    ]
    with pytest.raises(DataError, match="line 4"):
        read_segmentation(tmp_path / "phrases.csv", strict=True)


def test_mask_folder_without_csv_takes_phrases_from_file_names(tmp_path):
    _write_refseg_like(tmp_path, with_csv=False)
    table = read_segmentation(tmp_path)
    assert sorted(s.phrase for s in table.samples) == ["dining table", "person", "wrong size"]
    assert [b.item for b in table.bad] == ["masks/orphan__cat.png"]
    wrong = next(s for s in table.samples if s.phrase == "wrong size")
    with pytest.raises(DataError, match="must match its image"):
        load_pair(wrong)


def test_mask_png_modes(tmp_path):
    labels = np.array([[0, 1, 1], [0, 0, 1]], np.uint8)
    Image.fromarray(labels).save(tmp_path / "l01.png")  # a 0/1 label image
    Image.fromarray(labels * 200).save(tmp_path / "l200.png")
    p = Image.fromarray(labels * 3, mode="L").convert("P")
    p.save(tmp_path / "p.png")
    Image.fromarray(np.dstack([labels * 255] * 3)).save(tmp_path / "rgb.png")
    Image.fromarray(labels * 100).save(tmp_path / "dim.png")  # 100 <= 127: off
    for name in ("l01", "l200", "p", "rgb"):
        np.testing.assert_array_equal(read_mask_png(tmp_path / f"{name}.png"), labels.astype(bool), err_msg=name)
    assert not read_mask_png(tmp_path / "dim.png").any()
    (tmp_path / "junk.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="cannot read mask"):
        read_mask_png(tmp_path / "junk.png")


def test_rle_string_decoding_by_hand():
    # Each count is 5-bit groups + 48, continuation bit 0x20; from the 4th count on, minus the count two before.
    assert rle_from_string("023") == [0, 2, 3]
    assert rle_from_string("1232") == [1, 2, 3, 4]  # 4th stored as 4 - 2
    assert rle_from_string("d0") == [20]  # 20 = 0b10100: low group 20 has the sign bit, so a 0 group follows
    assert rle_from_string("12?") == [1, 2, 15]
    assert rle_from_string("1<3") == [1, 12, 3]
    assert rle_from_string("123O") == [1, 2, 3, 1]  # 'O' = 31: sign bit set, no continuation: -1, plus 2
    assert rle_from_string("R11]1") == [34, 1, 45]  # 'R' = 34 = 0x20 | 2, then '1': 2 + 1 * 32
    # column-major runs: 2 off, 3 on, 1 off in a 2 x 3 image
    np.testing.assert_array_equal(rle_decode([2, 3, 1], 2, 3), np.array([[0, 1, 1], [0, 1, 0]], bool))
    with pytest.raises(DataError, match="sum"):
        rle_decode([2, 3], 2, 3)


def test_polygon_rasterisation_by_hand():
    # An axis-aligned rectangle with integer corners covers exactly the pixels whose centres are inside it.
    want = np.zeros((8, 10), bool)
    want[1:4, 2:6] = True
    np.testing.assert_array_equal(polygon_mask([2, 1, 6, 1, 6, 4, 2, 4], 8, 10), want)
    np.testing.assert_array_equal(polygon_mask([2, 4, 6, 4, 6, 1, 2, 1], 8, 10), want)  # either orientation
    clipped = polygon_mask([-3, -2, 4, -2, 4, 3, -3, 3], 5, 6)  # off the top-left corner
    np.testing.assert_array_equal(clipped, np.pad(np.ones((3, 4), bool), ((0, 2), (0, 2))))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools 2.0.11 under NumPy 2
def test_coco_masks_equal_pycocotools():
    mask_utils = pytest.importorskip("pycocotools.mask")
    rng = np.random.default_rng(0)
    for trial in range(200):
        rows, cols = (int(v) for v in rng.integers(1, 50, 2))
        xy = rng.uniform(-4, max(rows, cols) + 4, 2 * int(rng.integers(3, 10)))
        if trial % 3 == 0:
            xy = np.round(xy * 2) / 2  # half-pixel vertices hit the rounding rules
        ref = mask_utils.decode(mask_utils.frPyObjects([list(xy)], rows, cols))[:, :, 0].astype(bool)
        np.testing.assert_array_equal(polygon_mask(xy, rows, cols), ref, err_msg=f"{rows}x{cols} {list(xy)}")
        counts = mask_utils.encode(np.asfortranarray(ref.astype(np.uint8)))["counts"].decode()
        np.testing.assert_array_equal(rle_decode(rle_from_string(counts), rows, cols), ref)


def _coco(tmp_path, refs=False):
    Image.new("RGB", (10, 8)).save(tmp_path / "img.png")
    rect = [2, 1, 6, 1, 6, 4, 2, 4]
    data = {
        "images": [{"id": 7, "file_name": "img.png", "height": 8, "width": 10}],
        "categories": [{"id": 1, "name": "dining_table"}, {"id": 2, "name": "cat"}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 1, "segmentation": [rect]},
            {"id": 2, "image_id": 7, "category_id": 1, "segmentation": {"size": [8, 10], "counts": [75, 3, 2]}},
            {"id": 3, "image_id": 7, "category_id": 2, "segmentation": {"size": [8, 10], "counts": "R11]1"}},
        ],
    }
    if refs:
        data["refs"] = [
            {"ref_id": 0, "ann_id": 1, "image_id": 7, "split": "val", "sentences": [{"sent": "left table"}, "a table"]},
            {"ref_id": 1, "ann_id": 3, "image_id": 7, "split": "testA", "sentences": [{"sent": "the cat"}]},
            {"ref_id": 2, "ann_id": 99, "image_id": 7, "split": "val", "sentences": [{"sent": "ghost"}]},
        ]
    (tmp_path / "ann.json").write_text(json.dumps(data))
    return tmp_path / "ann.json"


def test_coco_json_unites_each_category_per_image(tmp_path):
    table = read_segmentation(_coco(tmp_path))
    by_phrase = {s.phrase: s.mask.open() for s in table.samples}
    assert sorted(by_phrase) == ["cat", "dining table"]
    table_mask = np.zeros((8, 10), bool)
    table_mask[1:4, 2:6] = True  # the rectangle
    table_mask[3:6, 9] = True  # RLE [75, 3, 2]: column-major, pixels 75..77 = column 9, rows 3..5
    np.testing.assert_array_equal(by_phrase["dining table"], table_mask)
    np.testing.assert_array_equal(by_phrase["cat"], _one(8, 10, 34))  # counts [34, 1, 45]: pixel 34 alone


def _one(rows, cols, index):
    flat = np.zeros(rows * cols, bool)
    flat[index] = True
    return flat.reshape(cols, rows).T  # column-major: index 34 = column 4, row 2


def test_refcoco_style_refs_give_one_sample_per_sentence(tmp_path):
    path = _coco(tmp_path, refs=True)
    table = read_segmentation(path)
    assert [s.phrase for s in table.samples] == ["left table", "a table", "the cat"]
    assert [b.reason for b in table.bad] == ["ann_id 99 is not in 'annotations'"]
    val = read_segmentation(path, split="val")
    assert [s.phrase for s in val.samples] == ["left table", "a table"]
    want = np.zeros((8, 10), bool)
    want[1:4, 2:6] = True
    np.testing.assert_array_equal(val.samples[0].mask.open(), want)  # one annotation, not the category union


def test_split_by_image_keeps_phrases_of_an_image_together(shapes):
    samples = read_segmentation(shapes / "phrases.csv").samples
    train, val = split_by_image(samples, 0.3, seed=1)
    assert len(train) + len(val) == len(samples) and val
    assert not {s.group for s in train} & {s.group for s in val}
    assert split_by_image(samples, 0.3, seed=1) == (train, val)


def test_dataset_gives_normalised_pixels_and_area_targets(shapes, tiny_encoders):
    from vlm.segment.api import Pixels

    samples = read_segmentation(shapes / "phrases.csv").samples
    index = {p: i for i, p in enumerate(sorted({s.phrase for s in samples}))}
    ds = SegDataset(samples, index, 16, Pixels.of(tiny_encoders))
    pixels, target, phrase, image = ds[(0, 2)]  # the trainer's sampler yields (epoch, index)
    assert image == list(dict.fromkeys(s.group for s in samples)).index(samples[2].group)
    assert pixels.shape == (3, 16, 16) and target.shape == (16, 16) and phrase == index[samples[2].phrase]
    _, mask = load_pair(samples[2])
    np.testing.assert_allclose(target.numpy(), mask.reshape(16, 4, 16, 4).mean(axis=(1, 3)), atol=1e-6)


def test_unreadable_sources_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_segmentation(tmp_path / "nope.csv")
    (tmp_path / "bad.csv").write_text("image,caption\na.png,x\n")
    with pytest.raises(DataError, match="path,mask_path,phrase"):
        read_segmentation(tmp_path / "bad.csv")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(DataError, match="not valid JSON"):
        read_segmentation(tmp_path / "bad.json")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"no phrases\.csv"):
        read_segmentation(tmp_path / "empty")
