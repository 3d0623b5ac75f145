"""A trainer started by the app ends with the app: when its parent process goes (SIGTERM, SIGKILL, a crash), the
trainer stops as Ctrl-C stops it (it saves the step it has reached) instead of training on as an orphan.

Two mechanisms, because neither is enough alone:
- Linux's PR_SET_PDEATHSIG asks the kernel for a signal the moment the parent dies. It fires when the *thread* that
  started us exits too (a web server starts subprocesses from worker threads that come and go), so the handler checks
  that the parent process really is gone before acting.
- A daemon thread polls the parent's pid once a second: it covers other systems, and a parent that died before the
  kernel request was made.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading
import time

LOG = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
SIGNAL = signal.SIGUSR1  # ours alone: SIGINT stays the app's Stop, SIGTERM a plain kill
POLL_S = 1.0


def parent_gone(parent: int) -> bool:
    """Whether process `parent` is no longer our parent (we were re-parented to init or a subreaper)."""
    return os.getppid() != parent


def die_with_parent(parent: int, poll_s: float = POLL_S) -> None:
    """From now on, when process `parent` ends, raise KeyboardInterrupt in the main thread (once).

    Call it from the main thread (Python runs signal handlers there). `parent` is the pid the caller was started by,
    passed in rather than read, so that a parent that died before this call is still noticed.
    """

    def on_signal(signum, frame) -> None:
        if not parent_gone(parent):
            return  # only the thread that started us ended; the parent process lives on
        signal.signal(SIGNAL, signal.SIG_IGN)  # handled once: the save that follows is not interrupted again
        raise KeyboardInterrupt(f"the parent process {parent} has ended")

    signal.signal(SIGNAL, on_signal)
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(PR_SET_PDEATHSIG, int(SIGNAL), 0, 0, 0) != 0:
                LOG.warning("prctl(PR_SET_PDEATHSIG) failed (errno %d); polling the parent instead", ctypes.get_errno())
        except (OSError, AttributeError) as e:
            LOG.warning("no prctl (%s); polling the parent instead", e)

    def watch() -> None:
        while not parent_gone(parent):
            time.sleep(poll_s)
        os.kill(os.getpid(), SIGNAL)

    threading.Thread(target=watch, name="lifeline", daemon=True).start()  # a parent already gone: signals at once
