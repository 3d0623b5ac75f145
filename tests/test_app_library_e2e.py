"""The Search tab's photo-library controls in headless Chromium: the date filter, the near-duplicates view, "Remove
from collection" and "Rescan folders"; each checked against the collection itself (its count, its groups) or the
dates the test gave the files."""

from __future__ import annotations

import os
import re
import shutil

import pytest
import torch
from PIL import Image

playwright = pytest.importorskip("playwright.sync_api", reason="Python playwright is not installed")
from app_harness import browser_page, need_chromium, serving  # noqa: E402
from playwright.sync_api import expect  # noqa: E402

from ui.app import create_state  # noqa: E402
from vlm.synth import generate  # noqa: E402

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.filterwarnings("ignore:.*no_silent_downcasting", "ignore:The copy keyword is deprecated"),
]

SCENES = 10
OLD, NEW = 1_580_000_000, 1_720_000_000  # 2020-01-26 and 2024-07-03: the files' mtimes (no EXIF in these PNGs)
TIMEOUT_MS = 30_000


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    need_chromium()
    tmp = tmp_path_factory.mktemp("e2e-lib")
    generate(tmp / "shapes", SCENES + 2, seed=8, image_size=64, progress=False)
    photos = tmp / "photos"
    photos.mkdir()
    for i in range(SCENES):
        path = photos / f"{i:02d}.png"
        shutil.copy(tmp / "shapes" / "images" / f"{i:06d}.png", path)
        stamp = OLD if i < 4 else NEW
        os.utime(path, (stamp, stamp))
    Image.open(photos / "05.png").resize((32, 32)).save(photos / "05_small.png")  # a near-duplicate
    os.utime(photos / "05_small.png", (NEW, NEW))
    shutil.copy(photos / "07.png", photos / "07_copy.png")  # an exact copy: stored once, listed by the view
    torch.manual_seed(0)
    state = create_state("vlm-tiny", images=[photos], cache_dir=tmp / "cache", runs_dir=tmp / "runs",
                         allowed_dirs=[tmp], device="cpu", progress=False)  # fmt: skip
    with serving(state) as url:
        yield url, tmp, state


@pytest.fixture(scope="module")
def page(served):
    url, _, _ = served
    expect.set_options(timeout=TIMEOUT_MS)  # a loaded 2-core machine: a search can take several seconds
    with browser_page(url, height=1200, timeout_ms=TIMEOUT_MS) as page:
        expect(page.locator("#banner")).to_contain_text(f"collection of {SCENES + 1} images")
        page.get_by_role("tab", name="Search", exact=True).click()
        yield page


def search(page, text: str) -> None:
    page.locator("#search-query textarea").fill(text)
    page.locator("#search-query textarea").press("Enter")


def set_field(page, elem_id: str, value: str) -> None:
    """Types into a filter field as a person would: the value shows in the box, then the focus moves on. A search
    sent straight after `fill` once ran without a freshly typed date on a loaded machine (11 results, not 7)."""
    box = page.locator(f"#{elem_id} input, #{elem_id} textarea").first
    box.fill(value)
    expect(box).to_have_value(value)
    box.press("Tab")


def test_date_filter(page, served):
    page.locator(".label-wrap", has_text="Filters").first.click()
    set_field(page, "search-after", "2024-01-01")
    search(page, "a red circle")
    newer = SCENES - 4 + 1  # files 4..9 and the small copy carry 2024 mtimes
    expect(page.locator("#search-status")).to_contain_text(f"{newer} result(s) of {SCENES + 1} images")
    expect(page.locator("#search-gallery img")).to_have_count(newer)
    set_field(page, "search-before", "2024-01-01")
    search(page, "a red circle")  # after == before: refused with the reason
    expect(page.get_by_text("impossible date range")).to_be_visible()
    page.locator(".toast-close").first.click()
    set_field(page, "search-after", "")
    set_field(page, "search-before", "")


