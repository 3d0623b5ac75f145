"""What a photo says about itself: the date it was taken, the camera, its upright width and height.

    meta = photo_meta(image)     # PhotoMeta(taken="2021-07-04T10:11:12", camera="Canon EOS 5D", width=3024, ...)

`taken` is EXIF `DateTimeOriginal` as the camera wrote it (local wall-clock time, no time zone), in ISO form;
None when the image has none (or an unreadable one such as "0000:00:00 00:00:00"): the store then falls back to
the file's mtime in the local time zone (`indexing.store.DATE_SQL`), so "date" always means what the user saw on
their clock. Width and height are those of the image shown upright: an image still carrying an EXIF orientation of
a quarter turn (opened lazily, not transposed) has them swapped, so a header-only read and a decoded image agree.
"""

from __future__ import annotations

from datetime import datetime
from typing import NamedTuple

from PIL import Image

from vlm.readers.images import EXIF_ORIENTATION

EXIF_IFD = 0x8769
DATE_TIME_ORIGINAL = 36867
MAKE, MODEL = 271, 272
QUARTER_TURNS = (5, 6, 7, 8)  # EXIF orientations that swap width and height
ISO = "%Y-%m-%dT%H:%M:%S"


class PhotoMeta(NamedTuple):
    taken: str | None  # EXIF DateTimeOriginal as "YYYY-MM-DDTHH:MM:SS"
    camera: str | None  # EXIF Make and Model, e.g. "Apple iPhone 12"
    width: int
    height: int


def photo_meta(image: Image.Image) -> PhotoMeta:
    """The metadata of an opened image (decoded, or only its header read)."""
    try:
        exif = image.getexif()
    except Exception:  # a broken EXIF block must not cost the image: it just has no date or camera
        exif = Image.Exif()
    width, height = image.size
    if exif.get(EXIF_ORIENTATION, 1) in QUARTER_TURNS:
        width, height = height, width
    try:
        original = exif.get_ifd(EXIF_IFD).get(DATE_TIME_ORIGINAL)
    except Exception:
        original = None
    return PhotoMeta(exif_date(original), camera_name(exif.get(MAKE), exif.get(MODEL)), width, height)


def exif_date(value: object) -> str | None:
    """EXIF "YYYY:MM:DD HH:MM:SS" (possibly with NULs, spaces or sub-seconds) -> "YYYY-MM-DDTHH:MM:SS", or None."""
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if not isinstance(value, str):
        return None
    text = value.strip("\x00 ")[:19]
    try:
        return datetime.strptime(text, "%Y:%m:%d %H:%M:%S").strftime(ISO)
    except ValueError:
        return None


def camera_name(make: object, model: object) -> str | None:
    """ "Canon" + "Canon EOS 5D" -> "Canon EOS 5D"; "Apple" + "iPhone 12" -> "Apple iPhone 12"."""
    texts = [p.decode("ascii", "replace") if isinstance(p, bytes) else p for p in (make, model)]
    parts = [t.strip("\x00 ") for t in texts if isinstance(t, str) and t.strip("\x00 ")]
    if len(parts) == 2 and parts[1].lower().startswith(parts[0].lower()):
        parts = parts[1:]
    return " ".join(parts)[:100] or None


def header_meta(path: str) -> PhotoMeta | None:
    """The metadata of an image file read from its header only (no decoding), or None when it cannot be read:
    what a sync fills in for records made before the store kept it."""
    try:
        with Image.open(path) as im:
            return photo_meta(im)
    except Exception:
        return None
