"""Images: the file extensions we read, `ImageRef` (where one image lives, opened lazily), decoding with its limits.

Every failure to use an image becomes an `ImageError` (a `DataError`) whose `reason` is a short phrase that bad-row
reports count: "missing file", "empty file", "not an image", "truncated image", "image too large (W x H)", ...
Decoding keeps PIL's decompression-bomb limit (`PIL.Image.MAX_IMAGE_PIXELS`) and refuses truncated files.
Phone photos: HEIC/HEIF through `pillow-heif` (registered here, the one place images are decoded), AVIF through
Pillow itself; the EXIF orientation is applied, so a portrait photo stored sideways is embedded, shown and
explained upright.

Draft decoding (`ImageRef.open(draft=512)`): a JPEG is decoded at the smallest DCT scale (1/2, 1/4 or 1/8, PIL's
`Image.draft`) that keeps its shorter side at least `draft` pixels. A 12-megapixel phone photo then decodes to
1008 x 756 in a fifth of the time, and everything after it (RGB conversion, hashing, resizing) handles 16x fewer
pixels. The size limit is checked on the full size first and the orientation applied after, as for a full decode.
Other formats are decoded in full.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import IO, Any

import numpy as np
import pillow_heif
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from vlm.errors import DataError

# Image files found by walking a folder, and image members of a WebDataset shard (by extension, without the dot).
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".heic", ".heif", ".avif")
TAR_IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
SIXTEEN_BIT_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N")
EXIF_ORIENTATION = 0x0112

pillow_heif.register_heif_opener()  # HEIC/HEIF (every iPhone photo) for Image.open; AVIF is Pillow's own


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

    def open(self, draft: int | None = None) -> Image.Image:
        """The decoded image, in RGB: in full, or with `draft`, a JPEG at reduced scale keeping its shorter side
        >= `draft` px (module docstring). Raises `ImageError` (a `DataError`) naming the image on failure."""
        try:
            with self._binary() as fp:
                return to_rgb(_decode(fp, draft))
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


def draft_size(size: tuple[int, int], shorter: int) -> tuple[int, int]:
    """The size to ask `Image.draft` for: `size` scaled so that its shorter side is `shorter` (rounded up)."""
    scale = shorter / min(size)
    return math.ceil(size[0] * scale), math.ceil(size[1] * scale)


def _decode(fp: IO[bytes], draft: int | None = None) -> Image.Image:
    """Open and decode (a JPEG at reduced scale with `draft`); every failure becomes a `_BadImage` with a reason.

    A truncated file is only detected while `PIL.ImageFile.LOAD_TRUNCATED_IMAGES` is False (PIL's default).
    """
    try:
        im = Image.open(fp)
        limit = Image.MAX_IMAGE_PIXELS
        if limit is not None and im.width * im.height > limit:
            raise _BadImage(f"image too large ({im.width} x {im.height})")
        if draft and im.format == "JPEG" and min(im.size) >= 2 * draft:
            im.draft(None, draft_size(im.size, draft))  # the stored size: orientation does not change its shorter side
        im.load()
        if im.getexif().get(EXIF_ORIENTATION, 1) != 1:  # rotated or mirrored by the camera: make it upright
            im = ImageOps.exif_transpose(im)
        return im
    except Image.DecompressionBombError as e:  # > 2 x the limit: PIL refuses before telling us the size
        pixels = re.search(r"\((\d+) pixels\)", str(e))
        raise _BadImage(f"image too large ({int(pixels.group(1)):,} pixels)" if pixels else "image too large") from e
    except UnidentifiedImageError as e:
        raise _BadImage("not an image") from e
    except (OSError, SyntaxError, EOFError, ValueError, IndexError) as e:
        # libheif (through pillow-heif) says "Unexpected end of file" for a cut HEIC.
        truncated = isinstance(e, EOFError) or any(w in str(e).lower() for w in ("truncat", "end of file"))
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
def arrow_table(path: str) -> Any:
    """A memory-mapped Arrow table, cached per process (Hugging Face writes Arrow IPC streams)."""
    import pyarrow as pa

    return pa.ipc.open_stream(pa.memory_map(path)).read_all()


def _read_arrow_image(path: str, row: int, column: str) -> bytes:
    try:
        value = arrow_table(path).column(column)[row].as_py()
    except (OSError, KeyError, IndexError) as e:
        raise _BadImage(f"unreadable Arrow file {path} ({e})") from e
    data = value.get("bytes") if isinstance(value, dict) else value
    if not data:
        raise _BadImage("empty file")
    return data


def image_problem(ref: ImageRef) -> str | None:
    """None when the image decodes, else the short reason it cannot be used."""
    try:
        ref.open()
    except ImageError as e:
        return e.reason
    return None


class ImageDataset(torch.utils.data.Dataset):
    """Evaluation images, in order: `dataset[i]` -> transform(image i), e.g. (3, H, W)."""

    def __init__(self, refs: Sequence[ImageRef], transform: Callable):
        self.refs = list(refs)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.transform(self.refs[i].open())
