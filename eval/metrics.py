"""Evaluation metrics as pure functions over embeddings and labels.

Names follow CLIP_benchmark so reports can be diffed: `image_retrieval_recall@k` is text->image (for each text,
is its image among the top k images), `text_retrieval_recall@k` is image->text (for each image, is any of its texts
among the top k texts). Ties are broken by `torch.topk`, as clip-benchmark does.
"""

from __future__ import annotations

from collections.abc import Sequence

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
