"""vlm.readers.images on phone photos: HEIC written by pillow-heif and EXIF-rotated JPEGs decode upright and embed
like their upright PNG twins (cosine >= 0.99 with the tiny model); an unreadable HEIC is named, with its reason."""

from __future__ import annotations

import numpy as np
import pillow_heif
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from vlm.readers.images import IMAGE_EXTS, ImageError, ImageRef
from vlm.synth import generate

ORIENTATION = 0x0112


@pytest.fixture(scope="module")
def upright(tmp_path_factory) -> Image.Image:
    out = tmp_path_factory.mktemp("shapes") / "data"
    generate(out, scenes=1, seed=3, image_size=96, progress=False)
    return Image.open(next((out / "images").glob("*.png"))).convert("RGB")


def embed(encoders, image: Image.Image) -> torch.Tensor:
    with torch.no_grad():
        return F.normalize(encoders.model.encode_image(encoders.preprocess(image)[None]).float(), dim=-1)[0]


def test_heic_and_avif_are_listed_and_a_heic_embeds_like_its_png_twin(tmp_path, upright, tiny_encoders):
    assert {".heic", ".heif", ".avif"} <= set(IMAGE_EXTS)
    upright.save(tmp_path / "twin.png")
    heif = pillow_heif.from_pillow(upright)
    heif.save(str(tmp_path / "photo.heic"), quality=95)
    assert (tmp_path / "photo.heic").read_bytes()[4:12] in (b"ftypheic", b"ftypmif1")  # a real HEIF container
    decoded = ImageRef("file", str(tmp_path / "photo.heic")).open()
    assert decoded.mode == "RGB" and decoded.size == upright.size
    png = ImageRef("file", str(tmp_path / "twin.png")).open()
    assert float(embed(tiny_encoders, decoded) @ embed(tiny_encoders, png)) >= 0.99


@pytest.mark.parametrize(
    ("orientation", "stored"),
    [
        (3, Image.Transpose.ROTATE_180),
        (6, Image.Transpose.ROTATE_90),
        (8, Image.Transpose.ROTATE_270),
        (2, Image.Transpose.FLIP_LEFT_RIGHT),
    ],
)
def test_an_exif_rotated_jpeg_decodes_upright(tmp_path, upright, tiny_encoders, orientation, stored):
    # A camera stores the sensor's pixels and says in EXIF how to turn them: orientation 6 = turn 90° clockwise to
    # view, so the stored pixels are the upright picture turned 90° counter-clockwise (PIL's ROTATE_90).
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    upright.transpose(stored).save(tmp_path / "rotated.jpg", quality=95, exif=exif)
    decoded = ImageRef("file", str(tmp_path / "rotated.jpg")).open()
    assert decoded.size == upright.size
    diff = np.abs(np.asarray(decoded, dtype=np.int16) - np.asarray(upright, dtype=np.int16)).mean()
    assert diff < 6  # JPEG noise only; a picture left sideways differs by far more
    assert float(embed(tiny_encoders, decoded) @ embed(tiny_encoders, upright)) >= 0.99


def test_an_unreadable_heic_is_named_with_its_reason(tmp_path, upright):
    pillow_heif.from_pillow(upright).save(str(tmp_path / "good.heic"))
    data = (tmp_path / "good.heic").read_bytes()
    (tmp_path / "cut.heic").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.heic").write_bytes(b"not a heic at all" * 10)
    for name, reason in (("cut.heic", "truncated image"), ("junk.heic", "not an image")):
        with pytest.raises(ImageError) as e:
            ImageRef("file", str(tmp_path / name)).open()
        assert str(e.value) == f"cannot use image {tmp_path / name}: {reason}"
