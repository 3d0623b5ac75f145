"""The one deterministic train/validation split, used by every trainer.

Which items are held out depends only on the seed and the set of keys, never on their order or on the process:
the keys ranked first by a stable hash of (seed, key) are validation. Items sharing a key (every phrase of one image)
fall on the same side.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TypeVar

from vlm.errors import ConfigError, DataError

T = TypeVar("T")


def stable_hash(*parts: object) -> int:
    """A 63-bit integer from the parts; stable across processes and Python versions (unlike `hash`)."""
    text = "\x1f".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big") >> 1


def split(
    items: Sequence[T],
    val_fraction: float,
    seed: int,
    *,
    key: Callable[[T], str],
    grouped: bool = False,
    what: str = "pairs",
) -> tuple[list[T], list[T]]:
    """(train, val): the round(val_fraction * K) of the K distinct keys ranked first by `stable_hash(seed, key)` are
    held out. Both lists keep the input order. Unless `grouped`, keys must be unique (`what` names the items)."""
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction}")
    keys = [key(item) for item in items]
    if not grouped and len(set(keys)) != len(keys):
        dup = next(k for k, n in Counter(keys).items() if n > 1)
        raise DataError(f"pair keys must be unique to split deterministically; {dup!r} appears more than once")
    distinct = list(dict.fromkeys(keys))
    n_val = round(val_fraction * len(distinct))
    if distinct and n_val >= len(distinct):
        raise DataError(f"val_fraction {val_fraction} of {len(distinct)} {what} leaves no training {what}")
    held_out = set(sorted(distinct, key=lambda k: (stable_hash(seed, k), k))[:n_val])
    train = [item for item, k in zip(items, keys, strict=True) if k not in held_out]
    val = [item for item, k in zip(items, keys, strict=True) if k in held_out]
    return train, val
