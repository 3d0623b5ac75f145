"""How errors reach people: every handler is wrapped so the project's own errors become a `gr.Error` with their
message (which names the value and says what to do), shown in the UI and returned to API clients.

Anything else is a bug: it propagates, Gradio logs the traceback and shows a generic error, and the server keeps
serving (each request runs on its own).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import TypeVar

import gradio as gr

from vlm.errors import VLMError
from vlm.printable import printable

LOG = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable)


def shown(fn: F) -> F:
    """Run `fn`, turning a `VLMError` into a `gr.Error` with the same message. The signature is kept (Gradio reads
    it for `gr.Progress` and `gr.SelectData` parameters and for the API's parameter names)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except VLMError as e:
            message = printable(e, lines=True)  # a file name in it may hold control characters
            LOG.info("%s: %s", fn.__name__, message)
            raise gr.Error(message, print_exception=False) from e

    return wrapper  # type: ignore[return-value]
