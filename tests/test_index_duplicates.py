"""Collection.duplicates / `vlm index duplicates`: groups checked against exact searches of each keeper's image
(every member above the threshold with the cosine the search gives, every image with a neighbour above the threshold
in some group, the keeper the largest), and bad thresholds refused."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

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
        if i < 6:  # copies of the first six: half size, and JPEG
            image = Image.open(src).convert("RGB")
            image.resize((48, 48), Image.Resampling.BICUBIC).save(folder / f"s{i:02d}_half.png")
            image.save(folder / f"s{i:02d}_q50.jpg", quality=50)
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
    groups = coll.duplicates(threshold)
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
    groups = coll.duplicates(0.5)
    assert main(["index", "duplicates", str(coll.root), "--threshold", "0.5", "--json"]) == 0
    assert [[m["id"] for m in g] for g in json.loads(capsys.readouterr().out)] == [g.ids for g in groups]
