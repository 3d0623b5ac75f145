"""The Search tab: text or an example image gives the top-k images of the collection (`indexing.Collection`),
with scores and captions; clicking a result shows why it matched and offers "more like this"; a folder on the
server can be added with progress. API: `search_text`, `search_image`, `search_similar`, `explain_result`,
`add_folder`, `collection_info`.

Only the collection's own images are shown: results are looked up by id and sent as thumbnails (`ui.files`), so no
path on the server is ever served.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image

from indexing import queries
from indexing.collection import Collection
from indexing.duplicates import DEFAULT_THRESHOLD
from indexing.errors import IndexingError
from indexing.results import Hits
from indexing.store import Filter
from ui.collection_views import MAX_THRESHOLD, MIN_THRESHOLD, duplicates_view, render_duplicates
from ui.errors import shown
from ui.examples import search_queries
from ui.files import ResultFiles
from ui.inputs import LARGEST_ID, checked_float, checked_int, checked_text, image_input, require_image, server_path
from ui.outputs import picture, pictures
from ui.state import AppState
from vlm import query
from vlm.errors import ConfigError
from vlm.printable import printable
from vlm.segment import explain
from vlm.segment.absent import absent_threshold

LOG = logging.getLogger(__name__)


LARGEST_SIDE = 1_000_000  # px: far beyond any photo; a filter above it is a mistake
LARGEST_FILE_MB = 1_000_000.0


@dataclass(frozen=True)
class SearchOptions:
    """What every search of the tab takes besides its query, checked: k, the filters, the order, the cut-off."""

    k: int
    filters: Filter | None
    sort: str
    min_score: float | None  # for sort="date"; None: the model's own (`indexing.queries.default_min_score`)

    def search_kwargs(self) -> dict[str, Any]:
        return {"filters": self.filters, "sort": self.sort, "min_score": self.min_score}


def search_options(
    k: object, caption: str | None, path: str | None, after: str | None, before: str | None, order: str | None,
    folder: str | None, min_width: object, min_height: object, min_mb: object, min_score: object, limits,
) -> SearchOptions:  # fmt: skip
    """The options typed in, each bounded by the shared rules (`ui.inputs`); blank = not used. `ConfigError` or
    `IndexingError` (shown) for a malformed number or date, or an impossible range."""

    def text(value: str | None, what: str) -> str | None:
        if not (value or "").strip():
            return None
        checked_text(value, what, limits.max_text_chars)  # the shared length bound; a filter keeps its own spacing
        return value.strip()

    def number(value: object, what: str, hi: float, whole: bool) -> float | int | None:
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        return checked_int(value, what, 0, int(hi)) if whole else checked_float(value, what, 0.0, hi)

    if order not in (None, "", "relevance", "date"):
        raise ConfigError(f"unknown order {printable(str(order))!r}; choose 'relevance' or 'date'")
    mb = number(min_mb, "smallest file size in MB", LARGEST_FILE_MB, whole=False)
    f = Filter(
        path_contains=text(path, "path filter"),
        caption_contains=text(caption, "caption filter"),
        folder=text(folder, "folder filter"),
        after=text(after, "'after' date"),
        before=text(before, "'before' date"),
        min_width=number(min_width, "smallest width in px", LARGEST_SIDE, whole=True),
        min_height=number(min_height, "smallest height in px", LARGEST_SIDE, whole=True),
        min_size=None if mb is None else round(mb * 2**20),
    )
    cut = None if min_score is None or min_score == "" else checked_float(min_score, "relevance cut-off", -1.0, 1.0)
    k = checked_int(k, "the number of results k", 1, limits.max_k)
    return SearchOptions(k, None if f.is_empty() else f, order or "relevance", cut)


def is_arithmetic(text: str) -> bool:
    """Whether a search text is query arithmetic (`vlm.query`): terms joined by ' + ' / ' - ', or a weight."""
    return bool(re.search(r"(^|\s)[+-](\s|$)|\*", text))


def query_vector(text: str, encoders, allowed_dirs) -> np.ndarray:
    """The vector of a query-arithmetic text; image terms must be files inside the folders the app may read (the
    same message whether a path is missing or outside them, so nothing about other folders is told)."""
    try:
        terms = query.parse(text)
    except query.QueryError as e:
        missing = str(e).removeprefix("query image not found: ")
        if missing != str(e):
            server_path(missing, allowed_dirs, "query image")
        raise
    for term in terms:
        if term.kind == "image":
            server_path(term.value, allowed_dirs, "query image")
    return query.combine(encoders, terms)


def _check_nonempty(coll: Collection) -> None:
    if coll.count == 0:
        raise gr.Error(
            "The collection is empty: add a folder of images below (Add images), or start the app with --images DIR.",
            print_exception=False,
        )


def _render(
    files: ResultFiles, coll: Collection, hits: Hits, elapsed: float, options: SearchOptions
) -> tuple[list, list[dict[str, Any]], str, list[int]]:
    """Gallery items, a JSON-ready table, a status line and the ids in rank order."""
    gallery, table, ids = [], [], []
    for record, score in zip(hits.records[0], hits.scores[0], strict=False):
        caption = printable((record.caption or "").split("\n")[0])
        gallery.append((files.thumbnail(coll, record), f"{score:.3f} · {caption or printable(record.path)}"))
        table.append({"id": record.id, "score": round(float(score), 4), "file": record.path, "caption": caption})
        ids.append(record.id)
    status = f"{len(ids)} result(s) of {coll.count:,} images in {elapsed * 1000:.0f} ms."
    if options.sort == "date":
        cut = queries.cut_off(coll.model, options.min_score)
        whose = "the model's default" if options.min_score is None else "yours"
        status += f" Newest first among the matches scoring at least {cut:.2f} (the relevance cut-off: {whose})."
    if ids:
        status += " Click a result to see why it matched, or to search for more like it."
    elif options.sort == "date":
        status += " Nothing matched the filters above the cut-off: lower it under Filters to see more."
    else:
        status += " Nothing matched the filters."
    return gallery, table, status, ids


def build(state: AppState) -> None:
    limits = state.limits
    with gr.Row():
        with gr.Column(scale=1) as query_column:
            tries = search_queries(state)
            query = gr.Textbox(
                label="Search by text",
                placeholder=tries[0] if tries else "a red circle",
                info="Try: " + ", ".join(tries) if tries else None,  # held-out hits of the demo model's card
                elem_id="search-query",
            )
            text_button = gr.Button("Search", variant="primary")
            example = image_input(
                limits.max_pixels, label="…or by an example image", height=200, elem_id="search-example"
            )
            image_button = gr.Button("Search by image")
            k = gr.Slider(1, limits.max_k, value=12, step=1, label="Results (k)")
            with gr.Accordion("Filters", open=False):
                caption_filter = gr.Textbox(label="Caption contains")
                path_filter = gr.Textbox(label="Path contains")
                after = gr.Textbox("", label="Taken on or after", placeholder="YYYY-MM-DD", elem_id="search-after")
                before = gr.Textbox("", label="Taken before", placeholder="YYYY-MM-DD", elem_id="search-before")
                folder_filter = gr.Textbox("", label="In folder", placeholder="2024/rome", elem_id="search-folder")
                with gr.Row():
                    min_width = gr.Number(None, label="Width at least (px)", minimum=0, elem_id="search-min-width")
                    min_height = gr.Number(None, label="Height at least (px)", minimum=0, elem_id="search-min-height")
                    min_mb = gr.Number(None, label="File at least (MB)", minimum=0, elem_id="search-min-mb")
                order = gr.Radio(
                    ["relevance", "date"], value="relevance", label="Order (date: newest of the good matches)",
                    elem_id="search-order",
                )  # fmt: skip
                min_score = gr.Number(
                    None, label="Relevance cut-off for date order (blank: the model's default)", minimum=-1,
                    maximum=1, step=0.01, elem_id="search-min-score",
                )  # fmt: skip
            with gr.Accordion("Add images", open=False):
                folder = gr.Textbox(
                    label="Folder on the server",
                    placeholder="/path/to/photos",
                    info="inside one of the folders this app may read: "
                    + (", ".join(printable(str(d)) for d in state.allowed_dirs) or "none")
                    + " (the server's owner allows more with --allow-dir)",
                    elem_id="search-add-folder",
                )
                add_button = gr.Button("Add folder")
                rescan_button = gr.Button("Rescan folders", elem_id="search-rescan")
                added = gr.Markdown(elem_id="search-added")
        with gr.Column(scale=3):
            status = gr.Markdown(elem_id="search-status")
            gallery = pictures("Results", height=520, elem_id="search-gallery")
            with gr.Row():
                with gr.Column():
                    why = picture("Why it matched", height=300, elem_id="search-why")
                with gr.Column():
                    why_info = gr.Markdown(elem_id="search-why-info")
                    similar_button = gr.Button("More like this", interactive=False)
                    remove_button = gr.Button("Remove from collection", interactive=False, elem_id="search-remove")
            with gr.Accordion("Results as data", open=False):
                table = gr.JSON(label="Results", elem_id="search-table")
            dup_threshold, dup_button, dup_status, dup_gallery = duplicates_view(DEFAULT_THRESHOLD)
    ids = gr.State([])  # the ids shown, in gallery order
    last_text = gr.State("")  # the text query behind them ("" for an image query)
    # The id clicked: a (hidden) component rather than a State, so that API clients can pass one too.
    selected = gr.Number(value=-1, precision=0, visible="hidden", label="image id")

    def respond(coll: Collection, hits: Hits, start: float, text: str, options: SearchOptions):
        gallery_items, rows, line, shown_ids = _render(state.files, coll, hits, time.perf_counter() - start, options)
        off = gr.Button(interactive=False)
        return gallery_items, rows, line, shown_ids, text, None, "", off, off

    outputs = [gallery, table, status, ids, last_text, why, why_info, similar_button, remove_button]

    def _id(image_id: object) -> int:
        return checked_int(image_id, "the image id", 0, LARGEST_ID)

    @shown
    def search_text(
        text: str, k: float, caption_contains: str, path_contains: str, after: str = "", before: str = "",
        order: str = "relevance", folder: str = "", min_width: float | None = None, min_height: float | None = None,
        min_mb: float | None = None, min_score: float | None = None,
    ):  # fmt: skip
        """Text search; `a + b - 0.5*c` is query arithmetic (vlm/query.py; image terms: files the app may read)."""
        text = checked_text(text, "search text", limits.max_text_chars)
        coll = state.active.collection
        _check_nonempty(coll)
        start = time.perf_counter()
        o = search_options(k, caption_contains, path_contains, after, before, order, folder, min_width, min_height,
                           min_mb, min_score, limits)  # fmt: skip
        if is_arithmetic(text):
            vector = query_vector(text, state.active.encoders, state.allowed_dirs)
            hits = coll.search_vector(vector, k=o.k, **o.search_kwargs())
            return respond(coll, hits, start, "", o)
        hits = coll.search_text(text, k=o.k, **o.search_kwargs())
        return respond(coll, hits, start, text, o)

    @shown
    def search_image(
        image: Image.Image | None, k: float, caption_contains: str, path_contains: str, after: str = "",
        before: str = "", order: str = "relevance", folder: str = "", min_width: float | None = None,
        min_height: float | None = None, min_mb: float | None = None, min_score: float | None = None,
    ):  # fmt: skip
        image = require_image(image, "an example image")
        coll = state.active.collection
        _check_nonempty(coll)
        start = time.perf_counter()
        o = search_options(k, caption_contains, path_contains, after, before, order, folder, min_width, min_height,
                           min_mb, min_score, limits)  # fmt: skip
        hits = coll.search_image(image, k=o.k, **o.search_kwargs())
        return respond(coll, hits, start, "", o)

    @shown
    def search_similar(
        image_id: float, k: float, caption_contains: str, path_contains: str, after: str = "", before: str = "",
        order: str = "relevance", folder: str = "", min_width: float | None = None, min_height: float | None = None,
        min_mb: float | None = None, min_score: float | None = None,
    ):  # fmt: skip
        coll = state.active.collection
        start = time.perf_counter()
        image = coll.open_image(_id(image_id))  # IndexingError for an id not in the collection
        o = search_options(k, caption_contains, path_contains, after, before, order, folder, min_width, min_height,
                           min_mb, min_score, limits)  # fmt: skip
        hits = coll.search_image(image, k=o.k, **o.search_kwargs())
        return respond(coll, hits, start, "", o)

    @shown
    def remove_result(image_id: float):
        """Remove image `image_id` from the collection (not from the disk), for good: Rescan leaves it out."""
        coll = state.active.collection
        image_id = _id(image_id)
        record = coll.records([image_id]).get(image_id)
        if record is None:
            raise IndexingError(f"no image with id {image_id} in the collection")
        result = coll.remove(ids=[image_id], exclude=True)
        note = (
            f"Removed {printable(record.path)} from the collection. The file stays on disk, and the image stays out: "
            f"Rescan leaves it out (`vlm index unexclude` lets it back in); "
        )
        return note + f"{coll.count:,} images left (version {result.version}).", gr.Button(interactive=False)

    @shown
    def rescan(progress=gr.Progress(track_tqdm=True)):  # noqa: B008 (Gradio's idiom)
        """Sync the collection with its folders: new files added, changed re-embedded, deleted removed."""
        coll = state.active.collection
        result, missing = state.library.rescan(coll, progress=True)
        text = result.summary() + f". The collection now holds {coll.count:,} images."
        if result.bad:
            text += " Unusable: " + "; ".join(printable(b) for b in result.bad[:5])
        if missing:
            text += " Folders missing, their images kept: " + ", ".join(printable(str(f)) for f in missing)
        return text

    @shown
    def find_duplicates(threshold: float):
        """Groups of near-identical images of the collection (cosine above `threshold`)."""
        coll = state.active.collection
        threshold = checked_float(threshold, "duplicate threshold", MIN_THRESHOLD, MAX_THRESHOLD)
        groups = coll.duplicates(threshold)
        return render_duplicates(state.files, coll, groups, threshold)

    @shown
    def explain_result(image_id: float, text: str):
        text = checked_text(text, "text", limits.max_text_chars)
        encoders, coll = state.active.encoders, state.active.collection
        found = explain.explain(encoders, coll.open_image(_id(image_id)), text, absent_threshold(encoders))
        return state.files.image(found.picture), found.describe(text)

    @shown
    def select_result(shown_ids: list[int], text: str, evt: gr.SelectData):
        if evt.index is None or not 0 <= int(evt.index) < len(shown_ids):
            return -1, None, "", gr.Button(interactive=False), gr.Button(interactive=False)
        image_id = shown_ids[int(evt.index)]
        on = gr.Button(interactive=True)
        if not text:
            note = "Why it matched is shown for text queries; this result was found by image similarity."
            coll = state.active.collection
            record = coll.records([image_id]).get(image_id)
            if record is None:
                return -1, None, "This image is no longer in the collection.", gr.Button(interactive=False), off()
            return image_id, state.files.thumbnail(coll, record), note, on, on
        picture, info = explain_result(image_id, text)
        return image_id, picture, info, on, on

    @shown
    def add_folder(folder: str, progress=gr.Progress(track_tqdm=True)):  # noqa: B008 (Gradio's idiom)
        path = server_path(folder, state.allowed_dirs, "folder")
        if not path.is_dir():
            raise gr.Error(f"{printable(path)} is not a folder; give a folder of images", print_exception=False)
        active = state.active
        result = state.library.add_folder(active.collection, path, progress=True)
        text = result.summary() + f". The collection now holds {active.collection.count:,} images."
        if result.bad:
            text += " Unusable: " + "; ".join(printable(b) for b in result.bad[:5])
        return text

    def collection_info() -> dict:
        """The collection's folder, number of images, version and model."""
        stats = state.active.collection.stats()
        return {"folder": stats.path, "images": stats.count, "version": stats.version, "model": stats.model.source}

    def off() -> gr.Button:
        return gr.Button(interactive=False)

    inputs = [k, caption_filter, path_filter, after, before, order, folder_filter, min_width, min_height, min_mb,
              min_score]  # fmt: skip
    # Before the examples: their click runs `search_text` too, and Gradio names an event after its function
    # unless told otherwise, so an earlier examples event would take "search_text" and the public API would
    # become "/search_text_1" (tests/test_app_finetune.py checks the names on the demo model's app).
    gr.on([text_button.click, query.submit], search_text, [query, *inputs], outputs, api_name="search_text")
    if tries:
        with query_column:
            gr.Examples(
                [[q, 12, "", "", "", "", "relevance", "", None, None, None, None] for q in tries],
                [query, *inputs],
                outputs,
                fn=search_text,
                run_on_click=True,
                label="Try one: a click searches (queries the demo model's card found in held-out data)",
                visible_columns=[0],
                elem_id="search-examples",
                api_visibility="private",
            )
    gr.on([image_button.click, example.upload], search_image, [example, *inputs], outputs, api_name="search_image")
    similar_button.click(search_similar, [selected, *inputs], outputs, api_name="search_similar")
    chosen = [selected, why, why_info, similar_button, remove_button]
    gallery.select(select_result, [ids, last_text], chosen, api_visibility="private")
    add_button.click(add_folder, [folder], [added], api_name="add_folder", concurrency_id="admin", concurrency_limit=1)
    rescan_button.click(rescan, None, [added], api_name="rescan", concurrency_id="admin", concurrency_limit=1)
    remove_button.click(
        remove_result, [selected], [why_info, remove_button], api_name="remove_image", concurrency_id="admin",
        concurrency_limit=1,
    )  # fmt: skip
    dup_button.click(find_duplicates, [dup_threshold], [dup_status, dup_gallery], api_name="find_duplicates")
    # API only: a result's heat map by id (the UI gets it by a click), and the collection's size.
    api_text = gr.Textbox(visible="hidden", label="text")
    api_button = gr.Button(visible="hidden")
    api_button.click(explain_result, [selected, api_text], [why, why_info], api_name="explain_result")
    gr.api(collection_info, api_name="collection_info")
