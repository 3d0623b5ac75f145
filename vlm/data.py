"""Image–caption pairs: one reader per on-disk format, bad-row reporting, deterministic splits, datasets.

`read_pairs(source)` accepts
    pairs.csv / pairs.tsv        a header row, an image-path column and a caption column (one caption per row)
    pairs.jsonl                  {"image": "a.jpg", "caption": "..."} or {"image": "a.jpg", "captions": ["...", ...]}
    a folder                     images with a same-named .txt beside each (one caption per non-empty line), recursive
    a Hugging Face dataset       a save_to_disk folder, local parquet/json/csv files, or "org/name" on the hub
    WebDataset shards            a .tar, a folder of .tar files, or a brace pattern such as "shards/{000..009}.tar"
and returns a `PairTable`: the usable pairs plus every row it skipped, with the reason and the row number. Rows
naming the same image become one `Pair` with several captions. Image paths are resolved against a root (default:
the data file's folder) and may not leave it. Nothing in the input is ever modified.

Images are referenced, not loaded: an `ImageRef` is a small picklable record that DataLoader workers open lazily.
`PairDataset[(epoch, index)]` seeds the caption choice and the augmentation from (seed, epoch, index), so a resumed
run sees exactly the samples it would have seen, however the samples are spread over workers.
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from vlm import pair_readers
from vlm.errors import ConfigError, DataError
from vlm.readers import hf, rows, webdataset
from vlm.readers import split as readers_split
from vlm.readers.images import ImageRef
from vlm.readers.paths import RootedPaths
from vlm.readers.rows import BadRow
from vlm.readers.split import stable_hash

if TYPE_CHECKING:
    from vlm.style_augment import StyleAugment

LOG = logging.getLogger(__name__)

FORMATS = ("auto", "csv", "tsv", "jsonl", "folder", "hf", "webdataset")
SUFFIX_FORMATS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".tar": "webdataset",
    ".parquet": "hf",
    ".json": "hf",
}


@dataclass(frozen=True)
class Pair:
    key: str  # stable identity used by `split`: path relative to the root, "shard.tar:key", or "split/row"
    image: ImageRef
    captions: tuple[str, ...]  # one or more non-empty captions, in file order, without duplicates


@dataclass
class PairTable:
    pairs: list[Pair]
    bad: list[BadRow]
    source: str

    def summary(self) -> str:
        """E.g. "read 9,870 pairs from X; skipped 3 bad rows: 2 missing file, 1 empty caption"."""
        return rows.summary(f"read {len(self.pairs):,} pair{'s' * (len(self.pairs) != 1)} from {self.source}", self.bad)

    def bad_report(self, limit: int = 20) -> str:
        """The first `limit` bad rows, one a line, with where to find them."""
        lines = [str(b) for b in self.bad[:limit]]
        if len(self.bad) > limit:
            lines.append(f"... and {len(self.bad) - limit:,} more")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# Reading.


def detect_format(source: str | Path) -> str:
    """The format `read_pairs(format="auto")` would use for `source`."""
    text = str(source)
    path = Path(text).expanduser()
    if path.is_file():
        fmt = SUFFIX_FORMATS.get(path.suffix.lower())
        if fmt is None:
            raise DataError(
                f"cannot tell the format of {path} from its extension; rename it or pass format= "
                f"one of {list(FORMATS[1:])}"
            )
        return fmt
    if path.is_dir():
        if hf.is_saved_dataset(path):
            return "hf"
        if any(path.glob("*.tar")):
            return "webdataset"
        if any(path.glob("*.parquet")) or any(path.glob("data/*.parquet")):
            return "hf"
        return "folder"
    if webdataset.is_brace_pattern(text):
        return "webdataset"
    if hf.looks_like_hub_name(text, SUFFIX_FORMATS):
        return "hf"
    raise DataError(f"data not found: {text}")


def read_pairs(
    source: str | Path,
    *,
    format: str = "auto",
    image_key: str | None = None,
    caption_key: str | None = None,
    root: str | Path | None = None,
    strict: bool = False,
    verify_images: bool = True,
    workers: int = 4,
    progress: bool = True,
) -> PairTable:
    """Read image–caption pairs from any supported source (see the module docstring).

    Bad rows (missing, empty, unreadable, truncated or oversized images, empty captions, malformed rows, paths
    leaving `root`) are skipped and listed in `PairTable.bad`, or raise `DataError` at the first one when `strict`.
    With `verify_images` every image is decoded once, on `workers` threads. Raises `DataError` when the source
    cannot be read at all or holds no usable pair.
    """
    if format not in FORMATS:
        raise ConfigError(f"unknown data format {format!r}; choose one of {list(FORMATS)}")
    fmt = detect_format(source) if format == "auto" else format
    keys = (image_key, caption_key)
    out = pair_readers.Collector(strict, verify_images)
    path = Path(source).expanduser()
    if fmt in ("csv", "tsv", "jsonl"):
        if not path.is_file():
            raise DataError(f"pairs file not found (or not a file): {path}")
        resolver = RootedPaths(Path(root) if root is not None else path.parent)
        if fmt == "jsonl":
            pair_readers.read_jsonl(path, keys, resolver, out)
        else:
            pair_readers.read_delimited(path, "," if fmt == "csv" else "\t", keys, resolver, out)
    elif fmt == "folder":
        if not path.is_dir():
            raise DataError(f"image folder not found: {path}")
        pair_readers.read_folder(path, RootedPaths(Path(root) if root is not None else path), out)
    elif fmt == "webdataset":
        for shard in webdataset.shards(str(source)):
            pair_readers.read_tar(shard, out)
    else:
        ds, split, base = _load_hf(source)
        pair_readers.read_hf(ds, str(source), split, keys, RootedPaths(Path(root) if root is not None else base), out)
    entries = out.entries
    if verify_images and not out.verify_inline:
        entries = pair_readers.verify(entries, out, workers, progress)
    bad = sorted(out.bad, key=lambda b: (b.source, b.row if b.row is not None else 0))
    table = PairTable([Pair(k, e.ref, tuple(e.captions)) for k, e in entries.items()], bad, str(source))
    if not table.pairs:
        raise DataError(f"no usable pairs: {table.summary()}\n{table.bad_report(5)}".rstrip())
    LOG.info("%s", table.summary())
    return table


def _load_hf(source: str | Path) -> tuple[Any, str, Path]:
    """(the dataset, its split name, the folder that relative image paths in it are resolved against)."""
    import datasets

    path = Path(source).expanduser()
    if path.exists():
        ds, base = hf.load(path)
    elif hf.looks_like_hub_name(str(source), SUFFIX_FORMATS):
        ds, base = hf.load_hub(str(source)), Path.cwd()
    else:
        raise DataError(f"data not found: {source} is neither a file, a folder nor a shard pattern")
    split = ""
    if isinstance(ds, datasets.DatasetDict):
        names = list(ds)
        if "train" not in ds and len(names) != 1:
            raise DataError(f"{source} has splits {names} but no 'train'; save the one you want with save_to_disk")
        split = "train" if "train" in ds else names[0]
        ds = ds[split]
    elif ds.split is not None:
        split = str(ds.split)
    return ds, split, base


# ---------------------------------------------------------------------------------------------------------------
# Splits and datasets.


def split(pairs: Sequence[Pair], val_fraction: float, seed: int = 0) -> tuple[list[Pair], list[Pair]]:
    """(train, val): the round(val_fraction * N) pairs ranked first by a hash of (seed, key) are validation.

    Which pairs are held out depends only on the seed and the set of keys, never on their order; both lists keep
    the input order. The one split algorithm is `vlm.readers.split`.
    """
    return readers_split.split(pairs, val_fraction, seed, key=lambda p: p.key)


@contextlib.contextmanager
def seeded_rngs(seed: int) -> Iterator[None]:
    """Seed torch's CPU generator (and Python's and NumPy's, which some transforms use) for one sample.

    In a DataLoader worker the state is simply overwritten: each worker is its own process. In the main process
    (workers=0) it is saved and restored, so the trainer's own random stream is not disturbed.
    """
    in_main = torch.utils.data.get_worker_info() is None
    saved = (torch.get_rng_state(), random.getstate(), np.random.get_state()) if in_main else None
    torch.default_generator.manual_seed(seed)  # the CPU generator only: CUDA generators are left alone
    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        yield
    finally:
        if saved is not None:
            torch.set_rng_state(saved[0])
            random.setstate(saved[1])
            np.random.set_state(saved[2])


class PairDataset(torch.utils.data.Dataset):
    """Training samples: `dataset[(epoch, index)]` -> (image (3, H, W), tokens (context_length,)).

    The caption (among the pair's captions) and the transform's randomness are seeded from (seed, epoch, index),
    so a sample is the same whichever worker makes it and whether or not the run was resumed.
    """

    def __init__(self, pairs: Sequence[Pair], transform: Callable, tokenizer: Callable, *, seed: int = 0,
                 style: StyleAugment | None = None, first_caption_p: float = 0.0):  # fmt: skip
        self.pairs = list(pairs)
        self.first_caption_p = first_caption_p  # chance of the first caption; else one of all, uniformly
        self.transform = transform
        self.style = style  # applied before `transform` to the pairs it `applies` to (vlm/style_augment.py)
        self.tokenizer = tokenizer
        self.seed = seed

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        if not (isinstance(item, tuple) and len(item) == 2):
            raise TypeError(f"PairDataset is indexed by (epoch, index), got {item!r}")
        epoch, index = item
        pair = self.pairs[index]
        sample_seed = stable_hash(self.seed, epoch, index)
        rng = random.Random(sample_seed)
        # with first_caption_p 0 no extra draw is made, so the captions are those of runs made before the option
        first = self.first_caption_p > 0 and rng.random() < self.first_caption_p
        caption = pair.captions[0 if first else rng.randrange(len(pair.captions))]
        image = pair.image.open()
        with seeded_rngs(sample_seed):
            if self.style is not None and self.style.applies(pair.key):
                image = self.style(image)
            pixels = self.transform(image)
        return pixels, self.tokenizer([caption])[0]
