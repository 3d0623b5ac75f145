"""Start the web app: `python app.py` serves the embedded demo at http://127.0.0.1:7860 (offline).

    python app.py                                                   the demo model and demo collection
    python app.py --model ViT-B-32 --pretrained laion2b_s34b_b79k --images ~/Pictures
    python app.py --model runs/train/final --collection runs/photos.coll
    python app.py --host 0.0.0.0 --auth alice:secret                reachable from other machines, with a password

Only parses arguments and launches; everything else is in `ui/` (see ui/README.md).
"""

from __future__ import annotations

import argparse
import sys

from vlm.cli import configure_logging
from vlm.errors import VLMError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    if args.auth is not None and ":" not in args.auth:
        p.error("--auth takes USER:PASS")
    if args.max_upload_mb <= 0 or args.max_megapixels <= 0 or args.concurrency < 1:
        p.error("--max-upload-mb, --max-megapixels and --concurrency must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging(args.verbose)
    from ui.memory import limit_malloc_arenas

    limit_malloc_arenas()  # before torch and Gradio start threads: keeps the server's memory flat under load
    from ui.app import build_app, close, create_state, launch
    from ui.state import Limits

    limits = Limits(max_upload_mb=args.max_upload_mb, max_pixels=int(args.max_megapixels * 1e6))
    try:
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
    except VLMError as e:
        print(f"app: error: {e}", file=sys.stderr)
        return 2
    demo = build_app(state, concurrency=args.concurrency)
    auth = tuple(args.auth.split(":", 1)) if args.auth else None
    try:
        launch(demo, state, host=args.host, port=args.port, share=args.share, auth=auth)
    except KeyboardInterrupt:
        pass
    finally:
        close(demo, state)
    return 0


if __name__ == "__main__":
    sys.exit(main())
