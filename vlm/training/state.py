"""What a step checkpoint holds beside the weights, and the checks a resume makes with it: every rank's RNG state,
the run's config (a resume with other settings is refused, naming them) and a digest of the training data's keys (a
resume on other data is refused)."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from typing import Any

import torch

LOG = logging.getLogger(__name__)


def rng_state(device: torch.device) -> dict[str, Any]:
    """This process's RNG state: the CPU generator's and, on a GPU, that one device's (not every visible GPU's)."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }


def restore_rng(saved: dict[str, Any], rank: int, device: torch.device) -> None:
    """Restore rank `rank`'s RNG state from a checkpoint's `rng` record.

    Each rank saved its own state (`per_rank`), so rank r gets its own CUDA state back, and a resume that sees fewer
    GPUs works (the state goes to this rank's device only). A rank the checkpoint has no state for (more processes
    than before, or an interrupted run that only rank 0 saved) keeps its seeded state, with a warning. Checkpoints
    from before per-rank states ({"torch", "cuda": one state per visible GPU}) are read too."""
    if "per_rank" in saved:
        entries = saved["per_rank"]
        if rank >= len(entries):
            LOG.warning("the checkpoint holds no RNG state for rank %d; it keeps its seeded state", rank)
            return
        entry = entries[rank]
    else:
        cuda = saved.get("cuda") or []
        index = (device.index or 0) if device.type == "cuda" else 0
        entry = {"torch": saved["torch"], "cuda": cuda[index] if index < len(cuda) else None}
    torch.set_rng_state(entry["torch"])
    if device.type == "cuda" and entry.get("cuda") is not None:
        torch.cuda.set_rng_state(entry["cuda"], device)


def config_differences(
    saved: dict[str, Any], current: dict[str, Any], free: Iterable[str] = (), prefix: str = ""
) -> list[str]:
    """The settings that differ between a checkpoint's config and now (`section.field: checkpoint A vs now B`),
    leaving out the `free` field names (those a resume may change), at any depth."""
    free = set(free)
    diffs = []
    for key in sorted(set(saved) | set(current)):
        if key in free:
            continue
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += config_differences(a, b, free, f"{prefix}{key}.")
        elif a != b:
            diffs.append(f"{prefix}{key}: checkpoint {a!r} vs now {b!r}")
    return diffs


def keys_digest(keys: Iterable[str]) -> str:
    """Identity of a training split (its items' keys, in order), so a resume on different data is refused."""
    h = hashlib.blake2b(digest_size=8)
    for key in keys:
        h.update(key.encode())
        h.update(b"\0")
    return h.hexdigest()
