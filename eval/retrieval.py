"""Image<->text retrieval evaluation of an encoder pair on caption data (several captions per image)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from eval.metrics import retrieval_recall
from vlm.data import Pair
from vlm.models import Encoders
from vlm.readers.images import ImageDataset

LOG = logging.getLogger(__name__)


class PairEmbeddings(NamedTuple):
    image_emb: torch.Tensor  # (N_img, D) float32, L2-normalised
    text_emb: torch.Tensor  # (N_txt, D) float32, L2-normalised
    text_to_image: torch.Tensor  # (N_txt,) int64


@torch.no_grad()
def embed_pairs(
    encoders: Encoders,
    pairs: Sequence[Pair],
    *,
    batch_size: int = 256,
    workers: int = 0,
    progress: bool = False,
) -> PairEmbeddings:
    """Embed every image once and every caption of every image."""
    loader = DataLoader(
        ImageDataset([p.image for p in pairs], encoders.preprocess),
        batch_size=batch_size,
        num_workers=workers,
        pin_memory=encoders.device.type == "cuda",
    )
    image_chunks = [encoders.encode_image(x).cpu() for x in tqdm(loader, desc="embed images", disable=not progress)]
    texts = [c for p in pairs for c in p.captions]
    owners = [i for i, p in enumerate(pairs) for _ in p.captions]
    text_chunks = [
        encoders.encode_text(texts[s : s + batch_size]).cpu()
        for s in tqdm(range(0, len(texts), batch_size), desc="embed texts", disable=not progress)
    ]
    return PairEmbeddings(
        image_emb=torch.cat(image_chunks),
        text_emb=torch.cat(text_chunks),
        text_to_image=torch.tensor(owners, dtype=torch.long),
    )


def evaluate_pairs(
    encoders: Encoders,
    pairs: Sequence[Pair],
    *,
    ks: Sequence[int] = (1, 5, 10),
    batch_size: int = 256,
    workers: int = 0,
    progress: bool = False,
) -> dict[str, float]:
    """Recall@k both ways (clip-benchmark's metric names), plus the mean of all of them as `mean_recall`."""
    emb = embed_pairs(encoders, pairs, batch_size=batch_size, workers=workers, progress=progress)
    metrics = retrieval_recall(emb.image_emb, emb.text_emb, emb.text_to_image, ks=ks)
    metrics["mean_recall"] = sum(metrics.values()) / len(metrics)
    return metrics
