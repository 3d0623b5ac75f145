"""Stopping an embedding once it has started (issue 15): `should_stop` ends an add before its next batch with
`EmbedStopped`, nothing committed and the whole shards kept, so the same add resumes; the app's model switch stops
through it, keeps the active model, and its next estimate counts only what is left."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from indexing.collection import Collection
from indexing.config import EmbedConfig
from indexing.errors import EmbedStopped
from ui.app import create_state
from vlm.synth import generate


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    out = tmp_path_factory.mktemp("stop") / "shapes"
    generate(out, 12, seed=8, image_size=32, progress=False)
    return out / "images"


def test_a_stopped_add_commits_nothing_keeps_whole_shards_and_resumes(tiny_encoders, images, tmp_path):
    cfg = EmbedConfig(batch_size=2, workers=0, shard_size=4)
    coll = Collection.create(tmp_path / "c", tiny_encoders)
    asked = []

    def stop_at_fourth_batch() -> bool:
        asked.append(1)
        return len(asked) == 4

    with pytest.raises(EmbedStopped, match="after 6 of 12 images"):
        coll.add(images, embed=cfg, progress=False, should_stop=stop_at_fourth_batch)
    assert coll.count == 0 and coll.version == 0  # nothing committed
    resumed = coll.add(images, embed=cfg, progress=False)
    assert resumed.added == 12 and resumed.embed.images == 8  # shard 0 (4 images) was kept, 2 batches of shard 1 not
    straight = Collection.create(tmp_path / "s", tiny_encoders)
    straight.add(images, embed=cfg, progress=False)
    ids = list(range(12))
    assert [r.sha256 for r in coll.records(ids).values()] == [r.sha256 for r in straight.records(ids).values()]
    a, b = coll.search_text("a red circle", k=12), straight.search_text("a red circle", k=12)
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-6)


def test_the_app_stops_a_switch_keeps_its_model_and_estimates_what_is_left(images, tmp_path, monkeypatch):
    torch.manual_seed(0)
    state = create_state("vlm-tiny", images=[images], cache_dir=tmp_path / "cache", runs_dir=tmp_path / "runs",
                         allowed_dirs=[tmp_path], device="cpu", progress=False)  # fmt: skip
    try:
        before = state.active
        assert not state.stop_switch()  # nothing under way
        monkeypatch.setattr("indexing.library.EMBED", EmbedConfig(batch_size=2, workers=0, shard_size=4))
        real = state.library.open_for

        def clicked_stop_then_open(encoders, progress=True, should_stop=None):
            assert state.stop_switch()  # a person clicks "Stop embedding" while the switch is under way
            return real(encoders, progress=progress, should_stop=should_stop)

        monkeypatch.setattr(state.library, "open_for", clicked_stop_then_open)
        torch.manual_seed(1)
        with pytest.raises(EmbedStopped):
            state.switch(type(before.choice)("vlm-small"))
        assert state.active is before and state.switching is None
        monkeypatch.undo()
        from vlm import models

        small = models.load("vlm-small", device="cpu")
        assert state.library.embed_plan(small, before.collection.count).images == 12  # nothing was committed
    finally:
        state.close()
