"""Near-duplicates: groups of images whose pixels agree (resized, re-encoded, cropped or brightened copies of one
photo), proposed by a collection's stored vectors or by small thumbnails, and confirmed by the thumbnails.

    groups = coll.duplicates(threshold=0.9)      # list[DuplicateGroup], largest group first
    groups[0].records[0]                         # the keeper: the member with the most pixels (then the largest file)

Candidates come from two sides. The vectors: every pair with cosine above the threshold, found exactly (every vector
against every other in blocks of `BLOCK` rows: N^2 D multiply-adds, about a minute for 50,000 images of D = 512 on 2
cores). The pixels (`PixelCheck.propose`, default `PROPOSE`): every image is decoded small (JPEGs as a draft) and its
centred crops `CROPS` averaged down to `COARSE` x `COARSE` in colour; pairs whose coarse thumbnails correlate above
`propose` (one's full thumbnail with the other's full or cropped ones) are candidates too, whatever their cosine. A
model need not be blind to brightness: the demo model puts a copy brightened by 25% at cosine 0.58-0.84 from its
original, below any threshold that keeps merely similar images out.

Then the pixels confirm (`pixels`: a `PixelCheck`, a number for its correlation, or None for the vectors alone),
on thumbnails of `SIDE` x `SIDE` of the same crops:
- the correlation: each thumbnail's channels made zero-mean and the whole unit-norm, the best correlation of one
  image's full thumbnail with the other's full or cropped ones must be above `correlation` (`PIXEL_THRESHOLD`).
  Blind to brightness and contrast, to resizing and re-encoding (the small size), to a crop of up to ~10% per side;
- the worst local residual (`residual`, `RESIDUAL`): a global correlation cannot tell a re-encoded copy from an icon
  drawn almost alike (flags of one design with another badge, a man and a woman of one pictogram, two clock faces).
  For each pairing of full and cropped thumbnails, one is aligned to the other (one gain within `GAIN` and one offset
  for all channels, fitted by least squares on the target's pixels below `SATURATED` and clipped to 0-255, as a
  brightened copy clips); each target pixel counts by how far it lies outside the range its 3 x 3 neighbourhood
  takes in the aligned image (so a shift of under a pixel, from a crop that the crops only nearly match, costs
  nothing), and the pair's residual is the largest mean over a `WINDOW` x `WINDOW` patch, at the best pairing and
  direction. An edited copy is a little off everywhere; another flag is far off in one patch. One gain and one offset
  for all channels keep it from turning one colour into another (a per-channel fit matched a white disc with a
  purple one). Details smaller than ~3 px of a thumbnail (a mouth, a clock hand's tip) fall within the tolerance.
The thumbnails are in colour since 2026-12-05 (in grey, flags of one layout in other colours correlated above 0.95).
A grey copy of a colour photo correlates less with it (the more colourful, the less); such copies are not among the
benchmark's edits. An image that cannot be read is never proposed by its pixels and keeps the pairs the vectors
proposed on their word alone.

Cost: the proposals need every image's coarse thumbnails and compare N^2 x 192 x len(CROPS) coarse values; the
confirmation needs the candidates' `SIDE` thumbnails and costs ~4 ms per candidate pair that passes the correlation.
Decoding is the dominant cost (indexing/README.md), so `Thumbnails` keeps what it decoded, and with a `store` (what
`Collection.duplicates` gives: `indexing.signatures`, by pixel hash, in the collection's folder) other calls and
processes decode only images never seen before.

Groups are stars, not chains: images are taken in keeper order (the most pixels first), and each image not yet in a
group gathers those still free that are confirmed as its copies; so every member is a confirmed copy of its keeper,
and a chain of merely similar images (A~B~C, A and C far apart) is not one group. Each member's score is its cosine
with the keeper (below the threshold for a pair the pixels proposed). Images with the same decoded pixels are never
stored twice (`add` and `sync` report them with their twin), so a group's members are different files; a member
whose vector equals the keeper's (cosine >= `SAME_PICTURE`) and whose size equals it too is marked `same_picture`: a
re-encode that changed no visible pixel. The defaults are chosen by `bench/duplicates.py` on one half of its edited
copies and measured on the other half (indexing/README.md). Over ~400 lines: the two pixel measures and their
vectorised forms belong together.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from indexing.errors import IndexingError
from indexing.signatures import SignatureCache
from indexing.store import Filter, ImageRecord
from indexing.versions import Version
from vlm.errors import DataError

LOG = logging.getLogger(__name__)

# Chosen by `python -m bench.duplicates` on its tuning parts (shapes scenes and Twemoji icons, the demo model
# 2e8a087393b745e5): the setting whose worse rate over both sets is best; figures of the test parts in
# indexing/README.md. SIDE, WINDOW, GAIN and the alignment were fixed before, on the same tuning parts.
DEFAULT_THRESHOLD = 0.85  # cosine above which the vectors propose a pair
PIXEL_THRESHOLD = 0.85  # colour-thumbnail correlation that a confirmed pair must exceed
RESIDUAL = 16.0  # worst local residual (levels of 255, mean over a WINDOW x WINDOW patch) a confirmed pair stays under
PROPOSE = 0.95  # coarse-thumbnail correlation above which the pixels propose a pair too
SAME_PICTURE = 0.9995
BLOCK = 1024
SIDE = 32  # thumbnail side, px
CROPS = (0.0, 0.05, 0.1)  # centred crops compared, as a share of each side
COARSE = 8  # side of the thumbnails that propose pairs (SIDE / COARSE px averaged into each)
COARSE_SHAPE = (len(CROPS), COARSE * COARSE * 3)  # of a `coarse` signature, float32
FULL_SHAPE = (len(CROPS), SIDE, SIDE, 3)  # of a `signature`, uint8
WINDOW = 6  # side of the patches whose mean residual is compared, px of a thumbnail
GAIN = (0.5, 2.0)  # the contrast change the alignment may assume, at most
DECODERS = min(4, os.cpu_count() or 1)  # threads that decode images for the proposals
SATURATED = 252  # thumbnail levels at or above it are left out of the alignment fit (a brightened copy clips)


@dataclass(frozen=True)
class PixelCheck:
    """How the pixels take part (module docstring). `correlation`: the thumbnails' best correlation must be above it;
    `residual`: their worst local residual after alignment must be below it (None: not looked at); `propose`: pairs
    whose coarse thumbnails correlate above it are candidates too, whatever their cosine (None: the vectors alone
    propose)."""

    correlation: float = PIXEL_THRESHOLD
    residual: float | None = RESIDUAL
    propose: float | None = PROPOSE

    def __post_init__(self) -> None:
        check_threshold(self.correlation)
        if self.propose is not None:
            check_threshold(self.propose)
        if self.residual is not None and not 0.0 < float(self.residual) <= 255.0:
            raise IndexingError(f"pixel residual must be a level between 0 and 255, got {self.residual!r}")


def as_check(pixels: float | PixelCheck | None) -> PixelCheck | None:
    """`pixels` as a `PixelCheck`: a number is the correlation, with the default residual and proposals."""
    if pixels is None or isinstance(pixels, PixelCheck):
        return pixels
    return PixelCheck(correlation=check_threshold(pixels))


class Thumbnails:
    """Pixel signatures of images, decoded on first use and kept (a benchmark reuses them across settings). The
    coarse ones (`coarse_all`, for proposals: every image) and the full ones (`get`, for confirming: images with a
    candidate) are kept apart, so holding the coarse ones of a large collection costs little memory. With `store` (a
    SQLite file, `indexing.signatures`), both are also kept there by pixel hash, for other calls and processes."""

    def __init__(self, root: Path | None, store: Path | None = None):
        self.root = root
        self.caches = (
            (
                SignatureCache(store, "coarse", COARSE_SHAPE, np.float32),
                SignatureCache(store, "full", FULL_SHAPE, np.uint8),
            )
            if store is not None
            else None
        )
        self._cache: dict[tuple, np.ndarray | None] = {}
        self._coarse: dict[tuple, np.ndarray | None] = {}
        self._pairs: dict[tuple, list] = {}  # (key, key) -> [correlation, residual or None]

    def _decode(self, record: ImageRecord) -> np.ndarray | None:
        try:
            image = record.image_ref(self.root).open(draft=SIDE * 8)
        except (DataError, OSError) as e:
            LOG.warning("duplicates: %s not compared by pixels: %s", record.path, e)
            return None
        return signature(image)

    def get(self, record: ImageRecord) -> np.ndarray | None:
        """The `signature` of the image, or None when it cannot be read."""
        key = (record.path, record.sha256)
        if key not in self._cache:
            self._cache[key] = self._decode(record)
            if key not in self._coarse:
                self._coarse[key] = None if self._cache[key] is None else coarse(self._cache[key])
        return self._cache[key]

    def load(self, records: list[ImageRecord]) -> None:
        """Make the `signature`s of `records` ready for `get`: from the store, else decoded by `DECODERS` threads and
        put in the store."""
        todo = {(r.path, r.sha256): r for r in records if (r.path, r.sha256) not in self._cache}
        self._fill(self._cache, None if self.caches is None else self.caches[1], todo, lambda sig: sig)

    def _fill(self, memory: dict, cache, todo: dict, make) -> None:
        """Put in `memory` (key -> array or None) an entry per `todo` (key -> record): from `cache` (a
        `SignatureCache`, or None) by pixel hash, else `make(signature)` of the image decoded by `DECODERS` threads
        (Pillow decodes and resizes outside the GIL), stored in `cache` too. An image that cannot be read is kept out
        of `cache`: it is tried again next time."""
        if cache is not None and todo:
            stored = cache.get(r.sha256 for r in todo.values())
            for key in [k for k in todo if k[1] in stored]:
                memory[key] = stored[key[1]]
                del todo[key]
        with ThreadPoolExecutor(max_workers=DECODERS) as pool:
            for key, full in zip(todo, pool.map(self._decode, todo.values()), strict=True):
                memory[key] = None if full is None else make(full)
        if cache is not None:
            cache.put({k[1]: memory[k] for k in todo if memory[k] is not None})

    def compare(
        self, record: ImageRecord, others: list[ImageRecord], above: float, residual: bool
    ) -> list[tuple[float, float | None] | None]:
        """For each of `others`: its `pixel_similarity` with `record` and, when that is above `above` and `residual`
        is asked for, their `local_residual` (else None); None for a pair with an image that cannot be read. Kept
        per pair, so a benchmark that tries many settings measures each pair once."""
        a = self.get(record)
        key = (record.path, record.sha256)
        pairs = [(key, (o.path, o.sha256)) for o in others]
        todo = [n for n, p in enumerate(pairs) if p not in self._pairs]
        if a is not None and todo:
            sigs = [self.get(others[n]) for n in todo]
            readable = [n for n, b in zip(todo, sigs, strict=True) if b is not None]
            if readable:
                stack = np.stack([b for b in sigs if b is not None])
                for n, c in zip(readable, pixel_similarities(a, stack).tolist(), strict=True):
                    self._pairs[pairs[n]] = [c, None]
        if a is not None and residual:
            todo = [n for n, p in enumerate(pairs) if p in self._pairs and self._pairs[p][0] > above]
            todo = [n for n in todo if self._pairs[pairs[n]][1] is None]
            if todo:
                stack = np.stack([self.get(others[n]) for n in todo])
                for n, r in zip(todo, local_residuals(a, stack).tolist(), strict=True):
                    self._pairs[pairs[n]][1] = r
        return [None if (v := self._pairs.get(p)) is None else (v[0], v[1] if residual else None) for p in pairs]

    def coarse_all(self, records: list[ImageRecord]) -> list[np.ndarray | None]:
        """The `coarse` signatures of the images (None for one that cannot be read): from memory, else from the
        cache, else decoded (`_fill`)."""
        keys = [(r.path, r.sha256) for r in records]
        todo = {k: r for k, r in zip(keys, records, strict=True) if k not in self._coarse and k not in self._cache}
        self._fill(self._coarse, None if self.caches is None else self.caches[0], todo, coarse)
        for key in keys:
            if key not in self._coarse:
                self._coarse[key] = None if self._cache[key] is None else coarse(self._cache[key])
        return [self._coarse[k] for k in keys]


def signature(image: Image.Image) -> np.ndarray:
    """The colour thumbnails of the centred crops `CROPS` of `image`: (len(CROPS), SIDE, SIDE, 3) uint8."""
    rgb = image.convert("RGB")
    w, h = rgb.size
    rows = []
    for c in CROPS:
        dx, dy = round(w * c), round(h * c)
        box = (dx, dy, max(w - dx, dx + 1), max(h - dy, dy + 1))
        rows.append(np.asarray(rgb.resize((SIDE, SIDE), Image.Resampling.BOX, box=box), np.uint8))
    return np.stack(rows)


def _unit(thumbs: np.ndarray) -> np.ndarray:
    """(..., S, S, 3) thumbnails -> (..., S * S * 3): each channel made zero-mean, then the whole unit-norm."""
    t = thumbs.astype(np.float32).reshape(*thumbs.shape[:-3], -1, 3)
    t = (t - t.mean(axis=-2, keepdims=True)).reshape(*thumbs.shape[:-3], -1)
    return t / np.maximum(np.linalg.norm(t, axis=-1, keepdims=True), 1e-6)


def coarse(sig: np.ndarray) -> np.ndarray:
    """A signature's crops averaged down to COARSE x COARSE, normalised like the correlation's: (len(CROPS), 192)."""
    n, k = len(sig), SIDE // COARSE
    return _unit(sig.astype(np.float32).reshape(n, COARSE, k, COARSE, k, 3).mean(axis=(2, 4)))


def pixel_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """The best correlation of one signature's full thumbnail with the other's full or cropped ones."""
    return float(pixel_similarities(a, b[None])[0])


def pixel_similarities(a: np.ndarray, others: np.ndarray) -> np.ndarray:
    """`pixel_similarity` of `a` with each signature of the stack `others` (n, crops, S, S, 3), at once."""
    ua, uo = _unit(a), _unit(others)
    return np.maximum((uo @ ua[0]).max(axis=1), (uo[:, 0] @ ua.T).max(axis=1))


def local_residual(a: np.ndarray, b: np.ndarray) -> float:
    """How far apart two signatures are where they differ most, once aligned (module docstring): in levels of 255."""
    return float(local_residuals(a, b[None])[0])


def local_residuals(a: np.ndarray, others: np.ndarray) -> np.ndarray:
    """`local_residual` of `a` with each signature of the stack `others` (n, crops, S, S, 3), at once: the smallest,
    over the pairings of one's full thumbnail with the other's full or cropped ones and over which of the two is
    predicted from the other, of the largest mean residual over a WINDOW x WINDOW patch."""
    a, others = a.astype(np.float32), others.astype(np.float32)
    n, crops = len(others), len(a)
    full_a = np.broadcast_to(a[0], (n, crops, *a.shape[1:]))
    full_o = np.broadcast_to(others[:, :1], others.shape)
    cropped_a = np.broadcast_to(a, others.shape)
    best = np.full(n, np.inf, np.float32)
    for x, y in ((full_a, others), (full_o, cropped_a)):
        for source, target in ((x, y), (y, x)):
            best = np.minimum(best, _worst_patch(_residual(source, target)).min(axis=1))
    return best


def _residual(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """(..., S, S) how far each pixel of `target` lies outside the range its 3 x 3 neighbourhood takes in `source`
    aligned to it (one gain within GAIN and one offset, fitted by least squares on the target's unsaturated pixels,
    then clipped to 0-255 as a brightened copy is): the mean over the channels, in levels."""
    fit = (target < SATURATED).astype(np.float32)
    count = np.maximum(fit.sum(axis=(-3, -2), keepdims=True), 1.0)
    mx = (fit * source).sum(axis=(-3, -2), keepdims=True) / count  # per channel
    my = (fit * target).sum(axis=(-3, -2), keepdims=True) / count
    dx = source - mx
    cov = (fit * dx * (target - my)).sum(axis=(-3, -2, -1), keepdims=True)
    var = (fit * dx * dx).sum(axis=(-3, -2, -1), keepdims=True)
    gain = np.clip(cov / np.maximum(var, 1e-3), *GAIN)
    mx, my = mx.mean(axis=-1, keepdims=True), my.mean(axis=-1, keepdims=True)  # one offset for all channels
    aligned = np.clip(gain * (source - mx) + my, 0.0, 255.0)
    low, high = _spread(aligned, np.minimum), _spread(aligned, np.maximum)
    return (np.maximum(low - target, 0.0) + np.maximum(target - high, 0.0)).mean(axis=-1)


def _spread(t: np.ndarray, pick) -> np.ndarray:
    """`pick` (np.minimum or np.maximum) over each pixel's 3 x 3 neighbourhood of `t` (..., S, S, 3), edges repeated."""
    rows = pick(
        t,
        pick(
            np.concatenate([t[..., :1, :, :], t[..., :-1, :, :]], axis=-3),
            np.concatenate([t[..., 1:, :, :], t[..., -1:, :, :]], axis=-3),
        ),
    )
    return pick(
        rows,
        pick(
            np.concatenate([rows[..., :1, :], rows[..., :-1, :]], axis=-2),
            np.concatenate([rows[..., 1:, :], rows[..., -1:, :]], axis=-2),
        ),
    )


