"""vlm.synth: the seeded shapes world. Checks use the files on disk and independent geometry, not the generator's own
helpers: masks against pixel colours, phrases against a separate matcher over centres, captions against open_clip's
tokenizer."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlm import synth
from vlm.errors import ConfigError, DataError

SCENES, SEED, SIZE = 37, 3, 96  # a count and a size that are not round numbers


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "shapes"
    summary = synth.generate(out, SCENES, seed=SEED, image_size=SIZE, progress=False)
    assert summary.out_dir == out and summary.scenes == SCENES
    return out


@pytest.fixture(scope="module")
def scenes(dataset) -> list[dict]:
    return [json.loads(line) for line in (dataset / "scenes.jsonl").read_text().splitlines()]


def test_layout_and_counts(dataset, scenes):
    assert {p.name for p in dataset.iterdir()} == {
        "images",
        "masks",
        "pairs.csv",
        "phrases.csv",
        "labels.csv",
        "scenes.jsonl",
        "README.md",
    }
    assert len(list((dataset / "images").iterdir())) == SCENES == len(scenes)
    pairs, phrases = read_csv(dataset / "pairs.csv"), read_csv(dataset / "phrases.csv")
    assert list(pairs[0]) == ["path", "caption"]
    assert list(phrases[0]) == ["path", "mask_path", "phrase", "shape", "colour", "size", "position"]
    assert len(phrases) == sum(len(s["objects"]) for s in scenes)
    assert len(list((dataset / "masks").iterdir())) == len(phrases)
    assert all(1 <= len(s["objects"]) <= 4 for s in scenes)
    readme = (dataset / "README.md").read_text()
    assert f"--scenes {SCENES} --seed {SEED} --size {SIZE}" in readme
    assert all(word in readme for word in (*synth.SHAPES, *synth.COLOURS, *synth.SIZES))


def test_same_arguments_give_identical_bytes_sequential_or_parallel(dataset, tmp_path, monkeypatch):
    synth.generate(tmp_path / "again", SCENES, seed=SEED, image_size=SIZE, progress=False)
    monkeypatch.setattr(synth.dataset, "PARALLEL_MIN_SCENES", 1)  # the process-pool path must write the same files
    synth.generate(tmp_path / "pool", SCENES, seed=SEED, image_size=SIZE, progress=False)
    reference = tree_bytes(dataset)
    assert tree_bytes(tmp_path / "again") == reference
    assert tree_bytes(tmp_path / "pool") == reference


def test_scene_does_not_depend_on_the_number_of_scenes(dataset, scenes, tmp_path):
    synth.generate(tmp_path / "few", 5, seed=SEED, image_size=SIZE, progress=False)
    few = tree_bytes(tmp_path / "few")
    full = tree_bytes(dataset)
    for name, data in few.items():
        if name.startswith(("images/", "masks/")):
            assert full[name] == data, name
    assert [json.loads(line) for line in (tmp_path / "few" / "scenes.jsonl").read_text().splitlines()] == scenes[:5]
    other_seed = synth.render_scene(synth.sample_scene(synth.scene_rng(SEED + 1, 0), SIZE)).image
    assert np.asarray(other_seed).tobytes() != np.asarray(Image.open(dataset / "images/000000.png")).tobytes()


def test_masks_are_disjoint_nonempty_and_carry_the_named_colour(dataset, scenes):
    for scene in scenes:
        image = Image.open(dataset / scene["path"])
        assert image.mode == "RGB" and image.size == (SIZE, SIZE)
        pixels = np.asarray(image).astype(np.float64)
        union = np.zeros((SIZE, SIZE), dtype=np.int64)
        for obj in scene["objects"]:
            mask_image = Image.open(dataset / obj["mask_path"])
            assert mask_image.mode == "L" and mask_image.size == (SIZE, SIZE)
            raw = np.asarray(mask_image)
            assert set(np.unique(raw)) <= {0, 255}
            mask = raw == 255
            assert mask.sum() > 0, obj["mask_path"]
            union += mask
            ys, xs = np.nonzero(mask)
            assert obj["bbox"] == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
            # independent colour check: the mean under the mask is near the named colour and nearest to it
            mean = pixels[mask].mean(axis=0)
            distances = {c: np.linalg.norm(mean - np.array(rgb)) for c, rgb in synth.COLOUR_RGB.items()}
            assert distances[obj["colour"]] < 30, (obj["mask_path"], mean)
            assert min(distances, key=distances.get) == obj["colour"]
        assert union.max() <= 1, f"overlapping masks in {scene['path']}"
        background = pixels[union == 0]
        for obj in scene["objects"]:  # contrast: no object colour is close to the background's typical colour
            assert np.linalg.norm(np.median(background, axis=0) - synth.COLOUR_RGB[obj["colour"]]) > 90


def _cell(obj: dict, size: int = SIZE) -> tuple[str, str]:
    """(row, column) of the object's centre on a 3 x 3 grid, computed here from the centre."""
    x, y = obj["centre"]
    column = ("left", "centre", "right")[min(int(3 * x / size), 2)]
    row = ("top", "middle", "bottom")[min(int(3 * y / size), 2)]
    return row, column


