"""Image–caption pairs: one reader per on-disk format, bad-row reporting, deterministic splits, datasets.

`read_pairs(source)` accepts
    pairs.csv / pairs.tsv        a header row, an image-path column and a caption column (one caption per row)
    pairs.jsonl                  {"image": "a.jpg", "caption": "..."} or {"image": "a.jpg", "captions": ["...", ...]}
    a folder                     images with a same-named .txt beside each (one caption per non-empty line), recursive
    a Hugging Face dataset       a save_to_disk folder, local parquet/json/csv files, or "org/name" on the hub
    WebDataset shards            a .tar, a folder of .tar files, or a brace pattern such as "shards/{000..009}.tar"
and returns a `PairTable`: the usable pairs plus every row it skipped, with the reason and the row number. Rows
naming the same image become one `Pair` with several captions. Image paths are resolved against a root (default:
the data file's folder) and may not leave it. Nothing in the input is ever modified.

Images are referenced, not loaded: an `ImageRef` is a small picklable record that DataLoader workers open lazily.
`PairDataset[(epoch, index)]` seeds the caption choice and the augmentation from (seed, epoch, index), so a resumed
run sees exactly the samples it would have seen, however the samples are spread over workers.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import logging
import os
import posixpath
import random
import re
import tarfile
from bisect import bisect_right
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from vlm.errors import ConfigError, DataError
from vlm.readers.paths import RootedPaths
from vlm.readers.tables import CAPTION_KEYS, IMAGE_KEYS, open_text, pick_column, read_header

LOG = logging.getLogger(__name__)

FORMATS = ("auto", "csv", "tsv", "jsonl", "folder", "hf", "webdataset")
FOLDER_IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
TAR_IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
HF_DISK_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
HF_FILE_BUILDERS = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv", ".tsv": "csv"}
SUFFIX_FORMATS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".tar": "webdataset",
    ".parquet": "hf",
    ".json": "hf",
}
ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
SIXTEEN_BIT_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N")
_VERIFY_CHUNK = 1024  # images handed to the thread pool at a time: bounds the number of pending futures


# ---------------------------------------------------------------------------------------------------------------
# Records.


class ImageError(DataError):
    """One image cannot be used; `reason` is the short phrase that bad-row reports count ("truncated image")."""

    def __init__(self, item: str, reason: str):
        super().__init__(f"cannot use image {item}: {reason}")
        self.item = item
        self.reason = reason


class _BadImage(Exception):
    """Internal: carries a bad-image reason up to the `ImageRef` that knows the image's name."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class ImageRef:
    """Where one image lives; small and picklable, opened lazily (inside DataLoader workers).

    kind "file": `path` is the image file.
    kind "tar":  `path` is the shard; the image is the `size` bytes at byte `offset` (tar member `member`).
    kind "hf":   `path` names the dataset; the image is row `row` of column `column` in split `split`, stored in
                 the Arrow file `arrow_file` at row `arrow_row` (read through a memory map).
    """

    kind: str
    path: str
    member: str = ""
    offset: int = 0
    size: int = 0
    split: str = ""
    row: int = -1
    column: str = ""
    arrow_file: str = ""
    arrow_row: int = -1

    def describe(self) -> str:
        """A path, "shard.tar:key.jpg" or "hf:dir/train[row 12]", for reports and error messages."""
        if self.kind == "tar":
            return f"{Path(self.path).name}:{self.member}"
        if self.kind == "hf":
            split = f"/{self.split}" if self.split else ""
            return f"hf:{self.path}{split}[row {self.row}]"
        return self.path

    def open(self) -> Image.Image:
        """The fully decoded image, in RGB. Raises `ImageError` (a `DataError`) naming the image on failure."""
        try:
            with self._binary() as fp:
                return to_rgb(_decode(fp))
        except _BadImage as e:
            raise ImageError(self.describe(), e.reason) from e

    @contextlib.contextmanager
    def _binary(self) -> Iterator[IO[bytes]]:
        if self.kind == "file":
            with _open_file(self.path) as fp:
                yield fp
        elif self.kind == "tar":
            yield io.BytesIO(_read_tar_member(self.path, self.offset, self.size))
        elif self.kind == "hf":
            yield io.BytesIO(_read_arrow_image(self.arrow_file, self.arrow_row, self.column))
        else:
            raise DataError(f"unknown ImageRef kind {self.kind!r}; expected 'file', 'tar' or 'hf'")


