"""Embedding images into resumable shards: batched, decoded by DataLoader workers while the model computes.

    job = Job.for_items(items, encoders, dtype="float32", shard_size=1024)
    prepare(staging, job)                     # keep the shards of this same job, clear any other
    embed(encoders, items, staging, job, EmbedConfig(batch_size=64, workers=2))
    result = collect(staging, job)            # every input: a vector and content hash, or the reason it failed

Input i belongs to shard i // shard_size. A shard file `shard_00012.npz` holds, for its inputs, the positions that
decoded with their L2-normalised vectors (float32, or float16 if asked), the SHA-256 of the decoded pixels, file
size and mtime, and the positions that failed with the reason ("truncated image", "missing file", ...). It is
written atomically once all its inputs are done, so the shard files present are the manifest of finished work: an
interrupted run re-embeds only the missing shards. `job.json` names the job (model fingerprint, dtype, shard size
and a digest of the inputs), so shards are never mixed between jobs.

Under torchrun each rank embeds the shards s with s % world_size == rank, into the same folder; rank 0 `collect`s
them after a barrier. Batches never straddle a shard, so a shard's vectors do not depend on which run (or rank)
computed it.

Size (~410 lines, over the ~400 guide): the shard format, the job identity and the DataLoader pipeline that
writes them are one contract (a shard is valid only for its job); splitting them would put one format in two files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from indexing.config import DTYPES, EmbedConfig, embed_defaults
from indexing.errors import EmbedStopped, IndexingError
from indexing.photo import PhotoMeta, header_meta, photo_meta
from indexing.sources import Item
from vlm.atomic import atomic_open, atomic_write_json
from vlm.models import Encoders
from vlm.readers.images import ImageError, ImageRef

LOG = logging.getLogger(__name__)

JOB_NAME = "job.json"


@dataclass(frozen=True)
class Job:
    fingerprint: str  # of the model's weights
    dtype: str  # of the stored vectors
    shard_size: int
    count: int  # inputs
    digest: str  # of the inputs' keys, image refs and captions, in order

    @classmethod
    def for_items(cls, items: Sequence[Item], encoders: Encoders, *, dtype: str, shard_size: int) -> Job:
        if dtype not in DTYPES:
            raise IndexingError(f"unknown vector dtype {dtype!r}; choose one of {list(DTYPES)}")
        if shard_size < 1:
            raise IndexingError(f"shard_size must be at least 1, got {shard_size}")
        return cls(encoders.fingerprint, dtype, shard_size, len(items), items_digest(items))

    @property
    def shards(self) -> int:
        return -(-self.count // self.shard_size)

    def span(self, shard: int) -> range:
        return range(shard * self.shard_size, min((shard + 1) * self.shard_size, self.count))


class Embedded(NamedTuple):
    """The outcome of a job, by input position (ascending)."""

    positions: np.ndarray  # (m,) int64, inputs that were embedded
    vectors: np.ndarray  # (m, D) float32 or float16, L2-normalised
    sha256: list[str]  # (m,) hex digests of the decoded pixels
    size: np.ndarray  # (m,) int64 bytes
    mtime: np.ndarray  # (m,) float64
    bad: list[tuple[int, str]]  # (position, reason) of inputs that could not be used
    meta: list[PhotoMeta | None]  # (m,) date taken, camera, upright size; None in shards written before they were kept


class EmbedStats(NamedTuple):
    images: int  # embedded by this call (on this rank)
    failed: int
    seconds: float
    wait_seconds: float  # waiting for decoded batches: near zero when the workers keep up with the model
    encode_seconds: float

    @property
    def images_per_s(self) -> float:
        return (self.images + self.failed) / max(self.seconds, 1e-9)


def items_digest(items: Sequence[Item]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for item in items:
        h.update(json.dumps([item.key, dataclasses.astuple(item.ref), item.caption]).encode())
        h.update(b"\n")
    return h.hexdigest()


def pixel_sha256(image: Image.Image) -> str:
    """SHA-256 of the RGB pixels and the size: a picture re-saved with other metadata or compression is a duplicate."""
    h = hashlib.sha256(f"{image.width}x{image.height}:".encode())
    h.update(image.tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------------------------
# Staging folder.


def shard_path(staging: Path, shard: int) -> Path:
    return staging / f"shard_{shard:05d}.npz"


def read_job(staging: Path) -> Job | None:
    try:
        return Job(**json.loads((staging / JOB_NAME).read_text()))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError) as e:
        raise IndexingError(f"unreadable {staging / JOB_NAME} ({e}); delete {staging} to start over") from e


def prepare(staging: Path, job: Job) -> list[int]:
    """Make `staging` hold `job`; returns the shards already done. Shards of another job are discarded: they are
    uncommitted work for inputs that are no longer being added."""
    existing = read_job(staging)
    if existing != job and staging.exists():
        if existing is not None:
            kept = len(list(staging.glob("shard_*.npz")))
            LOG.warning("discarding %d embedded shard(s) of an unfinished add of other inputs in %s", kept, staging)
        shutil.rmtree(staging)
    if existing != job:
        staging.mkdir(parents=True)
        atomic_write_json(staging / JOB_NAME, dataclasses.asdict(job))
    return done_shards(staging, job)


def done_shards(staging: Path, job: Job) -> list[int]:
    return [s for s in range(job.shards) if shard_path(staging, s).is_file()]


# ---------------------------------------------------------------------------------------------------------------
# Decoding in workers.


class _Sample(NamedTuple):
    position: int
    pixels: torch.Tensor | None
    reason: str  # "" when the image decoded
    sha256: str
    size: int
    mtime: float
    meta: PhotoMeta | None


class _Batch(NamedTuple):
    positions: list[int]  # of the decoded samples, in order
    pixels: torch.Tensor | None  # (b, 3, H, W)
    sha256: list[str]
    size: list[int]
    mtime: list[float]
    meta: list[PhotoMeta | None]
    bad: list[tuple[int, str]]


class ItemDataset(Dataset):
    """`dataset[i]` -> the i-th input decoded, hashed and preprocessed, or the reason it cannot be used."""

    def __init__(self, items: Sequence[Item], transform, draft: int | None = None):
        self.items = list(items)
        self.transform = transform
        self.draft = draft  # JPEGs decoded at reduced scale, shorter side >= draft px (vlm.readers.images)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, position: int) -> _Sample:
        ref = self.items[position].ref
        try:
            # Size and mtime before the pixels: a file rewritten after this stat gets a newer mtime than the one
            # recorded, so the next sync looks at it again instead of trusting stale pixels.
            size, mtime = file_facts(ref)
            image = ref.open(draft=self.draft)
        except ImageError as e:
            return _Sample(position, None, e.reason, "", 0, 0.0, None)
        meta = photo_meta(image)
        # A JPEG may have been decoded at reduced scale: the stored width and height are the file's, not the draft's.
        # Only a JPEG: reading another format's header for its EXIF can cost a whole decode again (a PNG's eXIf chunk
        # may follow the pixels: 2 ms of a 512 px PNG's 5 ms in a worker).
        if self.draft and ref.kind == "file" and is_jpeg_file(ref.path) and (full := header_meta(ref.path)):
            meta = full
        return _Sample(position, self.transform(image), "", pixel_sha256(image), size, mtime, meta)


def is_jpeg_file(path: str) -> bool:
    """Whether the file starts with JPEG's start-of-image marker (the only format decoded as a draft)."""
    try:
        with open(path, "rb") as fp:
            return fp.read(3) == b"\xff\xd8\xff"
    except OSError:
        return False


