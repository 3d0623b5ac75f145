"""bench/gpu_check.py's bookkeeping: one failed section costs one row, sections that would not fit the time budget
are skipped and say so, and the figures are on disk after every section (a device call may be cut off)."""

from __future__ import annotations

import json

from bench.gpu_check import Check


def test_sections_are_recorded_ok_failed_or_skipped(tmp_path):
    check = Check(tmp_path, budget_s=60, only=set())
    check.run("first", 0, lambda: {"rate": 1.5, "nested": {"a": 1}})
    check.run("broken", 0, lambda: 1 / 0)
    check.run("too_long", 3600, lambda: {"never": True})
    record = json.loads((tmp_path / "gpu_check.json").read_text())["sections"]
    assert record["first"]["status"] == "ok" and record["first"]["rate"] == 1.5
    assert (
        record["broken"]["status"].startswith("failed: ZeroDivisionError") and "1 / 0" in record["broken"]["traceback"]
    )
    assert record["too_long"]["status"].startswith("skipped:")
    table = (tmp_path / "gpu_check.md").read_text()
    assert "first" in table and "rate=1.5" in table and "a=1" in table and "failed: ZeroDivisionError" in table


def test_only_runs_the_named_sections_and_the_environment(tmp_path):
    check = Check(tmp_path, budget_s=60, only={"faiss"})
    ran = []
    for name in ("environment", "training", "faiss"):
        check.run(name, 0, lambda name=name: ran.append(name) or {})
    assert ran == ["environment", "faiss"]
