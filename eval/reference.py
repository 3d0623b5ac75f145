"""The reference score of a fine-tune: how much of what the model knew it still knows.

`load(specs)` reads every reference set once, before training starts (an unreadable one is an error then, not an hour
later), and returns a `Reference`, the callable the trainer takes (`vlm.train.train(cfg, reference=...)`) and calls
before the first step, at every validation and at the end. A spec is a path, optionally prefixed with its task:

    zeroshot:PATH    labelled images (`eval.datasets.read_labelled`): zero-shot top-1 with the "generic" templates,
                     or with the set's own (`templates.json` in its folder, a JSON list as `vlm.templates` reads):
                     a model whose training captions use the generic phrasings (the demo's shapes) keeps scoring well
                     on them while it forgets the labels, so its set names phrasings it was never trained on
    retrieval:PATH   image-caption pairs (`vlm.data.read_pairs`): text->image recall@5 (and the rest of recall@k)
    PATH             labelled if it reads as labelled data, else pairs

Each set gives its metrics under `<name>/<metric>`, and `score` is the mean of the sets' headline metrics (top-1,
text->image R@5): the one "what it knew" number the app plots beside the user's own validation.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from eval.datasets import read_labelled
from eval.images import LabelledData
from eval.retrieval import evaluate_pairs
from eval.zeroshot import evaluate_zeroshot
from vlm.data import Pair, read_pairs
from vlm.errors import DataError, VLMError
from vlm.models import Encoders
from vlm.printable import printable
from vlm.templates import load as load_templates

LOG = logging.getLogger(__name__)

TASKS = ("zeroshot", "retrieval")
HEADLINE = {"zeroshot": "acc1", "retrieval": "image_retrieval_recall@5"}
TEMPLATES = "generic"
OWN_TEMPLATES = "templates.json"  # beside a labelled set's labels: the templates its zero-shot score uses


@dataclass(frozen=True, eq=False)
class ReferenceSet:
    name: str  # the metric prefix: the folder's or file's name
    task: str  # "zeroshot" or "retrieval"
    data: LabelledData | list[Pair]
    source: str
    templates: str | tuple[str, ...] = TEMPLATES  # zero-shot: a set name or the set's own (`OWN_TEMPLATES`)

    def __len__(self) -> int:
        return len(self.data)


def parse_spec(spec: str) -> tuple[str | None, str]:
    """('zeroshot' | 'retrieval' | None for auto, path)."""
    for task in TASKS:
        if spec.startswith(f"{task}:"):
            return task, spec[len(task) + 1 :]
    return None, spec


def _name(path: str) -> str:
    p = Path(path)
    if p.name in ("labels.csv", "labels.tsv", "pairs.csv", "pairs.tsv", "pairs.jsonl"):
        p = p.parent
    return p.stem or "reference"


def read_set(spec: str, *, workers: int = 2) -> ReferenceSet:
    """Read one reference set; `DataError` naming the spec when it cannot be read."""
    task, path = parse_spec(spec)
    if not path:
        raise DataError(f"reference set {spec!r}: no path given")
    if not Path(path).expanduser().exists():
        raise DataError(f"reference set {printable(spec)}: {printable(path)} does not exist")
    errors = []
    for attempt in (task,) if task else TASKS:
        try:
            if attempt == "zeroshot":
                data = read_labelled(path, workers=workers)
                if len(data.classes) < 2:
                    raise DataError(f"{printable(path)} has {len(data.classes)} class: zero-shot needs two or more")
                return ReferenceSet(_name(path), attempt, data, path, own_templates(path))
            data = read_pairs(path, workers=workers, progress=False).pairs
            return ReferenceSet(_name(path), attempt, data, path)
        except VLMError as e:
            errors.append(f"as {'labelled images' if attempt == 'zeroshot' else 'image-caption pairs'}: {e}")
    raise DataError(f"cannot read reference set {printable(spec)}: " + "; ".join(errors))


def own_templates(path: str) -> str | tuple[str, ...]:
    """The templates a labelled set names (`OWN_TEMPLATES` in its folder, or beside its labels file), else
    `TEMPLATES`; a file that is not a valid template list is a `ConfigError` naming it."""
    p = Path(path).expanduser()
    file = (p if p.is_dir() else p.parent) / OWN_TEMPLATES
    return load_templates(str(file)) if file.is_file() else TEMPLATES


def set_metrics(
    s: ReferenceSet, encoders: Encoders, *, batch_size: int = 256, workers: int = 0, templates=None
) -> dict[str, float]:
    """All metrics of one reference set (zero-shot top-1/top-5 with `templates`, by default the set's own, or
    recall@1/@5 both ways)."""
    if s.task == "zeroshot":
        chosen = s.templates if templates is None else templates
        result = evaluate_zeroshot(encoders, s.data, chosen, batch_size=batch_size, workers=workers)
        return {"acc1": result.metrics["acc1"], "acc5": result.metrics["acc5"]}
    return evaluate_pairs(encoders, s.data, ks=(1, 5), batch_size=batch_size, workers=workers)


def headline(s: ReferenceSet, encoders: Encoders, *, batch_size: int = 256, workers: int = 0, templates=None) -> float:
    """The one number of a set: zero-shot top-1, or text->image recall@5."""
    values = set_metrics(s, encoders, batch_size=batch_size, workers=workers, templates=templates)
    return float(values[HEADLINE[s.task]])


class Reference:
    """Scores an encoder pair on every reference set: `reference(encoders, batch_size=, workers=) -> metrics`."""

    def __init__(self, sets: Sequence[ReferenceSet]):
        if not sets:
            raise DataError("no reference set given")
        names: dict[str, int] = {}
        unique = []
        for s in sets:  # two sets of one name get /2, /3, ...
            names[s.name] = names.get(s.name, 0) + 1
            unique.append(s if names[s.name] == 1 else dataclasses.replace(s, name=f"{s.name}-{names[s.name]}"))
        self.sets = tuple(unique)

    def describe(self) -> str:
        return ", ".join(f"{s.name} ({s.task}, {len(s)} images: {printable(s.source)})" for s in self.sets)

    def __call__(self, encoders: Encoders, *, batch_size: int = 256, workers: int = 0) -> dict[str, float]:
        metrics: dict[str, float] = {}
        headlines = []
        for s in self.sets:
            values = set_metrics(s, encoders, batch_size=batch_size, workers=workers)
            metrics.update({f"{s.name}/{k}": float(v) for k, v in values.items()})
            headlines.append(float(values[HEADLINE[s.task]]))
        metrics["score"] = sum(headlines) / len(headlines)
        return metrics


def load(specs: Sequence[str], *, workers: int = 2) -> Reference:
    """Read every spec (see the module docstring) into one `Reference`."""
    return Reference([read_set(spec, workers=workers) for spec in specs])
