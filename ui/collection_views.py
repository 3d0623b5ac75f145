"""The Search tab's near-duplicates view: groups found by `Collection.duplicates`, shown as thumbnails, each group's
keeper first; members that are the same picture re-encoded are marked. The logic is in `indexing.duplicates`."""

from __future__ import annotations

import gradio as gr

from indexing.collection import Collection
from indexing.duplicates import DuplicateGroup
from ui.files import ResultFiles
from ui.outputs import pictures
from vlm.printable import printable

MAX_GROUPS_SHOWN = 40
# The lowest threshold a visitor may ask for: below it "duplicates" are merely similar images, and the pairs kept
# grow towards N^2 (indexing/duplicates.py holds every pair above the threshold).
MIN_THRESHOLD = 0.8
MAX_THRESHOLD = 0.9999


def duplicates_view(default_threshold: float) -> tuple[gr.Number, gr.Button, gr.Markdown, gr.Gallery]:
    with gr.Accordion("Near-duplicates", open=False, elem_id="search-dups"):
        with gr.Row():
            threshold = gr.Number(
                value=default_threshold,
                minimum=MIN_THRESHOLD,
                maximum=MAX_THRESHOLD,
                step=0.01,
                label="Cosine above which the vectors propose a pair (small thumbnails propose too; the pixels confirm "
                "every pair; default measured by bench/duplicates.py)",
                elem_id="search-dups-threshold",
            )
            button = gr.Button("Find duplicates", elem_id="search-dups-button")
        status = gr.Markdown(elem_id="search-dups-status")
        gallery = pictures("Groups (keeper first)", height=420, elem_id="search-dups-gallery")
    return threshold, button, status, gallery


def render_duplicates(
    files: ResultFiles, coll: Collection, groups: list[DuplicateGroup], threshold: float
) -> tuple[str, list]:
    """A status line and gallery items: per group its keeper ("keep"), then the others with their cosine."""
    items = []
    for n, group in enumerate(groups[:MAX_GROUPS_SHOWN], 1):
        for record, score, same in zip(group.records, group.scores, group.same_picture, strict=True):
            mark = "keep" if record is group.records[0] else ("same picture" if same else f"{score:.3f}")
            items.append((files.thumbnail(coll, record), f"group {n} · {mark} · {printable(record.path)}"))
    extra = sum(len(g.records) - 1 for g in groups)
    status = (
        f"{len(groups):,} group(s) of near-duplicates (cosine > {threshold:g} or thumbnails alike, confirmed by the "
        "pixels); "
        f"{extra:,} image(s) beside their keeper."
    )
    if len(groups) > MAX_GROUPS_SHOWN:
        status += f" The first {MAX_GROUPS_SHOWN} groups are shown."
    if not groups:
        status += " No two images are that close."
    copies = coll.exact_copies()  # never stored twice, so not in the groups: listed by name
    if copies:
        shown = "; ".join(f"{printable(copy)} = {printable(stored)}" for copy, stored in copies[:10])
        more = f" and {len(copies) - 10:,} more" if len(copies) > 10 else ""
        status += f" Exact copies (the same pixels, stored once): {shown}{more}."
    return status, items
