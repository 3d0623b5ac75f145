"""The pair readers, one per on-disk format, and what they share: grouping rows by image, bad rows, verification.

`vlm.data.read_pairs` picks the reader; each adds rows to a `Collector`, which groups captions by image key and
records every bad row. Plumbing shared with the other readers (paths, tables, images, 🤗, shards) is `vlm.readers`.
"""

from __future__ import annotations

import csv
import json
import os
import tarfile
from bisect import bisect_right
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from vlm.errors import DataError
from vlm.readers import hf, webdataset
from vlm.readers.images import IMAGE_EXTS, TAR_IMAGE_EXTS, ImageRef, image_problem
from vlm.readers.paths import RootedPaths
from vlm.readers.rows import BadRow, clean_captions
from vlm.readers.tables import CAPTION_KEYS, IMAGE_KEYS, csv_records, json_lines, open_text, pick_column, read_header

VERIFY_CHUNK = 1024  # images handed to the thread pool at a time: bounds the number of pending futures


@dataclass
class _Entry:
    ref: ImageRef
    captions: dict[str, None] = field(default_factory=dict)  # an ordered set: file order, no duplicates
    origins: list[tuple[str, int | None, str]] = field(default_factory=list)  # (source, row, item) of every row


class Collector:
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
            if self.verify_inline and (reason := image_problem(ref)) is not None:
                self.reject(*origin, reason)
            entry = self.entries[key] = _Entry(ref)
        entry.captions.update(dict.fromkeys(captions))
        entry.origins.append(origin)


def add_path_row(
    out: Collector, resolver: RootedPaths, source: str, row: int | None, image: str, caption: Any, item: str = ""
) -> None:
    """One row that names an image by path: check the caption, then the path, then group it."""
    image = image.strip()
    item = item or image
    if not image:
        out.reject(source, row, item, "empty image path")
        return
    captions, problem = clean_captions(caption)
    if problem is None:
        path, problem = resolver(image)
    if problem is not None:
        out.reject(source, row, item, problem)
        return
    out.add(resolver.key(path), ImageRef("file", path), captions, (source, row, item))


# ---------------------------------------------------------------------------------------------------------------
# Readers, one per format.


def read_delimited(path: Path, delimiter: str, keys: tuple[str | None, str | None], resolver, out) -> None:
    source = str(path)
    with open_text(path, newline="") as f:
        # strict: an unterminated quote is a malformed row, not a field that silently swallows the rows after it
        reader = csv.reader(f, delimiter=delimiter, strict=True)
        header = read_header(reader, path, delimiter)
        i = header.index(pick_column(header, keys[0], IMAGE_KEYS, "image", source))
        j = header.index(pick_column(header, keys[1], CAPTION_KEYS, "caption", source))
        for line, fields, problem in csv_records(reader):
            if fields is None:
                out.reject(source, line, "", problem)
                continue
            if len(fields) != len(header):
                item = fields[i] if i < len(fields) else ""
                out.reject(source, line, item, f"malformed row: expected {len(header)} fields, found {len(fields)}")
                continue
            add_path_row(out, resolver, source, line, fields[i], fields[j])


def read_jsonl(path: Path, keys: tuple[str | None, str | None], resolver, out) -> None:
    source = str(path)
    image_key = None
    with open_text(path) as f:
        for line, obj, problem in json_lines(f):
            if obj is None:
                out.reject(source, line, "", problem)
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
                add_path_row(out, resolver, source, line, image, obj[caption_key])


def read_folder(folder: Path, resolver: RootedPaths, out: Collector) -> None:
    source = str(folder)
    # followlinks=False: a symlinked folder could loop, or lead out of the root.
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if Path(name).suffix.lower() not in IMAGE_EXTS:
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
    return clean_captions(text.splitlines())


def read_tar(shard: Path, out: Collector) -> None:
    """Index one uncompressed shard: each sample needs an image member and a .txt (or .json) caption member."""
    with webdataset.open_shard(shard) as (tf, samples, damage):
        if damage is not None:  # keep what came before the damaged header, report the rest
            out.reject(str(shard), None, shard.name, damage)
        for key, members in samples.items():
            _add_tar_sample(tf, shard, key, members, out)