def test_position_words_match_the_centres(scenes):
    for obj in (o for s in scenes for o in s["objects"]):
        row, column = _cell(obj)
        words = [w for w in (row, column) if w not in ("middle", "centre")]
        assert obj["position"] == (" ".join(words) or "centre")
        x0, y0, x1, y1 = obj["bbox"]
        assert 0 <= x0 < x1 <= SIZE and 0 <= y0 < y1 <= SIZE


def test_size_classes_separate_mask_areas_per_shape():
    """Every small mask of a shape is smaller than every medium one, and every medium than every large one."""
    areas: dict[tuple[str, str], list[int]] = {}
    for i in range(300):
        _, masks, spec = synth.render_scene(synth.sample_scene(synth.scene_rng(11, i), 128))
        for obj, mask in zip(spec.objects, masks, strict=True):
            areas.setdefault((obj.shape, obj.size), []).append(int(mask.sum()))
            if obj.shape == "circle":  # area of a disc, pi r^2, within pixelisation
                assert abs(mask.sum() / (np.pi * obj.radius**2) - 1) < 0.15
    for shape in synth.SHAPES:
        small, medium, large = (areas.get((shape, s), []) for s in synth.SIZES)
        assert small and medium and large, shape
        assert max(small) < min(medium) and max(medium) < min(large), shape


def _caption_mentions(caption: str, colour: str, shape: str) -> bool:
    """The colour as a word and the shape as a word, singular or plural."""
    words = {w.strip(",:") for w in caption.split()}
    return colour in words and bool({shape, shape + "s", shape + "es"} & words)


def test_captions_name_every_object(dataset, scenes):
    pairs = read_csv(dataset / "pairs.csv")
    by_path: dict[str, list[str]] = {}
    for row in pairs:
        by_path.setdefault(row["path"], []).append(row["caption"])
    for scene in scenes:
        caps = by_path[scene["path"]]
        assert caps == scene["captions"] and len(set(caps)) == len(caps) == synth.CAPTIONS_PER_SCENE
        for caption in caps:
            for obj in scene["objects"]:
                assert _caption_mentions(caption, obj["colour"], obj["shape"]), (caption, obj)


def _many_scenes(n: int = 1500):
    for i in range(n):
        rng = synth.scene_rng(7, i)
        spec = synth.sample_scene(rng, 128, i)
        yield spec, synth.captions(spec, rng)


def test_captions_fit_a_48_token_clip_context_and_vary():
    tokenizer = pytest.importorskip("open_clip.tokenizer").SimpleTokenizer(context_length=48)
    lengths, starts, counted = [], set(), 0
    for spec, caps in _many_scenes():
        for caption in caps:
            assert all(_caption_mentions(caption, o.colour, o.shape) for o in spec.objects), caption
            lengths.append(len(tokenizer.encode(caption)) + 2)  # + start and end tokens
            starts.add(" ".join(caption.split()[:2]))
            counted += bool(re.search(r"\b(two|three|four) \w+ \w+(e?s)\b", caption))
    assert max(lengths) <= 48, max(lengths)
    assert len(starts) >= 20 and counted > 0  # varied openings; counts appear for repeated colour+shape


PLACES = "on the left|on the right|at the top|at the bottom|in the centre|in the (?:top|bottom) (?:left|right)"
PHRASE = re.compile(rf"^the (?:(?P<size>small|medium|large) )?(?P<colour>\w+) (?P<shape>\w+)(?: (?P<where>{PLACES}))?$")


def _matches(phrase: str, obj: dict, size: int = SIZE) -> bool:
    """An independent reading of a referring phrase: attributes, and places from the object's centre."""
    m = PHRASE.match(phrase)
    assert m, phrase
    if (m["colour"], m["shape"]) != (obj["colour"], obj["shape"]) or m["size"] not in (None, obj["size"]):
        return False
    row, column = _cell(obj, size)
    where = m["where"]
    if where is None:
        return True
    if where == "in the centre":
        return (row, column) == ("middle", "centre")
    wanted = where.split()[2:]  # "on the left" -> ["left"], "in the top left" -> ["top", "left"]
    return all(w in (row, column) for w in wanted)


def test_phrases_pick_out_exactly_their_object(dataset, scenes):
    rows = read_csv(dataset / "phrases.csv")
    objects = {o["mask_path"]: (s, o) for s in scenes for o in s["objects"]}
    assert len(rows) == len(objects)
    for row in rows:
        scene, obj = objects[row["mask_path"]]
        assert row["path"] == scene["path"]
        assert [row[k] for k in ("shape", "colour", "size", "position")] == [
            obj[k] for k in ("shape", "colour", "size", "position")
        ]
        hits = [o["mask_path"] for o in scene["objects"] if _matches(row["phrase"], o)]
        assert hits == [row["mask_path"]], (row["phrase"], scene["path"])


