"""Checkpoint directories: open_clip-compatible weights, a self-describing config, and the exact train state.

Layout of one checkpoint directory:
    model.safetensors      open_clip state dict; `open_clip.create_model_and_transforms(name, pretrained=<file>)`
                           loads it unchanged, and so does clip-benchmark
    open_clip_config.json  {"model_cfg", "preprocess_cfg"}, so `open_clip.create_model("local-dir:<dir>")` works too
    config.json            our record: model name and config, preprocessing, fingerprint, provenance (data, steps,
                           seed, metrics)
    train_state.pt         optional: optimizer, scheduler, scaler, RNG, data position; tensors and plain containers
                           only, read with `torch.load(..., weights_only=True)`

The directory is written under a temporary name and renamed into place once every file is fsynced, so a directory
with the final name is always complete.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from vlm.atomic import atomic_dir
from vlm.errors import CheckpointError
from vlm.fingerprint import state_fingerprint

LOG = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
OPEN_CLIP_CONFIG_NAME = "open_clip_config.json"
TRAIN_STATE_NAME = "train_state.pt"
FORMAT = "vlm-checkpoint"
FORMAT_VERSION = 1
_STEP_DIR = re.compile(r"^step_(\d+)$")


def is_checkpoint_dir(path: str | Path) -> bool:
    path = Path(path)
    return (path / CONFIG_NAME).is_file() and (path / WEIGHTS_NAME).is_file()


def save(
    path: str | Path,
    model: torch.nn.Module,
    *,
    model_name: str,
    model_cfg: dict[str, Any],
    preprocess_cfg: dict[str, Any],
    provenance: dict[str, Any] | None = None,
    train_state: dict[str, Any] | None = None,
    weights_dtype: torch.dtype | None = None,
    tokenizer: Any = None,
) -> Path:
    """Write a checkpoint directory atomically and return its path.

    `weights_dtype=torch.float16` stores half-size weights (for shipping a demo model); loading casts them back.
    """
    path = Path(path)
    with atomic_dir(path) as tmp:
        state = {}
        for k, v in model.state_dict().items():
            v = v.detach().to("cpu")
            if weights_dtype is not None and v.is_floating_point():
                v = v.to(weights_dtype)
            state[k] = v.contiguous().clone()  # safetensors refuses shared or strided storage
        fingerprint = state_fingerprint(state)  # of the weights as stored, so loading reproduces it
        save_file(state, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        (tmp / OPEN_CLIP_CONFIG_NAME).write_text(
            json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}, indent=2) + "\n"
        )
        record = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model_name": model_name,
            "model_cfg": model_cfg,
            "preprocess_cfg": preprocess_cfg,
            "fingerprint": fingerprint,
            "weights_dtype": str(weights_dtype or "as trained").replace("torch.", ""),
            "provenance": provenance or {},
        }
        (tmp / CONFIG_NAME).write_text(json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
        if tokenizer is not None and hasattr(getattr(tokenizer, "tokenizer", None), "save_pretrained"):
            # open_clip's local-dir loader reads an HF tokenizer from the checkpoint directory itself.
            tokenizer.tokenizer.save_pretrained(str(tmp))
        if train_state is not None:
            torch.save(train_state, tmp / TRAIN_STATE_NAME)
    LOG.info("saved checkpoint %s", path)
    return path


def read_format_record(file: Path, fmt: str, version: int) -> dict[str, Any]:
    """A JSON record tagged `"format": fmt`, refused when it is not JSON, another format, or from a newer version."""
    try:
        record = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
        raise CheckpointError(f"{file} is not valid JSON in UTF-8: {e}") from e
    if not isinstance(record, dict) or record.get("format") != fmt:
        found = record.get("format") if isinstance(record, dict) else type(record).__name__
        raise CheckpointError(f"{file} is not a {fmt} config (format={found!r})")
    if record.get("format_version", 0) > version:
        raise CheckpointError(
            f"{file.parent} was written by a newer version (format {record['format_version']} > {version}); upgrade"
        )
    return record


def read_config(path: str | Path) -> dict[str, Any]:
    """The `config.json` record of a checkpoint directory, validated."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not is_checkpoint_dir(path):
        raise CheckpointError(
            f"{path} is not a checkpoint directory: it needs {CONFIG_NAME} and {WEIGHTS_NAME} "
            f"(found: {sorted(p.name for p in path.iterdir()) if path.is_dir() else 'a file'})"
        )
    record = read_format_record(path / CONFIG_NAME, FORMAT, FORMAT_VERSION)
    for key in ("model_name", "model_cfg", "preprocess_cfg"):
        if key not in record:
            raise CheckpointError(f"{path / CONFIG_NAME} lacks the key {key!r}")
    return record


def load_train_state(path: str | Path) -> dict[str, Any]:
    """The trainer state of a checkpoint, loaded without unpickling arbitrary objects."""
    file = Path(path) / TRAIN_STATE_NAME
    if not file.is_file():
        raise CheckpointError(f"{path} has no {TRAIN_STATE_NAME}: it holds weights only and cannot be resumed")
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file; torch raises several types here
        raise CheckpointError(f"cannot read {file}: {e}") from e


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def list_step_checkpoints(
    run_dir: str | Path, complete: Callable[[Path], bool] = is_checkpoint_dir
) -> list[tuple[int, Path]]:
    """Complete `step_*` checkpoints under `run_dir/checkpoints`, oldest first. `complete` says whether a directory
    holds a whole checkpoint of the run's kind (a model here; `vlm.segment.decoder.is_decoder_dir` for a decoder);
    either way it must hold a train state to count."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        m = _STEP_DIR.match(child.name)
        if m and complete(child) and (child / TRAIN_STATE_NAME).is_file():
            found.append((int(m.group(1)), child))
    return sorted(found)


def latest(run_dir: str | Path, complete: Callable[[Path], bool] = is_checkpoint_dir) -> Path | None:
    found = list_step_checkpoints(run_dir, complete)
    return found[-1][1] if found else None


def prune(run_dir: str | Path, keep_last: int, complete: Callable[[Path], bool] = is_checkpoint_dir) -> None:
    """Delete all but the newest `keep_last` step checkpoints, and temp dirs a crash left behind."""
    found = list_step_checkpoints(run_dir, complete)
    for _, path in found[: max(0, len(found) - keep_last)]:
        shutil.rmtree(path, ignore_errors=True)
    root = Path(run_dir) / "checkpoints"
    if root.is_dir():
        for child in root.iterdir():
            if child.name.startswith(".") and child.name.endswith(".tmp"):
                shutil.rmtree(child, ignore_errors=True)