def _add_tar_sample(tf: tarfile.TarFile, shard: Path, key: str, members: dict, out: Collector) -> None:
    source = str(shard)
    image = next((members[e] for e in TAR_IMAGE_EXTS if e in members), None)
    if image is None:
        out.reject(source, None, f"{shard.name}:{key}", "missing image")
        return
    item = f"{shard.name}:{image.name}"
    captions, problem = [], "missing caption"
    if "txt" in members:
        try:
            captions, problem = clean_captions(webdataset.member_bytes(tf, members["txt"]).decode("utf-8").splitlines())
        except UnicodeDecodeError:
            problem = "malformed row: caption is not UTF-8"
    elif "json" in members:
        try:
            obj = json.loads(webdataset.member_bytes(tf, members["json"]))
        except ValueError:
            obj = None
        if not isinstance(obj, dict):
            problem = "malformed row: caption .json is not a JSON object"
        else:
            field_name = next((k for k in CAPTION_KEYS if k in obj), None)
            captions, problem = clean_captions(obj.get(field_name) if field_name else None)
    if problem is None and image.size == 0:
        problem = "empty file"
    if problem is not None:
        out.reject(source, None, item, problem)
        return
    ref = ImageRef("tar", source, member=image.name, offset=image.offset_data, size=image.size)
    out.add(f"{shard.name}:{key}", ref, captions, (source, None, item))


def read_hf(ds: Any, label: str, split: str, keys: tuple[str | None, str | None], resolver, out) -> None:
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
            add_path_row(out, resolver, label, None, image or "", caption, item=f"row {i}: {image}")
        return
    if not isinstance(feature, datasets.Image):
        raise DataError(f"{label}: image column {image_col!r} has type {feature}; expected Image() or a path string")
    files, starts = hf.arrow_files(ds, label)
    lengths, paths = [], []
    for chunk in ds.data.column(image_col).chunks:  # only byte lengths and paths: the image bytes stay on disk
        lengths += pc.binary_length(pc.struct_field(chunk, "bytes")).to_pylist()
        paths += pc.struct_field(chunk, "path").to_pylist()
    prefix = f"{split}/" if split else ""
    for i, (length, path, caption) in enumerate(zip(lengths, paths, captions, strict=True)):
        if length is None and path:  # an Image() that stores only a path to a local file
            add_path_row(out, resolver, label, None, path, caption, item=f"row {i}: {path}")
            continue
        cleaned, problem = clean_captions(caption)
        if problem is None and not length:
            problem = "empty file" if length == 0 else "missing image"
        if problem is not None:
            out.reject(label, None, f"row {i}", problem)
            continue
        k = bisect_right(starts, i) - 1
        ref = ImageRef("hf", label, split=split, row=i, column=image_col, arrow_file=files[k], arrow_row=i - starts[k])
        out.add(f"{prefix}{i}", ref, cleaned, (label, None, f"row {i}"))


def verify(entries: dict[str, _Entry], out: Collector, workers: int, progress: bool) -> dict[str, _Entry]:
    """Decode every image once (PIL releases the GIL while decoding, so threads help); drop the bad ones."""
    items = list(entries.items())
    good: dict[str, _Entry] = {}
    with (
        ThreadPoolExecutor(max_workers=max(1, workers)) as pool,
        tqdm(total=len(items), desc="verifying images", unit="img", disable=not progress) as bar,
    ):
        for start in range(0, len(items), VERIFY_CHUNK):
            chunk = items[start : start + VERIFY_CHUNK]
            for (key, entry), reason in zip(chunk, pool.map(lambda kv: image_problem(kv[1].ref), chunk), strict=True):
                if reason is None:
                    good[key] = entry
                for origin in entry.origins if reason is not None else ():
                    out.reject(*origin, reason)
            bar.update(len(chunk))
    return good
