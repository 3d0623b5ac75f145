"""Checks on what people send, before any work: uploaded images, label lists, phrases, paths on the server.

Uploads are opened here, never by Gradio: `image_input` is a `gr.Image` whose preprocessing reads only the file's
header, refuses a file that is not an image or has more pixels than the limit (a 50-megapixel photo, or a
"decompression bomb": a tiny PNG that claims 100,000 x 100,000 pixels), and only then decodes it. Every refusal is a
`DataError`/`ConfigError` with a message that says what to do.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import gradio as gr
from PIL import Image, ImageOps, UnidentifiedImageError

from vlm.errors import ConfigError, DataError
from vlm.readers.images import to_rgb
from vlm.zeroshot import CleanLabels, clean_labels

LOG = logging.getLogger(__name__)


def open_upload(path: str | Path, max_pixels: int, name: str | None = None) -> Image.Image:
    """The uploaded image at `path`, decoded to RGB (EXIF orientation applied; the first frame of an animation).

    Raises `DataError` for a missing or empty file, a file that is not an image, an image above `max_pixels`
    (checked from the header, before decoding) or a truncated one. `name` is what the user called the file."""
    shown_name = name or Path(path).name
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        raise DataError(f"the upload {shown_name!r} is missing or empty; upload the image again")
    try:
        with Image.open(path) as im:  # reads the header only
            width, height = im.size
            if width * height > max_pixels:
                raise DataError(_too_large(shown_name, width, height, max_pixels))
            im.load()
            rgb = to_rgb(ImageOps.exif_transpose(im))
    except Image.DecompressionBombError as e:  # PIL's own guard, at twice its default limit
        raise DataError(f"{shown_name!r} claims an enormous size ({e}); refused. " + _shrink_hint(max_pixels)) from e
    except UnidentifiedImageError as e:
        raise DataError(
            f"{shown_name!r} is not an image this app can read; upload a PNG, JPEG, WebP, GIF, BMP or TIFF file"
        ) from e
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise DataError(f"{shown_name!r} could not be decoded ({e}); the file may be truncated or corrupt") from e
    if min(rgb.size) < 1:
        raise DataError(f"{shown_name!r} is empty ({rgb.width} x {rgb.height} pixels)")
    return rgb


def _too_large(name: str, width: int, height: int, max_pixels: int) -> str:
    return (
        f"{name!r} is {width:,} x {height:,} = {width * height / 1e6:.1f} megapixels, above this app's limit of "
        f"{max_pixels / 1e6:.1f} megapixels. " + _shrink_hint(max_pixels)
    )


def _shrink_hint(max_pixels: int) -> str:
    side = int(max_pixels**0.5)
    return f"Downscale it (e.g. to {side:,} x {side:,} or smaller) and upload it again."


def image_input(max_pixels: int, **kwargs) -> gr.Image:
    """An upload box for one image that hands the handler a checked PIL RGB image (see `open_upload`), or None.

    Gradio's own preprocessing would open the file itself (and fail on a non-image with a bare error), so this
    instance's `preprocess` is replaced. Not a subclass: Gradio writes a .pyi stub beside every Component subclass."""
    kwargs.setdefault("sources", ["upload", "clipboard"])
    component = gr.Image(type="pil", image_mode=None, format="png", **kwargs)

    def preprocess(payload):
        if payload is None:
            return None
        if payload.path is None:
            raise gr.Error("the image arrived without a file; upload it again", print_exception=False)
        try:
            return open_upload(payload.path, max_pixels, payload.orig_name)
        except DataError as e:
            raise gr.Error(str(e), print_exception=False) from e

    component.preprocess = preprocess
    return component


def require_image(image: Image.Image | None, what: str = "an image") -> Image.Image:
    if image is None:
        raise DataError(f"no image given: upload {what} first (drop a file on the image box, or paste one)")
    return image


def checked_labels(text: str | None, max_labels: int) -> CleanLabels:
    """Labels from "cat, dog" or one per line; at most `max_labels` after cleaning."""
    if text is None or not str(text).strip():
        raise ConfigError("no labels given: type one or more labels separated by commas, e.g. 'cat, dog, bird'")
    clean = clean_labels(str(text))
    if len(clean.labels) > max_labels:
        raise ConfigError(
            f"{len(clean.labels):,} labels given; this app classifies with at most {max_labels:,} labels per request "
            f"(each label costs a text-encoder pass per template). Use fewer labels, or `vlm classify "
            f"--labels-file` on the command line for large label sets"
        )
    return clean


def checked_phrases(text: str | None, max_phrases: int) -> list[str]:
    """Phrases, one per line (or separated by commas); at most `max_phrases`."""
    if text is None or not str(text).strip():
        raise ConfigError("no phrases given: type what to find, e.g. 'the red circle' (one phrase per line)")
    lines = [p.strip() for p in str(text).replace(",", "\n").split("\n")]
    phrases = list(dict.fromkeys(p for p in lines if p))
    if len(phrases) > max_phrases:
        raise ConfigError(f"{len(phrases)} phrases given; segment at most {max_phrases} at a time")
    return phrases


def checked_text(text: str | None, what: str, max_chars: int) -> str:
    text = " ".join(str(text or "").split())
    if not text:
        raise ConfigError(f"no {what} given: type some words first")
    if len(text) > max_chars:
        raise ConfigError(f"the {what} is {len(text):,} characters long; keep it under {max_chars:,}")
    return text


def server_path(text: str | None, roots: Sequence[Path], what: str) -> Path:
    """A path on the server that people may name: it exists and lies inside one of `roots` (symlinks resolved)."""
    if text is None or not str(text).strip():
        raise ConfigError(f"no {what} given: type a path on the server")
    path = Path(str(text).strip()).expanduser().resolve()
    if not any(path == root or root in path.parents for root in (r.resolve() for r in roots)):
        allowed = ", ".join(str(r) for r in roots) or "none"
        raise ConfigError(
            f"{path} is outside the folders this app may read ({allowed}); start the app with --allow-dir "
            f"{path.parent} to allow it"
        )
    if not path.exists():
        raise DataError(f"{what} not found on the server: {path}")
    return path
