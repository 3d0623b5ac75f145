"""Evaluation metrics as pure functions over embeddings, scores and labels.

Names follow CLIP_benchmark so reports can be diffed: `image_retrieval_recall@k` is text->image (for each text,
is its image among the top k images), `text_retrieval_recall@k` is image->text (for each image, is any of its texts
among the top k texts). Ties are broken by `torch.topk`, as clip-benchmark does.

Classification: `acc1`/`acc5` are top-k accuracies (NaN when there are fewer than k classes, as clip-benchmark
reports acc5 with fewer than 5 classes), `mean_per_class_recall` is scikit-learn's `balanced_accuracy_score` of the
argmax: the mean recall over the classes that occur in the targets. The confusion matrix has true classes as rows
and predicted classes as columns (scikit-learn's convention).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def retrieval_recall(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    text_to_image: torch.Tensor,
    ks: Sequence[int] = (1, 5, 10),
    chunk: int = 4096,
) -> dict[str, float]:
    """Recall@k in both directions.

    Parameters
    ----------
    image_emb : (N_img, D) float, L2-normalised
    text_emb : (N_txt, D) float, L2-normalised
    text_to_image : (N_txt,) int64, the index of each text's image; an image may have several texts
    ks : the k values; a k larger than the candidate count counts every candidate
    chunk : rows of the score matrix computed at once (memory bound: chunk x max(N_img, N_txt) floats)
    """
    n_img, n_txt = image_emb.shape[0], text_emb.shape[0]
    if text_to_image.shape != (n_txt,):
        raise ValueError(f"text_to_image must have shape ({n_txt},), got {tuple(text_to_image.shape)}")
    image_emb, text_emb = image_emb.float(), text_emb.float()
    text_to_image = text_to_image.to(image_emb.device).long()
    out: dict[str, float] = {}

    # text -> image: rank of the positive among all images.
    hits_t2i = {k: 0 for k in ks}
    for start in range(0, n_txt, chunk):
        scores = text_emb[start : start + chunk] @ image_emb.T  # (c, N_img)
        top = scores.topk(min(max(ks), n_img), dim=1).indices  # (c, kmax)
        correct = top == text_to_image[start : start + chunk, None]
        for k in ks:
            hits_t2i[k] += int(correct[:, :k].any(dim=1).sum())
    for k in ks:
        out[f"image_retrieval_recall@{k}"] = hits_t2i[k] / max(n_txt, 1)

    # image -> text: a hit if any of the image's texts is in the top k.
    hits_i2t = {k: 0 for k in ks}
    for start in range(0, n_img, chunk):
        scores = image_emb[start : start + chunk] @ text_emb.T  # (c, N_txt)
        top = scores.topk(min(max(ks), n_txt), dim=1).indices  # (c, kmax)
        owners = text_to_image[top]  # (c, kmax): the image each retrieved text belongs to
        correct = owners == torch.arange(start, start + scores.shape[0], device=owners.device)[:, None]
        for k in ks:
            hits_i2t[k] += int(correct[:, :k].any(dim=1).sum())
    for k in ks:
        out[f"text_retrieval_recall@{k}"] = hits_i2t[k] / max(n_img, 1)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Classification.


def _check_scores(scores: torch.Tensor, targets: torch.Tensor) -> None:
    if scores.ndim != 2 or targets.shape != (scores.shape[0],):
        raise ValueError(
            f"expected scores (N, C) and targets (N,), got {tuple(scores.shape)} and {tuple(targets.shape)}"
        )


def topk_accuracy(scores: torch.Tensor, targets: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict[int, float]:
    """Share of rows whose target is among the k highest scores, for each k; NaN where k exceeds the classes.

    Parameters
    ----------
    scores : (N, C) float, any monotone score (logits, cosines, probabilities)
    targets : (N,) int64 class ids in [0, C)
    """
    _check_scores(scores, targets)
    n, n_classes = scores.shape
    valid = [k for k in ks if k <= n_classes]
    out = {k: float("nan") for k in ks}
    if not valid or n == 0:
        return out
    top = scores.topk(max(valid), dim=1).indices  # (N, kmax), best first
    correct = top == targets.to(top.device).long()[:, None]
    for k in valid:
        out[k] = float(correct[:, :k].any(dim=1).sum()) / n
    return out


def confusion_matrix(targets: np.ndarray, preds: np.ndarray, n_classes: int) -> np.ndarray:
    """(C, C) int64 counts: row = true class, column = predicted class."""
    targets, preds = np.asarray(targets, dtype=np.int64), np.asarray(preds, dtype=np.int64)
    if targets.shape != preds.shape or targets.ndim != 1:
        raise ValueError(f"targets and preds must be equal-length vectors, got {targets.shape} and {preds.shape}")
    for name, v in (("targets", targets), ("preds", preds)):
        if v.size and (v.min() < 0 or v.max() >= n_classes):
            raise ValueError(f"{name} must lie in [0, {n_classes}), got values in [{v.min()}, {v.max()}]")
    return np.bincount(targets * n_classes + preds, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def per_class_recall(confusion: np.ndarray) -> np.ndarray:
    """(C,) float64 recall of each class from a confusion matrix; NaN for classes with no true samples."""
    totals = confusion.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, np.diag(confusion) / np.maximum(totals, 1), np.nan)


def mean_per_class_recall(confusion: np.ndarray) -> float:
    """Mean recall over the classes present in the targets (scikit-learn's balanced accuracy); NaN if none."""
    recall = per_class_recall(confusion)
    present = recall[~np.isnan(recall)]
    return float(present.mean()) if present.size else float("nan")


def classification_metrics(scores: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """clip-benchmark's zero-shot classification metrics: acc1, acc5, mean_per_class_recall."""
    _check_scores(scores, targets)
    acc = topk_accuracy(scores, targets, (1, 5))
    preds = scores.argmax(dim=1).cpu().numpy()
    confusion = confusion_matrix(targets.cpu().numpy(), preds, scores.shape[1])
    return {"acc1": acc[1], "acc5": acc[5], "mean_per_class_recall": mean_per_class_recall(confusion)}