def test_size_filter_and_the_date_order_cut_off(page, served):
    _, _, state = served
    coll = state.active.collection
    records = coll.records(range(100)).values()
    wide = sum((r.width or 0) >= 50 for r in records)  # all but the 32 px copy
    assert 0 < wide < coll.count
    set_field(page, "search-min-width", "50")
    search(page, "a red circle")
    expect(page.locator("#search-status")).to_contain_text(f"{wide} result(s) of {coll.count} images")
    set_field(page, "search-min-width", "")
    page.locator("#search-order label", has_text="date").click()
    set_field(page, "search-min-score", "0.99")  # no match of this random model scores that high
    search(page, "a red circle")
    expect(page.locator("#search-status")).to_contain_text("at least 0.99 (the relevance cut-off: yours)")
    expect(page.locator("#search-status")).to_contain_text("Nothing matched the filters above the cut-off")
    set_field(page, "search-min-score", "-1")
    search(page, "a red circle")
    expect(page.locator("#search-status")).to_contain_text(f"{coll.count} result(s)")
    expect(page.locator("#search-gallery img")).to_have_count(coll.count)
    page.locator(".label-wrap", has_text="Results as data").first.click()
    shown = re.findall(r"\b\d\d(?:_small)?\.png", page.locator("#search-table").inner_text())
    dates = {r.path: r.date for r in records}
    assert sorted(shown) == sorted(dates) and [dates[p] for p in shown] == sorted(dates.values(), reverse=True)
    page.locator(".label-wrap", has_text="Results as data").first.click()
    set_field(page, "search-min-score", "")
    page.locator("#search-order label", has_text="relevance").click()


def test_duplicates_view(page, served):
    _, _, state = served
    coll = state.active.collection
    copy = next(r for r in coll.records(range(100)).values() if r.path.endswith("05_small.png"))
    hits = coll.search_image(coll.open_image(copy.id), k=2)
    threshold = round(float(hits.scores[0][1]) - 0.002, 4)  # just below the copy's cosine with its nearest other
    groups = coll.duplicates(threshold)
    page.locator("#search-dups .label-wrap").first.click()
    page.locator("#search-dups-threshold input").fill(str(threshold))
    page.locator("#search-dups-button").click()
    expect(page.locator("#search-dups-status")).to_contain_text(f"{len(groups)} group(s) of near-duplicates")
    expect(page.locator("#search-dups-gallery img")).to_have_count(sum(len(g.records) for g in groups))
    expect(page.locator("#search-dups-gallery")).to_contain_text("keep")
    expect(page.locator("#search-dups-status")).to_contain_text("Exact copies (the same pixels, stored once)")
    expect(page.locator("#search-dups-status")).to_contain_text("07_copy.png = 07.png")


def test_remove_from_collection(page, served):
    _, _, state = served
    before = state.active.collection.stats().count
    search(page, "a blue square")
    page.locator("#search-gallery img").first.click()
    page.locator("#search-remove").click()
    expect(page.locator("#search-why-info")).to_contain_text("the image stays out")
    expect(page.locator("#search-why-info")).to_contain_text(f"{before - 1} images left")
    assert state.active.collection.stats().count == before - 1
    expect(page.locator("#search-remove")).to_be_disabled()


def test_rescan_follows_the_folder(page, served):
    _, tmp, state = served
    coll = state.active.collection
    photos = tmp / "photos"
    shutil.copy(tmp / "shapes" / "images" / f"{SCENES:06d}.png", photos / "new.png")
    gone = sorted(p for p in photos.glob("0*.png") if p.stem != "05_small")[0]
    gone_in_collection = any(r.path.endswith(gone.name) for r in coll.records(range(100)).values())
    gone.unlink()
    before = coll.stats().count
    page.locator(".label-wrap", has_text="Add images").first.click()
    page.locator("#search-rescan").click()
    added = page.locator("#search-added")
    expect(added).to_contain_text("synced")
    # The image removed in the previous test is still on disk, but it stays out: only the new file comes in.
    expected = before + 1 - int(gone_in_collection)
    expect(added).to_contain_text(f"now holds {expected} images")
    assert coll.stats().count == expected
    if any((photos / e.path).exists() for e in coll.excluded()):  # unless the removed image was `gone`
        expect(added).to_contain_text("1 excluded")
    if gone_in_collection:
        expect(added).to_contain_text("1 removed")
