"""Atomic file writes: readers see the old file or the new one, never half of one.

Every write goes to a temporary file in the destination's directory, is fsynced, then renamed over the
destination with `os.replace` (atomic on POSIX within one filesystem); the directory is fsynced so the rename
itself survives a power cut. The same pattern as faiss `contrib/big_batch_search.py: write_checkpoint`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any


def _current_umask() -> int:
    # os.umask can only be read by setting it; done once, at import, before any thread of ours writes files.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# mkstemp/mkdtemp create 0600/0700 entries (private temp files); the published file or directory should get the
# permissions an ordinary open()/mkdir() would have given it.
_UMASK = _current_umask()
FILE_MODE = 0o666 & ~_UMASK
DIR_MODE = 0o777 & ~_UMASK


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a directory entry (a rename or a new file) to disk; a no-op where directories cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on directories; the data files themselves were synced
    finally:
        os.close(fd)


@contextlib.contextmanager
def _replacing(path: str | os.PathLike) -> Iterator[tuple[int, str]]:
    """A temporary sibling of `path` (its open descriptor and name): when the block ends it replaces `path` and the
    folder is fsynced; on error it is removed. The block writes and fsyncs the file itself."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, FILE_MODE)
        yield fd, tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", encoding: str | None = None) -> Iterator[IO[Any]]:
    """Open a temporary sibling of `path` for writing; on success it replaces `path`, on error it is removed."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open supports modes 'w' and 'wb', got {mode!r}")
    with _replacing(path) as (fd, _), os.fdopen(fd, mode, encoding=encoding if "b" not in mode else None) as f:
        yield f
        f.flush()
        os.fsync(f.fileno())


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(text)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def atomic_write_with(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """For writers that insist on a file name (safetensors, torch.save, faiss): `write(tmp_name)`, fsync, rename."""
    with _replacing(path) as (fd, tmp):
        os.close(fd)
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())


def publish_dir(tmp_dir: str | os.PathLike, final_dir: str | os.PathLike) -> None:
    """Move a fully written directory into place. An existing `final_dir` is replaced only after the new one is
    complete, so a crash leaves either the old or the new directory (plus a stale temp dir, cleaned next time)."""
    tmp_dir, final_dir = Path(tmp_dir), Path(final_dir)
    for child in tmp_dir.iterdir():
        if child.is_file():
            with open(child, "rb+") as f:
                os.fsync(f.fileno())
    fsync_dir(tmp_dir)
    if final_dir.exists():
        trash = final_dir.with_name(f".{final_dir.name}.old-{os.getpid()}")
        os.replace(final_dir, trash)
        os.replace(tmp_dir, final_dir)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp_dir, final_dir)
    fsync_dir(final_dir.parent)


@contextlib.contextmanager
def atomic_dir(final_dir: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory beside `final_dir`; on a clean exit it is published there (`publish_dir`), on an
    exception it is removed and `final_dir` is left as it was. Files written into it get the umask's permissions,
    whichever library wrote them (safetensors creates its files 0600)."""
    final_dir = Path(final_dir)
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final_dir.name}.", suffix=".tmp", dir=final_dir.parent))
    try:
        tmp.chmod(DIR_MODE)
        yield tmp
        for child in tmp.iterdir():
            if child.is_file() and not child.is_symlink():
                child.chmod(FILE_MODE)
        publish_dir(tmp, final_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
