"""The web app: `create_state` loads the model and its collection once, `build_app` lays out the tabs over that
shared state, `launch` serves it.

    state = create_state(model="demo")                 # or model=..., pretrained=..., images=[...], collection=...
    demo = build_app(state)
    launch(demo, state, host="127.0.0.1", port=7860)

Serving choices: requests queue, two at a time by default (`concurrency`; model switches, folder additions and
training share one slot); uploads above `Limits.max_upload_mb` are refused by Gradio and images are checked before
decoding (`ui.inputs`); no path on the server is served (`allowed_paths` stays empty: results are thumbnails made
from the collection's own images); the server binds to 127.0.0.1 and makes no public share link unless asked.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import gradio as gr

from indexing.library import Library, default_cache_dir
from ui import classify, explain, model, search, segment, train
from ui.state import AppState, Limits, ModelChoice
from vlm import checkpoint
from vlm.demo import DEMO_DATA, DEMO_MODEL
from vlm.errors import ConfigError
from vlm.printable import printable

LOG = logging.getLogger(__name__)

TITLE = "vlm — zero-shot labels, search, segmentation and training"
CONCURRENCY = 2  # requests computing at once; more only contend for the same cores
QUEUE_SIZE = 64  # waiting requests beyond this are refused ("the queue is full") instead of piling up
CACHE_CLEANUP = (900, 3600)  # every 15 min, delete uploads and result images older than an hour


def create_state(
    model: str = "demo",
    pretrained: str | None = None,
    *,
    images: Sequence[str | Path] = (),
    collection: str | Path | None = None,
    cache_dir: str | Path | None = None,
    runs_dir: str | Path = "runs/app",
    limits: Limits | None = None,
    allowed_dirs: Sequence[str | Path] = (),
    device: str | None = None,
    progress: bool = True,
    warm_up: bool = False,
) -> AppState:
    """Load the model and open (or build) its collection. People may type paths inside the --images folders, the
    collection's folder, the runs folder, `allowed_dirs`, the demo's own folders and the folder of a checkpoint
    given as `model`; nothing else (not the working directory: started from $HOME it would open every file there).
    `warm_up`: measure the thresholds answers need in the background (`AppState.warm_up`; the server turns it on)."""
    library = Library.choose(
        images=[Path(p) for p in images],
        collection=Path(collection) if collection is not None else None,
        cache_dir=Path(cache_dir) if cache_dir is not None else default_cache_dir(),
    )
    runs = Path(runs_dir).resolve()
    extra = [Path(d).expanduser().resolve() for d in allowed_dirs]
    for folder in extra:
        if not folder.is_dir():
            raise ConfigError(f"--allow-dir {printable(folder)}: not a folder")
    if checkpoint.is_checkpoint_dir(Path(model).expanduser()):  # the owner named it: switching back must work
        extra.append(Path(model).expanduser().resolve())
    dirs = (*library.images, library.home, runs, *extra, DEMO_DATA.resolve(), DEMO_MODEL.resolve())
    state = AppState(
        choice=ModelChoice(model, pretrained),
        library=library,
        runs_dir=runs,
        limits=limits or Limits(),
        allowed_dirs=tuple(dict.fromkeys(dirs)),
        device=device,
        warm_up=warm_up,
    )
    state.start(progress=progress)
    return state


# Result tiles (Search, duplicates, heat maps): Gradio's caption chip is one line cut to 80 % of a tile, laid over
# the picture's bottom. Here it sits below the picture (shown whole: contain), spans the tile and wraps to two lines,
# all of it on hover, and (HEAD) the whole caption is the tile's tooltip.
CSS = """
.gallery-item .thumbnail-item { display: flex !important; flex-direction: column; }
.gallery-item .thumbnail-item > img { flex: 1 1 0; min-height: 0; height: auto !important;
  object-fit: contain !important; }
.gallery-item .caption-label { position: static !important; max-width: 100% !important; white-space: normal !important;
  overflow-wrap: anywhere; display: -webkit-box; -webkit-line-clamp: 2; -webkit-box-orient: vertical;
  font-size: 12px; line-height: 1.3; border: none !important; border-radius: 0 !important; flex: none; }
.gallery-item:hover .caption-label { -webkit-line-clamp: unset; opacity: 1 !important; }
"""
HEAD = """<script>
new MutationObserver(() => document.querySelectorAll(".caption-label").forEach((e) => {
  if (e.title !== e.textContent) e.title = e.textContent;
})).observe(document.documentElement, {subtree: true, childList: true, characterData: true});
</script>"""


def build_app(state: AppState, concurrency: int = CONCURRENCY) -> gr.Blocks:
    """The tabs over `state` (which must be started), with the queue set up."""
    with gr.Blocks(title=TITLE, analytics_enabled=False, delete_cache=CACHE_CLEANUP) as demo:
        banner = gr.Markdown(model.banner_text(state), elem_id="banner")
        with gr.Tab("Classify", id="classify"):
            classify.build(state)
        with gr.Tab("Search", id="search"):
            search.build(state)
        with gr.Tab("Why it matched", id="explain"):
            explain.build(state)
        with gr.Tab("Segment", id="segment"):
            segment.build(state)
        with gr.Tab("Train", id="train"):
            train.build(state, banner, demo)
        with gr.Tab("Model", id="model") as model_tab:
            fields = model.build(state, banner, model_tab)
        # Each page shows what the server is doing now, on load and on a timer (another visitor may switch models).
        model.follow(state, demo, banner, fields)
    demo.queue(default_concurrency_limit=concurrency, max_size=QUEUE_SIZE)
    return demo


def launch(
    demo: gr.Blocks,
    state: AppState,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    share: bool = False,
    auth: tuple[str, str] | None = None,
    block: bool = True,
    quiet: bool = False,
) -> str:
    """Serve `demo`; returns its local URL (with `block=False`, at once; else when the server stops)."""
    _, url, _ = demo.launch(
        server_name=host,
        server_port=port,
        share=share,
        auth=auth,
        max_file_size=int(state.limits.max_upload_mb * 2**20),
        allowed_paths=[],  # nothing on disk is served by path (see the module docstring)
        prevent_thread_lock=not block,
        quiet=quiet,
        show_error=False,  # our own errors are gr.Error and always shown; others stay in the server's log
        footer_links=["api", "settings"],
        run_history=False,  # nothing recorded in browsers, and no link to storing runs on the Hub
        theme=gr.themes.Soft(),
        css=CSS,
        head=HEAD,
    )
    return url


def close(demo: gr.Blocks, state: AppState) -> None:
    demo.close()
    state.close()
