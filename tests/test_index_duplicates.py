"""Collection.duplicates / `vlm index duplicates`: groups checked against exact searches of each keeper's image
(every member above the threshold with the cosine the search gives, every image with a neighbour above the threshold
in some group, the keeper the largest); with the pixel check, the groups are exactly the families of edited copies
the test made (resized, JPEG, brightened, cropped) however low the cosine threshold; bad thresholds refused."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from indexing import duplicates
from indexing.collection import Collection
from indexing.embed import EmbedConfig
from indexing.errors import IndexingError
from vlm.cli import main
from vlm.synth import generate

FAST = EmbedConfig(batch_size=8, workers=0, shard_size=16)


@pytest.fixture(scope="module")
def coll(tmp_path_factory, tiny_encoders):
    base = tmp_path_factory.mktemp("dups")
    generate(base / "shapes", scenes=14, seed=2, image_size=96, progress=False)
    folder = base / "photos"
    folder.mkdir()
    for i in range(14):
        src = base / "shapes" / "images" / f"{i:06d}.png"
        shutil.copy(src, folder / f"s{i:02d}.png")
        if i < 6:  # copies of the first six: half size, JPEG, brighter, cropped by 6% on each side
            image = Image.open(src).convert("RGB")
            image.resize((48, 48), Image.Resampling.BICUBIC).save(folder / f"s{i:02d}_half.png")
            image.save(folder / f"s{i:02d}_q50.jpg", quality=50)
            ImageEnhance.Brightness(image).enhance(1.25).save(folder / f"s{i:02d}_bright.png")
            image.crop((6, 6, 90, 90)).save(folder / f"s{i:02d}_crop.png")
    c = Collection.create(base / "c.coll", tiny_encoders, root=folder)
    c.add(folder, embed=FAST, progress=False)
    return c


def cosines(coll: Collection, image_id: int) -> dict[int, float]:
    """Exact cosine of `image_id`'s image (embedded again) with every image of the collection."""
    n = coll.stats().count
    hits = coll.search_image(coll.open_image(image_id), k=n)
    return dict(zip(hits.ids[0].tolist(), hits.scores[0].tolist(), strict=True))


def test_groups_agree_with_exact_search(coll):
    n = coll.stats().count
    sims = {i: cosines(coll, i) for i in range(n)}
    threshold = float(np.quantile([s for i in sims for j, s in sims[i].items() if j != i], 0.97))
    groups = coll.duplicates(threshold, pixels=None)  # the vectors alone
    assert groups, "the quantile threshold must leave some pairs above it"
    seen: set[int] = set()
    for g in groups:
        keeper, *others = g.ids
        assert not seen & set(g.ids)  # disjoint
        seen |= set(g.ids)
        assert g.scores[0] == 1.0 and g.same_picture[0] is False
        for other, score in zip(others, g.scores[1:], strict=True):
            assert score > threshold and score == pytest.approx(sims[keeper][other], abs=1e-4)
        pixels = {r.id: r.width * r.height for r in g.records}
        assert pixels[keeper] == max(pixels.values())
    with_neighbour = {i for i in range(n) if any(s > threshold + 1e-4 for j, s in sims[i].items() if j != i)}
    assert with_neighbour <= seen  # nobody with a near-duplicate is left out


def test_bad_thresholds_are_refused_and_cli_lists_groups(coll, capsys):
    for bad in (0.0, 1.0, 1.5, -0.2):
        with pytest.raises(IndexingError, match="between 0 and 1"):
            coll.duplicates(bad)
    assert main(["index", "duplicates", str(coll.root), "--threshold", "2"]) != 0
    assert "between 0 and 1" in capsys.readouterr().err
    for flags, pixels in (([], 0.9), (["--pixel-threshold", "0"], None), (["--pixel-threshold", "0.7"], 0.7)):
        groups = coll.duplicates(0.5, pixels=pixels)
        assert main(["index", "duplicates", str(coll.root), "--threshold", "0.5", "--json", *flags]) == 0
        assert [[m["id"] for m in g] for g in json.loads(capsys.readouterr().out)] == [g.ids for g in groups]
    assert main(["index", "duplicates", str(coll.root), "--pixel-threshold", "1.5"]) != 0


