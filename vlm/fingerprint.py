"""A short, stable identity for a set of weights."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import numpy as np
import torch


def state_fingerprint(state: Mapping[str, torch.Tensor]) -> str:
    """Hash of the weights as float32: independent of device, of dict order and of the precision they run at, so
    an fp16-stored checkpoint loaded into fp32 has the fingerprint recorded when it was written."""
    h = hashlib.blake2b(digest_size=8)
    for name in sorted(state):
        t = state[name].detach().to("cpu")
        if t.is_floating_point():
            t = t.float()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(np.ascontiguousarray(t.numpy()).tobytes())
    return h.hexdigest()
