"""Errors of image collections. Input problems (unreadable files, bad rows) stay `vlm.errors.DataError`."""

from __future__ import annotations

from vlm.errors import VLMError


class IndexingError(VLMError, RuntimeError):
    """A collection on disk is missing, locked by another writer, inconsistent, or used in a way it cannot be."""


class ModelMismatchError(IndexingError):
    """Vectors from one model were about to be compared with vectors from another (different weights)."""


class EmbedStopped(IndexingError):
    """An embedding was stopped on request (`should_stop`); the shards embedded so far are kept, so the same add
    or sync run again resumes from them, and nothing was committed."""
