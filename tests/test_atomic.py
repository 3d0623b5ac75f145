"""vlm.atomic: a published file or directory has the permissions open()/mkdir() would give it, not mkstemp's 0600."""

from __future__ import annotations

import os
import stat

import pytest

from vlm import atomic


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_files_get_the_same_mode_as_open(tmp_path):
    reference = tmp_path / "plain.txt"
    reference.write_text("x")  # open() applies the process umask to 0o666
    atomic.atomic_write_text(tmp_path / "a.txt", "x")
    atomic.atomic_write_with(tmp_path / "b.bin", lambda name: open(name, "wb").close())
    assert _mode(tmp_path / "a.txt") == _mode(reference)
    assert _mode(tmp_path / "b.bin") == _mode(reference)


def test_directories_get_the_same_mode_as_mkdir(tmp_path):
    (tmp_path / "plain").mkdir()
    with atomic.atomic_dir(tmp_path / "published") as d:
        (d / "f").write_text("x")
    assert _mode(tmp_path / "published") == _mode(tmp_path / "plain")


def test_a_failed_write_leaves_the_old_file(tmp_path):
    target = tmp_path / "keep.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic.atomic_open(target, "w") as f:
        f.write("new, half")
        raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_files_written_into_a_directory_by_other_libraries_get_the_same_mode_as_open(tmp_path):
    """safetensors creates its files 0600; a checkpoint published through atomic_dir is readable like any file."""
    import torch
    from safetensors.torch import save_file

    reference = tmp_path / "plain.txt"
    reference.write_text("x")
    with atomic.atomic_dir(tmp_path / "ckpt") as d:
        save_file({"w": torch.zeros(2)}, str(d / "model.safetensors"))
    assert _mode(tmp_path / "ckpt" / "model.safetensors") == _mode(reference)
