"""Settings of the embedding pipeline, in a module of their own so the CLI can build its flags without torch."""

from __future__ import annotations

from dataclasses import dataclass, field

DTYPES = ("float32", "float16")  # of stored vectors; float16 halves disk and chunk memory


@dataclass
class EmbedConfig:
    batch_size: int = field(default=64, metadata={"help": "images per forward pass"})
    workers: int = field(default=2, metadata={"help": "DataLoader processes decoding images (0: in the main one)"})
    shard_size: int = field(
        default=1024, metadata={"help": "images per shard: the unit of resume and of the split over torchrun ranks"}
    )
