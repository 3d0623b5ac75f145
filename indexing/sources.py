"""What to add to a collection: image files, folders, CSV/TSV/JSONL lists, 🤗 datasets and WebDataset shards.

`gather(inputs, root=…)` turns any mix of them into `Item`s (a stored key, a lazily opened `ImageRef`, an
optional caption) plus the rows it skipped, with reasons. Unlike training pairs, captions are optional here:
    a folder            every image under it (recursively, hidden folders skipped), with the text of a same-named
                        .txt beside it as caption when there is one
    a .csv/.tsv/.jsonl  an image column (image, path, filepath, ...) and an optional caption column; image paths
                        are relative to the file's folder and may not leave it (`../x`, absolute paths and symlinks
                        pointing outside are reported as "path escapes the dataset root")
    an image file       itself
    a 🤗 dataset or WebDataset shards
                        through `vlm.data.read_pairs` (these carry captions)
An item's key is what the store records as its path: relative to the collection root when the image is inside it,
else absolute; "shard.tar:member" or "hf:dataset/split[row N]" for images inside shards and datasets.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vlm import data
from vlm.errors import DataError
from vlm.readers.images import IMAGE_EXTS, ImageRef
from vlm.readers.paths import RootedPaths
from vlm.readers.rows import BadRow
from vlm.readers.tables import CAPTION_KEYS, IMAGE_KEYS, csv_records, json_lines, pick_column, read_header

LOG = logging.getLogger(__name__)

LIST_SUFFIXES = {".csv": ",", ".tsv": "\t", ".jsonl": None, ".ndjson": None}


@dataclass(frozen=True)
class Item:
    key: str  # the path the store records (see the module docstring)
    ref: ImageRef
    caption: str | None = None  # captions joined by newlines, or None


@dataclass
class Gathered:
    items: list[Item] = field(default_factory=list)
    bad: list[BadRow] = field(default_factory=list)
    unlisted: list[str] = field(default_factory=list)  # real paths of folders that could not be listed


class _Keys:
    """Stored keys: relative to the collection root (POSIX separators) when inside it, else absolute."""

    def __init__(self, root: Path | None):
        self.prefix = os.path.join(os.path.realpath(root), "") if root is not None else None

    def __call__(self, path: str) -> str:
        if self.prefix is not None and path.startswith(self.prefix):
            return path[len(self.prefix) :].replace(os.sep, "/")
        return path

    def ref_key(self, ref: ImageRef) -> str:
        if ref.kind == "file":
            return self(ref.path)
        if ref.kind == "tar":
            return f"{self(os.path.realpath(ref.path))}:{ref.member}"
        return ref.describe()


def gather(inputs: str | Path | Sequence[str | Path], *, root: str | Path | None = None) -> Gathered:
    """Items from every input, in input order, each key once (the first occurrence wins); see the module docstring.

    Raises `DataError` for an input that does not exist or cannot be read at all; unusable rows and images inside
    an input are listed in `Gathered.bad` instead.
    """
    if isinstance(inputs, str | Path):
        inputs = [inputs]
    keys = _Keys(Path(root) if root is not None else None)
    out = Gathered()
    seen: set[str] = set()
    for source in inputs:
        found = _gather_one(str(source), keys)
        out.bad += found.bad
        out.unlisted += found.unlisted
        for item in found.items:
            if item.key not in seen:
                seen.add(item.key)
                out.items.append(item)
    return out


def _gather_one(source: str, keys: _Keys) -> Gathered:
    path = Path(source).expanduser()
    if path.is_file() and path.suffix.lower() in IMAGE_EXTS:
        return _gather_file(path, keys)
    if path.is_file() and path.suffix.lower() in LIST_SUFFIXES:
        return _gather_list(path, keys)
    if path.is_dir() and data.detect_format(path) == "folder":
        return _gather_folder(path, keys)
    if path.exists() or data.detect_format(source) in ("hf", "webdataset"):  # raises DataError when not found
        table = data.read_pairs(source, verify_images=False, progress=False)
        items = [Item(keys.ref_key(p.image), p.image, "\n".join(p.captions)) for p in table.pairs]
        return Gathered(items, table.bad)
    raise DataError(f"input not found: {source}")


def _gather_file(path: Path, keys: _Keys) -> Gathered:
    resolved = os.path.realpath(path)
    if not os.path.isfile(resolved):
        return Gathered(bad=[BadRow(str(path), None, str(path), "not a file")])
    return Gathered([Item(keys(resolved), ImageRef("file", resolved), None)])


def _gather_folder(folder: Path, keys: _Keys) -> Gathered:
    resolver = RootedPaths(folder)  # the project's one check that a path stays inside its root
    out = Gathered()

    def unreadable(e: OSError) -> None:
        # os.walk skips a folder it cannot list without a word; a sync would then take its images for deleted.
        rel = Path(e.filename).relative_to(folder).as_posix() if e.filename else "."
        out.bad.append(BadRow(str(folder), None, rel, f"cannot list folder ({e.strerror})"))
        out.unlisted.append(os.path.realpath(e.filename or folder))

    # followlinks=False: a symlinked folder could loop, or lead out of the root.
    for dirpath, dirnames, filenames in os.walk(folder, onerror=unreadable):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith(".") or Path(name).suffix.lower() not in IMAGE_EXTS:
                continue
            rel = Path(dirpath, name).relative_to(folder).as_posix()
            resolved, problem = resolver(rel)
            if problem is not None:
                out.bad.append(BadRow(str(folder), None, rel, problem))
                continue
            out.items.append(Item(keys(resolved), ImageRef("file", resolved), _sidecar_caption(Path(resolved))))
    return out


def _sidecar_caption(image: Path) -> str | None:
    """The non-empty lines of image.txt, joined by newlines; None when there is no such file or it is empty."""
    txt = image.with_suffix(".txt")
    if not txt.is_file():
        return None
    try:
        lines = [line.strip() for line in txt.read_text(encoding="utf-8-sig").splitlines()]
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read the caption file {txt}: {e}; fix or remove it") from e
    return "\n".join(line for line in lines if line) or None


def _gather_list(path: Path, keys: _Keys) -> Gathered:
    resolver = RootedPaths(path.parent)
    out = Gathered()
    for line, image, caption, problem in _rows(path):
        image = (image or "").strip()
        if problem is not None or not image:
            out.bad.append(BadRow(str(path), line, image, problem or "empty image path"))
            continue
        resolved, problem = resolver(image)
        if problem is not None:
            out.bad.append(BadRow(str(path), line, image, problem))
            continue
        text = caption.strip() if isinstance(caption, str) else None
        out.items.append(Item(keys(resolved), ImageRef("file", resolved), text or None))
    return out


def _rows(path: Path) -> Iterable[tuple[int, str | None, str | None, str | None]]:
    """(line number, image text, caption text or None, problem or None) for each data row of a CSV/TSV/JSONL."""
    delimiter = LIST_SUFFIXES[path.suffix.lower()]
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            if delimiter is None:
                yield from _jsonl_rows(path, f)
                return
            reader = csv.reader(f, delimiter=delimiter, strict=True)  # an unterminated quote is an error
            header = read_header(reader, path, delimiter)  # blank lines before it skipped, names unique
            i = header.index(pick_column(header, None, IMAGE_KEYS, "image", str(path)))
            captions = [h for h in header if h.lower() in CAPTION_KEYS]
            j = header.index(captions[0]) if captions else None
            for line, fields, problem in csv_records(reader):  # e.g. a quote left open to the end: a problem
                if fields is None:
                    yield line, None, None, problem
                    continue
                caption = fields[j] if j is not None and j < len(fields) else None
                yield line, fields[i] if i < len(fields) else None, caption, None
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"cannot read {path}: {e}") from e


def _jsonl_rows(path: Path, f) -> Iterable[tuple[int, str | None, str | None, str | None]]:
    for line, obj, problem in json_lines(f):
        if obj is None:
            yield line, None, None, problem
            continue
        image = next((obj[k] for k in IMAGE_KEYS if isinstance(obj.get(k), str)), None)
        caption = next((obj[k] for k in CAPTION_KEYS if k in obj), None)
        if isinstance(caption, list):
            caption = "\n".join(c for c in caption if isinstance(c, str))
        yield line, image, caption if isinstance(caption, str) else None, None
