"""Tables of rows in text files (CSV, TSV, JSONL): opening them as UTF-8, reading the header, choosing a column."""

from __future__ import annotations

import contextlib
import csv
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from vlm.errors import DataError

# Column names tried in order when the caller names none (case-insensitive), as CLIP-style datasets write them.
IMAGE_KEYS = ("image", "filepath", "path", "file", "image_path", "img", "filename")
CAPTION_KEYS = ("caption", "captions", "text", "title", "sentence")


def pick_column(
    found: Sequence[str], wanted: str | None, candidates: Sequence[str], what: str, source: str | Path
) -> str:
    """The column to use for `what` ("image", "caption", "label"): `wanted` if given (it must exist), else the first of
    `candidates` found (case-insensitive). Raises `DataError` naming the columns found and how to choose one."""
    if wanted is not None:
        if wanted in found:
            return wanted
        raise DataError(f"{source} has no {what} column {wanted!r}; columns found: {list(found)}")
    lower = {c.lower(): c for c in found}
    for name in candidates:
        if name in lower:
            return lower[name]
    raise DataError(
        f"{source}: cannot find the {what} column: no {what} column among {list(found)}; "
        f"name one of them {list(candidates)} or pass {what}_key= (--{what}-key)"
    )


@contextlib.contextmanager
def open_text(path: Path, newline: str | None = None) -> Iterator[IO[str]]:
    """A UTF-8 text file (a byte-order mark is skipped); failures to open or decode raise `DataError`."""
    try:
        f = open(path, encoding="utf-8-sig", newline=newline)  # noqa: SIM115 (closed below)
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from e
    with f:
        try:
            yield f
        except UnicodeDecodeError as e:  # raised while the body reads: the file is decoded lazily
            raise DataError(f"{path} is not UTF-8 text ({e.reason}); re-save it as UTF-8") from e


def read_header(reader: Iterator[list[str]], path: Path, delimiter: str) -> list[str]:
    """The first non-blank row of a `csv.reader`, stripped; `DataError` when there is none, it cannot be parsed, or
    it names a column twice (which of the two would be read is a guess)."""
    try:
        header = next((row for row in reader if row), None)
    except csv.Error as e:
        raise DataError(f"{path}: cannot parse the header row: {e}") from e
    if header is None:
        raise DataError(f"{path} is empty: it needs a header row such as 'image{delimiter}caption'")
    header = [h.strip() for h in header]
    twice = sorted({h for h in header if header.count(h) > 1})
    if twice:
        raise DataError(f"{path}: the header names the column(s) {twice} more than once; rename or remove the copies")
    return header


def json_lines(f: IO[str]) -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
    """(line number, the line's JSON object or None, the problem or None) for each non-blank line of a JSONL file;
    the problems are bad-row reasons ("malformed row: invalid JSON (...)", "malformed row: not a JSON object")."""
    for line, text in enumerate(f, 1):
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            yield line, None, f"malformed row: invalid JSON ({e.msg} at column {e.colno})"
            continue
        if not isinstance(obj, dict):
            yield line, None, f"malformed row: not a JSON object ({type(obj).__name__})"
            continue
        yield line, obj, None


def csv_records(reader: Iterator[list[str]]) -> Iterator[tuple[int, list[str] | None, str | None]]:
    """(line where the record starts, its fields or None, the problem or None) for each non-blank record left in a
    `csv.reader` (after its header): a record csv cannot parse (with `strict=True`, an unterminated quote) is the
    bad-row reason "malformed row: ..." and reading goes on. A quoted field may span lines, hence the start line."""
    while True:
        line = reader.line_num + 1
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            yield line, None, f"malformed row: {e}"
            continue
        if fields:
            yield line, fields, None
