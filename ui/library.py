"""Where the app's image collection lives, and what goes in it, whatever the active model.

Vectors from one model cannot be searched with another, so a library keeps one collection per model fingerprint
(`<home>/collection-<fingerprint>`) and remembers its inputs in `<home>/sources.json`: switching to another model
reopens that model's collection, or embeds the same inputs afresh. Three kinds:
    demo      the Twemoji icons and synthetic scenes (`vlm.demo.build_demo_collection`), plus folders added later
    folders   the folders given with --images, plus folders added later
    existing  a collection built with `vlm index build` (--collection DIR holding one): opened as it is; it can only
              be searched with the model that built it
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from indexing.collection import AddResult, Collection
from indexing.config import EmbedConfig
from indexing.versions import CURRENT
from vlm.atomic import atomic_write_json
from vlm.errors import ConfigError
from vlm.models import Encoders

LOG = logging.getLogger(__name__)

SOURCES = "sources.json"
# Decode in the serving process: DataLoader workers would fork a process that runs web-server threads.
EMBED = EmbedConfig(batch_size=64, workers=0)


def default_cache_dir() -> Path:
    """`$XDG_CACHE_HOME/vlm` or `~/.cache/vlm`."""
    import os

    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "vlm"


@dataclass
class Library:
    kind: str  # "demo", "folders" or "existing"
    home: Path  # the folder holding sources.json and one collection per model (for "existing": the collection)
    images: list[Path] = field(default_factory=list)  # the --images folders

    @classmethod
    def choose(cls, *, images: list[Path], collection: Path | None, cache_dir: Path) -> Library:
        """The library for the app's arguments: --collection DIR (an existing collection, or a home for a new one),
        --images DIR..., or the demo."""
        images = [Path(p).expanduser().resolve() for p in images]
        for folder in images:
            if not folder.is_dir():
                raise ConfigError(f"--images {folder}: not a folder; give a folder of images")
        if collection is not None:
            collection = Path(collection).expanduser().resolve()
            if (collection / CURRENT).exists():
                if images:
                    LOG.info("adding the --images folders to the existing collection %s", collection)
                return cls("existing", collection, images)
            return cls("folders" if images else "demo", collection, images)
        if images:
            digest = hashlib.sha256("\n".join(map(str, images)).encode()).hexdigest()[:12]
            return cls("folders", cache_dir / "collections" / f"{images[0].name}-{digest}", images)
        return cls("demo", cache_dir / "demo-collection", [])

    @property
    def is_demo(self) -> bool:
        return self.kind == "demo"

    def sources(self) -> list[Path]:
        """Inputs beyond the defaults: the --images folders and folders added from the UI, in order."""
        extra = []
        if (self.home / SOURCES).is_file():
            extra = [Path(p) for p in json.loads((self.home / SOURCES).read_text(encoding="utf-8"))]
        return list(dict.fromkeys([*self.images, *extra]))

    def open_for(self, encoders: Encoders, progress: bool = True) -> Collection:
        """This library's collection for `encoders`: reopened if it exists, else built (slow: embeds every image)."""
        if self.kind == "existing":
            coll = Collection.open(self.home, read_only=False, encoders=encoders)
        elif self.kind == "demo":
            from vlm.demo import build_demo_collection

            coll = build_demo_collection(self.home, encoders, progress=progress)
        else:
            path = self.home / f"collection-{encoders.fingerprint[:16]}"
            root = self.images[0] if self.images else None
            coll = Collection.create(path, encoders, root=root, exist_ok=True)
        sources = self.sources()
        if sources:
            coll.add(sources, embed=EMBED, progress=progress)  # only what is missing is embedded
        return coll

    def add_folder(self, coll: Collection, folder: Path, progress: bool = True) -> AddResult:
        """Add a folder's images to `coll` and remember it, so another model's collection gets it too."""
        result = coll.add(folder, embed=EMBED, progress=progress)
        if self.kind != "existing" and folder not in self.sources():
            extra = [str(p) for p in self.sources() if p not in self.images] + [str(folder)]
            self.home.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.home / SOURCES, extra)
        return result
