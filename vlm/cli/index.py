"""`vlm index build|add|sync|remove|unexclude|excluded|search|duplicates|info`: searchable image collections.

vlm index build runs/photos.coll photos/ --model demo       create (or continue) a collection and add images
torchrun --nproc_per_node 2 -m vlm index build ...           the same, each process embedding a share
vlm index add runs/photos.coll more/ list.csv                add images with the model that built it
vlm index sync runs/photos.coll photos/                     follow the folders: add new, re-embed changed, drop deleted
vlm index sync runs/photos.coll photos/ --watch             ... and again after every burst of changes (Ctrl-C stops)
vlm index remove runs/photos.coll --path a.jpg --id 17 [--exclude]   --exclude: and keep it out of later syncs
vlm index unexclude runs/photos.coll a.jpg [--all]           a later sync or add brings it back (list: `excluded`)
vlm index search runs/photos.coll --text "a red circle" -k 5 [--folder holiday --after 2024-05-01 --min-width 1000]
vlm index search runs/photos.coll --text "a beach" --sort date [--min-score 0.25] [--json]
vlm index duplicates runs/photos.coll [--threshold 0.9] [--json]   groups of near-identical images
vlm index info runs/photos.coll [--verify]
vlm index export-milvus runs/photos.coll http://milvus:19530 [--name photos]   move it to Milvus (no re-embedding)
vlm index search http://milvus:19530 --milvus photos --text "a beach"   any of build/add/sync/remove/search/info
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from vlm import config
from vlm.cli import index_milvus, is_main_process
from vlm.cli.options import add_model_options, add_runtime_options, runtime_options
from vlm.errors import ConfigError
from vlm.printable import printable


def register(sub: argparse._SubParsersAction) -> None:
    from indexing.config import DTYPES, EmbedConfig, WatchConfig
    from indexing.faiss_index import IndexConfig

    p = sub.add_parser(
        "index", help="build, change and search image collections (FAISS + SQLite, or Milvus)", description=__doc__
    )
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")

    b = actions.add_parser("build", help="create a collection (or continue one built by the same model) and add images")
    b.add_argument("collection", help="the collection folder")
    b.add_argument("inputs", nargs="+", help="image folders, CSV/TSV/JSONL lists, image files, datasets, shards")
    # A collection is embedded at the model's own precision (every later add, sync and search loads it so).
    add_model_options(b, exclude=("precision",), required=("model",))
    b.add_argument("--root", help="store paths relative to this folder (default: the first input's folder)")
    b.add_argument("--dtype", choices=DTYPES, default="float32", help="stored vectors (default: float32)")
    config.add_arguments(b, IndexConfig)
    config.add_arguments(b, EmbedConfig)
    add_runtime_options(b)
    index_milvus.add_options(b, new=True)
    b.set_defaults(run=run_build)

    a = actions.add_parser("add", help="add images with the model that built the collection")
    a.add_argument("collection")
    a.add_argument("inputs", nargs="+")
    add_model_options(a, exclude=("model", "pretrained", "precision"))
    config.add_arguments(a, EmbedConfig)
    add_runtime_options(a)
    index_milvus.add_options(a)
    a.set_defaults(run=run_add)

    y = actions.add_parser(
        "sync", help="make the collection follow folders: new files added, changed re-embedded, deleted removed"
    )
    y.add_argument("collection")
    y.add_argument("folders", nargs="+", help="image folders already (or to be) indexed in the collection")
    add_model_options(y, exclude=("model", "pretrained", "precision"))
    config.add_arguments(y, EmbedConfig)
    add_runtime_options(y)
    y.add_argument(
        "--watch", action="store_true", help="keep running: sync again after each burst of file changes (watchdog)"
    )
    config.add_arguments(y, WatchConfig)
    index_milvus.add_options(y)
    y.set_defaults(run=run_sync)

    r = actions.add_parser("remove", help="remove images by id or path")
    r.add_argument("collection")
    r.add_argument("--id", dest="ids", type=int, nargs="+", default=[], metavar="ID")
    r.add_argument("--path", dest="paths", nargs="+", default=[], metavar="PATH", help="as stored, or a file path")
    r.add_argument(
        "--exclude",
        action="store_true",
        help="keep them out: later syncs and adds leave these paths (and copies with the same pixels) out",
    )
    index_milvus.add_options(r)
    r.set_defaults(run=run_remove)

    u = actions.add_parser("unexclude", help="let images removed with --exclude come back at the next sync or add")
    u.add_argument("collection")
    u.add_argument("paths", nargs="*", metavar="PATH", help="as stored (see `vlm index excluded`), or a file path")
    u.add_argument("--all", action="store_true", help="empty the exclusion list")
    index_milvus.add_options(u)
    u.set_defaults(run=run_unexclude)

    x = actions.add_parser("excluded", help="list the images removed with --exclude")
    x.add_argument("collection")
    x.add_argument("--json", action="store_true", help="print JSON instead of a list")
    index_milvus.add_options(x)
    x.set_defaults(run=run_excluded)

    s = actions.add_parser("search", help="the images nearest to a text or an image")
    s.add_argument("collection")
    query = s.add_mutually_exclusive_group(required=True)
    query.add_argument("--text", help="a text query")
    query.add_argument("--image", help="a query image file")
    query.add_argument(
        "--query", help='query arithmetic: \'"a beach" + 0.5*photo.jpg - "people"\' (vlm/query.py: sum of unit vectors)'
    )
    s.add_argument("-k", type=int, default=10, help="results (default: 10)")
    s.add_argument("--path-prefix", help="only images whose stored path starts with this")
    s.add_argument("--path-contains", help="only images whose stored path contains this")
    s.add_argument("--caption-contains", help="only images whose caption contains this (any case)")
    s.add_argument("--folder", help="only images under this folder (as stored, relative to the collection's root)")
    s.add_argument("--after", help="only images taken on or after this date (YYYY-MM-DD[ HH:MM]; EXIF, else mtime)")
    s.add_argument("--before", help="only images taken before this date (exclusive)")
    for name, what in (("width", "pixels"), ("height", "pixels"), ("size", "bytes")):
        s.add_argument(f"--min-{name}", type=int, help=f"only images with at least this {name} ({what})")
        s.add_argument(f"--max-{name}", type=int, help=f"only images with at most this {name} ({what})")
    s.add_argument(
        "--sort",
        choices=("relevance", "date"),
        default="relevance",
        help="date: of the images scoring at least --min-score, the newest first (default: relevance)",
    )
    s.add_argument("--min-score", type=float, help="relevance cut-off for --sort date (default: per model, see README)")
    s.add_argument("--nprobe", type=int, help="IVF lists to probe (default: the tuned value); Milvus: ef or nprobe")
    add_model_options(s, exclude=("model", "pretrained", "precision"))
    add_runtime_options(s)
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")
    index_milvus.add_options(s)
    s.set_defaults(run=run_search)

    d = actions.add_parser("duplicates", help="groups of near-identical images (resized, re-encoded, cropped copies)")
    d.add_argument("collection")
    d.add_argument(
        "--threshold",
        type=float,
        help="cosine above which the vectors propose a pair (default: measured, README); small thumbnails propose "
        "pairs too, and both kinds are confirmed by the pixels",
    )
    d.add_argument(
        "--pixel-threshold",
        type=float,
        help="thumbnail correlation that confirms a pair (default: measured, README); 0 = the vectors alone (no "
        "pixel check, and only the vectors propose pairs)",
    )
    d.add_argument("--folder", help="only images under this folder (as stored)")
    d.add_argument("--json", action="store_true", help="print JSON instead of a list")
    d.set_defaults(run=run_duplicates)

    i = actions.add_parser("info", help="describe a collection")
    i.add_argument("collection")
    i.add_argument("--verify", action="store_true", help="also check index, store and vectors agree, id by id")
    index_milvus.add_options(i)
    i.set_defaults(run=run_info)
    index_milvus.register_export(actions)


def _runtime(args: argparse.Namespace) -> dict:
    opts = runtime_options(args)
    return {"runtime": opts.runtime, "onnx": opts.onnx}


def _split_overrides(args: argparse.Namespace, *classes: type) -> list:
    given = config.overrides_from_args(args)
    out = []
    for cls in classes:
        names = {f.name for f in dataclasses.fields(cls)}
        out.append(config.from_dict(cls, {k: v for k, v in given.items() if k in names}, where=f"--{cls.__name__}"))
    return out


def _default_root(first_input: str) -> str:
    path = Path(first_input).expanduser()
    return str(path if path.is_dir() else path.parent)


def run_build(args: argparse.Namespace) -> None:
    from indexing.build import add_distributed
    from indexing.collection import Collection
    from indexing.config import EmbedConfig
    from indexing.faiss_index import IndexConfig
    from vlm import distributed
    from vlm.models import load

    opts, index_cfg, embed_cfg = _split_overrides(args, config.ModelOptions, IndexConfig, EmbedConfig)
    if args.milvus:
        _build_milvus(args, opts, embed_cfg)
        return
    info = distributed.init(opts.device)
    try:
        encoders = load(opts.model, opts.pretrained, device=info.device, **_runtime(args))
        if info.is_main:
            root = args.root or _default_root(args.inputs[0])
            coll = Collection.create(
                args.collection, opts.model, pretrained=opts.pretrained, root=root, index=index_cfg,
                dtype=args.dtype, device=info.device, exist_ok=True, encoders=encoders,
            )  # fmt: skip
            coll.close()
        distributed.barrier(info)
        result = add_distributed(args.collection, args.inputs, encoders, info, embed=embed_cfg)
    finally:
        distributed.cleanup(info)
    if result is not None:
        _print_add(result)


def _build_milvus(args: argparse.Namespace, opts, embed_cfg) -> None:
    """`build --milvus`: one process (a torchrun build is the FAISS collection's); creates or continues."""
    root = args.root or _default_root(args.inputs[0])
    kwargs = {"pretrained": opts.pretrained, "root": root, "device": opts.device, **_runtime(args)}
    with index_milvus.create(args, opts.model, **kwargs) as coll:
        _print_add(coll.add(args.inputs, embed=embed_cfg))


def run_add(args: argparse.Namespace) -> None:
    from indexing.config import EmbedConfig

    opts, embed_cfg = _split_overrides(args, config.ModelOptions, EmbedConfig)
    with index_milvus.open_collection(args, read_only=False, device=opts.device, **_runtime(args)) as coll:
        _print_add(coll.add(args.inputs, embed=embed_cfg))


def run_sync(args: argparse.Namespace) -> None:
    from indexing.config import EmbedConfig, WatchConfig

    opts, embed_cfg, watch_cfg = _split_overrides(args, config.ModelOptions, EmbedConfig, WatchConfig)
    with index_milvus.open_collection(args, read_only=False, device=opts.device, **_runtime(args)) as coll:
        if args.watch:
            _watch(coll, args.folders, embed_cfg, watch_cfg)
            return
        result = coll.sync(args.folders, embed=embed_cfg)
    _print_sync(result)


def _watch(coll, folders: list[str], embed_cfg, watch_cfg) -> None:
    import time

    from indexing.watch import Watcher

    def stamp() -> str:
        return time.strftime("%H:%M:%S")

    def on_error(e: Exception) -> None:
        print(printable(f"{stamp()} sync failed (the collection is unchanged; still watching): {e}"), flush=True)

    def on_sync(result) -> None:
        print(f"{stamp()} ", end="")
        _print_sync(result)

    watcher = Watcher(coll, folders, embed=embed_cfg, config=watch_cfg, on_sync=on_sync, on_error=on_error)
    print(printable(f"watching {', '.join(folders)} (Ctrl-C stops)"), flush=True)
    try:
        watcher.run()
    except KeyboardInterrupt:
        done = f"{watcher.syncs} sync(s), {watcher.errors} failed"
        print(f"{stamp()} stopped after {done}; the collection is at version {coll.version}")


def _print_sync(result) -> None:
    print(printable(result.summary()))
    lines = [f"  moved: {old} -> {new}" for old, new in result.moved]
    lines += [f"  removed: {path}" for path in result.removed]
    lines += [f"  duplicate: {item} (same pixels as {twin})" for item, twin in result.duplicates]
    lines += [f"  unusable: {bad}" for bad in result.bad]
    lines += [f"  kept, its folder could not be listed: {path}" for path in result.kept]
    lines += [f"  excluded, left out: {path}" for path in result.excluded]
    lines += [f"  excluded too: {item} (same pixels as the excluded {twin})" for item, twin in result.excluded_copies]
    for line in lines[:40]:
        print(printable(line))
    if len(lines) > 40:
        print(f"  ... and {len(lines) - 40:,} more")
    sys.stdout.flush()


def _print_add(result) -> None:
    if not is_main_process():
        return
    print(printable(result.summary()))
    for item, twin in result.duplicates[:20]:
        print(printable(f"  duplicate: {item} (same pixels as {twin})"))
    for bad in result.bad[:20]:
        print(printable(f"  unusable: {bad}"))
    hidden = max(len(result.duplicates) - 20, 0) + max(len(result.bad) - 20, 0)
    if hidden:
        print(f"  ... and {hidden:,} more")


def run_remove(args: argparse.Namespace) -> None:
    with index_milvus.open_collection(args, read_only=False) as coll:
        result = coll.remove(ids=args.ids, paths=args.paths, exclude=args.exclude)
    print(f"removed {len(result.removed):,} image(s) (version {result.version})")
    if result.excluded:
        print("  excluded: later syncs and adds leave them out (`vlm index unexclude` lets them back)")
    for missing in result.not_found:
        print(printable(f"  not in the collection: {missing}"))


def run_unexclude(args: argparse.Namespace) -> None:
    from indexing.errors import IndexingError

    if bool(args.paths) == args.all:
        raise IndexingError("give the paths to let back in (see `vlm index excluded`), or --all, not both")
    with index_milvus.open_collection(args, read_only=False) as coll:
        found, missing = coll.unexclude(args.paths, everything=args.all)
        version = coll.version
    print(f"{len(found):,} path(s) taken off the exclusion list (version {version}); the next sync or add brings them")
    for path in missing:
        print(printable(f"  not excluded: {path}"))


def run_excluded(args: argparse.Namespace) -> None:
    import time

    with index_milvus.open_collection(args, read_only=True) as coll:
        entries = coll.excluded()
    if args.json:
        print(json.dumps([dataclasses.asdict(e) for e in entries], indent=2))
        return
    print(f"{len(entries):,} image(s) excluded (`vlm index unexclude COLL PATH` lets one back in)")
    for e in entries:
        print(printable(f"  {time.strftime('%Y-%m-%d %H:%M', time.localtime(e.since))}  {e.path}"))


def run_search(args: argparse.Namespace) -> None:
    from indexing.store import Filter

    bounds = {f"{end}_{n}": getattr(args, f"{end}_{n}") for end in ("min", "max") for n in ("width", "height", "size")}
    where = Filter(
        args.path_prefix, args.path_contains, args.caption_contains, args.folder, args.after, args.before, **bounds
    )  # IndexingError for an impossible range, before any model is loaded
    (opts,) = _split_overrides(args, config.ModelOptions)
    coll = index_milvus.open_collection(args, read_only=True, device=opts.device, **_runtime(args))
    kwargs = {"filters": where, "nprobe": args.nprobe, "sort": args.sort, "min_score": args.min_score}
    if args.query:
        from vlm.query import combine, parse

        vector = combine(coll.encoders, parse(args.query))
        hits = coll.search_vector(vector, args.k, fingerprint=coll.encoders.fingerprint, **kwargs)
    else:
        hits = (
            coll.search_text(args.text, args.k, **kwargs)
            if args.text
            else coll.search_image(args.image, args.k, **kwargs)
        )
    rows = [
        {
            "rank": rank,
            "score": round(float(score), 4),
            "id": record.id,
            "path": record.path,
            "caption": record.caption,
            "date": record.date,
            "camera": record.camera,
            "width": record.width,
            "height": record.height,
            "size": record.size,
        }
        for rank, (score, record) in enumerate(zip(hits.scores[0], hits.records[0], strict=False), 1)
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    for row in rows:
        caption = (row["caption"] or "").split("\n")[0][:60]
        line = f"{row['rank']:>3}  {row['score']:.4f}  {row['id']:>8}  {row['date'].replace('T', ' ')}  "
        print(line + f"{printable(row['path'])}  {printable(caption)}")
    if not rows and args.sort == "date":
        from indexing.queries import cut_off

        cut = cut_off(coll.model, args.min_score)
        whose = "the model's default" if args.min_score is None else "--min-score"
        print(f"no matching image scores at least {cut:.3g} (the relevance cut-off of --sort date: {whose}); lower it "
              f"with --min-score to see more")  # fmt: skip
    elif not rows:
        print("no matching images")


def run_duplicates(args: argparse.Namespace) -> None:
    from indexing.collection import Collection
    from indexing.duplicates import DEFAULT_THRESHOLD, PIXEL_THRESHOLD, check_threshold
    from indexing.store import Filter

    threshold = check_threshold(DEFAULT_THRESHOLD if args.threshold is None else args.threshold)
    pixels = PIXEL_THRESHOLD if args.pixel_threshold is None else args.pixel_threshold
    pixels = None if pixels == 0 else check_threshold(pixels)
    coll = Collection.open(args.collection)
    groups = coll.duplicates(threshold, filters=Filter(folder=args.folder), pixels=pixels)
    rows = [
        [
            {"id": r.id, "path": r.path, "cosine": round(score, 4), "keeper": n == 0, "same_picture": same}
            for n, (r, score, same) in enumerate(zip(g.records, g.scores, g.same_picture, strict=True))
        ]
        for g in groups
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    extra = sum(len(g) - 1 for g in rows)
    how = f"cosine > {threshold}" + ("" if pixels is None else " or thumbnails alike, confirmed by the pixels")
    print(f"{len(rows):,} group(s) of near-duplicates ({how}); {extra:,} image(s) beside their keeper")
    for n, group in enumerate(rows, 1):
        print(f"group {n}:")
        for m in group:
            mark = "keep" if m["keeper"] else ("same picture" if m["same_picture"] else f"{m['cosine']:.4f}")
            print(printable(f"  {mark:>12}  {m['id']:>8}  {m['path']}"))
    copies = coll.exact_copies()
    if copies:
        print(f"{len(copies):,} exact cop(ies): the same pixels as an image in the collection, so not stored twice")
        for copy, stored in copies[:200]:
            print(printable(f"  {copy}  =  {stored}"))
        if len(copies) > 200:
            print(f"  ... and {len(copies) - 200:,} more")


def run_info(args: argparse.Namespace) -> None:
    from indexing.collection import Collection

    if args.milvus:
        if args.verify:
            raise ConfigError("--verify checks FAISS collections (index, store and chunks); Milvus keeps its own")
        with index_milvus.open_collection(args, read_only=True) as coll:
            index_milvus.print_info(coll)
        return
    coll = Collection.open(args.collection)
    if args.verify:
        coll.verify()
    stats = dataclasses.asdict(coll.stats())
    stats["verified"] = bool(args.verify)
    print(json.dumps(stats, indent=2, default=str))
