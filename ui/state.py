"""The app's one shared mutable object: the active model and its collection, loaded once and swapped as one.

Handlers read `state.active` once per request and use that snapshot throughout, so a model switch never mixes
one model's query with another model's vectors. A switch loads the new model and opens (or embeds) its collection
while requests go on being served by the old pair, then replaces the snapshot in one assignment; a lock lets one
switch run at a time.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

from indexing.collection import Collection
from indexing.library import Library
from ui.files import ResultFiles
from ui.jobs import TrainRunner
from ui.limits import Limits
from vlm import models
from vlm.calibration import reference_fit
from vlm.errors import VLMError
from vlm.models import Encoders
from vlm.segment.absent import absent_threshold
from vlm.zeroshot import ClassifierCache

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelChoice:
    """A model as people name it: what `vlm.models.load` takes."""

    model: str
    pretrained: str | None = None

    def __str__(self) -> str:
        return f"{self.model} + {self.pretrained}" if self.pretrained else self.model


@dataclass(frozen=True, eq=False)
class Active:
    choice: ModelChoice
    encoders: Encoders
    collection: Collection

    @property
    def is_demo(self) -> bool:
        return self.choice.model == "demo"


class SwitchInProgress(VLMError):
    """Another model switch is running."""


@dataclass
class AppState:
    """Everything handlers share. Build it, `start()` it (loads the model and its collection), then serve."""

    choice: ModelChoice
    library: Library
    runs_dir: Path  # training runs started from the app go under it
    limits: Limits = field(default_factory=Limits)
    allowed_dirs: tuple[Path, ...] = ()  # folders whose paths people may type (add a folder, train on a dataset)
    device: str | None = None  # None: CUDA when available
    classifiers: ClassifierCache = field(default_factory=ClassifierCache)
    files: ResultFiles = field(default_factory=ResultFiles)  # result images, handed to Gradio by path
    # Measure, in the background, the figures answers need from a newly active model (Classify's "fits" thresholds,
    # Segment's "absent" threshold: 10-60 s on a CPU, then kept on disk by `vlm.measured`), so that the first
    # visitor does not wait for them. The server turns it on; tests and scripts that never ask need not pay for it.
    warm_up: bool = False

    def __post_init__(self) -> None:
        self._active: Active | None = None
        self._swap = threading.Lock()
        self.switching: ModelChoice | None = None  # a switch under way (shown to every page until it ends)
        self._held: tuple[ModelChoice, Encoders] | None = None  # loaded, waiting for people to confirm the switch
        self._stop = threading.Event()  # set: the switch under way stops embedding (`stop_switch`)
        self.warming: threading.Thread | None = None  # the latest warm-up (`warm_up`), for whoever wants to wait
        self.trainer = TrainRunner(self.runs_dir, upload_retention_s=self.limits.upload_retention_hours * 3600)

    @property
    def active(self) -> Active:
        if self._active is None:
            raise VLMError("the app is still starting: the model is loading; try again in a moment")
        return self._active

    def start(self, progress: bool = True) -> Active:
        return self.switch(self.choice, progress=progress)

    def hold(self, choice: ModelChoice, encoders: Encoders) -> None:
        """Keep `choice`, loaded, until a switch to it is confirmed (`switch` takes it) or `release`d; one at a time."""
        self._held = (choice, encoders)

    def release(self) -> bool:
        """Drop a held model; whether there was one."""
        held, self._held = self._held, None
        return held is not None

    def stop_switch(self) -> bool:
        """Ask the switch under way to stop embedding (before its next batch); whether one was under way."""
        if self.switching is None:
            return False
        self._stop.set()
        return True

    def switch(self, choice: ModelChoice, progress: bool = True) -> Active:
        """Load `choice` (or take it from `hold`) and its collection (embedding the library's images if this model
        has no collection yet), then make them active. Raises `ModelError` (unknown name, offline download, bad
        checkpoint) or `EmbedStopped` (`stop_switch`: what was embedded is kept for the next switch to this model)
        and leaves the active model as it was."""
        if not self._swap.acquire(blocking=False):
            raise SwitchInProgress("another model switch is in progress; wait for it to finish")
        try:
            self._stop.clear()
            self.switching = choice
            LOG.info("loading model %s", choice)
            held, self._held = self._held, None
            if held is not None and held[0] == choice:
                encoders = held[1]
            else:
                # ONNX Runtime on a CPU when the model was exported (vlm/onnx_runtime.py), else PyTorch
                encoders = models.load(choice.model, choice.pretrained, device=self.device, runtime="auto")
            previous = self._active
            if previous is not None and previous.encoders.fingerprint == encoders.fingerprint:
                collection = previous.collection  # same weights: same vectors
            else:
                collection = self.library.open_for(encoders, progress=progress, should_stop=self._stop.is_set)
            self._active = Active(choice, encoders, collection)
            if previous is not None and previous.collection is not collection:
                previous.collection.close()  # releases its write lock; requests still holding it can search on
            LOG.info("active model: %s (%d images in the collection)", encoders.source, collection.count)
            if self.warm_up:
                self.warming = threading.Thread(target=_warm_up, args=(encoders,), name="vlm-warm-up", daemon=True)
                self.warming.start()
            return self._active
        finally:
            self.switching = None
            self._swap.release()

    def close(self) -> None:
        """Stop a training run started here and release the collection's lock."""
        self.trainer.close()
        if self._active is not None:
            self._active.collection.close()


def _warm_up(encoders: Encoders) -> None:
    """Measure what the first Classify/Segment answer with `encoders` would otherwise wait for (a request asking at
    the same moment waits for this measurement instead of making its own: `vlm.measured`)."""
    for measure in (reference_fit, absent_threshold):
        try:
            measure(encoders)
        except Exception:  # a figure that cannot be measured now is measured (and its error shown) on first use
            LOG.warning("warm-up: %s failed for %s", measure.__name__, encoders.source, exc_info=True)
