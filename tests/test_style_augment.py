"""Style-removing augmentations (vlm/style_augment.py) and how the trainer's dataset applies them (vlm/data.py).

The test drawing is a red disc of known radius on white, so what each op must do is known without the code under
test: edges lie on the circle, the background is everything outside it, grayscale makes r == g == b.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from torchvision import transforms

from vlm.config import TrainConfig, from_dict
from vlm.data import PairDataset, read_pairs
from vlm.errors import ConfigError
from vlm.style_augment import ZOOM_RANGE, StyleAugment, flat_background, outline, zoom_out

SIZE, R = 64, 20


def disc(colour: tuple[int, int, int] = (220, 30, 30)) -> Image.Image:
    im = Image.new("RGB", (SIZE, SIZE), (255, 255, 255))
    c = SIZE // 2
    ImageDraw.Draw(im).ellipse((c - R, c - R, c + R, c + R), fill=colour)
    return im


def radius(x: int, y: int) -> float:
    return math.hypot(x - SIZE // 2, y - SIZE // 2)


def test_outline_draws_black_on_the_drawings_edge_only():
    out = np.asarray(outline(disc()))
    ys, xs = np.nonzero((out == 0).all(axis=2))
    assert len(xs) > 2 * math.pi * R * 0.8  # about the circumference
    assert all(abs(radius(x, y) - R) <= 2.5 for x, y in zip(xs, ys, strict=True))  # nowhere but on the circle
    assert tuple(out[0, 0]) == (255, 255, 255)  # the image's own border is no edge
    assert tuple(out[SIZE // 2, SIZE // 2]) == (220, 30, 30)


def test_flat_background_fills_the_outside_and_keeps_the_drawing():
    out = np.asarray(flat_background(disc(), (0, 128, 255)))
    filled = (out == (0, 128, 255)).all(axis=2)
    outside = np.array([[radius(x, y) > R + 1.5 for x in range(SIZE)] for y in range(SIZE)])
    inside = np.array([[radius(x, y) < R - 1.5 for x in range(SIZE)] for y in range(SIZE)])
    assert filled[outside].all() and not filled[inside].any()
    assert (out[inside] == (220, 30, 30)).all()


def test_each_op_at_p_1_changes_the_look_and_keeps_size_and_mode():
    torch.manual_seed(0)
    gray = np.asarray(StyleAugment(["grayscale"], p=1.0)(disc()), dtype=int)
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
    for op in ("jitter", "posterize", "outline", "background", "zoom"):
        out = StyleAugment([op], p=1.0)(disc())
        assert (out.size, out.mode) == ((SIZE, SIZE), "RGB")
        assert not np.array_equal(np.asarray(out), np.asarray(disc())), op


def test_zoom_out_shrinks_the_drawing_by_the_scale_on_its_background():
    red = (220, 30, 30)
    for scale, where in ((0.5, (0.5, 0.5)), (0.6, (0.0, 1.0))):
        out = np.asarray(zoom_out(disc(red), scale, where))
        assert out.shape == (SIZE, SIZE, 3)
        reddish = (out[..., 0] > 150) & (out[..., 1] < 110)
        area = math.pi * (R * scale) ** 2  # the disc's area shrinks by scale squared
        assert abs(reddish.sum() - area) < 0.15 * area, (scale, reddish.sum(), area)
        ys, xs = np.nonzero(reddish)
        side = SIZE * scale
        expected_centre = ((SIZE - side) * where[0] + side / 2, (SIZE - side) * where[1] + side / 2)
        assert abs(xs.mean() - expected_centre[0]) < 1.5 and abs(ys.mean() - expected_centre[1]) < 1.5
        assert (out[~reddish].min(axis=1) > 100).all()  # everything else is the white background or the disc's rim


def test_zoom_draws_its_scale_from_the_documented_range():
    torch.manual_seed(1)
    aug = StyleAugment(["zoom"], p=1.0)
    areas = [int(((np.asarray(aug(disc()))[..., 1]) < 110).sum()) for _ in range(40)]
    scales = np.sqrt(np.asarray(areas) / (math.pi * R**2))
    assert ZOOM_RANGE[0] - 0.05 <= scales.min() and scales.max() <= ZOOM_RANGE[1] + 0.05
    assert scales.max() - scales.min() > 0.25  # spread over the range, not one fixed size


def test_the_same_seed_gives_the_same_image_and_another_seed_another():
    aug = StyleAugment(["grayscale", "jitter", "posterize", "outline", "background"], p=0.5)

    def run(seed: int) -> np.ndarray:
        torch.manual_seed(seed)
        return np.asarray(aug(disc()))

    assert np.array_equal(run(3), run(3))
    assert any(not np.array_equal(run(3), run(s)) for s in range(4, 8))


@pytest.fixture
def pairs(tmp_path):
    for sub in ("emoji", "shapes"):
        (tmp_path / sub).mkdir()
        for i in range(4):
            disc((200, 40 * i, 30)).save(tmp_path / sub / f"{i}.png")
    lines = ["path,caption"] + [f"{sub}/{i}.png,thing {i}" for sub in ("emoji", "shapes") for i in range(4)]
    (tmp_path / "pairs.csv").write_text("\n".join(lines) + "\n")
    return read_pairs(tmp_path / "pairs.csv", progress=False).pairs


def test_the_dataset_augments_only_the_prefixed_pairs_and_is_reproducible(pairs):
    to_tensor = transforms.ToTensor()
    style = StyleAugment(["grayscale", "outline", "background"], p=1.0, prefixes=("emoji/",))
    plain = PairDataset(pairs, to_tensor, lambda c: torch.zeros(1, 4), seed=0)
    styled = PairDataset(pairs, to_tensor, lambda c: torch.zeros(1, 4), seed=0, style=style)
    again = PairDataset(pairs, to_tensor, lambda c: torch.zeros(1, 4), seed=0, style=style)
    for i, p in enumerate(pairs):
        a, b, c = plain[(0, i)][0], styled[(0, i)][0], again[(0, i)][0]
        assert torch.equal(b, c)  # seeded per sample: the same in every run
        assert torch.equal(a, b) != p.key.startswith("emoji/"), p.key  # shapes untouched, emoji changed


def test_config_option_off_by_default_and_checked():
    assert TrainConfig().data.style_augment == ()
    cfg = from_dict(TrainConfig, {"data": {"style_augment": ["outline", "grayscale"], "style_augment_p": 0.3}})
    assert cfg.data.style_augment == ("outline", "grayscale") and cfg.data.style_augment_prefixes == (
        "emoji/",
        "icons/",
    )
    with pytest.raises(ConfigError, match="sepia"):
        from_dict(TrainConfig, {"data": {"style_augment": ["sepia"]}})
    with pytest.raises(ConfigError, match="probability"):
        StyleAugment(["outline"], p=0.0)
    assert StyleAugment(["outline", "grayscale"]).ops == ("grayscale", "outline")  # the documented order
