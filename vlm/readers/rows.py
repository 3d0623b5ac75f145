"""Bad rows: what every reader reports for input it skips, and the one summary of them; caption cleaning."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class BadRow:
    source: str  # the file (or folder, shard, dataset) the row came from
    row: int | None  # 1-based line number as an editor shows it (header = line 1), where lines exist
    item: str  # the image path or key as written in the source
    reason: str  # "missing file", "empty caption", "malformed row: ...", ...

    @property
    def kind(self) -> str:
        """The reason without its details, for counting ("malformed row: ..." and "image too large (...)")."""
        return re.split(r"[:(]", self.reason, maxsplit=1)[0].strip()

    def __str__(self) -> str:
        where = self.source if self.row is None else f"{self.source}, line {self.row}"
        return f"{where}: {self.item or '(no image)'}: {self.reason}"


def count_kinds(bad: Sequence[BadRow], most: int | None = None) -> str:
    """E.g. "2 missing file, 1 empty caption": the bad rows counted by kind, most common first."""
    return ", ".join(f"{n:,} {kind}" for kind, n in Counter(b.kind for b in bad).most_common(most))


def summary(text: str, bad: Sequence[BadRow]) -> str:
    """`text` (what was read, e.g. "read 9,870 pairs from X") followed by "; no bad rows" or
    "; skipped 3 bad rows: 2 missing file, 1 empty caption"."""
    if not bad:
        return f"{text}; no bad rows"
    return f"{text}; skipped {len(bad):,} bad row{'s' * (len(bad) != 1)}: {count_kinds(bad)}"


def clean_captions(value: Any) -> tuple[list[str], str | None]:
    """A caption cell/field (a string, a list of strings, or null) -> (non-empty stripped captions, problem)."""
    items = value if isinstance(value, list) else [value]
    items = [c for c in items if c is not None]
    wrong = [c for c in items if not isinstance(c, str)]
    if wrong:
        return [], f"malformed row: caption is not a string ({type(wrong[0]).__name__})"
    captions = [c.strip() for c in items if c.strip()]
    return captions, None if captions else "empty caption"