def _worst_patch(residual: np.ndarray) -> np.ndarray:
    """The largest mean of `residual` (..., S, S) over the WINDOW x WINDOW patches (every position)."""
    k = WINDOW
    c = np.pad(residual.cumsum(-1).cumsum(-2), [(0, 0)] * (residual.ndim - 2) + [(1, 0), (1, 0)])
    sums = c[..., k:, k:] - c[..., :-k, k:] - c[..., k:, :-k] + c[..., :-k, :-k]
    return sums.reshape(*sums.shape[:-2], -1).max(axis=-1) / (k * k)


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
    pixels: float | PixelCheck | None = PIXEL_THRESHOLD,
    thumbnails: Thumbnails | None = None,
) -> list[DuplicateGroup]:
    """Groups of images of `v` (those matching `filters`) joined by the pairs that the vectors (cosine above
    `threshold`) or the pixels (`PixelCheck.propose`) propose and the pixels confirm. `pixels`: a `PixelCheck`, a
    number (the correlation, other settings default) or None (the vectors alone). `thumbnails`: signatures to reuse
    (images under the collection's root)."""
    t = check_threshold(threshold)
    check = as_check(pixels)
    ids = v.store.filter_ids(filters) if filters is not None and not filters.is_empty() else v.store.ids()
    if len(ids) < 2:
        return []
    x = v.vectors.get(ids)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    near: dict[int, dict[int, float]] = {}  # i -> {j: cosine} for the candidate pairs
    for start in range(0, len(ids), BLOCK):
        sims = x[start : start + BLOCK] @ x.T
        rows, cols = np.nonzero(sims > t)
        for a, b in zip(rows, cols, strict=True):
            if a + start != b:
                near.setdefault(int(a + start), {})[int(b)] = float(sims[a, b])
    thumbs = None
    if check is not None:
        root = v.manifest["root"]
        thumbs = thumbnails if thumbnails is not None else Thumbnails(Path(root) if root is not None else None)
    everyone = None  # every record, when the pixels propose: read once, for the confirmation too
    if check is not None and check.propose is not None:
        everyone = v.store.get([int(i) for i in ids])
        for i, j in _pixel_pairs(thumbs.coarse_all([everyone[int(i)] for i in ids]), check.propose):
            cosine = float(x[i] @ x[j])
            near.setdefault(i, {})[j] = cosine
            near.setdefault(j, {})[i] = cosine
    if not near:
        return []
    records = everyone if everyone is not None else v.store.get([int(ids[i]) for i in near])
    if check is not None:
        _confirm(near, lambda i: records[int(ids[i])], thumbs, check, t)
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


