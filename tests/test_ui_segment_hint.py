"""The Segment tab's "train a decoder" hint names the output folder as a person types it: relative to the folder the
app runs in when the runs folder is inside it (docs/screenshots showed a /tmp path), else in full."""

from pathlib import Path

from ui.segment import as_typed


def test_a_folder_inside_the_working_folder_is_shown_relative(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert as_typed(tmp_path / "runs" / "app" / "seg") == str(Path("runs/app/seg"))
    outside = tmp_path.parent / "elsewhere" / "seg"
    assert as_typed(outside) == str(outside)
