"""Draft decoding (vlm.readers.images, `ImageRef.open(draft=...)`) of a phone-size JPEG made from a real photo
(scikit-learn's sample image): the reduced-scale decode is upright under EXIF rotation, keeps the size limit, and
embeds like the full decode (cosine >= 0.99 with a ViT-B-32 at its real 224 px input)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vlm.readers.images import ImageError, ImageRef

ORIENTATION = 0x0112
PHONE = (4032, 3024)


def phone_photo(name: str) -> Image.Image:
    """A real photo (427 x 640) upscaled to a 12-megapixel frame, with sensor-like noise (JPEG entropy of a photo)."""
    from sklearn.datasets import load_sample_image

    im = Image.fromarray(load_sample_image(name)).resize(PHONE, Image.BICUBIC)
    noise = np.random.default_rng(0).integers(-4, 5, (PHONE[1], PHONE[0], 3), dtype=np.int16)
    return Image.fromarray(np.clip(np.asarray(im, dtype=np.int16) + noise, 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    out = tmp_path_factory.mktemp("phone")
    exif = Image.Exif()
    exif[ORIENTATION] = 6  # stored landscape, shown rotated 90 degrees clockwise: a portrait photo
    phone_photo("china.jpg").save(out / "portrait.jpg", quality=90, exif=exif)
    phone_photo("flower.jpg").save(out / "other.jpg", quality=90)
    return out


def test_draft_decode_is_smaller_upright_and_close_to_the_full_decode(photos):
    ref = ImageRef("file", str(photos / "portrait.jpg"))
    full, draft = ref.open(), ref.open(draft=512)
    assert full.size == (3024, 4032)  # the orientation applied
    assert draft.size == (756, 1008) and draft.mode == "RGB"  # 1/4 scale: the smallest with the shorter side >= 512
    assert ref.open(draft=200).size == (378, 504)  # 1/8
    assert ref.open(draft=2000).size == full.size  # no scale keeps 2000 px: decoded in full
    small = np.asarray(full.resize(draft.size, Image.BOX), dtype=np.float64)
    assert np.abs(small - np.asarray(draft, dtype=np.float64)).mean() < 3  # the same picture, the same way up
    other = ImageRef("file", str(photos / "other.jpg")).open(draft=512).transpose(Image.Transpose.ROTATE_90)
    assert np.abs(small - np.asarray(other, dtype=np.float64)).mean() > 20  # what a different picture differs by
    png = photos / "twin.png"
    full.resize((600, 800)).save(png)
    assert ImageRef("file", str(png)).open(draft=100).size == (600, 800)  # not a JPEG: decoded in full


def test_draft_decode_keeps_the_size_limit(photos, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 4032 * 3024 - 1)
    with pytest.raises(ImageError, match=r"image too large \(4032 x 3024\)"):
        ImageRef("file", str(photos / "other.jpg")).open(draft=512)


def test_draft_decode_embeds_like_the_full_decode(photos):
    from vlm import models

    torch.manual_seed(0)
    enc = models.load("ViT-B-32", device="cpu")
    refs = [ImageRef("file", str(photos / n)) for n in ("portrait.jpg", "other.jpg")]
    full = enc.encode_image(torch.stack([enc.preprocess(r.open()) for r in refs]))
    draft = enc.encode_image(torch.stack([enc.preprocess(r.open(draft=512)) for r in refs]))
    same = (full * draft).sum(1)
    assert same.min() >= 0.99
    assert float(full[0] @ full[1]) < same.min()  # the other photo is further away than the draft of the same one
