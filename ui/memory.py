"""Memory of the serving process.

`limit_malloc_arenas` is imported and called by app.py before torch and Gradio are imported (this module imports
neither), so that it takes effect before any thread allocates.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys

LOG = logging.getLogger(__name__)

M_ARENA_MAX = -8  # glibc malloc.h


def limit_malloc_arenas(arenas: int = 2) -> None:
    """Cap glibc's malloc arenas for this process (unless MALLOC_ARENA_MAX is set). glibc gives threads that
    allocate concurrently arenas of their own, up to 8 per core, and Gradio's worker threads each run the model:
    measured with bench/app_load.py (4 clients, 4 minutes), the server's memory grew by 136 MB (0.57 MB/s, still
    climbing) with the default, and by 16 MB in the first half then nothing with 2 arenas, at the same request
    rate. Call it before threads start."""
    if os.environ.get("MALLOC_ARENA_MAX") or not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (musl has no arenas to cap)
        return
    if not libc.mallopt(M_ARENA_MAX, arenas):
        LOG.warning("mallopt(M_ARENA_MAX, %d) failed; memory may grow under concurrent requests", arenas)
