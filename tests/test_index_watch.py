"""indexing.watch / `vlm index sync --watch`, with real file events in a temporary folder: a burst of changes is one
sync, the watcher's own reads and the collection's own writes wake nothing, a failed sync is reported and the next
burst succeeds, Ctrl-C stops the observer cleanly. Waits are bounded; the debounce is short."""

from __future__ import annotations

import _thread
import queue
import shutil
import threading
import time
from pathlib import Path

import pytest

from indexing import versions
from indexing.collection import Collection
from indexing.config import WatchConfig
from indexing.embed import EmbedConfig
from indexing.errors import IndexingError
from indexing.watch import Watcher
from vlm import models
from vlm.cli import main
from vlm.synth import generate

FAST = EmbedConfig(batch_size=8, workers=0, shard_size=16)
QUICK = WatchConfig(debounce=0.4, max_delay=10.0)
WAIT = 120  # seconds: an upper bound for one sync of a few tiny images on a loaded machine


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("watch-shapes") / "data"
    generate(out, scenes=12, seed=3, image_size=32, progress=False)
    return out / "images"


def watchdog_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if type(t).__module__.startswith("watchdog") and t.is_alive()]


class Running:
    """A Watcher run in a thread; its sync results and errors arrive on queues."""

    def __init__(self, coll, folders):
        self.results: queue.Queue = queue.Queue()
        self.errors: queue.Queue = queue.Queue()
        self.watcher = Watcher(
            coll, folders, embed=FAST, config=QUICK, on_sync=self.results.put, on_error=self.errors.put
        )
        self.thread = threading.Thread(target=self.watcher.run, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.watcher.stop()
        self.thread.join(timeout=WAIT)
        assert not self.thread.is_alive()


def stored_paths(coll) -> set[str]:
    return {r.path for r in coll._v.store.files()}


def test_a_burst_is_one_sync_and_reads_and_own_writes_wake_nothing(tiny_encoders, shapes, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(3):
        shutil.copy(shapes / f"{i:06d}.png", photos / f"{i}.png")
    # The collection lives inside the watched folder: its own writes must not start a sync.
    coll = Collection.create(photos / "index.coll", tiny_encoders, root=photos)
    run = Running(coll, [photos])
    try:
        first = run.results.get(timeout=WAIT)
        assert first.added == 3
        for i in range(3, 9):  # a burst: six new images and a caption, within milliseconds
            shutil.copy(shapes / f"{i:06d}.png", photos / f"{i}.png")
        (photos / "3.txt").write_text("a caption\n")
        (photos / ".4.png.part").write_bytes(b"partial download")  # hidden: ignored
        burst = run.results.get(timeout=WAIT)
        assert (burst.added, burst.version) == (6, first.version + 1)
        assert coll.records(coll._v.store.ids())  # readable
        # The sync read every new file and wrote a version inside the folder: no event of that may start another.
        with pytest.raises(queue.Empty):
            run.results.get(timeout=QUICK.debounce * 4)
        (photos / "0.png").unlink()
        shutil.move(photos / "1.png", photos / "moved.png")
        after = run.results.get(timeout=WAIT)
        assert after.removed == ["0.png"] and after.moved == [("1.png", "moved.png")]
        on_disk = {p.name for p in photos.glob("*.png")}
        assert stored_paths(coll) == on_disk
        assert run.errors.empty()
    finally:
        run.stop()
        coll.close()
    assert not watchdog_threads()


def test_a_failed_sync_is_reported_and_the_next_burst_succeeds(tiny_encoders, shapes, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(shapes / "000000.png", photos / "0.png")
    coll = Collection.create(tmp_path / "coll", tiny_encoders, root=photos)
    run = Running(coll, [photos])
    try:
        version = run.results.get(timeout=WAIT).version
        (coll.root / "staging").write_text("in the way")  # a file where the sync stages its work: it fails
        shutil.copy(shapes / "000001.png", photos / "1.png")
        error = run.errors.get(timeout=WAIT)
        assert isinstance(error, OSError)
        assert versions.read_current(coll.root) == versions.version_name(version)  # unchanged
        (coll.root / "staging").unlink()
        shutil.copy(shapes / "000002.png", photos / "2.png")
        result = run.results.get(timeout=WAIT)
        assert result.added == 2  # the image the failed sync missed, and the new one
        assert run.watcher.errors == 1 and run.thread.is_alive()
    finally:
        run.stop()
        coll.close()


def test_ctrl_c_stops_the_cli_watcher_cleanly(tiny_encoders, shapes, tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(shapes / "000000.png", photos / "0.png")
    coll = str(tmp_path / "coll")
    model = models.save(tiny_encoders, tmp_path / "model")  # the CLI loads the model the collection records
    flags = ["--workers", "0", "--batch-size", "8", "--model", str(model), "--root", str(photos)]
    assert main(["index", "build", coll, str(photos / "0.png"), *flags]) == 0
    shutil.copy(shapes / "000001.png", photos / "1.png")

    def interrupt_after_the_first_sync() -> None:
        deadline = time.monotonic() + WAIT
        while versions.read_current(Path(coll)) == versions.version_name(1) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # back to waiting for events
        _thread.interrupt_main()  # what Ctrl-C does: KeyboardInterrupt in the main thread

    threading.Thread(target=interrupt_after_the_first_sync, daemon=True).start()
    assert main(["index", "sync", coll, str(photos), "--watch", "--debounce", "0.3", "--workers", "0"]) == 0
    out = capsys.readouterr().out
    assert "watching" in out and "1 added" in out
    assert "stopped after 1 sync(s), 0 failed; the collection is at version 2" in out
    assert not watchdog_threads()
    with Collection.open(coll) as reopened:
        assert {r.path for r in reopened._v.store.files()} == {"0.png", "1.png"}
        reopened.verify()


def test_bad_watch_settings_are_refused(tiny_encoders, tmp_path):
    coll = Collection.create(tmp_path / "coll", tiny_encoders)
    with pytest.raises(IndexingError, match="not one"):
        Watcher(coll, [tmp_path / "missing"])
    with pytest.raises(IndexingError, match="max_delay"):
        Watcher(coll, [tmp_path], config=WatchConfig(debounce=5, max_delay=1))
    coll.close()


def test_a_milvus_collection_is_watched_too(tiny_encoders, shapes, tmp_path):
    from collection_backends import MILVUS_MISSING

    if MILVUS_MISSING:
        pytest.skip(f"needs {' and '.join(MILVUS_MISSING)}")
    from indexing.milvus import MilvusCollection

    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(shapes / "000000.png", photos / "0.png")
    coll = MilvusCollection.create(photos / "lite.db", "watched", tiny_encoders, root=photos)  # its file in the folder
    run = Running(coll, [photos])
    try:
        assert run.results.get(timeout=WAIT).added == 1
        shutil.copy(shapes / "000001.png", photos / "1.png")
        assert run.results.get(timeout=WAIT).added == 1
        with pytest.raises(queue.Empty):  # Milvus Lite's own writes in the folder start nothing
            run.results.get(timeout=QUICK.debounce * 4)
        assert {r.path for r in coll.records(range(5)).values()} == {"0.png", "1.png"}
    finally:
        run.stop()
        coll.close()
