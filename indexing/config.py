"""Settings of the embedding pipeline, in a module of their own so the CLI can build its flags without torch."""

from __future__ import annotations

from dataclasses import dataclass, field

DTYPES = ("float32", "float16")  # of stored vectors; float16 halves disk and chunk memory


@dataclass
class EmbedConfig:
    batch_size: int | None = field(
        default=None, metadata={"help": "images per forward pass; none: 64 on CPU, 256 on a GPU"}
    )
    workers: int | None = field(
        default=None,
        metadata={"help": "DataLoader processes decoding images (0: in the main one); none: 2 on CPU, 8 on a GPU"},
    )
    shard_size: int = field(
        default=1024, metadata={"help": "images per shard: the unit of resume and of the split over torchrun ranks"}
    )
    draft_side: int = field(
        default=512,
        metadata={
            "help": "decode JPEGs at reduced scale keeping the shorter side >= this many px (PIL draft: a 12 MP photo "
            "decodes ~5x faster); 0 = full decode. The pixel hash of a JPEG is of this decode"
        },
    )


def embed_defaults(cfg: EmbedConfig, device_type: str, cores: int) -> tuple[int, int]:
    """(batch size, workers) of `cfg`, with unset ones chosen for the device: a GPU embeds a batch of 64 faster
    than two processes decode it, so it gets larger batches and up to 8 decoding workers (never more than the
    cores); a CPU keeps 64 and 2, which leave its cores to the model."""
    gpu = device_type == "cuda"
    batch = cfg.batch_size if cfg.batch_size is not None else (256 if gpu else 64)
    workers = cfg.workers if cfg.workers is not None else (max(1, min(8, cores - 1)) if gpu else 2)
    return batch, workers


@dataclass
class WatchConfig:
    debounce: float = field(
        default=2.0,
        metadata={
            "help": "--watch: seconds without a file event before a burst of events is synced (copying 500 photos "
            "in is one sync, not 500)",
            "metavar": "SECONDS",
        },
    )
    max_delay: float = field(
        default=60.0,
        metadata={
            "help": "--watch: a burst that never pauses is still synced this many seconds after its first event",
            "metavar": "SECONDS",
        },
    )