def families(coll: Collection) -> set[frozenset[str]]:
    """The true groups: each original with the copies the fixture made of it."""
    paths = [r.path for r in coll.records(range(coll.count)).values()]
    by_original: dict[str, set[str]] = {}
    for p in paths:
        by_original.setdefault(p[:3], set()).add(p)
    return {frozenset(g) for g in by_original.values() if len(g) > 1}


def test_pixels_confirm_exactly_the_edited_copies(coll):
    truth = families(coll)
    assert len(truth) == 6 and all(len(g) == 5 for g in truth)
    # A cosine threshold low enough that the vectors propose every true pair, and many false ones.
    records = coll.records(range(coll.count))
    ids = sorted(records)
    x = coll._v.vectors.get(np.array(ids))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    sims = x @ x.T
    same = np.array([[any({records[a].path, records[b].path} <= g for g in truth) for b in ids] for a in ids])
    threshold = float(sims[same & ~np.eye(len(ids), dtype=bool)].min()) - 0.01
    vectors_alone = coll.duplicates(threshold, pixels=None)
    assert sum(len(g.ids) for g in vectors_alone) > 30  # more than the 30 images of the families: false pairs
    confirmed = coll.duplicates(threshold)
    assert {frozenset(r.path for r in g.records) for g in confirmed} == truth


def test_an_unreadable_image_keeps_its_pairs_on_the_vectors(tmp_path, tiny_encoders):
    folder = tmp_path / "photos"
    folder.mkdir()
    generate(tmp_path / "shapes", scenes=2, seed=9, image_size=64, progress=False)
    image = Image.open(tmp_path / "shapes" / "images" / "000000.png").convert("RGB")
    image.save(folder / "a.png")
    image.resize((32, 32)).save(folder / "a_half.png")
    c = Collection.create(tmp_path / "c", tiny_encoders, root=folder)
    c.add(folder, embed=FAST, progress=False)
    cos = float(cosines(c, 0)[1])
    assert [len(g.ids) for g in c.duplicates(cos - 0.01)] == [2]
    (folder / "a_half.png").write_bytes(b"not an image any more")
    assert [len(g.ids) for g in c.duplicates(cos - 0.01)] == [2]  # judged by the vectors alone, with a warning
    c.close()


def stripes(bottom: tuple[int, int, int]) -> Image.Image:
    """A flag of three stripes: red, white, and `bottom`."""
    a = np.zeros((90, 120, 3), np.uint8)
    a[:30], a[30:60], a[60:] = (200, 40, 40), (240, 240, 240), bottom
    return Image.fromarray(a)


def test_pixels_tell_colours_apart_that_grey_would_not():
    """Two flags alike but for one stripe, green in one and a blue of the same luminance in the other (tricolour
    flags of one layout are common among emoji): identical in grey, told apart in colour; the edited copies of one
    (half size, JPEG 40, +25% brightness, a 6% crop) still pass."""
    green, blue = stripes((40, 140, 40)), stripes((40, 103, 230))  # luma 0.299 R + 0.587 G + 0.114 B: 98.7 both
    grey = [np.asarray(im.convert("L"), np.float64).ravel() for im in (green, blue)]
    assert np.corrcoef(*grey)[0, 1] > 0.999
    reference = duplicates.signature(green)
    assert duplicates.pixel_similarity(reference, duplicates.signature(blue)) < min(0.85, duplicates.PIXEL_THRESHOLD)
    buffer = io.BytesIO()
    green.save(buffer, "JPEG", quality=40)
    copies = [
        green.resize((60, 45), Image.Resampling.BICUBIC),
        Image.open(buffer),
        ImageEnhance.Brightness(green).enhance(1.25),
        green.crop((7, 5, 113, 85)),
    ]
    for copy in copies:
        similarity = duplicates.pixel_similarity(reference, duplicates.signature(copy))
        assert similarity > max(0.99, duplicates.PIXEL_THRESHOLD)
