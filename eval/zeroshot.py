"""Zero-shot classification evaluation of an encoder pair on a labelled dataset.

The same definitions as clip-benchmark's `zeroshot_classification.evaluate`: the classifier from
`vlm.zeroshot.build_classifier` (prompt ensembling), scores = image embedding . class embedding, and
`eval.metrics.classification_metrics` (acc1, acc5, mean_per_class_recall), plus the confusion matrix and the
recall of every class.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from eval.images import LabelledData, LabelledDataset
from eval.metrics import classification_metrics, confusion_matrix, per_class_recall
from vlm.errors import DataError
from vlm.models import Encoders
from vlm.printable import printable
from vlm.zeroshot import ClassifierCache, ZeroShotClassifier, build_classifier

LOG = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)  # holds arrays: compared by identity
class ZeroShotResult:
    metrics: dict[str, float]  # acc1, acc5, mean_per_class_recall (fractions in [0, 1]; NaN where undefined)
    classes: tuple[str, ...]
    templates: tuple[str, ...]
    confusion: np.ndarray  # (C, C) int64, rows = true class, columns = predicted class
    class_recall: np.ndarray  # (C,) float64, NaN for classes without images
    predictions: np.ndarray  # (N,) int64 argmax class of each image
    targets: np.ndarray  # (N,) int64
    truncated: tuple[str, ...]  # class names whose prompts the tokenizer cut
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (NaN becomes null)."""

        def num(x: float) -> float | None:
            return None if np.isnan(x) else float(x)

        return {
            "metrics": {k: num(v) for k, v in self.metrics.items()},
            "images": len(self.targets),
            "classes": list(self.classes),
            "templates": list(self.templates),
            "class_recall": {c: num(r) for c, r in zip(self.classes, self.class_recall, strict=True)},
            "confusion": self.confusion.tolist(),
            "truncated_labels": list(self.truncated),
            "seconds": round(self.seconds, 3),
        }


@torch.no_grad()
def embed_labelled(
    encoders: Encoders, data: LabelledData, *, batch_size: int = 256, workers: int = 0, progress: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, D) float32 L2-normalised image embeddings and (N,) int64 targets, in dataset order."""
    loader = DataLoader(
        LabelledDataset(data, encoders.preprocess),
        batch_size=batch_size,
        num_workers=workers,
        pin_memory=encoders.device.type == "cuda",
    )
    emb, targets = [], []
    for images, target in tqdm(loader, desc="embed images", disable=not progress):
        emb.append(encoders.encode_image(images).cpu())
        targets.append(target)
    if not emb:
        return torch.zeros(0, encoders.embed_dim), torch.zeros(0, dtype=torch.long)
    return torch.cat(emb), torch.cat(targets).long()


def score(
    clf: ZeroShotClassifier, image_emb: torch.Tensor, targets: torch.Tensor, seconds: float = 0.0
) -> ZeroShotResult:
    """Metrics of a classifier on precomputed image embeddings (N, D) and targets (N,)."""
    scores = clf.similarity(image_emb)  # (N, C) cosine; scaling by a positive constant changes no ranking
    metrics = classification_metrics(scores, targets)
    preds = scores.argmax(dim=1).numpy()
    confusion = confusion_matrix(targets.numpy(), preds, len(clf.labels))
    return ZeroShotResult(
        metrics=metrics,
        classes=clf.labels,
        templates=clf.templates,
        confusion=confusion,
        class_recall=per_class_recall(confusion),
        predictions=preds,
        targets=targets.numpy(),
        truncated=clf.truncated,
        seconds=seconds,
    )


def evaluate_zeroshot(
    encoders: Encoders,
    data: LabelledData,
    templates: str | Sequence[str] | None = None,
    *,
    batch_size: int = 256,
    workers: int = 0,
    progress: bool = False,
    cache: ClassifierCache | None = None,
) -> ZeroShotResult:
    """Zero-shot accuracy of `encoders` on `data`, prompting with its class names and `templates` (default
    "generic"; a set name, a JSON file, one template with `{c}`, or a list)."""
    if len(data.classes) < 2:
        raise DataError(
            f"{printable(data.source)} has {len(data.classes)} class {list(data.classes)}: with one class every image "
            f"is classified right, so accuracy means nothing. Give a dataset with at least two classes (a folder "
            f"holding images/<class>/... and a labels file: pass the labels file)"
        )
    start = time.perf_counter()
    clf = build_classifier(encoders, data.classes, templates, batch_size=batch_size, cache=cache, progress=progress)
    image_emb, targets = embed_labelled(encoders, data, batch_size=batch_size, workers=workers, progress=progress)
    result = score(clf, image_emb, targets, time.perf_counter() - start)
    LOG.info("zero-shot on %s: %s", data.source, {k: round(v, 4) for k, v in result.metrics.items()})
    return result
