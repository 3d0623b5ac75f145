import numpy as np
import pytest
import torch

from eval.metrics import retrieval_recall


def brute_force_recall(img, txt, owner, k):
    """Independent loop: rank by sorting scores (no topk), several texts per image."""
    scores = txt @ img.T
    t2i = np.mean([owner[t] in np.argsort(-scores[t], kind="stable")[:k] for t in range(len(txt))])
    i2t = np.mean([any(owner[t] == i for t in np.argsort(-scores[:, i], kind="stable")[:k]) for i in range(len(img))])
    return t2i, i2t


@pytest.mark.parametrize("n_img, chunk", [(11, 3), (29, 4096), (7, 5)])
def test_recall_matches_brute_force(n_img, chunk):
    rng = np.random.default_rng(n_img)
    img = rng.normal(size=(n_img, 16))
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    owner = np.concatenate([np.arange(n_img), rng.integers(0, n_img, size=n_img // 2 + 1)])  # 1-2 texts per image
    txt = img[owner] + rng.normal(scale=0.9, size=(len(owner), 16))
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    ks = (1, 5, 10)
    got = retrieval_recall(torch.tensor(img), torch.tensor(txt), torch.tensor(owner), ks=ks, chunk=chunk)
    for k in ks:
        t2i, i2t = brute_force_recall(img, txt, owner, k)
        assert got[f"image_retrieval_recall@{k}"] == pytest.approx(t2i)
        assert got[f"text_retrieval_recall@{k}"] == pytest.approx(i2t)


def test_perfect_and_shape_errors():
    e = torch.eye(6)
    got = retrieval_recall(e, e, torch.arange(6), ks=(1,))
    assert got == {"image_retrieval_recall@1": 1.0, "text_retrieval_recall@1": 1.0}
    with pytest.raises(ValueError, match="text_to_image must have shape"):
        retrieval_recall(e, e, torch.arange(5))
