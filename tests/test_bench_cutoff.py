"""bench/sort_cutoff.py's measure: the relevance of each query from the scene records the generator wrote (an
independent reading of the same scenes), and precision/recall/F1 of a cut-off against a hand count."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bench.sort_cutoff import rates, shapes_set


def test_rates_of_a_cut_off_by_hand():
    scores = np.array([[0.9, 0.6, 0.2], [0.1, 0.85, 0.7]])
    relevant = np.array([[True, False, True], [False, True, False]])
    # Kept at 0.65: (0,0) relevant, (1,1) relevant, (1,2) not: 2 of 3 kept are relevant, 2 of 3 relevant are kept.
    assert rates(scores, relevant, 0.65) == {"precision": 0.667, "recall": 0.667, "F1": 0.667}
    assert rates(scores, relevant, 0.95) == {"precision": 0.0, "recall": 0.0, "F1": 0.0}


def test_shapes_relevance_matches_the_scene_records(tmp_path):
    images, queries, relevant = shapes_set(tmp_path / "s", scenes=6, seed=3)
    lines = (tmp_path / "s" / "scenes.jsonl").read_text().splitlines()
    scenes = [json.loads(line) for line in lines]
    assert len(images) == len(scenes) == 6
    for q, query in enumerate(queries):
        for i, scene in enumerate(scenes):
            holds = any(f"a {o['colour']} {o['shape']}" == query for o in scene["objects"])
            assert relevant[q, i] == holds, (query, i)
    assert relevant.any(axis=1).all()  # every query has a relevant scene
    assert pytest.approx(relevant.sum()) == sum(len({(o["colour"], o["shape"]) for o in s["objects"]}) for s in scenes)


def test_current_default_is_looked_up_by_the_weights_fingerprint(monkeypatch):
    """The demo model given by its checkpoint folder (a name the by-name table does not know) gets the cut-off of its
    weights' fingerprint, as a search over its collection does; not the fallback for other models."""
    from bench import sort_cutoff
    from indexing.queries import MIN_SCORE_BY_FINGERPRINT, OTHER_MODELS_MIN_SCORE
    from vlm.demo import DEMO_MODEL

    fingerprint = json.loads((DEMO_MODEL / "config.json").read_text())["fingerprint"]
    assert MIN_SCORE_BY_FINGERPRINT[fingerprint] != OTHER_MODELS_MIN_SCORE  # else the test could not tell them apart
    seen = {}
    monkeypatch.setattr(sort_cutoff, "report", lambda name, rows, **meta: seen.update(rows=rows, **meta))
    sort_cutoff.main(["--model", str(DEMO_MODEL), "--scenes", "12", "--fashion", "0"])
    assert seen["fingerprint"] == fingerprint and seen["current_default"] == MIN_SCORE_BY_FINGERPRINT[fingerprint]
    assert [r["cut-off"] for r in seen["rows"] if r["pick"] == "current default"] == [seen["current_default"]]
