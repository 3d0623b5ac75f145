"""Checks on what people send, before any work: uploaded images, label lists, phrases, paths on the server.

Uploads are opened here, never by Gradio: `image_input` is a `gr.Image` whose preprocessing reads only the file's
header, refuses a file that is not an image or has more pixels than the limit (a 50-megapixel photo, or a
"decompression bomb": a tiny PNG that claims 100,000 x 100,000 pixels), and only then decodes it. Every refusal is a
`DataError`/`ConfigError` with a message that says what to do.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path

import gradio as gr
from PIL import Image, ImageOps, UnidentifiedImageError

from vlm.errors import ConfigError, DataError
from vlm.printable import printable
from vlm.readers.images import to_rgb
from vlm.zeroshot import CleanLabels, clean_labels

LOG = logging.getLogger(__name__)

MAX_LABEL_CHARS = 300  # like a template: far beyond the text encoder's 77 tokens
MAX_PATH_CHARS = 1024  # longer text is not a path anyone types
MAX_NUMBER_CHARS = 40  # a number sent as text
LARGEST_ID = 2**63 - 1  # SQLite's integer range: the collection's ids
HF_HUB_ID = re.compile(r"hf-hub:[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,95}")


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
    except DataError:
        raise  # the size check above: its message says what to do (a DataError is a ValueError, caught below)
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


API_EXAMPLE_IMAGE = "my_image.png"  # the API page shows handle_file('my_image.png'): a file on the caller's side


def local_example(component: gr.components.Component, name: str) -> gr.components.Component:
    """Make the API page's example for `component` (an upload) a file of the caller's own named `name`, not
    Gradio's sample on the web (an offline server's users could not fetch it, and it says nothing about what this
    app expects). Not a subclass, for the same reason as `image_input`."""
    component.example_payload = lambda: {"path": name, "orig_name": name, "meta": {"_type": "gradio.FileData"}}
    component.example_value = lambda: name
    return component


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
    return local_example(component, API_EXAMPLE_IMAGE)


def require_image(image: Image.Image | None, what: str = "an image") -> Image.Image:
    if image is None:
        raise DataError(f"no image given: upload {what} first (drop a file on the image box, or paste one)")
    return image


def checked_labels(text: str | None, max_labels: int) -> CleanLabels:
    """Labels from "cat, dog" or one per line; at most `max_labels` after cleaning, of at most `MAX_LABEL_CHARS`
    characters each (checked on the whole text first, before any splitting or tokenizing)."""
    if text is None or not str(text).strip():
        raise ConfigError("no labels given: type one or more labels separated by commas, e.g. 'cat, dog, bird'")
    if len(str(text)) > max_labels * (MAX_LABEL_CHARS + 2):
        raise ConfigError(
            f"the labels are {len(str(text)):,} characters long; this app takes at most {max_labels:,} labels of "
            f"{MAX_LABEL_CHARS} characters"
        )
    clean = clean_labels(str(text))
    long = [label for label in clean.labels if len(label) > MAX_LABEL_CHARS]
    if long:
        raise ConfigError(
            f"{len(long)} label(s) are longer than {MAX_LABEL_CHARS} characters (the text encoder reads about 77 "
            f"tokens); shorten them"
        )
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


def server_path(text: str | None, allowed_dirs: Sequence[Path], what: str = "path") -> Path:
    """A path on the server that people may name: it exists and lies inside one of `allowed_dirs` (symlinks
    resolved). A missing path, one outside, a NUL byte or an overlong text all get the same message, so the answer
    tells nothing about what exists elsewhere on the server."""
    raw = "" if text is None else str(text).strip()
    if not raw:
        raise ConfigError(f"no {what} given: type a path on the server")
    path = _existing_inside(raw, allowed_dirs)
    if path is None:
        allowed = ", ".join(printable(str(d)) for d in allowed_dirs) or "none"
        raise ConfigError(
            f"{what} {printable(raw[:200])!r} does not exist or is outside the folders this app may read "
            f"({allowed}); the server's owner can allow another folder with --allow-dir"
        )
    return path


def _existing_inside(raw: str, allowed_dirs: Sequence[Path]) -> Path | None:
    if len(raw) > MAX_PATH_CHARS or "\x00" in raw:
        return None
    try:
        path = Path(raw).expanduser().resolve()
        roots = [Path(d).resolve() for d in allowed_dirs]
        if not any(path == root or root in path.parents for root in roots):
            return None  # checked before `exists`: nothing outside is even looked at
        return path if path.exists() else None
    except (OSError, ValueError, RuntimeError):  # an unknown ~user, a symlink loop, an overlong name
        return None


def checked_model(model: str | None, pretrained: str | None, allowed_dirs: Sequence[Path]) -> tuple[str, str | None]:
    """A model people typed: "demo", a name from open_clip's list (with "" or one of its pretrained tags, or a
    weights file inside `allowed_dirs`), an `hf-hub:org/name` id, or a checkpoint folder inside `allowed_dirs`.
    Returns (model, pretrained) as `vlm.models.load` takes them; a path comes back resolved."""
    import open_clip

    from vlm.models import register_model_configs

    name = "" if model is None else str(model).strip()
    tag = ("" if pretrained is None else str(pretrained).strip()) or None
    if not name:
        raise ConfigError("no model given: type a model name or choose one from the list")
    if name == "demo" or HF_HUB_ID.fullmatch(name):
        return name, tag
    register_model_configs()
    if name in open_clip.list_models():
        if tag is None or tag in open_clip.list_pretrained_tags_by_model(name):
            return name, tag
        return name, str(server_path(tag, allowed_dirs, "pretrained weights file"))
    if len(name) > MAX_PATH_CHARS or not ("/" in name or name.startswith(("~", "."))):
        raise ConfigError(
            f"unknown model {printable(name[:200])!r}: give 'demo', an open_clip name (e.g. ViT-B-32), an "
            f"hf-hub:org/name id, or a checkpoint folder on the server"
        )
    return str(server_path(name, allowed_dirs, "model folder")), tag


def checked_int(value: object, what: str, lo: int, hi: int) -> int:
    """A whole number from the web within [lo, hi]; NaN, infinities, fractions, huge values and non-numbers are
    refused with a message (Gradio's Number and Slider send floats, and an API client may send anything)."""
    number = _number(value, what, lo, hi)
    if number != int(number):
        raise ConfigError(f"{what} must be a whole number, got {number}")
    return int(number)


def checked_float(value: object, what: str, lo: float, hi: float) -> float:
    """A finite number from the web within [lo, hi]."""
    return float(_number(value, what, lo, hi))


def _number(value: object, what: str, lo: float, hi: float) -> float | int:
    bounds = f"between {lo:,} and {hi:,}"
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ConfigError(f"{what} must be a number {bounds}, got {type(value).__name__}")
    if isinstance(value, str):
        if len(value) > MAX_NUMBER_CHARS:
            raise ConfigError(f"{what} must be a number {bounds}")
        try:
            value = float(value)
        except ValueError:
            raise ConfigError(f"{what} must be a number {bounds}, got {printable(value)!r}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{what} must be a finite number {bounds}, got {value}")
    if not lo <= value <= hi:
        shown = f"{value:,}" if abs(value) <= 10**18 else "a larger value"
        raise ConfigError(f"{what} must be {bounds}, got {shown}")
    return value