def _pixel_pairs(signatures: list[np.ndarray | None], above: float) -> list[tuple[int, int]]:
    """The pairs (i < j) whose `coarse` signatures correlate above `above`: one's full thumbnail with the other's
    full or cropped ones, in blocks of BLOCK rows (N^2 x 192 x len(CROPS) multiply-adds). None: never proposed."""
    q = np.zeros((len(signatures), len(CROPS), COARSE * COARSE * 3), np.float32)
    for n, sig in enumerate(signatures):
        if sig is not None:
            q[n] = sig
    full, pairs = q[:, 0], []
    for start in range(0, len(q), BLOCK):
        block = q[start : start + BLOCK]
        sims = block[:, 0] @ full.T
        for c in range(1, len(CROPS)):
            sims = np.maximum(sims, np.maximum(block[:, 0] @ q[:, c].T, block[:, c] @ full.T))
        rows, cols = np.nonzero(sims > above)
        pairs += [(int(a) + start, int(b)) for a, b in zip(rows, cols, strict=True) if a + start < b]
    return pairs


def _confirm(
    near: dict[int, dict[int, float]], record_of, thumbs: Thumbnails, check: PixelCheck, threshold: float
) -> None:
    """Drop from `near` (both directions) the pairs whose pixels do not agree (`check`). A pair with an image that
    cannot be read stays if the vectors proposed it (cosine above `threshold`)."""
    thumbs.load([record_of(i) for i in near])
    for i in list(near):
        later = [j for j in near[i] if j > i]
        if not later:
            continue
        seen = thumbs.compare(
            record_of(i), [record_of(j) for j in later], check.correlation, check.residual is not None
        )
        for j, s in zip(later, seen, strict=True):
            if s is None:
                keep = near[i][j] > threshold
            else:
                keep = s[0] > check.correlation and (check.residual is None or s[1] < check.residual)
            if not keep:
                del near[i][j]
                del near[j][i]
    for i in [i for i, others in near.items() if not others]:
        del near[i]
