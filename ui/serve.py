"""Serve the web app: the options `python app.py` and `vlm serve` share, and the one function both call.

    serve(parser.parse_args())     loads the model, opens (or builds) the collection, serves until interrupted

Both entry points only parse arguments; this module turns them into `ui.app` calls. It imports neither torch nor
Gradio at the top, so that `limit_malloc_arenas` runs before they start threads.
"""

from __future__ import annotations

import argparse

from ui.limits import Limits


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="demo", help="'demo', an open_clip name, a checkpoint folder or hf-hub: id")
    p.add_argument("--pretrained", help="pretrained tag or weights file for an open_clip name")
    p.add_argument("--images", action="append", default=[], metavar="DIR", help="a folder of images to search (repeat)")
    p.add_argument("--collection", metavar="DIR", help="an existing collection, or where to keep the app's collections")
    p.add_argument("--cache-dir", metavar="DIR", help="where demo and --images collections live (~/.cache/vlm)")
    p.add_argument("--runs-dir", default="runs/app", metavar="DIR", help="where training runs go (runs/app)")
    p.add_argument("--allow-dir", action="append", default=[], metavar="DIR",
                   help="a further folder whose paths people may type (add images, train on a dataset)")  # fmt: skip
    p.add_argument("--host", default="127.0.0.1", help="address to bind; 0.0.0.0 for every interface")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--share", action="store_true", help="also make a public gradio.live link (off by default)")
    p.add_argument("--auth", metavar="USER:PASS", help="require this user name and password")
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest upload accepted (20)")
    p.add_argument("--max-megapixels", type=float, default=25.0, help="largest image accepted, in megapixels (25)")
    p.add_argument("--concurrency", type=int, default=2, help="requests computed at once (2)")
    p.add_argument("--max-train-steps", type=int, default=Limits.max_train_steps,
                   help=f"most steps of a training run started from the web ({Limits.max_train_steps})")  # fmt: skip
    p.add_argument("--max-train-minutes", type=float, default=Limits.max_train_minutes,
                   help=f"web-started runs stop (saving) after this long ({Limits.max_train_minutes:g})")  # fmt: skip
    p.add_argument("--upload-retention-hours", type=float, default=Limits.upload_retention_hours,
                   help=f"uploads are deleted this long after a run ({Limits.upload_retention_hours:g})")  # fmt: skip
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")


def check_arguments(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Reject what argparse cannot (exits through `p.error`, as argparse does)."""
    if args.auth is not None and ":" not in args.auth:
        p.error("--auth takes USER:PASS")
    positive = ("max_upload_mb", "max_megapixels", "concurrency", "max_train_steps", "max_train_minutes",
                "upload_retention_hours")  # fmt: skip
    for name in positive:
        if not getattr(args, name) > 0:  # also refuses NaN
            p.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if not 0 <= args.port <= 65535:
        p.error(f"--port must be 0..65535, got {args.port}")


def serve(args: argparse.Namespace) -> None:
    """Build the app from parsed options and serve it until interrupted. A bad model, collection or folder raises
    `VLMError` before anything is served."""
    from ui.memory import limit_malloc_arenas

    limit_malloc_arenas()  # before torch and Gradio start threads: keeps the server's memory flat under load
    from ui.app import build_app, close, create_state, launch

    limits = Limits(
        max_upload_mb=args.max_upload_mb,
        max_pixels=int(args.max_megapixels * 1e6),
        max_train_steps=args.max_train_steps,
        max_train_minutes=args.max_train_minutes,
        upload_retention_hours=args.upload_retention_hours,
    )
    state = create_state(
        args.model,
        args.pretrained,
        images=args.images,
        collection=args.collection,
        cache_dir=args.cache_dir,
        runs_dir=args.runs_dir,
        limits=limits,
        allowed_dirs=args.allow_dir,
        device=args.device,
    )
    demo = build_app(state, concurrency=args.concurrency)
    auth = tuple(args.auth.split(":", 1)) if args.auth else None
    try:
        launch(demo, state, host=args.host, port=args.port, share=args.share, auth=auth)
    except KeyboardInterrupt:
        pass
    finally:
        close(demo, state)
