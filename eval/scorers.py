"""One number per model for a data set: what WiSE-FT's α sweep (and a "what it knew" reference) compares.

    s = read_score_set("zeroshot:data/fashion_val.csv")   # labelled images -> zero-shot top-1
    s = read_score_set("retrieval:icons/pairs.csv")       # image-caption pairs -> text->image recall@5
    s = read_score_set("data/shapes")                     # auto: labelled data if it reads as such, else pairs
    s.score(encoders)                                     # a float, higher is better

The data are read (and checked) when the set is made, so a set that cannot be read fails before any model loads or
trains. Zero-shot uses `eval.zeroshot.evaluate_zeroshot` (acc1), retrieval `eval.retrieval.evaluate_pairs`
(`image_retrieval_recall@5`, the text->image recall clip-benchmark reports), each with its own definitions.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vlm.errors import ConfigError, DataError
from vlm.models import Encoders
from vlm.printable import printable

KINDS = ("zeroshot", "retrieval")
METRICS = {"zeroshot": "acc1", "retrieval": "image_retrieval_recall@5"}


@dataclasses.dataclass(frozen=True, eq=False)
class ScoreSet:
    kind: str  # "zeroshot" or "retrieval"
    source: str
    data: Any  # eval.images.LabelledData or a list of vlm.data.Pair
    templates: tuple[str, ...] | None = None
    batch_size: int = 256
    workers: int = 0

    @property
    def metric(self) -> str:
        return METRICS[self.kind]

    @property
    def size(self) -> int:
        return len(self.data)

    def describe(self) -> str:
        what = "images" if self.kind == "zeroshot" else "pairs"
        return f"{self.kind} {self.metric} on {self.source} ({self.size} {what})"

    def score(self, encoders: Encoders) -> float:
        if self.kind == "zeroshot":
            from eval.zeroshot import evaluate_zeroshot

            result = evaluate_zeroshot(
                encoders, self.data, self.templates, batch_size=self.batch_size, workers=self.workers
            )
            return float(result.metrics["acc1"])
        from eval.retrieval import evaluate_pairs

        metrics = evaluate_pairs(encoders, self.data, ks=(5,), batch_size=self.batch_size, workers=self.workers)
        return float(metrics["image_retrieval_recall@5"])


def split_spec(spec: str) -> tuple[str, str]:
    """'zeroshot:PATH' / 'retrieval:PATH' / 'PATH' -> (kind or 'auto', path)."""
    kind, sep, rest = spec.partition(":")
    if sep and kind in KINDS:
        return kind, rest
    return "auto", spec


def read_score_set(
    spec: str,
    *,
    templates: Sequence[str] | None = None,
    batch_size: int = 256,
    workers: int = 0,
) -> ScoreSet:
    """Read a set named by `spec` (see the module docstring); `DataError` naming the set when it cannot be read."""
    kind, path = split_spec(spec)
    if not path:
        raise ConfigError(f"{spec!r}: give a data path after the kind (e.g. zeroshot:data/val.csv)")
    if not Path(path).expanduser().exists():
        raise DataError(f"score set {printable(spec)}: {printable(path)} does not exist")
    common = {"templates": tuple(templates) if templates else None, "batch_size": batch_size, "workers": workers}
    errors = []
    if kind in ("auto", "zeroshot"):
        from eval.datasets import read_labelled

        try:
            data = read_labelled(path, workers=max(workers, 1))
            if len(data.classes) < 2:
                raise DataError(f"{printable(path)} has {len(data.classes)} class: zero-shot needs two or more")
            return ScoreSet("zeroshot", data.source, data, **common)
        except DataError as e:
            if kind == "zeroshot":
                raise DataError(f"score set {printable(spec)}: {e}") from e
            errors.append(f"as labelled images: {e}")
    from vlm.data import read_pairs

    try:
        table = read_pairs(path, workers=max(workers, 1), progress=False)
    except DataError as e:
        if kind == "retrieval":
            raise DataError(f"score set {printable(spec)}: {e}") from e
        errors.append(f"as image-caption pairs: {e}")
        raise DataError(
            f"score set {printable(spec)} cannot be read; " + "; ".join(errors) + ". Prefix zeroshot: or retrieval: "
            "to say which it is"
        ) from e
    return ScoreSet("retrieval", table.source, table.pairs, **common)
