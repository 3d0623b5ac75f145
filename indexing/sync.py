"""Planning a sync: what changed between the folders on disk and the collection's records of the files in them.

    plan = plan_sync(store, ["photos/"], root=collection_root, cfg=EmbedConfig())
    plan.embed      new and changed files: embedded (by `Collection.sync`), replacing `plan.replaces[key]`
    plan.updates    records whose file moved, was touched (same pixels, new mtime) or got another caption:
                    new metadata, same id and vector, nothing embedded
    plan.removed    records whose file is gone (and did not move)

A file is unchanged when its size and mtime equal the record's. When only the mtime differs, or a new path has the
size of a vanished one, its pixels are hashed (decoded in DataLoader workers, no model) and compared with the
record's pixel hash (`indexing.embed.pixel_sha256`): equal means touched or moved, not re-embedded (its date taken,
camera and dimensions are read again). An unchanged file whose record predates that metadata gets it from the file's
header (`indexing.photo.header_meta`), so a sync brings an older collection's records up to date without embedding.
A listed file whose path was removed with `exclude=True` is left out (`Store.excluded`).
A listed file that cannot be read, and every record under a folder that cannot be listed, keep their record until a
later sync can read them: a sync removes an image only when its file is shown to be gone.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from indexing import embed as embedding
from indexing.config import EmbedConfig
from indexing.errors import IndexingError
from indexing.photo import header_meta
from indexing.sources import Item, gather
from indexing.store import ImageRecord, Store
from vlm.readers.images import ImageError
from vlm.readers.rows import BadRow


@dataclass
class SyncPlan:
    embed: list[Item] = field(default_factory=list)  # new and changed files, in listing order
    replaces: dict[str, ImageRecord] = field(default_factory=dict)  # key of a changed file -> its current record
    updates: list[ImageRecord] = field(default_factory=list)  # new metadata, same id and vector
    moved: list[tuple[str, str]] = field(default_factory=list)  # (old path, new path)
    touched: int = 0  # same pixels, new size or mtime
    recaptioned: int = 0  # sidecar .txt caption changed
    filled: int = 0  # unchanged, but made before the store kept date taken, camera and dimensions: filled in
    removed: list[ImageRecord] = field(default_factory=list)  # file gone
    unchanged: int = 0
    kept: list[str] = field(default_factory=list)  # paths kept although not listed: their folder was unreadable
    bad: list[BadRow] = field(default_factory=list)  # listed but unusable; any record of theirs is kept
    excluded: list[str] = field(default_factory=list)  # listed, but removed with exclude=True: left out
    untwin: list[str] = field(default_factory=list)  # exact copies to forget: gone, changed, or their image gone


def plan_sync(
    store: Store,
    folders: Sequence[str | Path],
    *,
    root: Path | None,
    cfg: EmbedConfig,
    device_type: str = "cpu",
    progress: bool = True,
    excluded: Collection[str] = (),
    twins: dict[str, tuple[str, int, float]] | None = None,
) -> SyncPlan:
    """Compare `folders` on disk with the records of `store` under them; see the module docstring. Listed files
    whose key is in `excluded` (the collection's exclusion list) are left out. `twins` (path -> pixel hash, size,
    mtime): exact copies of images in the collection, left out earlier: one whose size and mtime are unchanged is
    passed by (counted unchanged) while its image stays; one that changed, or whose image is gone, is embedded."""
    reals = []
    for folder in folders:
        path = Path(folder).expanduser()
        if not path.is_dir():
            raise IndexingError(
                f"sync takes folders, and {folder} is not one (missing, or a file); "
                f"use `add` for image files, lists and datasets"
            )
        reals.append(os.path.join(os.path.realpath(path), ""))
    gathered = gather(list(folders), root=root)
    root_real = os.path.realpath(root) if root is not None else None

    def real(key: str) -> str:
        return key if os.path.isabs(key) or root_real is None else os.path.join(root_real, key)

    def real_path(record: ImageRecord) -> str:
        return real(record.path)

    unlisted = [os.path.join(u, "") for u in gathered.unlisted]
    in_scope = [r for r in store.files() if any(real_path(r).startswith(f) for f in reals)]
    by_path = {r.path: r for r in in_scope}
    plan = SyncPlan(bad=list(gathered.bad))
    listed = {item.key for item in gathered.items}
    vanished: dict[str, ImageRecord] = {}
    for record in in_scope:
        if record.path in listed:
            continue
        if any(real_path(record).startswith(u) for u in unlisted):
            plan.kept.append(record.path)
        else:
            vanished[record.path] = record
    vanished_sizes = {r.size for r in vanished.values()}
    twins = twins or {}
    for key in twins:  # copies under these folders that are gone (their folder listed, they not)
        under = any(real(key).startswith(f) for f in reals)
        if key not in listed and under and not any(real(key).startswith(u) for u in unlisted):
            plan.untwin.append(key)
    waiting_twins: list[Item] = []

    to_hash: list[Item] = []
    excluded = set(excluded)
    for item in gathered.items:
        if item.key in excluded:
            plan.excluded.append(item.key)
            continue
        record = by_path.get(item.key)
        try:
            size, mtime = embedding.file_facts(item.ref)
        except ImageError as e:  # gone or unreadable since it was listed: keep its record, if any, for next time
            plan.bad.append(BadRow(item.ref.describe(), None, item.key, e.reason))
            continue
        twin = twins.get(item.key) if record is None else None
        if twin is not None and (twin[1], twin[2]) == (size, mtime):
            waiting_twins.append(item)  # unchanged, if its image stays (decided below)
        elif record is not None and (record.size, record.mtime) == (size, mtime):
            plan.unchanged += 1
            update = record
            if record.caption != item.caption:
                update = dataclasses.replace(update, caption=item.caption)
                plan.recaptioned += 1
            if record.width is None and (meta := header_meta(item.ref.path)) is not None:
                update = dataclasses.replace(update, **meta._asdict())  # a record made before metadata was kept
                plan.filled += 1
            if update is not record:
                plan.updates.append(update)
        elif (record is not None and record.size == size) or (record is None and size in vanished_sizes):
            to_hash.append(item)  # maybe touched (same pixels) or moved
        else:
            _embed(plan, item, record)

    hashed = embedding.hash_items(to_hash, cfg, device_type=device_type, progress=progress)
    by_sha = {r.sha256: r for r in vanished.values()}
    for item, outcome in zip(to_hash, hashed, strict=True):
        if isinstance(outcome, str):
            plan.bad.append(BadRow(item.ref.describe(), None, item.key, outcome))
            continue
        sha, size, mtime, meta = outcome
        record = by_path.get(item.key)
        facts = {"size": size, "mtime": mtime, "caption": item.caption, **meta._asdict()}  # EXIF may have changed
        if record is not None and record.sha256 == sha:
            plan.updates.append(dataclasses.replace(record, **facts))
            plan.touched += 1
        elif record is None and sha in by_sha:
            old = by_sha.pop(sha)
            del vanished[old.path]
            plan.updates.append(dataclasses.replace(old, path=item.key, **facts))
            plan.moved.append((old.path, item.key))
        else:
            _embed(plan, item, record)
    plan.removed = list(vanished.values())
    # An unchanged copy is passed by only while an image with its pixels stays in the collection; else it is
    # embedded (and becomes that image). A changed one is embedded anyway, above; either way it is forgotten as a twin.
    gone_shas = {r.sha256 for r in plan.removed}
    stored = store.by_hashes(sorted({twins[item.key][0] for item in waiting_twins}))
    for item in waiting_twins:
        sha = twins[item.key][0]
        if sha in stored and sha not in gone_shas:
            plan.unchanged += 1
        else:
            plan.embed.append(item)
    plan.untwin += [item.key for item in plan.embed if item.key in twins]
    plan.untwin += [new for _, new in plan.moved if new in twins]  # a copy now holding its moved image's record
    return plan


def _embed(plan: SyncPlan, item: Item, record: ImageRecord | None) -> None:
    plan.embed.append(item)
    if record is not None:
        plan.replaces[item.key] = record
