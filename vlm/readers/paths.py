"""`RootedPaths`: the project's one check that a path written in a data file stays inside the data's root.

A data file must not make us read arbitrary files: `../x`, absolute paths and symlinks that lead out of the root are
refused, with a short reason that the readers report as a bad row ("path escapes the dataset root").
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from vlm.errors import DataError


class RootedPaths:
    """Resolves paths against `root` and refuses any that leave it.

    `rooted(text)` -> (absolute path, None) or (None, reason), where the reason is one of "path escapes the dataset
    root", "missing file", "not a file", "empty file", "unreadable file (...)", "malformed row: invalid path (...)".
    Results are cached by the text as written, since rows with several captions repeat the same path.
    """

    def __init__(self, root: Path):
        resolved = Path(root).expanduser().resolve()
        if not resolved.is_dir():
            raise DataError(f"dataset root {root} is not a folder")
        self.root = str(resolved)
        self._prefix = os.path.join(self.root, "")  # "/root/": a sibling "/root2" must not pass
        self._cache: dict[str, tuple[str | None, str | None]] = {}

    def __call__(self, text: str) -> tuple[str | None, str | None]:
        """(absolute path of an existing, non-empty regular file inside the root, None) or (None, reason)."""
        found = self._cache.get(text)
        if found is None:
            found = self._cache[text] = self._resolve(text)
        return found

    def _resolve(self, text: str) -> tuple[str | None, str | None]:
        try:
            path = os.path.realpath(os.path.join(self.root, text))  # follows symlinks and ".." alike
        except (ValueError, OSError) as e:  # embedded NUL, symlink loop
            return None, f"malformed row: invalid path ({e})"
        if not path.startswith(self._prefix):
            return None, "path escapes the dataset root"
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None, "missing file"
        except OSError as e:
            return None, f"unreadable file ({e.strerror})"
        if not stat.S_ISREG(st.st_mode):
            return None, "not a file"
        if st.st_size == 0:
            return None, "empty file"
        return path, None

    def key(self, path: str) -> str:
        """The path (as returned by a call) relative to the root, with forward slashes."""
        return path[len(self._prefix) :].replace(os.sep, "/")
