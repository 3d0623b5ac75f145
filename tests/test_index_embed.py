"""indexing.embed: shard vectors equal open_clip's own; bad files reported; resume re-embeds only what is missing."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from indexing import embed
from indexing.embed import EmbedConfig, Job
from indexing.errors import IndexingError
from indexing.sources import Item
from vlm.readers.images import ImageRef


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """23 small images (remainders for shards of 7 and batches of 3), two of them bad."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(23):
        path = folder / f"{i:02d}.png"
        Image.fromarray(rng.integers(0, 256, (20 + i, 24, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    paths[5].write_bytes(paths[5].read_bytes()[:60])  # truncated
    paths[17].write_text("not an image at all")
    return paths


def items_of(paths) -> list[Item]:
    return [Item(p.name, ImageRef("file", str(p))) for p in paths]


def reference(encoders, path) -> np.ndarray:
    """open_clip's model on one image decoded by PIL: no DataLoader, no batching."""
    pixels = encoders.preprocess(Image.open(path).convert("RGB"))[None]
    with torch.no_grad():
        return F.normalize(encoders.model.encode_image(pixels).float(), dim=-1)[0].numpy()


def run(encoders, items, staging, cfg, **kwargs):
    job = Job.for_items(items, encoders, dtype=kwargs.pop("dtype", "float32"), shard_size=cfg.shard_size)
    embed.prepare(staging, job)
    embed.embed(encoders, items, staging, job, cfg, progress=False, **kwargs)
    return job, embed.collect(staging, job)


def test_vectors_hashes_and_bad_files(tiny_encoders, images, tmp_path):
    items = items_of(images)
    _, done = run(tiny_encoders, items, tmp_path / "s", EmbedConfig(batch_size=3, workers=2, shard_size=7))
    good = [i for i in range(23) if i not in (5, 17)]
    assert done.positions.tolist() == good
    assert [(p, r) for p, r in done.bad] == [(5, "truncated image"), (17, "not an image")]
    expected = np.stack([reference(tiny_encoders, images[i]) for i in good])
    np.testing.assert_allclose(done.vectors, expected, atol=2e-5)
    np.testing.assert_allclose(np.linalg.norm(done.vectors, axis=1), 1.0, atol=1e-5)
    first = Image.open(images[0]).convert("RGB")
    h = hashlib.sha256(f"{first.width}x{first.height}:".encode() + np.asarray(first).tobytes()).hexdigest()
    assert done.sha256[0] == h and len(set(done.sha256)) == len(good)
    assert done.size.tolist() == [images[i].stat().st_size for i in good]
    assert sorted(p.name for p in (tmp_path / "s").glob("shard_*.npz")) == [f"shard_0000{s}.npz" for s in range(4)]


def test_resume_re_embeds_only_missing_shards(tiny_encoders, images, tmp_path, monkeypatch):
    items, cfg, staging = items_of(images), EmbedConfig(batch_size=4, workers=0, shard_size=5), tmp_path / "s"
    job, whole = run(tiny_encoders, items, staging, cfg)
    embed.shard_path(staging, 2).unlink()  # as if killed before shard 2 was written
    kept = {s: embed.shard_path(staging, s).stat().st_mtime_ns for s in (0, 1, 3, 4)}
    seen = []
    original = tiny_encoders.encode_image
    monkeypatch.setattr(tiny_encoders, "encode_image", lambda x: seen.append(len(x)) or original(x))
    assert embed.prepare(staging, job) == [0, 1, 3, 4]
    embed.embed(tiny_encoders, items, staging, job, cfg, progress=False)
    assert sum(seen) == 5  # shard 2 only: inputs 10..14
    assert {s: embed.shard_path(staging, s).stat().st_mtime_ns for s in kept} == kept
    again = embed.collect(staging, job)
    assert np.array_equal(again.positions, whole.positions) and np.array_equal(again.vectors, whole.vectors)


def test_ranks_split_shards_and_merge_to_the_single_process_result(tiny_encoders, images, tmp_path):
    items, cfg = items_of(images), EmbedConfig(batch_size=3, workers=0, shard_size=4)
    _, single = run(tiny_encoders, items, tmp_path / "one", cfg)
    job = Job.for_items(items, tiny_encoders, dtype="float32", shard_size=4)
    embed.prepare(tmp_path / "two", job)
    for rank in (1, 0):
        stats = embed.embed(tiny_encoders, items, tmp_path / "two", job, cfg, rank=rank, world_size=2, progress=False)
        assert stats.images + stats.failed == (12 if rank == 0 else 11)  # shards 0,2,4 (4+4+4) and 1,3,5 (4+4+3)
    merged = embed.collect(tmp_path / "two", job)
    assert np.array_equal(merged.positions, single.positions) and merged.bad == single.bad
    np.testing.assert_allclose(merged.vectors, single.vectors, atol=1e-6)


def test_float16_vectors(tiny_encoders, images, tmp_path):
    items, cfg = items_of(images[:6]), EmbedConfig(batch_size=4, workers=0, shard_size=8)
    _, full = run(tiny_encoders, items, tmp_path / "a", cfg)
    _, half = run(tiny_encoders, items, tmp_path / "b", cfg, dtype="float16")
    assert half.vectors.dtype == np.float16
    np.testing.assert_allclose(half.vectors.astype(np.float32), full.vectors, atol=1e-3)


def test_another_job_clears_the_staging_folder_and_a_missing_shard_is_reported(tiny_encoders, images, tmp_path):
    staging, cfg = tmp_path / "s", EmbedConfig(batch_size=4, workers=0, shard_size=4)
    run(tiny_encoders, items_of(images[:8]), staging, cfg)
    other = Job.for_items(items_of(images[8:12]), tiny_encoders, dtype="float32", shard_size=4)
    assert embed.prepare(staging, other) == []
    assert not embed.shard_path(staging, 1).exists()
    with pytest.raises(IndexingError, match="not embedded yet"):
        embed.collect(staging, other)
    with pytest.raises(IndexingError, match="dtype"):
        Job.for_items([], tiny_encoders, dtype="int8", shard_size=4)


@pytest.mark.parametrize(
    ("device", "workers", "cores", "before", "inside"),
    [("cpu", 2, 2, 2, 1), ("cpu", 2, 16, 8, 8), ("cpu", 2, 16, 16, 14), ("cpu", 4, 2, 2, 1), ("cpu", 0, 2, 2, 2),
     ("cuda", 2, 2, 2, 2)],
)  # fmt: skip
def test_model_threads_leave_the_decoding_workers_their_cores(monkeypatch, device, workers, cores, before, inside):
    original = torch.get_num_threads()
    monkeypatch.setattr(embed, "available_cores", lambda: cores)
    try:
        torch.set_num_threads(before)
        with embed.threads_beside_workers(torch.device(device), workers) as used:
            assert used == inside == torch.get_num_threads()
        assert torch.get_num_threads() == before  # restored
    finally:
        torch.set_num_threads(original)


def test_a_runtime_whose_threads_sleep_keeps_every_core(monkeypatch):
    original = torch.get_num_threads()
    monkeypatch.setattr(embed, "available_cores", lambda: 2)
    try:
        torch.set_num_threads(2)
        with embed.threads_beside_workers(torch.device("cpu"), 2, spinning=False) as used:
            assert used == 2 == torch.get_num_threads()
    finally:
        torch.set_num_threads(original)


def test_embed_defaults_follow_the_device():
    from indexing.config import EmbedConfig, embed_defaults

    assert embed_defaults(EmbedConfig(), "cpu", 2) == (64, 2)
    assert embed_defaults(EmbedConfig(), "cuda", 16) == (256, 8)  # a GPU would starve on 64 and 2 workers
    assert embed_defaults(EmbedConfig(), "cuda", 4) == (256, 3)  # one core left to the main process
    assert embed_defaults(EmbedConfig(batch_size=32, workers=0), "cuda", 16) == (32, 0)  # given ones are kept
