"""Figures measured once per set of weights, kept on disk so that a restart does not measure them again.

Some answers need a figure measured with the model itself: Classify's "none of the labels fits well" threshold
(`vlm.calibration`), Segment's "absent" threshold (`vlm.segment.absent`). Measuring takes 10-90 s on a CPU; the
result depends only on the weights and on how it is measured, so it is cached under

    $VLM_MEASURED_DIR, else $XDG_CACHE_HOME/vlm/measured, else ~/.cache/vlm/measured

(the project's cache convention: the app's collections live in `$XDG_CACHE_HOME/vlm` too), one JSON file per
(kind, weights):

    cal = remember("classify-fit", 2, encoders.fingerprint, measure=lambda: {...}, parse=FitCalibration.from_dict)

- The file name is made of `kind` (a constant of the calling module) and the weights' fingerprint (a hash this
  project computed), both checked against a strict pattern; anything else that the figure depends on (a method, a
  decoder's fingerprint) goes into `extra`, which only enters the name as a hash. Nothing a user types can reach a
  path.
- `version` is the measurement's version: a caller bumps it when how it measures changes (other reference data,
  another rule), and a file written by another version, for other weights or another `extra` is measured again.
- Writes are atomic (`vlm.atomic`); a file that cannot be read or parsed (a crash, a hand edit) is measured again
  and replaced, and a folder that cannot be written only costs the next restart a new measurement (logged).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from vlm.atomic import atomic_write_json

LOG = logging.getLogger(__name__)
T = TypeVar("T")

ENV = "VLM_MEASURED_DIR"
KIND = re.compile(r"[a-z][a-z0-9-]{0,40}")
FINGERPRINT = re.compile(r"[0-9a-f]{8,64}(-[a-z0-9]{1,16})?")  # vlm.fingerprint, optionally "-int8" (onnx_export)


def cache_dir() -> Path:
    """Where measured figures are kept: `$VLM_MEASURED_DIR`, else `$XDG_CACHE_HOME/vlm/measured`, else
    `~/.cache/vlm/measured` (read at each call, so a test or a server can point it elsewhere)."""
    if os.environ.get(ENV):
        return Path(os.environ[ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "vlm" / "measured"


def path_for(kind: str, fingerprint: str, extra: dict[str, Any] | None = None, root: Path | None = None) -> Path:
    """The file that holds `kind` measured with the weights `fingerprint` (and `extra`). Raises ValueError for a
    kind or fingerprint that is not of the expected form."""
    if not KIND.fullmatch(kind):
        raise ValueError(f"measured: kind {kind!r} must be lower-case letters, digits and '-'")
    if not FINGERPRINT.fullmatch(fingerprint):
        raise ValueError(f"measured: {fingerprint!r} is not a weights fingerprint (vlm.fingerprint)")
    name = f"{kind}-{fingerprint}"
    if extra:
        name += "-" + hashlib.blake2b(_canonical(extra).encode(), digest_size=6).hexdigest()
    return (root if root is not None else cache_dir()) / f"{name}.json"


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def load(kind: str, version: int, fingerprint: str, extra: dict[str, Any] | None = None, *,
         root: Path | None = None) -> dict[str, Any] | None:  # fmt: skip
    """The value stored for exactly this kind, version, weights and `extra`, or None (absent, unreadable, or
    measured otherwise)."""
    path = path_for(kind, fingerprint, extra, root)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        LOG.warning("measured: %s cannot be read (%s); measuring again", path, e)
        return None
    key = {"kind": kind, "version": version, "fingerprint": fingerprint, "extra": extra or {}}
    if not isinstance(record, dict) or not isinstance(record.get("value"), dict):
        LOG.warning("measured: %s is not a record of a measurement; measuring again", path)
        return None
    if any(record.get(k) != v for k, v in key.items()):
        LOG.info("measured: %s was measured otherwise (version %s); measuring again", path, record.get("version"))
        return None
    return record["value"]


def save(kind: str, version: int, fingerprint: str, value: dict[str, Any], extra: dict[str, Any] | None = None, *,
         root: Path | None = None) -> Path | None:  # fmt: skip
    """Store `value` (JSON-serialisable) atomically; returns its path, or None when it could not be written."""
    path = path_for(kind, fingerprint, extra, root)
    record = {"kind": kind, "version": version, "fingerprint": fingerprint, "extra": extra or {},
              "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "value": value}  # fmt: skip
    try:
        atomic_write_json(path, record)
    except OSError as e:
        LOG.warning("measured: could not keep %s (%s); it will be measured again after a restart", path, e)
        return None
    return path


def remember(kind: str, version: int, fingerprint: str, measure: Callable[[], dict[str, Any]],
             parse: Callable[[dict[str, Any]], T], extra: dict[str, Any] | None = None, *,
             root: Path | None = None) -> T:  # fmt: skip
    """`parse` of the stored value for (kind, version, fingerprint, extra) if there is one and `parse` accepts it
    (KeyError, TypeError or ValueError: measured again), else of `measure()`, which is stored. Callers asking for the
    same file at once measure it once: the others wait and read what the first stored (the app warms figures up in
    the background while a visitor's first request may ask for the same one)."""
    path = path_for(kind, fingerprint, extra, root)
    with _FILE_LOCKS_GUARD:
        lock = _FILE_LOCKS.setdefault(path, threading.Lock())
    with lock:
        return _remember(kind, version, fingerprint, measure, parse, extra, root)


_FILE_LOCKS: dict[Path, threading.Lock] = {}  # one per measured file: a figure is measured once however many ask
_FILE_LOCKS_GUARD = threading.Lock()


def _remember(kind, version, fingerprint, measure, parse, extra, root):  # remember's body, under its file's lock
    found = load(kind, version, fingerprint, extra, root=root)
    if found is not None:
        try:
            return parse(found)
        except (KeyError, TypeError, ValueError) as e:
            LOG.warning("measured: the stored %s of %s is not usable (%r); measuring again", kind, fingerprint, e)
    value = measure()
    made = parse(value)
    save(kind, version, fingerprint, value, extra, root=root)
    return made
