"""Near-duplicates: groups of images whose vectors are closer than a threshold and whose pixels agree (resized,
re-encoded, cropped or brightened copies of one photo), found exactly over a collection's stored vectors.

    groups = coll.duplicates(threshold=0.9)      # list[DuplicateGroup], largest group first
    groups[0].records[0]                         # the keeper: the member with the most pixels (then the largest file)

Two steps. The vectors propose: every pair with cosine above the threshold is a candidate. The pixels confirm
(`pixels`, default `PIXEL_THRESHOLD`; None turns this off): each candidate image is decoded small (JPEGs as a draft),
cut to centred crops of `CROPS` of each side and resized to `SIDE` x `SIDE` in colour; each thumbnail's channels are
made zero-mean and the whole unit-norm; a pair is kept when the best correlation between one image's full thumbnail
and the other's full or cropped one is above `pixels`. Normalising makes it blind to brightness and contrast, the
size to resizing and re-encoding, the crops to a crop of up to ~10% per side. The vectors alone confuse "merely
similar" images (two green crosses at other places, skin-tone variants of one emoji) that no pixel check does: on the
benchmark's edited copies this lifted precision at the same recall (indexing/README.md). The thumbnails are in colour
since 2026-12-05: in grey, flags of one layout in other colours (Guinea and Romania, Burkina Faso and Albania), or a
brown and a black square, correlated above 0.95, and made most of the benchmark's false pairs on emoji. The price: a
grey copy of a colour photo correlates less with it than before (the more colourful, the less); such copies are not
among the benchmark's edits. An image that cannot be read keeps its pairs on the vectors' word alone. Decoding costs
what the candidates cost: images with no candidate are never read.

Groups are stars, not chains: images are taken in keeper order (the most pixels first), and each image not yet in a
group gathers those still free whose cosine with it is above the threshold; so every member is within the threshold
of its keeper, and a chain of merely similar images (A~B~C, A and C far apart) is not one group. The pairs are found
exactly: every vector against every other in blocks of `BLOCK` rows (N^2 D multiply-adds: about a minute for 50,000
images of D = 512 on 2 cores). Images with the same decoded pixels are never stored twice
(`add` and `sync` report them with their twin), so a group's members are different files; a member whose vector
equals the keeper's (cosine >= `SAME_PICTURE`) and whose size equals it too is marked `same_picture`: a re-encode that
changed no visible pixel. `DEFAULT_THRESHOLD` and `PIXEL_THRESHOLD` are chosen by `bench/duplicates.py` on one half
of its edited copies and measured on the other half (indexing/README.md).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from indexing.errors import IndexingError
from indexing.store import Filter, ImageRecord
from indexing.versions import Version
from vlm.errors import DataError

LOG = logging.getLogger(__name__)

# Chosen by bench/duplicates.py on its tuning parts (shapes scenes and Twemoji icons, the demo model 2e8a087393b745e5):
# the setting whose worse rate over both sets is best; figures of the test parts in indexing/README.md.
DEFAULT_THRESHOLD = 0.85  # cosine of candidates
PIXEL_THRESHOLD = 0.92  # colour-thumbnail correlation that confirms a candidate
SAME_PICTURE = 0.9995
BLOCK = 1024
SIDE = 24  # thumbnail side, px
CROPS = (0.0, 0.05, 0.1)  # centred crops compared, as a share of each side


class Thumbnails:
    """Pixel signatures of images, decoded on first use and kept (a benchmark reuses them across thresholds)."""

    def __init__(self, root: Path | None):
        self.root = root
        self._cache: dict[tuple, np.ndarray | None] = {}

    def get(self, record: ImageRecord) -> np.ndarray | None:
        """(len(CROPS), SIDE * SIDE) unit rows, or None when the image cannot be read."""
        key = (record.path, record.sha256)
        if key not in self._cache:
            try:
                image = record.image_ref(self.root).open(draft=SIDE * 8)
            except (DataError, OSError) as e:
                LOG.warning("duplicates: %s not compared by pixels: %s", record.path, e)
                self._cache[key] = None
            else:
                self._cache[key] = signature(image)
        return self._cache[key]


def signature(image: Image.Image) -> np.ndarray:
    """The colour thumbnails `CROPS` of `image` (module docstring): (len(CROPS), SIDE * SIDE * 3) float32, each channel
    made zero-mean, then the whole unit-norm."""
    rgb = image.convert("RGB")
    w, h = rgb.size
    rows = []
    for c in CROPS:
        dx, dy = round(w * c), round(h * c)
        box = (dx, dy, max(w - dx, dx + 1), max(h - dy, dy + 1))
        t = np.asarray(rgb.resize((SIDE, SIDE), Image.Resampling.BOX, box=box), np.float32).reshape(SIDE * SIDE, 3)
        t = (t - t.mean(axis=0)).ravel()
        rows.append(t / max(float(np.linalg.norm(t)), 1e-6))
    return np.stack(rows)


def pixel_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """The best correlation of one signature's full thumbnail with the other's full or cropped ones."""
    return float(pixel_similarities(a, b[None])[0])


def pixel_similarities(a: np.ndarray, others: np.ndarray) -> np.ndarray:
    """`pixel_similarity` of `a` with each signature of the stack `others` (n, crops, pixels), at once."""
    return np.maximum((others @ a[0]).max(axis=1), (others[:, 0] @ a.T).max(axis=1))


@dataclass(frozen=True)
class DuplicateGroup:
    records: list[ImageRecord]  # the keeper first, then the others by decreasing similarity to it
    scores: list[float]  # cosine of each member to the keeper (1.0 for the keeper)
    same_picture: list[bool]  # same size and vector as the keeper: a re-encode with no visible change

    @property
    def ids(self) -> list[int]:
        return [r.id for r in self.records]


def check_threshold(threshold: float) -> float:
    t = float(threshold)
    if not 0.0 < t < 1.0:
        raise IndexingError(f"duplicate threshold must be a cosine between 0 and 1 (exclusive), got {threshold!r}")
    return t


def find(
    v: Version,
    threshold: float,
    *,
    filters: Filter | None = None,
    pixels: float | None = PIXEL_THRESHOLD,
    thumbnails: Thumbnails | None = None,
) -> list[DuplicateGroup]:
    """Groups of images of `v` (those matching `filters`) joined by pairs with cosine above `threshold` whose pixels
    correlate above `pixels` (None: the vectors alone). `thumbnails`: signatures to reuse (images under the
    collection's root)."""
    t = check_threshold(threshold)
    if pixels is not None:
        pixels = check_threshold(pixels)
    ids = v.store.filter_ids(filters) if filters is not None and not filters.is_empty() else v.store.ids()
    if len(ids) < 2:
        return []
    x = v.vectors.get(ids)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    near: dict[int, dict[int, float]] = {}  # i -> {j: cosine} for the pairs above the threshold
    for start in range(0, len(ids), BLOCK):
        sims = x[start : start + BLOCK] @ x.T
        rows, cols = np.nonzero(sims > t)
        for a, b in zip(rows, cols, strict=True):
            if a + start != b:
                near.setdefault(int(a + start), {})[int(b)] = float(sims[a, b])
    if not near:
        return []
    records = v.store.get([int(ids[i]) for i in near])
    if pixels is not None:
        root = v.manifest["root"]
        thumbs = thumbnails if thumbnails is not None else Thumbnails(Path(root) if root is not None else None)
        _confirm(near, lambda i: thumbs.get(records[int(ids[i])]), pixels)
        if not near:
            return []

    def rank(i: int) -> tuple:  # keepers first: the most pixels, then the largest file, then the oldest id
        r = records[int(ids[i])]
        return (-(r.width or 0) * (r.height or 0), -r.size, int(ids[i]))

    assigned: set[int] = set()
    groups = []
    for keeper in sorted(near, key=rank):
        if keeper in assigned:
            continue
        others = sorted((j for j in near[keeper] if j not in assigned), key=lambda j: (-near[keeper][j], ids[j]))
        if not others:
            continue
        assigned.update([keeper, *others])
        size = (records[int(ids[keeper])].width, records[int(ids[keeper])].height)
        members = [records[int(ids[i])] for i in [keeper, *others]]
        groups.append(
            DuplicateGroup(
                records=members,
                scores=[1.0] + [near[keeper][j] for j in others],
                same_picture=[False]
                + [
                    near[keeper][j] >= SAME_PICTURE and (r.width, r.height) == size
                    for j, r in zip(others, members[1:], strict=True)
                ],
            )
        )
    groups.sort(key=lambda g: (-len(g.records), g.records[0].id))
    return groups


def _confirm(near: dict[int, dict[int, float]], signature_of, pixels: float) -> None:
    """Drop from `near` (both directions) the pairs whose pixels do not correlate above `pixels`."""
    for i in list(near):
        a = signature_of(i)
        if a is None:
            continue
        later = [(j, b) for j in near[i] if j > i and (b := signature_of(j)) is not None]
        if not later:
            continue
        similarity = pixel_similarities(a, np.stack([b for _, b in later]))
        for (j, _), s in zip(later, similarity.tolist(), strict=True):
            if s <= pixels:
                del near[i][j]
                del near[j][i]
    for i in [i for i, others in near.items() if not others]:
        del near[i]
