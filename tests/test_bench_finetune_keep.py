"""bench.finetune's replay sample is cached in the work folder with the replay rows trained on it: asking for a
sample of another --keep-data there is refused instead of silently reusing the old sample and rows."""

import argparse
import csv

import pytest
from PIL import Image

from bench.finetune import keep_pairs


def pair_set(folder, n, colour):
    folder.mkdir(parents=True)
    with open(folder / "pairs.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["filepath", "title"])
        for i in range(n):
            Image.new("RGB", (8, 8), colour).save(folder / f"{i}.png")
            w.writerow([f"{i}.png", f"a {colour} square number {i}"])
    return str(folder / "pairs.csv")


def test_the_replay_sample_is_reused_for_its_source_and_refused_for_another(tmp_path):
    first = pair_set(tmp_path / "first", 6, "red")
    other = pair_set(tmp_path / "other", 6, "blue")
    work = tmp_path / "work"
    work.mkdir()
    args = argparse.Namespace(keep_data=first, keep_rows=3, seed=0)
    made = keep_pairs(None, work, args)
    with open(made, encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and all(r["title"].startswith("a red square") for r in rows)
    assert keep_pairs(None, work, args) == made  # the same source: the same sample, reused
    with pytest.raises(SystemExit, match="other"):
        keep_pairs(None, work, argparse.Namespace(keep_data=other, keep_rows=3, seed=0))
    with pytest.raises(SystemExit, match="rows=3"):
        keep_pairs(None, work, argparse.Namespace(keep_data=first, keep_rows=4, seed=0))
