"""Result images as files, handed to Gradio by path.

Gradio writes an image returned as a PIL object into its cache under a name made from its content, rewriting the
file in place on every request; when two requests produce the same picture at once, a browser (or client) can read
the file while the other rewrites it and get a truncated image (seen once in 930 requests of bench/app_load.py).
A path is copied into Gradio's cache only when absent. So results are written here first, atomically, named by the
hash of their PNG bytes; thumbnails of collection images are named by the image's pixel hash, which the collection
stores, and written once.

The folder is in the system temp directory, where Gradio accepts returned files without widening `allowed_paths`
(nothing is served from it directly: Gradio serves its own copy). Files unused for an hour are deleted.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import tempfile
import threading
import time
from pathlib import Path

from PIL import Image

from indexing.collection import Collection
from indexing.store import ImageRecord
from vlm.atomic import atomic_write_bytes

LOG = logging.getLogger(__name__)

DEFAULT_FOLDER = Path(tempfile.gettempdir()) / f"vlm-app-images-{os.getuid()}"
THUMB_SIDE = 256
MAX_AGE_S = 3600.0  # files not used for this long are deleted
PRUNE_EVERY_S = 600.0


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


class ResultFiles:
    """The folder of result images and thumbnails; thread-safe (files are written atomically, names are hashes)."""

    def __init__(self, folder: Path = DEFAULT_FOLDER):
        self.folder = Path(folder)
        self._pruned = time.monotonic()
        self._lock = threading.Lock()

    def image(self, image: Image.Image) -> str:
        """`image` as a PNG file named by its content."""
        data = _png(image)
        return self._keep(f"r-{hashlib.sha256(data).hexdigest()[:40]}.png", lambda: data)

    def thumbnail(self, coll: Collection, record: ImageRecord) -> str:
        """A thumbnail (at most THUMB_SIDE pixels a side) of one image of `coll`, made once."""

        def make() -> bytes:
            image = coll.open_image(record.id)
            image.thumbnail((THUMB_SIDE, THUMB_SIDE), Image.Resampling.LANCZOS)
            return _png(image)

        return self._keep(f"t-{record.sha256[:40]}.png", make)

    def _keep(self, name: str, data) -> str:
        path = self.folder / name
        if path.is_file():
            os.utime(path)  # used again: spared by the pruning
        else:
            self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            atomic_write_bytes(path, data())
        self._maybe_prune()
        return str(path)

    def _maybe_prune(self) -> None:
        with self._lock:
            if time.monotonic() - self._pruned < PRUNE_EVERY_S:
                return
            self._pruned = time.monotonic()
        cutoff = time.time() - MAX_AGE_S
        for path in self.folder.glob("*.png"):
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
            except FileNotFoundError:  # another thread deleted it first
                continue