@dataclass(frozen=True)
class Pair:
    key: str  # stable identity used by `split`: path relative to the root, "shard.tar:key", or "split/row"
    image: ImageRef
    captions: tuple[str, ...]  # one or more non-empty captions, in file order, without duplicates


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


@dataclass
class PairTable:
    pairs: list[Pair]
    bad: list[BadRow]
    source: str

    def summary(self) -> str:
        """E.g. "read 9,870 pairs from X; skipped 3 bad rows: 2 missing file, 1 empty caption"."""
        text = f"read {len(self.pairs):,} pair{'s' * (len(self.pairs) != 1)} from {self.source}"
        if not self.bad:
            return f"{text}; no bad rows"
        kinds = ", ".join(f"{n:,} {kind}" for kind, n in Counter(b.kind for b in self.bad).most_common())
        return f"{text}; skipped {len(self.bad):,} bad row{'s' * (len(self.bad) != 1)}: {kinds}"

    def bad_report(self, limit: int = 20) -> str:
        """The first `limit` bad rows, one a line, with where to find them."""
        lines = [str(b) for b in self.bad[:limit]]
        if len(self.bad) > limit:
            lines.append(f"... and {len(self.bad) - limit:,} more")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# Decoding.


def to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode to RGB: transparency is composited onto white; 16-bit grey is scaled (not clipped) to 8 bits."""
    if im.mode in ALPHA_MODES or "transparency" in im.info:
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, im.convert("RGBA")).convert("RGB")
    if im.mode == "RGB":
        return im
    if im.mode in SIXTEEN_BIT_MODES:
        # PIL's own convert clips 16-bit values at 255, which turns most 16-bit images white.
        scaled = np.rint(np.asarray(im, dtype=np.float64) / 257.0)
        return Image.fromarray(np.clip(scaled, 0, 255).astype(np.uint8)).convert("RGB")
    if im.mode == "F":
        return Image.fromarray(np.clip(np.rint(np.asarray(im)), 0, 255).astype(np.uint8)).convert("RGB")
    return im.convert("RGB")


def _decode(fp: IO[bytes]) -> Image.Image:
    """Open and fully decode; every failure becomes a `_BadImage` with a short reason.

    A truncated file is only detected while `PIL.ImageFile.LOAD_TRUNCATED_IMAGES` is False (PIL's default).
    """
    try:
        im = Image.open(fp)
        limit = Image.MAX_IMAGE_PIXELS
        if limit is not None and im.width * im.height > limit:
            raise _BadImage(f"image too large ({im.width} x {im.height})")
        im.load()
        return im
    except Image.DecompressionBombError as e:  # > 2 x the limit: PIL refuses before telling us the size
        pixels = re.search(r"\((\d+) pixels\)", str(e))
        raise _BadImage(f"image too large ({int(pixels.group(1)):,} pixels)" if pixels else "image too large") from e
    except UnidentifiedImageError as e:
        raise _BadImage("not an image") from e
    except (OSError, SyntaxError, EOFError, ValueError, IndexError) as e:
        truncated = isinstance(e, EOFError) or "truncat" in str(e).lower()
        raise _BadImage("truncated image" if truncated else f"corrupt image ({e})") from e


@contextlib.contextmanager
def _open_file(path: str) -> Iterator[IO[bytes]]:
    try:
        fp = open(path, "rb")  # noqa: SIM115 (closed below; the errors need telling apart first)
    except FileNotFoundError as e:
        raise _BadImage("missing file") from e
    except IsADirectoryError as e:
        raise _BadImage("not a file") from e
    except OSError as e:
        raise _BadImage(f"unreadable file ({e.strerror})") from e
    with fp:
        if os.fstat(fp.fileno()).st_size == 0:
            raise _BadImage("empty file")
        yield fp


def _read_tar_member(shard: str, offset: int, size: int) -> bytes:
    if size == 0:
        raise _BadImage("empty file")
    try:
        with open(shard, "rb") as f:
            f.seek(offset)
            data = f.read(size)
    except OSError as e:
        raise _BadImage(f"unreadable shard ({e.strerror or e})") from e
    if len(data) < size:  # a shard cut short: tarfile lists the member, but its bytes end early
        raise _BadImage("truncated image")
    return data


@lru_cache(maxsize=16)
def _arrow_table(path: str) -> Any:
    """A memory-mapped Arrow table, cached per process (Hugging Face writes Arrow IPC streams)."""
    import pyarrow as pa

    return pa.ipc.open_stream(pa.memory_map(path)).read_all()


def _read_arrow_image(path: str, row: int, column: str) -> bytes:
    try:
        value = _arrow_table(path).column(column)[row].as_py()
    except (OSError, KeyError, IndexError) as e:
        raise _BadImage(f"unreadable Arrow file {path} ({e})") from e
    data = value.get("bytes") if isinstance(value, dict) else value
    if not data:
        raise _BadImage("empty file")
    return data


# ---------------------------------------------------------------------------------------------------------------
# Collecting rows: grouping by image, bad rows, path safety.


@dataclass
class _Entry:
    ref: ImageRef
    captions: dict[str, None] = field(default_factory=dict)  # an ordered set: file order, no duplicates
    origins: list[tuple[str, int | None, str]] = field(default_factory=list)  # (source, row, item) of every row


class _Collector:
    """Groups rows by image key (captions in file order, duplicates dropped) and records bad rows.

    Strict mode raises on the first bad row; it also decodes each image as soon as it is first seen, so "first"
    means first in file order.
    """

    def __init__(self, strict: bool, verify_images: bool):
        self.strict = strict
        self.verify_inline = strict and verify_images
        self.entries: dict[str, _Entry] = {}
        self.bad: list[BadRow] = []

    def reject(self, source: str | Path, row: int | None, item: str, reason: str) -> None:
        bad = BadRow(str(source), row, item, reason)
        if self.strict:
            raise DataError(f"bad row (strict mode stops at the first): {bad}")
        self.bad.append(bad)

    def add(self, key: str, ref: ImageRef, captions: Sequence[str], origin: tuple[str, int | None, str]) -> None:
        entry = self.entries.get(key)
        if entry is None:
            if self.verify_inline and (reason := _check(ref)) is not None:
                self.reject(*origin, reason)
            entry = self.entries[key] = _Entry(ref)
        entry.captions.update(dict.fromkeys(captions))
        entry.origins.append(origin)


def _check(ref: ImageRef) -> str | None:
    try:
        ref.open()
    except ImageError as e:
        return e.reason
    return None


def _clean_captions(value: Any) -> tuple[list[str], str | None]:
    """A caption cell/field (a string, a list of strings, or null) -> (non-empty stripped captions, problem)."""
    items = value if isinstance(value, list) else [value]
    items = [c for c in items if c is not None]
    wrong = [c for c in items if not isinstance(c, str)]
    if wrong:
        return [], f"malformed row: caption is not a string ({type(wrong[0]).__name__})"
    captions = [c.strip() for c in items if c.strip()]
    return captions, None if captions else "empty caption"


def _add_path_row(
    out: _Collector, resolver: RootedPaths, source: str, row: int | None, image: str, caption: Any, item: str = ""
) -> None:
    """One row that names an image by path: check the caption, then the path, then group it."""
    image = image.strip()
    item = item or image
    if not image:
        out.reject(source, row, item, "empty image path")
        return
    captions, problem = _clean_captions(caption)
    if problem is None:
        path, problem = resolver(image)
    if problem is not None:
        out.reject(source, row, item, problem)
        return
    out.add(resolver.key(path), ImageRef("file", path), captions, (source, row, item))


# ---------------------------------------------------------------------------------------------------------------
# Readers, one per format.


def _read_delimited(path: Path, delimiter: str, keys: tuple[str | None, str | None], resolver, out) -> None:
    source = str(path)
    with open_text(path, newline="") as f:
        reader = csv.reader(f, delimiter=delimiter)
        header = read_header(reader, path, delimiter)
        i = header.index(pick_column(header, keys[0], IMAGE_KEYS, "image", source))
        j = header.index(pick_column(header, keys[1], CAPTION_KEYS, "caption", source))
        while True:
            line = reader.line_num + 1  # where the next record starts (a quoted field may span lines)
            try:
                fields = next(reader)
            except StopIteration:
                break
            except csv.Error as e:
                out.reject(source, line, "", f"malformed row: {e}")
                continue
            if not fields:  # blank line
                continue
            if len(fields) != len(header):
                item = fields[i] if i < len(fields) else ""
                out.reject(source, line, item, f"malformed row: expected {len(header)} fields, found {len(fields)}")
                continue
            _add_path_row(out, resolver, source, line, fields[i], fields[j])


def _read_jsonl(path: Path, keys: tuple[str | None, str | None], resolver, out) -> None:
    source = str(path)
    image_key = None
    with open_text(path) as f:
        for line, text in enumerate(f, 1):
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                out.reject(source, line, "", f"malformed row: invalid JSON ({e.msg} at column {e.colno})")
                continue
            if not isinstance(obj, dict):
                out.reject(source, line, "", f"malformed row: not a JSON object ({type(obj).__name__})")
                continue
            if image_key is None:  # the first object fixes the image key and proves a caption key exists
                image_key = pick_column(list(obj), keys[0], IMAGE_KEYS, "image", f"{source}, line {line}")
                pick_column(list(obj), keys[1], CAPTION_KEYS, "caption", f"{source}, line {line}")
            # The caption key is looked up per row so "caption" and "captions" rows may mix.
            caption_key = keys[1] or next((k for k in CAPTION_KEYS if k in obj), None)
            image = obj.get(image_key)
            if not isinstance(image, str):
                what = f"no {image_key!r} field" if image is None else f"{image_key!r} is not a string"
                out.reject(source, line, "", f"malformed row: {what}")
            elif caption_key not in obj:
                out.reject(source, line, image, f"malformed row: no caption field (keys: {', '.join(obj)})")
            else:
                _add_path_row(out, resolver, source, line, image, obj[caption_key])


def _read_folder(folder: Path, resolver: RootedPaths, out: _Collector) -> None:
    source = str(folder)
    # followlinks=False: a symlinked folder could loop, or lead out of the root.
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if Path(name).suffix.lower() not in FOLDER_IMAGE_EXTS:
                continue
            image = Path(dirpath, name)
            rel = image.relative_to(folder).as_posix()
            captions, problem = _folder_captions(image.with_suffix(".txt").relative_to(folder).as_posix(), resolver)
            path: str | None = None
            if problem is None:
                path, problem = resolver(rel)
            if problem is not None:
                out.reject(source, None, rel, problem)
            else:
                out.add(resolver.key(path), ImageRef("file", path), captions, (source, None, rel))


def _folder_captions(rel_txt: str, resolver: RootedPaths) -> tuple[list[str], str | None]:
    path, problem = resolver(rel_txt)
    if problem == "missing file":
        return [], "missing caption file"
    if problem == "empty file":
        return [], "empty caption"
    if problem is not None:
        return [], problem
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        return [], "malformed row: caption file is not UTF-8"
    except OSError as e:
        return [], f"unreadable caption file ({e.strerror})"
    return _clean_captions(text.splitlines())


def _is_brace_pattern(text: str) -> bool:
    return re.search(r"\{[^{}]*(\.\.|,)[^{}]*\}", text) is not None


def _expand_braces_simple(pattern: str) -> list[str]:
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
    return [head + option + rest for option in options for rest in _expand_braces_simple(tail)]


def _expand_braces(pattern: str) -> list[str]:
    try:
        from braceexpand import braceexpand
    except ImportError:
        return _expand_braces_simple(pattern)
    return list(braceexpand(pattern))


def _shards(source: str) -> list[Path]:
    path = Path(source).expanduser()
    if path.is_dir():
        shards = sorted(path.glob("*.tar"))
        if not shards:
            raise DataError(f"no .tar shards in {path}")
    elif not path.exists() and _is_brace_pattern(source):
        shards = [Path(p).expanduser() for p in _expand_braces(source)]
    else:
        shards = [path]
    missing = [str(p) for p in shards if not p.is_file()]
    if missing:
        raise DataError(f"{len(missing)} of {len(shards)} shards not found, e.g. {missing[:3]} (from {source!r})")
    return [p.resolve() for p in shards]  # absolute: references must not depend on a worker's working directory


def _read_tar(shard: Path, out: _Collector) -> None:
    """Index one uncompressed shard: members grouped by key (path up to the first dot of the basename)."""
    source = str(shard)
    try:
        tf = tarfile.open(shard, mode="r:")  # noqa: SIM115 (uncompressed only: random access by offset needs it)
    except (tarfile.TarError, OSError) as e:
        raise DataError(f"cannot read tar shard {shard}: {e}. Shards must be uncompressed .tar files") from e
    with tf:
        samples: dict[str, dict[str, tarfile.TarInfo]] = {}
        while True:
            try:
                info = tf.next()
            except tarfile.TarError as e:  # a damaged header: keep what came before it, report the rest
                out.reject(source, None, shard.name, f"unreadable tar shard after byte {tf.offset:,} ({e})")
                break
            if info is None:
                break
            if info.isfile():
                folder, base = posixpath.split(info.name)
                stem, _, ext = base.partition(".")
                samples.setdefault(posixpath.join(folder, stem), {})[ext.lower()] = info
        for key, members in samples.items():
            _add_tar_sample(tf, shard, key, members, out)


def _add_tar_sample(tf: tarfile.TarFile, shard: Path, key: str, members: dict, out: _Collector) -> None:
    source = str(shard)
    image = next((members[e] for e in TAR_IMAGE_EXTS if e in members), None)
    if image is None:
        out.reject(source, None, f"{shard.name}:{key}", "missing image")
        return
    item = f"{shard.name}:{image.name}"
    captions, problem = [], "missing caption"
    if "txt" in members:
        try:
            captions, problem = _clean_captions(_member_bytes(tf, members["txt"]).decode("utf-8").splitlines())
        except UnicodeDecodeError:
            problem = "malformed row: caption is not UTF-8"
    elif "json" in members:
        try:
            obj = json.loads(_member_bytes(tf, members["json"]))
        except ValueError:
            obj = None
        if not isinstance(obj, dict):
            problem = "malformed row: caption .json is not a JSON object"
        else:
            field_name = next((k for k in CAPTION_KEYS if k in obj), None)
            captions, problem = _clean_captions(obj.get(field_name) if field_name else None)
    if problem is None and image.size == 0:
        problem = "empty file"
    if problem is not None:
        out.reject(source, None, item, problem)
        return
    ref = ImageRef("tar", source, member=image.name, offset=image.offset_data, size=image.size)
    out.add(f"{shard.name}:{key}", ref, captions, (source, None, item))


def _member_bytes(tf: tarfile.TarFile, info: tarfile.TarInfo) -> bytes:
    f = tf.extractfile(info)
    return f.read() if f is not None else b""


# ---------------------------------------------------------------------------------------------------------------
# Hugging Face datasets.


def _looks_like_hub_name(text: str) -> bool:
    return (
        re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", text) is not None
        and ".." not in text
        and Path(text).suffix.lower() not in SUFFIX_FORMATS
    )


def _load_hf(source: str) -> tuple[Any, str, Path]:
    """(the dataset, its split name, the folder that relative image paths in it are resolved against)."""
    import datasets

    path = Path(source).expanduser()
    try:
        if path.is_dir() and any((path / m).is_file() for m in HF_DISK_MARKERS):
            ds, base = datasets.load_from_disk(str(path)), path
        elif path.is_dir():
            ds, base = datasets.load_dataset(str(path)), path
        elif path.is_file():
            builder = HF_FILE_BUILDERS.get(path.suffix.lower())
            if builder is None:
                raise DataError(f"cannot load {path} as a Hugging Face dataset: use .parquet, .json(l) or .csv")
            extra = {"delimiter": "\t"} if path.suffix.lower() == ".tsv" else {}
            ds, base = datasets.load_dataset(builder, data_files=str(path), **extra), path.parent
        elif _looks_like_hub_name(source):
            ds, base = _load_hub(source), Path.cwd()
        else:
            raise DataError(f"data not found: {source} is neither a file, a folder nor a shard pattern")
    except DataError:
        raise
    except Exception as e:  # datasets raises many types (FileNotFoundError, ValueError, DatasetGenerationError)
        raise DataError(f"cannot load Hugging Face dataset {source}: {type(e).__name__}: {e}") from e
    split = ""
    if isinstance(ds, datasets.DatasetDict):
        names = list(ds)
        if "train" not in ds and len(names) != 1:
            raise DataError(f"{source} has splits {names} but no 'train'; save the one you want with save_to_disk")
        split = "train" if "train" in ds else names[0]
        ds = ds[split]
    elif ds.split is not None:
        split = str(ds.split)
    return ds, split, base


def _load_hub(name: str) -> Any:
    import datasets

    from vlm import models

    if not models.hub_reachable():
        raise DataError(
            f"{name!r} is not a local path, and the Hugging Face Hub cannot be reached to load it as a dataset. "
            f"Check the path, or on a connected machine run "
            f"datasets.load_dataset({name!r}).save_to_disk('DIR'), copy DIR here and pass it instead"
        )
    return datasets.load_dataset(name)


def _arrow_files(ds: Any, label: str) -> tuple[list[str], list[int]]:
    """The Arrow files behind a dataset and the dataset row at which each starts."""
    files = [f["filename"] for f in ds.cache_files]
    starts, total = [], 0
    for f in files:
        starts.append(total)
        total += _arrow_table(f).num_rows
    if not files or total != len(ds):
        raise DataError(
            f"{label} is not backed by Arrow files on disk in row order; write it with "
            f"dataset.save_to_disk(DIR) and pass DIR"
        )
    return files, starts


def _read_hf(ds: Any, label: str, split: str, keys: tuple[str | None, str | None], resolver, out) -> None:
    import datasets
    import pyarrow.compute as pc

    columns = ds.column_names
    image_key = keys[0]
    if image_key is None and not any(c.lower() in IMAGE_KEYS for c in columns):
        image_key = next((c for c in columns if isinstance(ds.features[c], datasets.Image)), None)
    image_col = pick_column(columns, image_key, IMAGE_KEYS, "image", label)
    caption_col = pick_column(columns, keys[1], CAPTION_KEYS, "caption", label)
    feature = ds.features[image_col]
    captions = ds.data.column(caption_col).to_pylist()
    if isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string"):
        for i, (image, caption) in enumerate(zip(ds.data.column(image_col).to_pylist(), captions, strict=True)):
            _add_path_row(out, resolver, label, None, image or "", caption, item=f"row {i}: {image}")
        return
    if not isinstance(feature, datasets.Image):
        raise DataError(f"{label}: image column {image_col!r} has type {feature}; expected Image() or a path string")
    files, starts = _arrow_files(ds, label)
    lengths, paths = [], []
    for chunk in ds.data.column(image_col).chunks:  # only byte lengths and paths: the image bytes stay on disk
        lengths += pc.binary_length(pc.struct_field(chunk, "bytes")).to_pylist()
        paths += pc.struct_field(chunk, "path").to_pylist()
    prefix = f"{split}/" if split else ""
    for i, (length, path, caption) in enumerate(zip(lengths, paths, captions, strict=True)):
        if length is None and path:  # an Image() that stores only a path to a local file
            _add_path_row(out, resolver, label, None, path, caption, item=f"row {i}: {path}")
            continue
        cleaned, problem = _clean_captions(caption)
        if problem is None and not length:
            problem = "empty file" if length == 0 else "missing image"
        if problem is not None:
            out.reject(label, None, f"row {i}", problem)
            continue
        k = bisect_right(starts, i) - 1
        ref = ImageRef("hf", label, split=split, row=i, column=image_col, arrow_file=files[k], arrow_row=i - starts[k])
        out.add(f"{prefix}{i}", ref, cleaned, (label, None, f"row {i}"))


# ---------------------------------------------------------------------------------------------------------------
# The public entry point.


def detect_format(source: str | Path) -> str:
    """The format `read_pairs(format="auto")` would use for `source`."""
    text = str(source)
    path = Path(text).expanduser()
    if path.is_file():
        fmt = SUFFIX_FORMATS.get(path.suffix.lower())
        if fmt is None:
            raise DataError(
                f"cannot tell the format of {path} from its extension; rename it or pass format= "
                f"one of {list(FORMATS[1:])}"
            )
        return fmt
    if path.is_dir():
        if any((path / m).is_file() for m in HF_DISK_MARKERS):
            return "hf"
        if any(path.glob("*.tar")):
            return "webdataset"
        if any(path.glob("*.parquet")) or any(path.glob("data/*.parquet")):
            return "hf"
        return "folder"
    if _is_brace_pattern(text):
        return "webdataset"
    if _looks_like_hub_name(text):
        return "hf"
    raise DataError(f"data not found: {text}")


def read_pairs(
    source: str | Path,
    *,
    format: str = "auto",
    image_key: str | None = None,
    caption_key: str | None = None,
    root: str | Path | None = None,
    strict: bool = False,
    verify_images: bool = True,
    workers: int = 4,
    progress: bool = True,
) -> PairTable:
    """Read image–caption pairs from any supported source (see the module docstring).

    Bad rows (missing, empty, unreadable, truncated or oversized images, empty captions, malformed rows, paths
    leaving `root`) are skipped and listed in `PairTable.bad`, or raise `DataError` at the first one when `strict`.
    With `verify_images` every image is decoded once, on `workers` threads. Raises `DataError` when the source
    cannot be read at all or holds no usable pair.
    """
    if format not in FORMATS:
        raise ConfigError(f"unknown data format {format!r}; choose one of {list(FORMATS)}")
    fmt = detect_format(source) if format == "auto" else format
    keys = (image_key, caption_key)
    out = _Collector(strict, verify_images)
    path = Path(source).expanduser()
    if fmt in ("csv", "tsv", "jsonl"):
        if not path.is_file():
            raise DataError(f"pairs file not found (or not a file): {path}")
        resolver = RootedPaths(Path(root) if root is not None else path.parent)
        if fmt == "jsonl":
            _read_jsonl(path, keys, resolver, out)
        else:
            _read_delimited(path, "," if fmt == "csv" else "\t", keys, resolver, out)
    elif fmt == "folder":
        if not path.is_dir():
            raise DataError(f"image folder not found: {path}")
        _read_folder(path, RootedPaths(Path(root) if root is not None else path), out)
    elif fmt == "webdataset":
        for shard in _shards(str(source)):
            _read_tar(shard, out)
    else:
        ds, split, base = _load_hf(str(source))
        _read_hf(ds, str(source), split, keys, RootedPaths(Path(root) if root is not None else base), out)
    entries = out.entries
    if verify_images and not out.verify_inline:
        entries = _verify(entries, out, workers, progress)
    bad = sorted(out.bad, key=lambda b: (b.source, b.row if b.row is not None else 0))
    table = PairTable([Pair(k, e.ref, tuple(e.captions)) for k, e in entries.items()], bad, str(source))
    if not table.pairs:
        raise DataError(f"no usable pairs: {table.summary()}\n{table.bad_report(5)}".rstrip())
    LOG.info("%s", table.summary())
    return table


def _verify(entries: dict[str, _Entry], out: _Collector, workers: int, progress: bool) -> dict[str, _Entry]:
    """Decode every image once (PIL releases the GIL while decoding, so threads help); drop the bad ones."""
    items = list(entries.items())
    good: dict[str, _Entry] = {}
    with (
        ThreadPoolExecutor(max_workers=max(1, workers)) as pool,
        tqdm(total=len(items), desc="verifying images", unit="img", disable=not progress) as bar,
    ):
        for start in range(0, len(items), _VERIFY_CHUNK):
            chunk = items[start : start + _VERIFY_CHUNK]
            for (key, entry), reason in zip(chunk, pool.map(lambda kv: _check(kv[1].ref), chunk), strict=True):
                if reason is None:
                    good[key] = entry
                for origin in entry.origins if reason is not None else ():
                    out.reject(*origin, reason)
            bar.update(len(chunk))
    return good


# ---------------------------------------------------------------------------------------------------------------
# Splits and datasets.


def _hash_int(*parts: object) -> int:
    """A 63-bit integer from the parts; stable across processes and Python versions (unlike `hash`)."""
    text = "\x1f".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big") >> 1


def split(pairs: Sequence[Pair], val_fraction: float, seed: int = 0) -> tuple[list[Pair], list[Pair]]:
    """(train, val): the round(val_fraction * N) pairs ranked first by a hash of (seed, key) are validation.

    Which pairs are held out depends only on the seed and the set of keys, never on their order; both lists keep
    the input order.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction}")
    keys = [p.key for p in pairs]
    if len(set(keys)) != len(keys):
        dup = next(k for k, n in Counter(keys).items() if n > 1)
        raise DataError(f"pair keys must be unique to split deterministically; {dup!r} appears more than once")
    n_val = round(val_fraction * len(pairs))
    if pairs and n_val >= len(pairs):
        raise DataError(f"val_fraction {val_fraction} of {len(pairs)} pairs leaves no training pairs")
    ranked = sorted(range(len(pairs)), key=lambda i: (_hash_int(seed, keys[i]), keys[i]))
    held_out = set(ranked[:n_val])
    train = [p for i, p in enumerate(pairs) if i not in held_out]
    val = [p for i, p in enumerate(pairs) if i in held_out]
    return train, val