def file_facts(ref: ImageRef) -> tuple[int, float]:
    """(bytes, mtime) of the image's file (of the shard or Arrow file for images inside one; bytes of the member).
    Raises `ImageError` ("missing file", e.g. deleted since it was listed) when it cannot be read."""
    path = ref.arrow_file if ref.kind == "hf" else ref.path
    try:
        st = os.stat(path)
    except FileNotFoundError as e:
        raise ImageError(ref.describe(), "missing file") from e
    except OSError as e:
        raise ImageError(ref.describe(), f"unreadable file ({e.strerror})") from e
    return (st.st_size if ref.kind == "file" else ref.size), st.st_mtime


def collate(samples: list[_Sample]) -> _Batch:
    good = [s for s in samples if s.pixels is not None]
    return _Batch(
        positions=[s.position for s in good],
        pixels=torch.stack([s.pixels for s in good]) if good else None,
        sha256=[s.sha256 for s in good],
        size=[s.size for s in good],
        mtime=[s.mtime for s in good],
        meta=[s.meta for s in good],
        bad=[(s.position, s.reason) for s in samples if s.pixels is None],
    )


def _no_pixels(image: Image.Image) -> torch.Tensor:
    return torch.empty(0)


def hash_items(
    items: Sequence[Item], cfg: EmbedConfig, *, device_type: str = "cpu", progress: bool = True
) -> list[tuple[str, int, float, PhotoMeta] | str]:
    """For each item, (pixel SHA-256, bytes, mtime, metadata), or the reason it cannot be used: decoding without the
    model, in DataLoader workers, for a sync to tell moved and touched files from changed ones before embedding."""
    if not items:
        return []
    batch_size, workers = embed_defaults(cfg, device_type, available_cores())
    draft = cfg.draft_side or None  # as `embed` decodes: the hashes must be the same
    loader = DataLoader(
        ItemDataset(items, _no_pixels, draft), batch_size=batch_size, num_workers=workers, collate_fn=collate
    )
    out: list[tuple[str, int, float, PhotoMeta] | str] = [""] * len(items)
    with tqdm(total=len(items), unit="img", desc="hash", disable=not progress) as bar:
        for batch in loader:
            facts = zip(batch.positions, batch.sha256, batch.size, batch.mtime, batch.meta, strict=True)
            for position, sha, size, mtime, meta in facts:
                out[position] = (sha, size, mtime, meta)
            for position, reason in batch.bad:
                out[position] = reason
            bar.update(len(batch.positions) + len(batch.bad))
    return out


