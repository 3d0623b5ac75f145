"""Keeping a collection in step with its folders: a sync after each burst of file changes (`vlm index sync --watch`).

    watcher = Watcher(coll, ["photos/"], on_sync=print)
    watcher.run()        # syncs once, then after every burst of changes, until `watcher.stop()` or Ctrl-C

File events come from the `watchdog` library (inotify on Linux, FSEvents on macOS, ReadDirectoryChangesW on
Windows). They only say *that* something changed: what to add, re-embed, move or remove is worked out by an ordinary
`Collection.sync` of the folders, which compares them with the collection in full, so a lost or coalesced event
costs nothing but a little delay. Copying 500 photos into a folder makes thousands of events; they are debounced
into one sync: it starts once no event has come for `WatchConfig.debounce` seconds (or `max_delay` after the first
event of a burst that never pauses). Events during a sync start the next one.

Events that cannot change a sync's outcome are ignored: files opened or read (a sync reads every file it hashes or
embeds, and must not wake itself up), hidden names (editors' and downloaders' temporary files), files that are
neither images nor sidecar captions, and anything inside the collection's own folder (its writes).

A sync that fails (a folder removed, a disk full) is reported through `on_error` and the watcher keeps going: the
collection is unchanged by a failed sync (`Collection.sync` commits once, at its end), and the next burst of
events tries again. Ctrl-C (KeyboardInterrupt) or `stop()` ends `run` cleanly: the observer thread is stopped and
joined; an interrupted sync has committed nothing and its embedded shards are resumed by the next sync.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from indexing.config import EmbedConfig, WatchConfig
from indexing.errors import IndexingError
from indexing.results import SyncResult
from vlm.readers.images import IMAGE_EXTS

LOG = logging.getLogger(__name__)

# Event types that may change what a sync finds: watchdog's "opened" and "closed_no_write" (a read) are left out.
CHANGES = {"created", "deleted", "modified", "moved", "closed", "attrib", "events_lost"}
WATCHED_SUFFIXES = {*IMAGE_EXTS, ".txt"}  # images, and the sidecar captions a folder sync reads


def relevant(event, ignore: str) -> bool:
    """Whether a watchdog event may change a sync of the watched folders. `ignore`: a real folder path (with a
    trailing separator) whose events are the collection's own writes."""
    if event.event_type not in CHANGES:
        return False
    if event.event_type == "events_lost":
        return True  # the kernel's queue overflowed: anything may have changed
    if event.is_directory and event.event_type in ("modified", "attrib", "closed"):
        return False  # a folder's own timestamps: the change inside it comes as its own event
    paths = [event.src_path, getattr(event, "dest_path", "") or ""]
    return any(_relevant_path(os.fsdecode(p), event.is_directory, ignore) for p in paths if p)


def _relevant_path(path: str, is_directory: bool, ignore: str) -> bool:
    if os.path.join(os.path.realpath(path), "").startswith(ignore):
        return False
    name = os.path.basename(path)
    if name.startswith("."):
        return False
    return is_directory or os.path.splitext(name)[1].lower() in WATCHED_SUFFIXES


class _Burst:
    """Relevant events since the last sync began: when the first and the last came, how many."""

    def __init__(self):
        self.cond = threading.Condition()
        self.first: float | None = None
        self.last: float | None = None
        self.events = 0
        self.stopping = False

    def note(self) -> None:
        with self.cond:
            now = time.monotonic()
            self.first = self.first if self.first is not None else now
            self.last = now
            self.events += 1
            self.cond.notify_all()

    def stop(self) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify_all()

    def wait(self, debounce: float, max_delay: float) -> int | None:
        """Block until a burst is over, then take it: its event count; None once `stop` was called. Waits in short
        slices, so Ctrl-C in the calling (main) thread is seen at once."""
        with self.cond:
            while True:
                if self.stopping:
                    return None
                if self.last is not None:
                    due = min(self.last + debounce, self.first + max_delay)
                    if time.monotonic() >= due:
                        events, self.first, self.last, self.events = self.events, None, None, 0
                        return events
                    self.cond.wait(min(due - time.monotonic(), 0.5))
                else:
                    self.cond.wait(0.5)


class Watcher:
    """Syncs `coll` (an `ImageCollection` opened writable: FAISS or Milvus) over `folders` once at start, then after
    each burst of changes there."""

    def __init__(
        self,
        coll,
        folders: Sequence[str | Path],
        *,
        embed: EmbedConfig | None = None,
        config: WatchConfig | None = None,
        on_sync: Callable[[SyncResult], None] | None = None,
        on_error: Callable[[Exception], None] | None = None,
        progress: bool = False,
    ):
        self.coll = coll
        self.folders = [Path(f).expanduser() for f in folders]
        self.embed = embed
        self.config = config or WatchConfig()
        if not self.config.debounce >= 0 or not self.config.max_delay >= self.config.debounce:
            raise IndexingError(
                f"watch timing: debounce {self.config.debounce} s must be >= 0 and max_delay "
                f"{self.config.max_delay} s >= debounce"
            )
        for folder in self.folders:
            if not folder.is_dir():
                raise IndexingError(f"--watch takes folders, and {folder} is not one (missing, or a file)")
        self.on_sync = on_sync or (lambda result: LOG.info("%s", result.summary()))
        self.on_error = on_error or (lambda e: LOG.warning("sync failed, still watching: %s", e))
        self.progress = progress
        self.syncs = 0  # syncs finished, the first one included
        self.errors = 0  # syncs that failed
        self.events = 0  # relevant events seen
        self._burst = _Burst()
        # The collection's own writes: its folder (FAISS), else its staging folder (Milvus Lite writes one .db file,
        # which is not an image and so is ignored anyway).
        own = getattr(coll, "root", None) or coll.staging_dir
        self._ignore = os.path.join(os.path.realpath(own), "")

    def stop(self) -> None:
        """Make `run` return after the sync in progress, if any (callable from any thread)."""
        self._burst.stop()

    def run(self) -> None:
        """Watch until `stop()` or KeyboardInterrupt (re-raised once the observer is stopped)."""
        try:
            from watchdog.events import FileSystemEventHandler
            from watchdog.observers import Observer
        except ImportError as e:
            raise IndexingError(
                "watching folders needs the watchdog library: pip install 'vlm-zeroshot[watch]' (or watchdog)"
            ) from e

        burst, ignore = self._burst, self._ignore

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event) -> None:
                if relevant(event, ignore):
                    burst.note()

        observer = Observer()
        handler = Handler()
        for folder in self.folders:
            observer.schedule(handler, str(folder), recursive=True)
        observer.start()  # before the first sync: a change made during it starts the next one
        try:
            self._sync()
            while (events := burst.wait(self.config.debounce, self.config.max_delay)) is not None:
                self.events += events
                self._sync()
        finally:
            observer.stop()
            observer.join(timeout=10)

    def _sync(self) -> None:
        try:
            result = self.coll.sync(self.folders, embed=self.embed, progress=self.progress)
        except Exception as e:  # reported; the collection is unchanged and the next burst tries again
            self.errors += 1
            self.on_error(e)
            return
        self.syncs += 1
        self.on_sync(result)
