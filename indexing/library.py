"""A library of collections: one collection per model fingerprint over the same inputs, and the demo collection.

Vectors from one model cannot be searched with another, so a library keeps one collection per model fingerprint
(`<home>/collection-<fingerprint>`) and remembers its inputs in `<home>/sources.json`: switching to another model
reopens that model's collection, or embeds the same inputs afresh. Three kinds:
    demo      the shipped Twemoji and icons, and synthetic scenes (`build_demo_collection`), plus folders added later
    folders   the given image folders, plus folders added later
    existing  a collection built with `vlm index build` (a folder holding one): opened as it is; it can only be
              searched with the model that built it
The app (`ui/`) keeps one `Library`; this module owns the layout of its home folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from indexing.collection import Collection
from indexing.config import EmbedConfig
from indexing.errors import IndexingError
from indexing.results import AddResult, SyncResult
from indexing.versions import CURRENT, lock
from vlm import demo
from vlm.atomic import atomic_write_json
from vlm.errors import ConfigError
from vlm.models import Encoders
from vlm.synth import generate

LOG = logging.getLogger(__name__)

SOURCES = "sources.json"
# Decode in this process: DataLoader workers would fork a process that may run web-server threads.
EMBED = EmbedConfig(batch_size=64, workers=0)

TIMED_IMAGES = 8  # images decoded, preprocessed and embedded to estimate how long embedding a collection takes
DEMO_COLLECTION_SCENES = 300
DEMO_COLLECTION_SEED = 7  # not the training seed (0): the scenes in the demo collection are new to the demo model
DEMO_COLLECTIONS_KEPT = 3  # collections of other models' fingerprints kept beside the current one's images


def default_cache_dir() -> Path:
    """`$XDG_CACHE_HOME/vlm` or `~/.cache/vlm`."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "vlm"


@dataclass(frozen=True)
class EmbedPlan:
    """What opening a library's collection for a model costs: `images` to embed (0: it has its collection already),
    at `seconds_per_image` timed on this machine over `timed` images."""

    images: int
    seconds_per_image: float
    timed: int

    @property
    def seconds(self) -> float:
        return self.images * self.seconds_per_image

    def describe(self) -> str:
        if self.images == 0:
            return "this model's collection is ready: nothing to embed"
        minutes, seconds = divmod(round(self.seconds), 60)
        took = f"{minutes} min {seconds:02d} s" if minutes else f"{seconds} s"
        return (
            f"embedding {self.images:,} images with this model takes about {took} here ({self.seconds_per_image:.3f} s "
            f"per image, timed on {self.timed} images: decoding, preprocessing and the image encoder)"
        )


def seconds_per_image(encoders: Encoders, count: int = TIMED_IMAGES) -> float:
    """Wall time per image to preprocess and embed `count` 256 x 256 images with `encoders`, after a warm-up image,
    in one batch as the collection's builder does. Uses the process's threads as they are set."""
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)) for _ in range(count + 1)]
    encoders.encode_image(encoders.preprocess(images[0])[None])  # warm-up: first-call allocations
    start = time.perf_counter()
    encoders.encode_image(torch.stack([encoders.preprocess(im) for im in images[1:]]))
    return (time.perf_counter() - start) / count


@dataclass
class Library:
    kind: str  # "demo", "folders" or "existing"
    home: Path  # the folder holding sources.json and one collection per model (for "existing": the collection)
    images: list[Path] = field(default_factory=list)  # the image folders given at start

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
        """Inputs beyond the defaults: the --images folders and folders added later, in order."""
        extra = []
        if (self.home / SOURCES).is_file():
            extra = [Path(p) for p in json.loads((self.home / SOURCES).read_text(encoding="utf-8"))]
        return list(dict.fromkeys([*self.images, *extra]))

    def collection_path(self, encoders: Encoders) -> Path:
        """Where this library keeps (or would keep) the collection embedded by `encoders`."""
        if self.kind == "existing":
            return self.home
        return self.home / f"collection-{encoders.fingerprint[:16]}"

    def embed_plan(self, encoders: Encoders, images: int) -> EmbedPlan:
        """The cost of `open_for(encoders)` when the library holds `images` images (the active collection's count):
        nothing if this model's collection exists, else every image, timed on a few (`seconds_per_image`)."""
        path = self.collection_path(encoders)
        if (path / CURRENT).exists():  # built, or begun and stopped: what it lacks is still to embed
            if self.kind == "existing":
                return EmbedPlan(0, 0.0, 0)
            built = Collection.open(path, read_only=True, encoders=encoders)
            images -= built.count
            built.close()
            if images <= 0:
                return EmbedPlan(0, 0.0, 0)
        return EmbedPlan(images, seconds_per_image(encoders), TIMED_IMAGES)

    def open_for(
        self, encoders: Encoders, progress: bool = True, should_stop: Callable[[], bool] | None = None
    ) -> Collection:
        """This library's collection for `encoders`: reopened if it exists, else built (slow: embeds every image).
        `should_stop`: asked before every batch embedded; yes raises `EmbedStopped` (the collection is closed, what
        was embedded is kept for the next `open_for`)."""
        if self.kind == "existing":
            coll = Collection.open(self.home, read_only=False, encoders=encoders)
        elif self.kind == "demo":
            return build_demo_collection(self.home, encoders, progress=progress, should_stop=should_stop)
        else:
            path = self.collection_path(encoders)
            root = self.images[0] if self.images else None
            coll = Collection.create(path, encoders, root=root, exist_ok=True)
            carry_exclusions(self.home, coll)
        sources = self.sources()
        if sources:
            add_or_close(coll, sources, progress, should_stop)  # only what is missing is embedded
        return coll

    def add_folder(self, coll: Collection, folder: Path, progress: bool = True) -> AddResult:
        """Add a folder's images to `coll` and remember it, so another model's collection gets it too."""
        result = coll.add(folder, embed=EMBED, progress=progress)
        if self.kind != "existing" and folder not in self.sources():
            extra = [str(p) for p in self.sources() if p not in self.images] + [str(folder)]
            self.home.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.home / SOURCES, extra)
        return result

    def rescan_folders(self, coll: Collection) -> list[Path]:
        """The folders a rescan follows: the --images folders and folders added later (the demo's own icons and
        scenes were added from their caption lists, which a folder sync would not read, so they are left alone);
        for an existing collection with none of those, its root folder."""
        folders = self.sources()
        if not folders and self.kind == "existing" and coll.root_dir is not None:
            folders = [coll.root_dir]
        return folders

    def rescan(self, coll: Collection, progress: bool = True) -> tuple[SyncResult, list[Path]]:
        """Sync `coll` with `rescan_folders` (new files added, changed ones re-embedded, deleted ones removed; one
        new version). Folders that no longer exist are skipped, their images kept; returns them beside the result."""
        folders = self.rescan_folders(coll)
        present = [f for f in folders if f.is_dir()]
        if not present:
            missing = ", ".join(str(f) for f in folders) or "none"
            raise IndexingError(
                f"nothing to rescan: this collection follows no folder that exists (folders: {missing})"
            )
        return coll.sync(present, embed=EMBED, progress=progress), [f for f in folders if not f.is_dir()]


