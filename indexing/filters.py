"""Search-time restrictions on an image's metadata (`Filter`), checked when made, turned into SQL by the store.

    Filter(folder="2024/rome", after="2024-05-01", before="2024-06-01", min_width=1000)

Every field set must hold. Paths match case-sensitively, captions in any case. Dates compare with the image's date
(EXIF date taken, else the file's mtime in local time; `indexing.store.DATE_SQL`): `after` is inclusive, `before`
exclusive, so May is `after="2024-05-01", before="2024-06-01"`; a date without a time means its midnight. Sizes are
file bytes; widths and heights are pixels of the upright image, and an image whose dimensions are unknown (a store
made before they were kept, not synced since) does not match a dimension filter. A filter that can match nothing
(after >= before, a minimum above its maximum) or a malformed value raises `IndexingError` saying which.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import date, datetime

from indexing.errors import IndexingError
from indexing.photo import ISO

BOUNDS = (("min_width", "max_width"), ("min_height", "max_height"), ("min_size", "max_size"))


@dataclass(frozen=True)
class Filter:
    path_prefix: str | None = None
    path_contains: str | None = None
    caption_contains: str | None = None
    folder: str | None = None  # stored paths under this folder ("2024/rome": 2024/rome/a.jpg, not 2024/romeo.jpg)
    after: str | None = None  # date taken on or after (ISO date or date-time; date/datetime objects are accepted)
    before: str | None = None  # date taken strictly before
    min_width: int | None = None
    max_width: int | None = None
    min_height: int | None = None
    max_height: int | None = None
    min_size: int | None = None  # bytes
    max_size: int | None = None

    def __post_init__(self) -> None:
        for name in ("after", "before"):
            value = getattr(self, name)
            if value is not None and value != "":
                object.__setattr__(self, name, parse_date(value, name))
        for low, high in BOUNDS:
            for name in (low, high):
                value = getattr(self, name)
                if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                    raise IndexingError(f"filter {name}: expected a whole number >= 0, got {value!r}")
            lo, hi = getattr(self, low), getattr(self, high)
            if lo is not None and hi is not None and lo > hi:
                raise IndexingError(f"impossible filter: {low} {lo} is above {high} {hi}; nothing could match")
        if self.after and self.before and self.after >= self.before:
            raise IndexingError(
                f"impossible date range: after {self.after} is not before {self.before} (after is inclusive, "
                f"before exclusive); nothing could match"
            )

    def is_empty(self) -> bool:
        return not any(getattr(self, f.name) not in (None, "") for f in dataclasses.fields(self))

    def sql(self, date_sql: str) -> tuple[list[str], list]:
        """WHERE clauses (to be joined with AND) and their arguments; `date_sql` is the expression of the date."""
        clauses, args = [], []
        if self.path_prefix:
            clauses.append("substr(path, 1, ?) = ?")
            args += [len(self.path_prefix), self.path_prefix]
        if self.folder:
            prefix = self.folder.rstrip("/") + "/"
            clauses.append("substr(path, 1, ?) = ?")
            args += [len(prefix), prefix]
        if self.path_contains:
            clauses.append("instr(path, ?) > 0")
            args.append(self.path_contains)
        if self.caption_contains:
            clauses.append("instr(lower(coalesce(caption, '')), ?) > 0")
            args.append(self.caption_contains.lower())
        if self.after:
            clauses.append(f"{date_sql} >= ?")
            args.append(self.after)
        if self.before:
            clauses.append(f"{date_sql} < ?")
            args.append(self.before)
        for column, low, high in (("width", *BOUNDS[0]), ("height", *BOUNDS[1]), ("size", *BOUNDS[2])):
            if getattr(self, low) is not None:
                clauses.append(f"{column} >= ?")
                args.append(getattr(self, low))
            if getattr(self, high) is not None:
                clauses.append(f"{column} <= ?")
                args.append(getattr(self, high))
        return clauses, args


def parse_date(value: object, name: str = "date") -> str:
    """ "2024-05-01", "2024-05-01 10:30", a date or a datetime -> "YYYY-MM-DDTHH:MM:SS"; `IndexingError` otherwise."""
    if isinstance(value, datetime):
        return value.replace(tzinfo=None, microsecond=0).strftime(ISO)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day).strftime(ISO)
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.strip()).replace(tzinfo=None, microsecond=0).strftime(ISO)
        except ValueError:
            pass
    raise IndexingError(f"filter {name}: {value!r} is not a date; write it as YYYY-MM-DD or YYYY-MM-DD HH:MM[:SS]")
