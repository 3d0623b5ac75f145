"""The Milvus backend's rows and filters: an `ImageRecord` as a Milvus row and back, a `Filter` as a Milvus boolean
expression (https://milvus.io/docs/boolean.md).

A row holds the record's columns (`indexing.store.COLUMNS`; NULL stays null: the optional ones are nullable fields)
and two derived ones, written with it so that filters need no function Milvus lacks:
    date           `ImageRecord.date` (EXIF date taken, else the file's mtime in the writer's local time), the value
                   `store.DATE_SQL` computes in SQLite: `after`/`before` compare it as text (ISO order = time order)
    caption_lower  the caption lower-cased ("" for none): `caption_contains` is case-insensitive, Milvus `like` is not

Every `Filter` field becomes an expression, except a path or caption text holding a backslash: Milvus `like` gives
no reliable way to match a literal backslash (checked on Milvus Lite 3.2), so such a filter is applied here,
exactly, on the rows the rest of the expression selects (`expression` returns it as `residual`).
"""

from __future__ import annotations

from collections.abc import Callable

from indexing.filters import BOUNDS, Filter
from indexing.store import COLUMNS, ImageRecord

DERIVED = ("date", "caption_lower")
FIELDS = (*COLUMNS, *DERIVED)  # every scalar field of a row (the vector is "vector")
NULLABLE = ("ref", "caption", "taken", "camera", "width", "height")
# VARCHAR capacities (bytes); a longer value is refused with a clear error rather than cut.
VARCHAR = {
    "path": 8192,
    "kind": 16,
    "ref": 8192,
    "caption": 65535,
    "sha256": 64,
    "taken": 32,
    "camera": 1024,
    "date": 32,
    "caption_lower": 65535,
}


def to_row(record: ImageRecord, vector) -> dict:
    row = {name: getattr(record, name) for name in COLUMNS}
    row["date"] = record.date
    row["caption_lower"] = (record.caption or "").lower()
    row["vector"] = [float(x) for x in vector]
    return row


def to_record(entity: dict) -> ImageRecord:
    return ImageRecord(*(entity.get(name) for name in COLUMNS))


def literal(text: str) -> str:
    """A Milvus string literal holding `text` exactly."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def like_literal(text: str, *, prefix: bool) -> str:
    """A `like` pattern matching paths starting with (`prefix`) or containing `text` literally."""
    escaped = text.replace("%", "\\%").replace("_", "\\_")
    return literal(escaped + "%" if prefix else "%" + escaped + "%")


def in_list(field: str, values: list) -> str:
    """`field in [...]` for ints or strings."""
    items = ", ".join(str(int(v)) if field in ("id", "size", "width", "height") else literal(str(v)) for v in values)
    return f"{field} in [{items}]"


def expression(where: Filter | None) -> tuple[str, Callable[[dict], bool] | None]:
    """(a Milvus expression selecting what `where` selects, "" for everything; a residual test on a row's fields
    for the parts no expression can state exactly, or None). Same semantics as `Filter.sql`."""
    if where is None:
        return "", None
    clauses: list[str] = []
    residual: list[Callable[[dict], bool]] = []

    def text_clause(field: str, value: str, prefix: bool, test: Callable[[dict], bool]) -> None:
        if "\\" in value:
            residual.append(test)
        else:
            clauses.append(f"{field} like {like_literal(value, prefix=prefix)}")

    if where.path_prefix:
        p = where.path_prefix
        text_clause("path", p, True, lambda row: row["path"].startswith(p))
    if where.folder:
        f = where.folder.rstrip("/") + "/"
        text_clause("path", f, True, lambda row: row["path"].startswith(f))
    if where.path_contains:
        c = where.path_contains
        text_clause("path", c, False, lambda row: c in row["path"])
    if where.caption_contains:
        t = where.caption_contains.lower()
        text_clause("caption_lower", t, False, lambda row: t in row["caption_lower"])
    if where.after:
        clauses.append(f"date >= {literal(where.after)}")
    if where.before:
        clauses.append(f"date < {literal(where.before)}")
    for column, (low, high) in zip(("width", "height", "size"), BOUNDS, strict=True):
        if getattr(where, low) is not None:
            clauses.append(f"{column} >= {int(getattr(where, low))}")
        if getattr(where, high) is not None:
            clauses.append(f"{column} <= {int(getattr(where, high))}")
    test = (lambda row: all(t(row) for t in residual)) if residual else None
    return " and ".join(f"({c})" for c in clauses), test