@contextlib.contextmanager
def _seeded_rngs(seed: int) -> Iterator[None]:
    """Seed torch's CPU generator (and Python's and NumPy's, which some transforms use) for one sample.

    In a DataLoader worker the state is simply overwritten: each worker is its own process. In the main process
    (workers=0) it is saved and restored, so the trainer's own random stream is not disturbed.
    """
    in_main = torch.utils.data.get_worker_info() is None
    saved = (torch.get_rng_state(), random.getstate(), np.random.get_state()) if in_main else None
    torch.default_generator.manual_seed(seed)  # the CPU generator only: CUDA generators are left alone
    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        yield
    finally:
        if saved is not None:
            torch.set_rng_state(saved[0])
            random.setstate(saved[1])
            np.random.set_state(saved[2])


class PairDataset(torch.utils.data.Dataset):
    """Training samples: `dataset[(epoch, index)]` -> (image (3, H, W), tokens (context_length,)).

    The caption (among the pair's captions) and the transform's randomness are seeded from (seed, epoch, index),
    so a sample is the same whichever worker makes it and whether or not the run was resumed.
    """

    def __init__(self, pairs: Sequence[Pair], transform: Callable, tokenizer: Callable, *, seed: int = 0):
        self.pairs = list(pairs)
        self.transform = transform
        self.tokenizer = tokenizer
        self.seed = seed

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        if not (isinstance(item, tuple) and len(item) == 2):
            raise TypeError(f"PairDataset is indexed by (epoch, index), got {item!r}")
        epoch, index = item
        pair = self.pairs[index]
        sample_seed = _hash_int(self.seed, epoch, index)
        caption = pair.captions[random.Random(sample_seed).randrange(len(pair.captions))]
        image = pair.image.open()
        with _seeded_rngs(sample_seed):
            pixels = self.transform(image)
        return pixels, self.tokenizer([caption])[0]


class ImageDataset(torch.utils.data.Dataset):
    """Evaluation images, in order: `dataset[i]` -> transform(image i), e.g. (3, H, W)."""

    def __init__(self, refs: Sequence[ImageRef], transform: Callable):
        self.refs = list(refs)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.transform(self.refs[i].open())
