"""Other processes, from /proc where there is one: whether a pid still runs, and when it started.

The one place for this: the run folder (`vlm.rundir`: is the trainer still alive?), a collection's writer lock
(`indexing.versions`: is the holder alive?) and synthetic-data temp folders (`vlm.synth.dataset`: is their writer
gone?) all ask it.
"""

from __future__ import annotations

import os
from pathlib import Path


def start_ticks(pid: int) -> int | None:
    """When process `pid` started (clock ticks since boot), from /proc; None where there is no /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: count fields after its closing parenthesis.
    return int(stat[stat.rindex(")") + 2 :].split()[19])


def process_alive(pid: int, ticks: int | None = None) -> bool:
    """Whether `pid` runs (not a zombie) and, given its start time, is the same process and not a reused pid."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, under another user
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    except OSError:
        return True  # no /proc: kill(0) is all we can know
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return False
    return ticks is None or int(fields[19]) == ticks
