"""`vlm.readers.paths.RootedPaths`: the one check that a path named by a data file stays inside its root."""

from __future__ import annotations

import os

import pytest

from vlm.errors import DataError
from vlm.readers.paths import RootedPaths


@pytest.fixture()
def tree(tmp_path):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "a.png").write_bytes(b"x")
    (root / "sub" / "b.png").write_bytes(b"y")
    (root / "empty.png").write_bytes(b"")
    (tmp_path / "secret.txt").write_text("outside")
    (tmp_path / "root2").mkdir()
    (tmp_path / "root2" / "c.png").write_bytes(b"z")
    return root


def test_paths_inside_resolve_to_absolute_files_with_keys(tree):
    rooted = RootedPaths(tree)
    path, problem = rooted("sub/b.png")
    assert problem is None and path == os.path.join(os.path.realpath(tree), "sub", "b.png")
    assert rooted.key(path) == "sub/b.png"
    assert rooted("sub/../a.png") == (os.path.join(os.path.realpath(tree), "a.png"), None)  # ".." that stays inside


@pytest.mark.parametrize("text", ["../secret.txt", "sub/../../secret.txt", "../root2/c.png"])
def test_dot_dot_out_of_the_root_is_refused(tree, text):
    assert RootedPaths(tree)(text) == (None, "path escapes the dataset root")


def test_absolute_paths_outside_are_refused(tree):
    assert RootedPaths(tree)(str(tree.parent / "secret.txt")) == (None, "path escapes the dataset root")
    assert RootedPaths(tree)("/etc/passwd") == (None, "path escapes the dataset root")


def test_an_absolute_path_inside_the_root_is_accepted(tree):
    assert RootedPaths(tree)(str(tree / "a.png"))[1] is None


def test_symlinks_out_of_the_root_are_refused(tree):
    (tree / "link.png").symlink_to(tree.parent / "secret.txt")
    (tree / "outdir").symlink_to(tree.parent / "root2", target_is_directory=True)
    rooted = RootedPaths(tree)
    assert rooted("link.png") == (None, "path escapes the dataset root")
    assert rooted("outdir/c.png") == (None, "path escapes the dataset root")


def test_a_symlink_inside_the_root_is_followed(tree):
    (tree / "alias.png").symlink_to(tree / "sub" / "b.png")
    path, problem = RootedPaths(tree)("alias.png")
    assert problem is None and RootedPaths(tree).key(path) == "sub/b.png"


def test_other_problems_have_their_reasons(tree):
    rooted = RootedPaths(tree)
    assert rooted("nope.png") == (None, "missing file")
    assert rooted("sub") == (None, "not a file")
    assert rooted("empty.png") == (None, "empty file")
    path, problem = rooted("a\x00.png")
    assert path is None and problem.startswith("malformed row: invalid path")


def test_the_root_must_be_a_folder(tree):
    with pytest.raises(DataError, match="is not a folder"):
        RootedPaths(tree / "a.png")
