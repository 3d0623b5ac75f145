"""Shared fixtures: tiny models and on-the-fly data; no network, no ../shared."""

from __future__ import annotations

import os

import pytest
import torch

# Tests run on 2 cores next to DataLoader workers; more threads only add contention.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session", autouse=True)
def measured_dir(tmp_path_factory):
    """Figures that `vlm.measured` keeps go to this session's own folder, not the user's ~/.cache."""
    old = os.environ.get("VLM_MEASURED_DIR")
    os.environ["VLM_MEASURED_DIR"] = str(tmp_path_factory.mktemp("measured"))
    yield os.environ["VLM_MEASURED_DIR"]
    if old is None:
        os.environ.pop("VLM_MEASURED_DIR", None)
    else:
        os.environ["VLM_MEASURED_DIR"] = old


@pytest.fixture(scope="session")
def tiny_encoders():
    from vlm import models

    torch.manual_seed(0)
    return models.load("vlm-tiny", device="cpu")
