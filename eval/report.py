"""Evaluation output: a JSON record, a Markdown table and a confusion-matrix plot (PNG).

Metrics are stored as fractions (clip-benchmark's convention) and shown as percentages in Markdown. Files are
written atomically; the plot uses matplotlib's Agg canvas directly, so no GUI backend or pyplot state is touched.
"""

from __future__ import annotations

import datetime as dt
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from vlm.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text

MAX_TICK_LABELS = 40  # beyond this many classes the axes show class ids, not names


class ReportFiles(NamedTuple):
    json: Path
    markdown: Path
    confusion: Path | None


def _cell(value: Any, percent: bool) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{100 * value:.2f}" if percent else f"{value:.4g}"
    return str(value).replace("|", "\\|")


def markdown_table(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None, percent: bool = True
) -> str:
    """A GitHub Markdown table; floats are shown as percentages with 2 decimals (`percent`), NaN as "n/a"."""
    if not rows:
        return "(no rows)"
    cols = list(columns) if columns is not None else list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(_cell(r.get(c), percent) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def metrics_markdown(metrics: Mapping[str, float], title: str | None = None) -> str:
    """One row per metric: `| metric | value (%) |`."""
    table = markdown_table([{"metric": k, "value (%)": v} for k, v in metrics.items()], ["metric", "value (%)"])
    return f"### {title}\n\n{table}" if title else table


def confusion_png(confusion: np.ndarray, classes: Sequence[str], *, normalize: bool = True, title: str = "") -> bytes:
    """PNG bytes of the confusion matrix (rows = true, columns = predicted); rows normalised to recall."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    matrix = confusion.astype(np.float64)
    if normalize:
        matrix = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    n = len(classes)
    side = min(24.0, max(4.0, 0.35 * n + 2.5))
    fig = Figure(figsize=(side, side), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(matrix, cmap="Blues", vmin=0.0, vmax=1.0 if normalize else None, interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class" if normalize else "images")
    if n <= MAX_TICK_LABELS:
        ax.set_xticks(range(n), labels=[c[:24] for c in classes], rotation=90, fontsize=8)
        ax.set_yticks(range(n), labels=[c[:24] for c in classes], fontsize=8)
    if n <= 20:  # small enough to print each cell
        for i in range(n):
            for j in range(n):
                if confusion[i, j]:
                    colour = "white" if matrix[i, j] > 0.5 else "black"
                    ax.text(j, i, f"{matrix[i, j]:.2f}" if normalize else str(confusion[i, j]), ha="center",
                            va="center", fontsize=7, color=colour)  # fmt: skip
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def write_report(
    out_dir: str | Path,
    name: str,
    metrics: Mapping[str, float],
    record: Mapping[str, Any],
    *,
    confusion: np.ndarray | None = None,
    classes: Sequence[str] | None = None,
) -> ReportFiles:
    """Write `<name>.json` (record + metrics + date), `<name>.md` and, given a confusion matrix,
    `<name>_confusion.png` into `out_dir`."""
    out = Path(out_dir)
    full = {"task": name, "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), **record}
    full["metrics"] = {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in metrics.items()}
    json_path, md_path = out / f"{name}.json", out / f"{name}.md"
    atomic_write_json(json_path, full)
    atomic_write_text(
        md_path, metrics_markdown(metrics, title=f"{name}: {record.get('model', '')}".rstrip(": ")) + "\n"
    )
    png = None
    if confusion is not None:
        png = out / f"{name}_confusion.png"
        atomic_write_bytes(png, confusion_png(confusion, classes or [str(i) for i in range(len(confusion))]))
    return ReportFiles(json_path, md_path, png)
