"""Project exception types, one per domain.

Messages name the offending file, row or value and say what to do about it. Each type subclasses
`VLMError` so a CLI or UI can catch every user-facing error in one place and show it without a traceback.
"""


class VLMError(Exception):
    """Base class for errors a user can act on."""


class ConfigError(VLMError, ValueError):
    """A configuration value or file is invalid (unknown key, wrong type, out of range)."""


class DataError(VLMError, ValueError):
    """Input data is missing, malformed or unreadable."""


class ModelError(VLMError, RuntimeError):
    """A model cannot be built or its weights cannot be found or loaded."""


class CheckpointError(VLMError, RuntimeError):
    """A checkpoint directory is missing, incomplete, or does not match what it is resumed into."""
