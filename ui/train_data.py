"""Training data named in the app: a path on the server, or an uploaded .zip (or a CSV/TSV/JSONL of pairs whose
image paths are relative to a folder on the server). Checked before a run starts, so a dataset that cannot train
is refused with the reason instead of failing in the background.
"""

from __future__ import annotations

import logging
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from vlm.config import TrainConfig
from vlm.data import read_pairs
from vlm.errors import DataError
from vlm.readers import rows
from vlm.readers.rows import BadRow
from vlm.train import planned_steps

LOG = logging.getLogger(__name__)

PAIR_FILES = (".csv", ".tsv", ".jsonl")
MAX_ZIP_MEMBERS = 200_000
CHUNK = 1 << 20


@dataclass(frozen=True)
class Dataset:
    source: str  # what `vlm train --train-data` takes
    root: str | None  # `--data-root`: the folder image paths are relative to, when not the file's own
    pairs: int  # usable pairs found (images not decoded yet: the trainer checks each once)
    bad: tuple[BadRow, ...]

    def summary(self) -> str:
        """E.g. "1,200 usable pairs; 3 bad rows will be skipped (2 missing file, 1 empty caption)"."""
        text = f"{self.pairs:,} usable pairs"
        if self.bad:
            kinds = rows.count_kinds(self.bad, most=4)
            text += f"; {len(self.bad):,} bad row(s) will be skipped ({kinds})"
        return text


def unpack_upload(upload: Path, dest: Path, max_bytes: int, name: str | None = None) -> Path:
    """A .zip is extracted into `dest` (refusing absolute paths, `..`, links, and more than `max_bytes` unpacked,
    counted as it is written, not as the zip claims); a pairs file is copied there. Returns the pairs file found, or
    the extracted folder (images with .txt captions). On refusal, what was written stays for the caller to remove
    (the app removes the whole run folder)."""
    name = name or upload.name
    suffix = Path(name).suffix.lower()
    dest.mkdir(parents=True, exist_ok=True)
    if suffix in PAIR_FILES:
        target = dest / f"pairs{suffix}"
        shutil.copyfile(upload, target)
        return target
    if suffix != ".zip":
        raise DataError(
            f"{name!r}: upload a .zip of images with a pairs file (CSV/TSV/JSONL) or .txt captions, or a pairs file"
        )
    try:
        with zipfile.ZipFile(upload) as zf:
            _check_members(zf, name, max_bytes)
            _extract(zf, dest, name, max_bytes)
    except zipfile.BadZipFile as e:
        raise DataError(f"{name!r} is not a readable zip file ({e})") from e
    return _pairs_in(dest, name)


def _check_members(zf: zipfile.ZipFile, name: str, max_bytes: int) -> None:
    infos = zf.infolist()
    if len(infos) > MAX_ZIP_MEMBERS:
        raise DataError(f"{name!r} holds {len(infos):,} files; the limit is {MAX_ZIP_MEMBERS:,}")
    total = 0
    for info in infos:
        path = PurePosixPath(info.filename)
        if path.is_absolute() or ".." in path.parts or "\\" in info.filename:
            raise DataError(f"{name!r}: member {info.filename!r} would be written outside the dataset folder")
        if (info.external_attr >> 16) & 0o170000 == 0o120000:
            raise DataError(f"{name!r}: member {info.filename!r} is a symbolic link; zip the files themselves")
        total += info.file_size
    if total > max_bytes:
        raise _too_big(name, max_bytes)


def _too_big(name: str, max_bytes: int) -> DataError:
    return DataError(f"{name!r} unpacks to more than {max_bytes / 2**20:,.0f} MB, the upload limit of this server")


def _extract(zf: zipfile.ZipFile, dest: Path, name: str, max_bytes: int) -> None:
    """Extract every member, counting the bytes actually written (a member's declared size is the zip's word)."""
    written = 0
    for info in zf.infolist():
        target = dest / info.filename
        if info.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        with zf.open(info) as src, open(target, "wb") as out:
            while chunk := src.read(CHUNK):
                written += len(chunk)
                if written > max_bytes:
                    raise _too_big(name, max_bytes)
                out.write(chunk)


def _pairs_in(folder: Path, name: str) -> Path:
    """The one pairs file at the top of `folder` (or of its single subfolder), else the folder itself."""
    top = [p for p in folder.iterdir() if not p.name.startswith((".", "__MACOSX"))]
    if len(top) == 1 and top[0].is_dir():
        folder = top[0]
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in PAIR_FILES)
    if len(files) > 1:
        raise DataError(f"{name!r} holds several pairs files ({[p.name for p in files]}); keep one")
    return files[0] if files else folder


def check_dataset(source: Path, root: Path | None, batch_size: int) -> Dataset:
    """Read the pairs without decoding images. Raises `DataError` when none is usable or they are fewer than a
    batch once the trainer's validation share is held out (`vlm.train.planned_steps` with its defaults)."""
    table = read_pairs(source, root=root, verify_images=False, progress=False)
    usable = len(table.pairs)
    try:
        planned_steps(TrainConfig(batch_size=batch_size), usable)
    except DataError as e:
        raise DataError(f"{source}: {e}") from None
    return Dataset(str(source), str(root) if root is not None else None, usable, tuple(table.bad))
