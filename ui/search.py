"""The Search tab: text or an example image gives the top-k images of the collection (`indexing.Collection`),
with scores and captions; clicking a result shows why it matched and offers "more like this"; a folder on the
server can be added with progress. API: `search_text`, `search_image`, `search_similar`, `explain_result`,
`add_folder`, `collection_info`.

Only the collection's own images are shown: results are looked up by id and sent as thumbnails (`ui.files`), so no
path on the server is ever served.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import gradio as gr
from PIL import Image

from indexing.collection import Collection
from indexing.results import Hits
from indexing.store import Filter
from ui.errors import shown
from ui.files import ResultFiles
from ui.inputs import LARGEST_ID, checked_int, checked_text, image_input, require_image, server_path
from ui.state import AppState
from vlm.printable import printable
from vlm.segment import explain

LOG = logging.getLogger(__name__)


def _filters(caption: str | None, path: str | None) -> Filter | None:
    f = Filter(path_contains=(path or "").strip() or None, caption_contains=(caption or "").strip() or None)
    return None if f.is_empty() else f


def _check_nonempty(coll: Collection) -> None:
    if coll.stats().count == 0:
        raise gr.Error(
            "The collection is empty: add a folder of images below (Add images), or start the app with --images DIR.",
            print_exception=False,
        )


def _render(
    files: ResultFiles, coll: Collection, hits: Hits, elapsed: float
) -> tuple[list, list[dict[str, Any]], str, list[int]]:
    """Gallery items, a JSON-ready table, a status line and the ids in rank order."""
    gallery, table, ids = [], [], []
    for record, score in zip(hits.records[0], hits.scores[0], strict=False):
        caption = printable((record.caption or "").split("\n")[0])
        gallery.append((files.thumbnail(coll, record), f"{score:.3f} · {caption or printable(record.path)}"))
        table.append({"id": record.id, "score": round(float(score), 4), "file": record.path, "caption": caption})
        ids.append(record.id)
    status = f"{len(ids)} result(s) of {coll.stats().count:,} images in {elapsed * 1000:.0f} ms."
    if ids:
        status += " Click a result to see why it matched, or to search for more like it."
    else:
        status += " Nothing matched the filters."
    return gallery, table, status, ids


def build(state: AppState) -> None:
    limits = state.limits
    with gr.Row():
        with gr.Column(scale=1):
            query = gr.Textbox(label="Search by text", placeholder="a red circle", elem_id="search-query")
            text_button = gr.Button("Search", variant="primary")
            example = image_input(
                limits.max_pixels, label="…or by an example image", height=200, elem_id="search-example"
            )
            image_button = gr.Button("Search by image")
            k = gr.Slider(1, limits.max_k, value=12, step=1, label="Results (k)")
            with gr.Accordion("Filters", open=False):
                caption_filter = gr.Textbox(label="Caption contains")
                path_filter = gr.Textbox(label="Path contains")
            with gr.Accordion("Add images", open=False):
                folder = gr.Textbox(label="Folder on the server", placeholder="/path/to/photos")
                add_button = gr.Button("Add folder")
                added = gr.Markdown(elem_id="search-added")
        with gr.Column(scale=3):
            status = gr.Markdown(elem_id="search-status")
            gallery = gr.Gallery(
                label="Results",
                columns=6,
                height=520,
                format="png",
                object_fit="contain",
                allow_preview=False,
                elem_id="search-gallery",
            )
            with gr.Row():
                with gr.Column():
                    why = gr.Image(
                        label="Why it matched",
                        type="pil",
                        format="png",
                        interactive=False,
                        height=300,
                        elem_id="search-why",
                    )
                with gr.Column():
                    why_info = gr.Markdown(elem_id="search-why-info")
                    similar_button = gr.Button("More like this", interactive=False)
            with gr.Accordion("Results as data", open=False):
                table = gr.JSON(label="Results")
    ids = gr.State([])  # the ids shown, in gallery order
    last_text = gr.State("")  # the text query behind them ("" for an image query)
    # The id clicked: a (hidden) component rather than a State, so that API clients can pass one too.
    selected = gr.Number(value=-1, precision=0, visible="hidden", label="image id")

    def respond(coll: Collection, hits: Hits, start: float, text: str):
        gallery_items, rows, line, shown_ids = _render(state.files, coll, hits, time.perf_counter() - start)
        return gallery_items, rows, line, shown_ids, text, None, "", gr.Button(interactive=False)

    outputs = [gallery, table, status, ids, last_text, why, why_info, similar_button]

    def _k(k: object) -> int:
        return checked_int(k, "the number of results k", 1, limits.max_k)

    def _id(image_id: object) -> int:
        return checked_int(image_id, "the image id", 0, LARGEST_ID)

    @shown
    def search_text(text: str, k: float, caption_contains: str, path_contains: str):
        text = checked_text(text, "search text", limits.max_text_chars)
        coll = state.active.collection
        _check_nonempty(coll)
        start = time.perf_counter()
        hits = coll.search_text(text, k=_k(k), filters=_filters(caption_contains, path_contains))
        return respond(coll, hits, start, text)

    @shown
    def search_image(image: Image.Image | None, k: float, caption_contains: str, path_contains: str):
        image = require_image(image, "an example image")
        coll = state.active.collection
        _check_nonempty(coll)
        start = time.perf_counter()
        hits = coll.search_image(image, k=_k(k), filters=_filters(caption_contains, path_contains))
        return respond(coll, hits, start, "")

    @shown
    def search_similar(image_id: float, k: float, caption_contains: str, path_contains: str):
        coll = state.active.collection
        start = time.perf_counter()
        image = coll.open_image(_id(image_id))  # IndexingError for an id not in the collection
        hits = coll.search_image(image, k=_k(k), filters=_filters(caption_contains, path_contains))
        return respond(coll, hits, start, "")

    @shown
    def explain_result(image_id: float, text: str):
        text = checked_text(text, "text", limits.max_text_chars)
        found = explain.explain(state.active.encoders, state.active.collection.open_image(_id(image_id)), text)
        return state.files.image(found.picture), found.describe(text)

    @shown
    def select_result(shown_ids: list[int], text: str, evt: gr.SelectData):
        if evt.index is None or not 0 <= int(evt.index) < len(shown_ids):
            return -1, None, "", gr.Button(interactive=False)
        image_id = shown_ids[int(evt.index)]
        if not text:
            note = "Why it matched is shown for text queries; this result was found by image similarity."
            coll = state.active.collection
            picture = state.files.thumbnail(coll, coll.records([image_id])[image_id])
            return image_id, picture, note, gr.Button(interactive=True)
        picture, info = explain_result(image_id, text)
        return image_id, picture, info, gr.Button(interactive=True)

    @shown
    def add_folder(folder: str, progress=gr.Progress(track_tqdm=True)):  # noqa: B008 (Gradio's idiom)
        path = server_path(folder, state.allowed_dirs, "folder")
        if not path.is_dir():
            raise gr.Error(f"{printable(path)} is not a folder; give a folder of images", print_exception=False)
        active = state.active
        result = state.library.add_folder(active.collection, path, progress=True)
        text = result.summary() + f". The collection now holds {active.collection.stats().count:,} images."
        if result.bad:
            text += " Unusable: " + "; ".join(printable(b) for b in result.bad[:5])
        return text

    def collection_info() -> dict:
        """The collection's folder, number of images, version and model."""
        stats = state.active.collection.stats()
        return {"folder": stats.path, "images": stats.count, "version": stats.version, "model": stats.model.source}

    inputs = [k, caption_filter, path_filter]
    gr.on([text_button.click, query.submit], search_text, [query, *inputs], outputs, api_name="search_text")
    gr.on([image_button.click, example.upload], search_image, [example, *inputs], outputs, api_name="search_image")
    similar_button.click(search_similar, [selected, *inputs], outputs, api_name="search_similar")
    gallery.select(select_result, [ids, last_text], [selected, why, why_info, similar_button], api_visibility="private")
    add_button.click(add_folder, [folder], [added], api_name="add_folder", concurrency_id="admin", concurrency_limit=1)
    # API only: a result's heat map by id (the UI gets it by a click), and the collection's size.
    api_text = gr.Textbox(visible="hidden", label="text")
    api_button = gr.Button(visible="hidden")
    api_button.click(explain_result, [selected, api_text], [why, why_info], api_name="explain_result")
    gr.api(collection_info, api_name="collection_info")
