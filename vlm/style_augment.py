"""Style-removing image augmentations for drawn artwork (emoji, icons): the same concept in another look.

A model trained on two emoji vendors' artwork learns their look along with the names (issue 18: names learned from
Apple's and Twitter's emoji barely transfer to OpenMoji's). These augmentations change the look and keep the thing:

    grayscale    the colours dropped (torchvision `RandomGrayscale`)
    jitter       brightness, contrast, saturation and hue moved (torchvision `ColorJitter`)
    posterize    few colour levels: glossy gradients become flat areas (torchvision `RandomPosterize`)
    outline      the drawing's edges (PIL `FIND_EDGES`) drawn over it in thin black lines, as OpenMoji and many
                 icon sets outline their shapes
    background   the white background around the drawing (flood-filled from the corners, PIL `ImageDraw.floodfill`)
                 made one random flat colour
    zoom         the whole picture shrunk to a random 55-100 % of its side and placed at a random spot on its own
                 corner colour: the drawing at another scale. OpenMoji's artwork fills about 60 % of its frame,
                 Apple's and Twitter's nearly all of it, and cut to its drawing the held-out OpenMoji set is found
                 almost twice as often by the model shipped then (vlm/README.md, "Part of the gap is scale"; the
                 model trained with this zoom-out gains only 0.266 -> 0.277 from the same cut: it has learnt the scale)

Each named op is applied with probability `p`, in the order above; the randomness comes from torch's generator,
which `vlm.data.PairDataset` seeds per sample, so a sample is augmented the same way in every run and worker.
Only images whose pair key starts with one of `prefixes` are augmented (the demo corpus: "emoji/", "icons/"): the
synthetic shapes are named by their colour, which grayscale or a hue shift would make wrong.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image, ImageDraw, ImageFilter, ImageOps
from torchvision import transforms

from vlm.errors import ConfigError

OPS = ("grayscale", "jitter", "posterize", "outline", "background", "zoom")
ZOOM_RANGE = (0.55, 1.0)  # side of the shrunk picture, as a fraction of the frame
DEFAULT_PREFIXES = ("emoji/", "icons/")


def _chance(p: float) -> bool:
    return bool(torch.rand(()) < p)


def outline(image: Image.Image, width: int = 1, level: int = 56) -> Image.Image:
    """`image` with its edges (grey-level steps above `level`, widened to `width` px, odd) drawn in black; the
    image's own border is not an edge."""
    edges = image.convert("L").filter(ImageFilter.FIND_EDGES)
    edges = ImageOps.expand(ImageOps.crop(edges, 1), 1, fill=0)
    mask = edges.point(lambda v: 255 if v > level else 0)
    if width > 1:
        mask = mask.filter(ImageFilter.MaxFilter(width))
    out = image.copy()
    out.paste((0, 0, 0), mask=mask)
    return out


def flat_background(image: Image.Image, colour: tuple[int, int, int], thresh: int = 24) -> Image.Image:
    """`image` with the near-white region connected to each corner filled with `colour`; a drawing that reaches a
    corner in another colour keeps it."""
    out = image.copy()
    w, h = out.size
    for xy in ((0, 0), (w - 1, 0), (0, h - 1), (w - 1, h - 1)):
        pixel = out.getpixel(xy)
        if isinstance(pixel, tuple) and min(pixel[:3]) >= 255 - thresh:
            ImageDraw.floodfill(out, xy, colour, thresh=thresh)
    return out


def zoom_out(image: Image.Image, scale: float, where: tuple[float, float] = (0.5, 0.5)) -> Image.Image:
    """`image` shrunk to `scale` of its size and pasted on its top-left pixel's colour, at the fraction `where`
    (x, y; 0.5 = centred) of the free margin."""
    w, h = image.size
    small = image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BICUBIC)
    out = Image.new(image.mode, (w, h), image.getpixel((0, 0)))
    out.paste(small, (round((w - small.width) * where[0]), round((h - small.height) * where[1])))
    return out


class StyleAugment:
    """The named `ops`, each applied with probability `p`, to the images of pairs whose key starts with one of
    `prefixes`. Call it on an RGB PIL image; `applies(key)` says whether a pair gets it."""

    def __init__(self, ops: Sequence[str], p: float = 0.5, prefixes: Sequence[str] = DEFAULT_PREFIXES):
        unknown = sorted(set(ops) - set(OPS))
        if unknown:
            raise ConfigError(f"unknown style augmentation {', '.join(unknown)}; choose from {', '.join(OPS)}")
        if not ops:
            raise ConfigError("StyleAugment needs at least one op")
        if not 0.0 < p <= 1.0:
            raise ConfigError(f"style augmentation probability must lie in (0, 1], got {p}")
        self.ops = tuple(o for o in OPS if o in ops)  # the documented order, whatever order they were named in
        self.p = p
        self.prefixes = tuple(prefixes)
        self._grayscale = transforms.Grayscale(num_output_channels=3)
        self._jitter = transforms.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.6, hue=0.5)
        self._posterize = transforms.RandomPosterize(bits=3, p=1.0)

    def applies(self, key: str) -> bool:
        return key.startswith(self.prefixes)

    def __call__(self, image: Image.Image) -> Image.Image:
        image = image.convert("RGB")
        for op in self.ops:
            if not _chance(self.p):
                continue
            if op == "grayscale":
                image = self._grayscale(image)
            elif op == "jitter":
                image = self._jitter(image)
            elif op == "posterize":
                image = self._posterize(image)
            elif op == "outline":
                image = outline(image)
            elif op == "zoom":
                low, high = ZOOM_RANGE
                scale = low + (high - low) * float(torch.rand(()))
                image = zoom_out(image, scale, (float(torch.rand(())), float(torch.rand(()))))
            else:
                colour = tuple(int(c) for c in torch.randint(0, 256, (3,)))
                image = flat_background(image, colour)  # type: ignore[arg-type]
        return image

    def __repr__(self) -> str:
        return f"StyleAugment({list(self.ops)}, p={self.p}, prefixes={list(self.prefixes)})"
