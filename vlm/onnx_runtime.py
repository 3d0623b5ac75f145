"""Run a model's exported towers (`vlm.onnx_export`) through ONNX Runtime on the CPU, in place of PyTorch.

    encoders = attach(load("runs/x/final", device="cpu"), "auto")   # ONNX when runs/x/final/onnx/ is a valid export
    encoders.runtime, encoders.runtime_note                         # "onnx", "ONNX Runtime (runs/x/final/onnx)"
    encoders.encode_image(pixels)                                   # same call, same vectors (cosine >= 0.9999)

Runtimes: "torch" (PyTorch, always), "onnx" (the fp32 export: the model's own embeddings and fingerprint),
"onnx-int8" (the dynamically quantised export: faster, slightly different vectors, a fingerprint of its own), and
"auto": "onnx" on a CPU when a valid export of these very weights sits next to the model, else "torch" with a note
saying why (no export, an export of other weights, a corrupt file, onnxruntime not installed). Asking for "onnx" or
"onnx-int8" explicitly turns each of those into a `ModelError` instead.

Threads: a session's intra-op threads are fixed when it is created, so one session is kept per thread count and
the count is taken from `torch.get_num_threads()` at each call (a caller's `torch.set_num_threads` applies to both
runtimes). Spinning threads are turned off: a waiting thread sleeps instead of burning a core, so the embedding
pipeline lets ONNX Runtime use every core beside its decoding workers (`indexing.embed.threads_beside_workers`),
where it must cap PyTorch's spinning OpenMP threads.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vlm.config import RUNTIMES
from vlm.errors import ModelError
from vlm.models import Encoders
from vlm.onnx_export import default_folder, int8_fingerprint, read_manifest

LOG = logging.getLogger(__name__)


def open_session(path: str | Path, threads: int) -> Any:
    """An ONNX Runtime CPU session of the file at `path`; `ModelError` naming the file when it cannot be loaded."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, threads)
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only: initializer warnings are noise for users
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types (InvalidProtobuf, NoSuchFile, Fail, ...)
        raise ModelError(f"ONNX Runtime cannot load {path}: {str(e).strip()[:500]}") from e


def run_session(session: Any, inputs: np.ndarray) -> np.ndarray:
    name = session.get_inputs()[0].name
    return session.run(None, {name: inputs})[0]


class OnnxBackend:
    """The image and text towers of one export, as ONNX Runtime sessions (one per thread count, made lazily)."""

    def __init__(self, folder: Path, manifest: dict[str, Any], int8: bool):
        self.folder = folder
        self.manifest = manifest
        self.int8 = int8
        self.name = "onnx-int8" if int8 else "onnx"
        files = manifest["int8_files"] if int8 else manifest["files"]
        self.paths = {tower: folder / files[tower] for tower in ("image", "text")}
        self._sessions: dict[tuple[str, int], Any] = {}
        self._lock = threading.Lock()
        for tower in self.paths:  # load both now: a corrupt file is found at attach time, not mid-way through a job
            self._session(tower)

    def _session(self, tower: str) -> Any:
        threads = torch.get_num_threads()
        with self._lock:
            key = (tower, threads)
            if key not in self._sessions:
                self._sessions[key] = open_session(self.paths[tower], threads)
            return self._sessions[key]

    def encode_image(self, pixels: np.ndarray) -> np.ndarray:
        """(B, 3, H, W) float32 -> (B, D) float32 unnormalised features."""
        return run_session(self._session("image"), np.ascontiguousarray(pixels, dtype=np.float32))

    def encode_text(self, tokens: np.ndarray) -> np.ndarray:
        """(B, context) int64 -> (B, D) float32 unnormalised features."""
        return run_session(self._session("text"), np.ascontiguousarray(tokens, dtype=np.int64))


def attach(encoders: Encoders, runtime: str = "auto", folder: str | Path | None = None) -> Encoders:
    """`encoders` computing embeddings with `runtime` (see the module docstring); `folder`: the export (default:
    next to the model). Returns a new `Encoders` (the model object is shared). The export is of the weights as they
    were exported: a model trained further in this process must embed with "torch" (a trainer never attaches)."""
    if runtime not in RUNTIMES:
        raise ModelError(f"unknown runtime {runtime!r}; choose one of {list(RUNTIMES)}")
    if runtime == "torch":
        return dataclasses.replace(encoders, backend=None, runtime_note="PyTorch (asked for)")  # the torch model
    explicit = runtime != "auto"
    try:
        backend = _backend(encoders, runtime, folder)
    except ModelError as e:
        if explicit:
            raise
        note = f"PyTorch: {e}"
        (LOG.info if "no ONNX export" in str(e) or "not on the CPU" in str(e) else LOG.warning)(
            "embedding with %s", note
        )
        return dataclasses.replace(encoders, backend=None, runtime_note=note)
    fingerprint = int8_fingerprint(encoders.fingerprint) if backend.int8 else encoders.fingerprint
    note = f"ONNX Runtime{' int8' if backend.int8 else ''} ({backend.folder})"
    LOG.info("embedding with %s", note)
    return dataclasses.replace(encoders, backend=backend, runtime_note=note, fingerprint=fingerprint)


def _backend(encoders: Encoders, runtime: str, folder: str | Path | None) -> OnnxBackend:
    if encoders.device.type != "cpu":
        raise ModelError(f"the ONNX runtime is for the CPU and the model is not on the CPU ({encoders.device})")
    if folder is None:
        folder = default_folder(*encoders.loaded_from)
        if folder is None:
            raise ModelError(f"no ONNX export next to {encoders.source}: it has no folder of its own (pass --onnx DIR)")
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ModelError(f"no ONNX export at {folder}; make one with `vlm export onnx MODEL --out {folder}`")
    manifest = read_manifest(folder)
    if manifest.get("fingerprint") != encoders.fingerprint:
        raise ModelError(
            f"the ONNX export in {folder} is of other weights (fingerprint {manifest.get('fingerprint')}, the model's "
            f"is {encoders.fingerprint}); export the model again (vlm export onnx)"
        )
    int8 = runtime == "onnx-int8"
    if int8 and not manifest.get("int8_files"):
        raise ModelError(f"the ONNX export in {folder} has no int8 files; export again with --quantize")
    try:
        import onnxruntime  # noqa: F401
    except ImportError as e:
        raise ModelError("onnxruntime is not installed (pip install 'vlm-zeroshot[onnx]')") from e
    return OnnxBackend(folder, manifest, int8)