# ---------------------------------------------------------------------------------------------------------------
# The loop.


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. under taskset or a container's cpuset)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@contextlib.contextmanager
def threads_beside_workers(device: torch.device, workers: int, *, spinning: bool = True) -> Iterator[int]:
    """On CPU, cap the model's intra-op threads at the cores the decoding workers leave free (at least 1) while
    the block runs; yields the number used. PyTorch's OpenMP threads spin while they wait, so when they outnumber
    the free cores they burn the workers' cores: on 2 cores with 2 workers, 512 px PNGs embed ~1.4x faster with 1
    model thread than with 2 (bench/embed.py). A runtime whose threads sleep instead (`spinning=False`: ONNX
    Runtime as `vlm.onnx_runtime` opens it) keeps every core: the workers get theirs whenever they have work, the
    model the rest (phone photos, ViT-B-32, 2 cores: 15.3 img/s at 2 threads vs 9.4 at 1). The setting is
    process-wide, so concurrent model calls in other threads see it too."""
    before = torch.get_num_threads()
    if device.type != "cpu" or workers == 0 or not spinning:
        yield before
        return
    threads = min(before, max(1, available_cores() - workers))
    torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        torch.set_num_threads(before)


def embed(
    encoders: Encoders,
    items: Sequence[Item],
    staging: Path,
    job: Job,
    cfg: EmbedConfig,
    *,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
    should_stop: Callable[[], bool] | None = None,
) -> EmbedStats:
    """Embed this rank's shards of `job` that are not done yet into `staging` (prepared by `prepare`).
    `should_stop` is asked before every batch; when it says yes, `EmbedStopped` is raised (the shards written so
    far stay in `staging`, so the same job resumes from them)."""
    if len(items) != job.count or read_job(staging) != job:
        raise IndexingError(f"{staging} is not prepared for this job; call prepare() first")
    done = set(done_shards(staging, job))
    todo = [s for s in range(job.shards) if s % world_size == rank and s not in done]
    batch_size, workers = embed_defaults(cfg, encoders.device.type, available_cores())
    batches = [list(job.span(s)[b : b + batch_size]) for s in todo for b in range(0, len(job.span(s)), batch_size)]
    total = sum(len(b) for b in batches)
    LOG.info("embedding %d images in %d shard(s) (%d already done)", total, len(todo), len(done))
    loader = DataLoader(
        ItemDataset(items, encoders.preprocess, cfg.draft_side or None),
        batch_sampler=batches,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=encoders.device.type == "cuda",
    )
    shard: _ShardParts | None = None
    embedded = failed = 0
    wait = encode = 0.0
    start = mark = time.perf_counter()
    with (
        threads_beside_workers(encoders.device, workers, spinning=encoders.runtime == "torch"),
        tqdm(total=total, unit="img", desc="embed", disable=not progress) as bar,
    ):
        for batch in loader:
            if should_stop is not None and should_stop():
                raise EmbedStopped(
                    f"embedding stopped on request after {embedded:,} of {total:,} images; the whole shards among "
                    f"them are kept, and the same add resumes from them"
                )
            now = time.perf_counter()
            wait += now - mark
            vectors = encoders.encode_image(batch.pixels).cpu().numpy() if batch.pixels is not None else None
            mark = time.perf_counter()
            encode += mark - now
            first = (batch.positions or [batch.bad[0][0]])[0]
            if shard is None:
                shard = _ShardParts(first // job.shard_size)
            shard.add(batch, vectors)
            embedded, failed = embedded + len(batch.positions), failed + len(batch.bad)
            bar.update(len(batch.positions) + len(batch.bad))
            if shard.count == len(job.span(shard.index)):
                shard.write(staging, job.dtype)
                shard = None
    seconds = time.perf_counter() - start
    stats = EmbedStats(embedded, failed, seconds, wait, encode)
    LOG.info(
        "embedded %d images (%d unusable) in %.1f s: %.0f img/s; waited %.1f s for data, encoded for %.1f s",
        embedded,
        failed,
        seconds,
        stats.images_per_s,
        wait,
        encode,
    )
    return stats


class _ShardParts:
    """The batches of one shard until it is complete."""

    def __init__(self, index: int):
        self.index = index
        self.count = 0
        self.batches: list[tuple[_Batch, np.ndarray | None]] = []

    def add(self, batch: _Batch, vectors: np.ndarray | None) -> None:
        self.batches.append((batch, vectors))
        self.count += len(batch.positions) + len(batch.bad)

    def write(self, staging: Path, dtype: str) -> None:
        vectors = [v for _, v in self.batches if v is not None]
        bad = [pair for b, _ in self.batches for pair in b.bad]
        arrays = {
            "positions": np.array([p for b, _ in self.batches for p in b.positions], dtype=np.int64),
            "vectors": np.concatenate(vectors).astype(dtype) if vectors else np.empty((0, 0), dtype=dtype),
            "sha256": np.array([h for b, _ in self.batches for h in b.sha256], dtype="S64"),
            "size": np.array([s for b, _ in self.batches for s in b.size], dtype=np.int64),
            "mtime": np.array([t for b, _ in self.batches for t in b.mtime], dtype=np.float64),
            "meta": np.array([json.dumps(m) for b, _ in self.batches for m in b.meta], dtype=str),
            "bad_positions": np.array([p for p, _ in bad], dtype=np.int64),
            "bad_reasons": np.array([r for _, r in bad], dtype=str),
        }
        with atomic_open(shard_path(staging, self.index), "wb") as f:
            np.savez(f, **arrays)


def collect(staging: Path, job: Job) -> Embedded:
    """Every shard of `job`, merged in input order. Raises `IndexingError` if one is missing."""
    missing = [s for s in range(job.shards) if not shard_path(staging, s).is_file()]
    if missing:
        raise IndexingError(
            f"{len(missing)} shard(s) of {staging} are not embedded yet (first: {shard_path(staging, missing[0])}); "
            f"run the same add again to finish them"
        )
    parts = []
    for s in range(job.shards):
        try:
            with np.load(shard_path(staging, s), allow_pickle=False) as z:
                parts.append({k: z[k] for k in z.files})
        except (OSError, ValueError) as e:
            raise IndexingError(f"unreadable shard {shard_path(staging, s)} ({e}); delete it to re-embed it") from e
    nonempty = [p["vectors"] for p in parts if len(p["positions"])]
    dim = nonempty[0].shape[1] if nonempty else 0
    return Embedded(
        positions=np.concatenate([p["positions"] for p in parts]) if parts else np.empty(0, np.int64),
        vectors=np.concatenate(nonempty) if nonempty else np.empty((0, dim), job.dtype),
        sha256=[h.decode() for p in parts for h in p["sha256"]],
        size=np.concatenate([p["size"] for p in parts]) if parts else np.empty(0, np.int64),
        mtime=np.concatenate([p["mtime"] for p in parts]) if parts else np.empty(0, np.float64),
        bad=[(int(i), str(r)) for p in parts for i, r in zip(p["bad_positions"], p["bad_reasons"], strict=True)],
        meta=[_meta(m) for p in parts for m in p.get("meta", [None] * len(p["positions"]))],
    )


def _meta(stored: str | None) -> PhotoMeta | None:
    """A shard's JSON metadata of one image; None for shards written before the metadata was kept."""
    if stored is None:
        return None
    value = json.loads(str(stored))
    return PhotoMeta(*value) if value is not None else None