def test_phrases_are_unique_and_shortest_in_crowded_scenes():
    """Over many scenes (with repeated colour+shape), each phrase matches one object, and the bare
    'the <colour> <shape>' is used exactly when no other object shares the colour and shape."""
    needed_more = shape_decides = 0
    for spec, _ in _many_scenes(800):
        objs = [{**vars(o), "centre": list(o.centre)} for o in spec.objects]
        for obj, phrase in zip(objs, synth.referring_phrases(spec.objects), strict=True):
            assert phrase is not None
            assert [o is obj for o in objs if _matches(phrase, o, 128)] == [True], phrase
            twins = sum((o["colour"], o["shape"]) == (obj["colour"], obj["shape"]) for o in objs)
            assert (phrase == f"the {obj['colour']} {obj['shape']}") == (twins == 1)
            needed_more += twins > 1
            shape_decides += any(o["colour"] == obj["colour"] and o["shape"] != obj["shape"] for o in objs)
    assert needed_more > 20  # the disambiguation paths were exercised
    assert shape_decides > 100  # and colour alone often does not pick the object: shape must be read


def test_labels_are_the_single_object_scenes(dataset, scenes):
    labels = read_csv(dataset / "labels.csv")
    assert list(labels[0]) == ["path", "label", "label_id"]
    singles = {s["path"]: s["objects"][0] for s in scenes if len(s["objects"]) == 1}
    assert 0 < len(singles) < SCENES
    assert [r["path"] for r in labels] == sorted(singles)
    phrases = {r["path"]: r for r in read_csv(dataset / "phrases.csv")}
    ids: dict[str, int] = {}
    for row in labels:
        attributes = phrases[row["path"]]
        assert row["label"] == f"{attributes['colour']} {attributes['shape']}"
        assert ids.setdefault(row["label"], int(row["label_id"])) == int(row["label_id"])
        assert 0 <= int(row["label_id"]) < len(synth.COLOURS) * len(synth.SHAPES)
    assert len(set(ids.values())) == len(ids)  # different labels, different ids


def test_refuses_a_foreign_directory_but_replaces_its_own(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="not empty"):
        synth.generate(foreign, 3, progress=False)
    assert (foreign / "notes.txt").read_text() == "keep me" and len(list(foreign.iterdir())) == 1
    assert not list(tmp_path.glob(".mine.*"))

    ours = tmp_path / "ours"
    ours.mkdir()  # an empty directory is fine
    synth.generate(ours, 4, progress=False)
    summary = synth.generate(ours, 2, seed=1, progress=False)  # a previous synth output is replaced whole
    assert summary.scenes == 2 and len(list((ours / "images").iterdir())) == 2
    assert len(read_csv(ours / "pairs.csv")) == summary.pairs
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "ours"]  # no temp dirs left behind


def test_rejects_bad_arguments(tmp_path):
    with pytest.raises(ConfigError):
        synth.generate(tmp_path / "a", 0, progress=False)
    with pytest.raises(ConfigError):
        synth.generate(tmp_path / "b", 2, image_size=16, progress=False)
    with pytest.raises(ConfigError, match="circle"):
        synth.single_object_scene("hexagon", "red")
    with pytest.raises(ConfigError, match="red"):
        synth.single_object_scene("circle", "pink")


def _colour_fraction(image: Image.Image, colour: str) -> float:
    pixels = np.asarray(image).astype(np.float64)
    return float((np.linalg.norm(pixels - synth.COLOUR_RGB[colour], axis=-1) < 40).mean())


def test_single_object_scene_draws_the_requested_object():
    red_circle = synth.single_object_scene("circle", "red", 64, seed=5)
    assert red_circle.mode == "RGB" and red_circle.size == (64, 64)
    assert np.array_equal(np.asarray(red_circle), np.asarray(synth.single_object_scene("circle", "red", 64, seed=5)))
    blue_circle = synth.single_object_scene("circle", "blue", 64, seed=5)
    assert _colour_fraction(red_circle, "red") > 0.01 and _colour_fraction(red_circle, "blue") == 0
    assert _colour_fraction(blue_circle, "blue") > 0.01 and _colour_fraction(blue_circle, "red") == 0
    big = synth.single_object_scene("square", "red", 64, seed=5, size="large")
    small = synth.single_object_scene("square", "red", 64, seed=5, size="small")
    assert _colour_fraction(big, "red") > _colour_fraction(small, "red") > 0


def test_render_scene_from_a_generator_matches_render_from_its_spec():
    image, masks, spec = synth.render_scene(np.random.default_rng(4), 80)
    again = synth.render_scene(synth.sample_scene(np.random.default_rng(4), 80))
    assert np.array_equal(np.asarray(image), np.asarray(again.image)) and spec == again.spec
    assert len(masks) == len(spec.objects) and all(m.shape == (80, 80) and m.dtype == bool for m in masks)