def add_or_close(coll: Collection, inputs: list[Path], progress: bool, should_stop: Callable[[], bool] | None) -> None:
    """`coll.add(inputs)`; a stopped (or failed) add closes `coll` (its write lock) before the error goes on."""
    try:
        coll.add(inputs, embed=EMBED, progress=progress, should_stop=should_stop)
    except BaseException:
        coll.close()
        raise


def build_demo_collection(
    dest: str | Path, encoders: Encoders, progress: bool = True, should_stop: Callable[[], bool] | None = None
) -> Collection:
    """The app's default collection: the shipped image sets (`vlm.demo.collection_sets`: Twemoji, and icons no demo
    model trained on) and a few hundred synthetic scenes, embedded by `encoders`.

    The images are written once into `dest` (`twemoji/`, `icons/`, `shapes/`) and shared by every model; each model
    gets its own collection `dest/collection-<fingerprint>`, so a model whose weights changed is embedded afresh and a
    model used before is reopened at once. Collections of other models beyond the newest `DEMO_COLLECTIONS_KEPT`
    are deleted. Returns the collection, open for writing (read-only when another process is writing it).
    """
    dest = Path(dest)
    shapes = dest / "shapes"
    if not (shapes / "pairs.csv").is_file():
        generate(shapes, DEMO_COLLECTION_SCENES, DEMO_COLLECTION_SEED, 128, progress=progress)
    lists = []
    for name, src in demo.collection_sets().items():
        if not (dest / name / "pairs.csv").is_file():
            demo.copy_collection_set(src, dest / name)
        lists.append(dest / name / "pairs.csv")
    path = dest / f"collection-{encoders.fingerprint[:16]}"  # as Library.collection_path
    try:
        coll = Collection.create(path, encoders, root=dest, exist_ok=True)
    except IndexingError:
        if not (path / CURRENT).exists():
            raise
        LOG.warning("%s is being written by another process; opening it read-only", path)
        return Collection.open(path, read_only=True, encoders=encoders)
    if coll.writable:
        carry_exclusions(dest, coll)
    add_or_close(coll, [*lists, shapes / "pairs.csv"], progress, should_stop)  # adds only what is missing
    path.touch()  # most recently used first when pruning
    prune_collections(dest, keep=path)
    return coll


def carry_exclusions(home: Path, coll: Collection) -> None:
    """Images removed for good from another model's collection in `home` (the app's Remove) stay out of `coll` too:
    the same inputs, so the same stored paths. Read from the others' published versions; a collection that cannot be
    opened is skipped."""
    entries: dict[str, str] = {}
    for other in sorted(home.glob("collection-*")):
        if other.resolve() == coll.root.resolve() or not (other / CURRENT).exists():
            continue
        try:
            with Collection.open(other) as reader:
                entries.update({e.path: e.sha256 for e in reader.excluded()})
        except IndexingError as e:
            LOG.warning("not carrying the exclusions of %s over: %s", other, e)
    if entries and (n := coll.keep_out(sorted(entries.items()))):
        LOG.info("%d image(s) removed from another model's collection kept out of this one too", n)


def prune_collections(dest: Path, keep: Path) -> None:
    """Delete the least recently used collections of other models in `dest`, skipping any another process is writing;
    the newest `DEMO_COLLECTIONS_KEPT` (with `keep`) stay."""
    others = sorted((p for p in dest.glob("collection-*") if p != keep), key=lambda p: p.stat().st_mtime)
    for old in others[: max(0, len(others) - (DEMO_COLLECTIONS_KEPT - 1))]:
        try:
            fd = lock(old)
        except IndexingError:
            continue
        try:
            shutil.rmtree(old)
        finally:
            os.close(fd)
        LOG.info("deleted the demo collection of an older model: %s", old)
