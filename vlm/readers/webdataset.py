"""WebDataset shards: uncompressed .tar files whose members are grouped into samples by key.

A sample's key is the member's path up to the first dot of its basename ("a/b.jpg" and "a/b.txt" are sample "a/b").
Shards are named by a file, a folder of .tar files, or a brace pattern such as "shards/{000..009}.tar". Only
uncompressed shards are read: images are then referenced by byte offset and read without unpacking the shard.
"""

from __future__ import annotations

import contextlib
import posixpath
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path

from vlm.errors import DataError


def is_brace_pattern(text: str) -> bool:
    """Whether `text` holds a "{a..b}" or "{x,y}" pattern."""
    return re.search(r"\{[^{}]*(\.\.|,)[^{}]*\}", text) is not None


def expand_braces_simple(pattern: str) -> list[str]:
    """Bash-style "{000..009}" (zero-padded) and "{a,b}" expansion, for when `braceexpand` is not installed."""
    m = re.search(r"\{(\d+)\.\.(\d+)\}|\{([^{}]*,[^{}]*)\}", pattern)
    if m is None:
        return [pattern]
    if m.group(3) is not None:
        options = m.group(3).split(",")
    else:
        a, b = m.group(1), m.group(2)
        width = max(len(a), len(b)) if a.startswith("0") or b.startswith("0") else 0
        step = 1 if int(b) >= int(a) else -1
        options = [str(n).zfill(width) for n in range(int(a), int(b) + step, step)]
    head, tail = pattern[: m.start()], pattern[m.end() :]
    return [head + option + rest for option in options for rest in expand_braces_simple(tail)]


def expand_braces(pattern: str) -> list[str]:
    try:
        from braceexpand import braceexpand
    except ImportError:
        return expand_braces_simple(pattern)
    return list(braceexpand(pattern))


def shards(source: str) -> list[Path]:
    """The shards named by `source` (a .tar, a folder of .tar files, or a brace pattern), absolute; all must exist."""
    path = Path(source).expanduser()
    if path.is_dir():
        shards = sorted(path.glob("*.tar"))
        if not shards:
            raise DataError(f"no .tar shards in {path}")
    elif not path.exists() and is_brace_pattern(source):
        shards = [Path(p).expanduser() for p in expand_braces(source)]
    else:
        shards = [path]
    missing = [str(p) for p in shards if not p.is_file()]
    if missing:
        raise DataError(f"{len(missing)} of {len(shards)} shards not found, e.g. {missing[:3]} (from {source!r})")
    return [p.resolve() for p in shards]  # absolute: references must not depend on a worker's working directory


@contextlib.contextmanager
def open_shard(shard: Path) -> Iterator[tuple[tarfile.TarFile, dict[str, dict[str, tarfile.TarInfo]], str | None]]:
    """(the open shard, its samples as {key: {extension: member}}, the reason reading stopped early or None).

    A damaged header ends the listing: the samples before it are kept and the reason says where it broke.
    """
    try:
        tf = tarfile.open(shard, mode="r:")  # noqa: SIM115 (uncompressed only: random access by offset needs it)
    except (tarfile.TarError, OSError) as e:
        raise DataError(f"cannot read tar shard {shard}: {e}. Shards must be uncompressed .tar files") from e
    with tf:
        samples: dict[str, dict[str, tarfile.TarInfo]] = {}
        damage = None
        while True:
            try:
                info = tf.next()
            except tarfile.TarError as e:
                damage = f"unreadable tar shard after byte {tf.offset:,} ({e})"
                break
            if info is None:
                break
            if info.isfile():
                folder, base = posixpath.split(info.name)
                stem, _, ext = base.partition(".")
                samples.setdefault(posixpath.join(folder, stem), {})[ext.lower()] = info
        yield tf, samples, damage


def member_bytes(tf: tarfile.TarFile, info: tarfile.TarInfo) -> bytes:
    f = tf.extractfile(info)
    return f.read() if f is not None else b""
