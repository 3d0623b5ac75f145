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


def test_the_pixels_propose_copies_that_the_vectors_put_far_apart(coll):
    """A brightened copy that the model puts far from its original (the demo model does, at cosine 0.58-0.84) is
    still found: the coarse thumbnails propose it. Without pixel proposals, a cosine threshold above every brightened
    copy's cosine loses them."""
    truth = families(coll)
    records = coll.records(range(coll.count))
    ids = sorted(records)
    x = coll._v.vectors.get(np.array(ids))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    sims = x @ x.T
    bright = [n for n, i in enumerate(ids) if records[i].path.endswith("_bright.png")]
    family = {n: next(g for g in truth if records[ids[n]].path in g) for n in bright}
    closest = max(
        float(sims[n, m]) for n in bright for m, i in enumerate(ids) if m != n and records[i].path in family[n]
    )
    threshold = closest + (1 - closest) / 2
    found = {frozenset(r.path for r in g.records) for g in coll.duplicates(threshold)}
    assert found == truth
    vectors_propose = coll.duplicates(threshold, pixels=duplicates.PixelCheck(propose=None))
    grouped = {r.path for g in vectors_propose for r in g.records}
    assert not grouped & {records[ids[n]].path for n in bright}


def ensign(badge: str) -> Image.Image:
    """A blue ensign (a white canton with a red cross on a blue field) with a white disc holding a green disc or a
    yellow square: flags of one design that differ in their badge, as seven Twemoji flags do."""
    from PIL import ImageDraw

    image = Image.new("RGB", (120, 60), (20, 40, 130))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 0, 59, 29), fill=(240, 240, 240))
    draw.rectangle((26, 0, 33, 29), fill=(200, 30, 40))
    draw.rectangle((0, 12, 59, 17), fill=(200, 30, 40))
    draw.ellipse((74, 10, 106, 50), fill=(240, 240, 240))
    if badge == "green disc":
        draw.ellipse((81, 17, 99, 43), fill=(30, 140, 60))
    else:
        draw.rectangle((82, 18, 98, 42), fill=(230, 170, 30))
    return image


def test_flags_that_differ_in_a_badge_are_not_copies(tmp_path, tiny_encoders):
    """Two flags alike but for their badge correlate above the pixel threshold (the whole thumbnail agrees but for a
    patch), so only the worst local residual tells them apart; edited copies of one have a small residual everywhere
    and stay together."""
    a, b = ensign("green disc"), ensign("yellow square")
    sa, sb = duplicates.signature(a), duplicates.signature(b)
    assert duplicates.pixel_similarity(sa, sb) > duplicates.PIXEL_THRESHOLD  # the correlation alone: "copies"
    assert duplicates.local_residual(sa, sb) > 1.5 * duplicates.RESIDUAL
    folder = tmp_path / "flags"
    folder.mkdir()
    a.save(folder / "a.png")
    b.save(folder / "b.png")
    a.resize((60, 30), Image.Resampling.BICUBIC).save(folder / "a_half.png")
    a.save(folder / "a_q40.jpg", quality=40)
    ImageEnhance.Brightness(a).enhance(1.25).save(folder / "a_bright.png")
    a.crop((7, 4, 113, 56)).save(folder / "a_crop.png")
    for path in sorted(folder.iterdir()):
        if path.stem != "b":
            copy = duplicates.signature(Image.open(path))
            assert duplicates.local_residual(sa, copy) < duplicates.RESIDUAL / 2
    c = Collection.create(tmp_path / "c", tiny_encoders, root=folder)
    c.add(folder, embed=FAST, progress=False)
    x = c._v.vectors.get(np.arange(c.count))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    threshold = max(float((x @ x.T).min()) - 0.01, 0.001)  # the vectors propose every pair
    groups = [sorted(r.path for r in g.records) for g in c.duplicates(threshold)]
    assert groups == [["a.png", "a_bright.png", "a_crop.png", "a_half.png", "a_q40.jpg"]]
    c.close()


def test_bad_pixel_checks_are_refused():
    for bad in ({"correlation": 1.2}, {"residual": 0.0}, {"residual": 300.0}, {"propose": 0.0}):
        with pytest.raises(IndexingError):
            duplicates.PixelCheck(**bad)
    assert duplicates.as_check(0.8) == duplicates.PixelCheck(correlation=0.8)
    assert duplicates.as_check(None) is None


def test_edited_copies_of_real_photos_pass_both_measures():
    """Real photos (scikit-learn's samples) and their edited copies, a 10% crop and lower contrast among them: the
    copies are well within both pixel measures at their defaults, the two photos far outside."""
    from sklearn.datasets import load_sample_image

    photos = [Image.fromarray(load_sample_image(name)) for name in ("china.jpg", "flower.jpg")]
    signatures = [duplicates.signature(p) for p in photos]
    for photo, sig in zip(photos, signatures, strict=True):
        w, h = photo.size
        buffer = io.BytesIO()
        photo.save(buffer, "JPEG", quality=40)
        copies = [
            photo.resize((w // 2, h // 2), Image.Resampling.BICUBIC),
            Image.open(buffer),
            photo.crop((round(w * 0.06), round(h * 0.06), w - round(w * 0.06), h - round(h * 0.06))),
            photo.crop((round(w * 0.1), round(h * 0.1), w - round(w * 0.1), h - round(h * 0.1))),
            ImageEnhance.Brightness(photo).enhance(1.25),
            ImageEnhance.Contrast(photo).enhance(0.8),
        ]
        for copy in copies:
            other = duplicates.signature(copy)
            assert duplicates.pixel_similarity(sig, other) > max(0.95, duplicates.PIXEL_THRESHOLD)
            assert duplicates.local_residual(sig, other) < duplicates.RESIDUAL / 2
    assert duplicates.pixel_similarity(*signatures) < duplicates.PIXEL_THRESHOLD / 2
    assert duplicates.local_residual(*signatures) > 1.5 * duplicates.RESIDUAL


def test_an_open_collection_decodes_each_image_once(tmp_path, tiny_encoders, monkeypatch):
    """The pixel proposals read every image; an open collection keeps what it decoded, so asking again reads only the
    images added since."""
    decoded = []
    signature = duplicates.signature
    monkeypatch.setattr(duplicates, "signature", lambda image: decoded.append(image.size) or signature(image))
    folder = tmp_path / "flags"
    folder.mkdir()
    ensign("green disc").save(folder / "a.png")
    ensign("green disc").resize((60, 30), Image.Resampling.BICUBIC).save(folder / "a_half.png")
    ensign("yellow square").save(folder / "b.png")
    c = Collection.create(tmp_path / "c", tiny_encoders, root=folder)
    c.add(folder, embed=FAST, progress=False)
    first = c.duplicates()
    assert [sorted(r.path for r in g.records) for g in first] == [["a.png", "a_half.png"]]
    assert 3 <= len(decoded) <= 6  # each image for the proposals, and again those with a candidate for the check
    decoded.clear()
    assert [g.ids for g in c.duplicates()] == [g.ids for g in first]
    assert decoded == []
    ImageEnhance.Brightness(ensign("green disc")).enhance(1.25).save(folder / "a_bright.png")
    c.add(folder, embed=FAST, progress=False)
    groups = c.duplicates()
    assert [sorted(r.path for r in g.records) for g in groups] == [["a.png", "a_bright.png", "a_half.png"]]
    assert (120, 60) in decoded and len(decoded) <= 2  # the new image only (for the proposals and the check)
    c.close()
