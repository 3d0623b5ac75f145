"""Shared output for benchmarks: a printed table and a JSON record under bench/results/.

Benchmarks run a peer and this project side by side in one process and claim only the ratio; absolute numbers are
printed for context. Every record names the machine, so figures from different machines are never mixed.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from vlm.atomic import atomic_write_json

RESULTS = Path(__file__).parent / "results"
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    info: dict[str, Any] = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    try:
        info["commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).parent,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        info["commit"] = None
    return info


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    if not rows:
        return "(no rows)"
    cols = list(dict.fromkeys(k for r in rows for k in r))

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return "" if v is None else str(v)

    widths = {c: max(len(c), *(len(cell(r.get(c))) for r in rows)) for c in cols}
    lines = [" | ".join(c.ljust(widths[c]) for c in cols), "-+-".join("-" * widths[c] for c in cols)]
    lines += [" | ".join(cell(r.get(c)).ljust(widths[c]) for c in cols) for r in rows]
    return "\n".join(lines)


def report(name: str, rows: Sequence[dict[str, Any]], **meta: Any) -> Path:
    """Print `rows` as a table and write them, with the machine and `meta`, to bench/results/<name>.json."""
    print(format_table(rows))
    record = {
        "benchmark": name,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "meta": meta,
        "rows": list(rows),
    }
    path = RESULTS / f"{name}.json"
    atomic_write_json(path, record)
    print(f"\nwrote {path}")
    return path


def shared_data(name: str) -> Path:
    """A dataset folder from ../shared/data, or a clear exit if it is not beside this checkout."""
    path = SHARED_DATA / name
    if not path.is_dir():
        raise SystemExit(f"this benchmark needs {path} (the shared datasets beside the checkout); it is missing")
    return path
