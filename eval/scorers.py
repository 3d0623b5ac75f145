"""One number per model for a data set: what WiSE-FT's α sweep compares (your data and what the model knew).

    s = read_score_set("zeroshot:data/fashion_val.csv")   # labelled images -> zero-shot top-1
    s = read_score_set("retrieval:icons/pairs.csv")       # image-caption pairs -> text->image recall@5
    s = read_score_set("data/shapes")                     # auto: labelled data if it reads as such, else pairs
    s.score(encoders)                                     # a float, higher is better

A thin face over `eval.reference`, which owns the set syntax, the reading (an unreadable set fails before any model
loads) and the headline metric of each task; this adds the caller's templates and batch settings.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from eval import reference
from vlm.models import Encoders
from vlm.printable import printable


@dataclasses.dataclass(frozen=True, eq=False)
class ScoreSet:
    set: reference.ReferenceSet
    templates: tuple[str, ...] | str = reference.TEMPLATES
    batch_size: int = 256
    workers: int = 0

    @property
    def kind(self) -> str:
        return self.set.task

    @property
    def metric(self) -> str:
        return reference.HEADLINE[self.set.task]

    @property
    def size(self) -> int:
        return len(self.set)

    def describe(self) -> str:
        what = "images" if self.kind == "zeroshot" else "pairs"
        return f"{self.kind} {self.metric} on {printable(self.set.source)} ({self.size} {what})"

    def score(self, encoders: Encoders) -> float:
        return reference.headline(
            self.set, encoders, batch_size=self.batch_size, workers=self.workers, templates=self.templates
        )


def read_score_set(
    spec: str, *, templates: Sequence[str] | None = None, batch_size: int = 256, workers: int = 0
) -> ScoreSet:
    """Read a set named by `spec` (`eval.reference`'s syntax); `DataError` naming the set when it cannot be read."""
    chosen = tuple(templates) if templates else reference.TEMPLATES
    return ScoreSet(reference.read_set(spec, workers=max(workers, 1)), chosen, batch_size, workers)
