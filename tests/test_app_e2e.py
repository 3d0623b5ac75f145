"""The web app driven in headless Chromium (Playwright, the Debian `chromium` binary), as a person uses it:
classify, search by text and by image, why it matched, segment, a short training run made the active model, and a
bad input. Each step asserts what is on the screen and saves a screenshot under the test's tmp folder.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch

playwright = pytest.importorskip("playwright.sync_api", reason="Python playwright is not installed")
from app_harness import browser_page, need_chromium, serving  # noqa: E402
from playwright.sync_api import expect  # noqa: E402

from ui.app import create_state  # noqa: E402
from vlm.synth import generate  # noqa: E402

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.filterwarnings("ignore:.*no_silent_downcasting", "ignore:The copy keyword is deprecated"),
]

SCENES = 21
TIMEOUT_MS = 30_000


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    need_chromium()
    tmp = tmp_path_factory.mktemp("e2e")
    generate(tmp / "shapes", SCENES, seed=4, image_size=64, progress=False)
    generate(tmp / "train", 40, seed=6, image_size=32, progress=False)
    torch.manual_seed(0)
    state = create_state("vlm-tiny", images=[tmp / "shapes" / "images"], cache_dir=tmp / "cache",
                         runs_dir=tmp / "runs", allowed_dirs=[tmp], device="cpu", progress=False)  # fmt: skip
    with serving(state) as url:
        yield url, tmp


@pytest.fixture(scope="module")
def page(served):
    url, _ = served
    with browser_page(url, timeout_ms=TIMEOUT_MS) as page:
        expect(page.locator("#banner")).to_contain_text(f"collection of {SCENES} images", timeout=TIMEOUT_MS)
        yield page


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    out = Path(os.environ.get("VLM_E2E_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    out.mkdir(parents=True, exist_ok=True)
    return out


def open_tab(page, name: str) -> None:
    page.get_by_role("tab", name=name, exact=True).click()


def upload(page, elem_id: str, path: Path) -> None:
    page.locator(f"#{elem_id} input[type=file]").set_input_files(str(path))
    expect(page.locator(f"#{elem_id} img").first).to_be_visible()


def test_classify_shows_labels_bars_and_why(page, served, shots):
    _, tmp = served
    open_tab(page, "Classify")
    upload(page, "classify-image", tmp / "shapes" / "images" / "000003.png")
    page.locator("#classify-labels textarea").fill("red circle, blue square, green triangle")
    page.locator("#classify-button").click()
    scores = page.locator("#classify-scores")
    for label in ("red circle", "blue square", "green triangle"):
        expect(scores).to_contain_text(label)
    expect(scores).to_contain_text(re.compile(r"\d+%"))
    expect(page.locator("#classify-notes")).to_contain_text("3 labels × 7 prompt templates")
    scores.get_by_text("blue square", exact=True).last.click()
    expect(page.locator("#classify-why img")).to_be_visible()
    expect(page.locator("#classify-why-info")).to_contain_text("blue square")
    page.screenshot(path=shots / "classify.png", full_page=True)


def test_a_bad_input_shows_a_clear_message(page, served, shots):
    open_tab(page, "Search")
    page.locator("#search-query textarea").fill("   ")
    page.locator("#search-query textarea").press("Enter")
    expect(page.get_by_text("no search text given")).to_be_visible()
    page.screenshot(path=shots / "error.png", full_page=True)
    page.locator(".toast-close").first.click()  # dismissed, as a person would
    expect(page.get_by_text("no search text given")).to_have_count(0)


def test_search_by_text_click_for_why_and_more_like_this(page, served, shots):
    open_tab(page, "Search")
    page.locator("#search-query textarea").fill("a red circle")
    page.locator("#search-query textarea").press("Enter")
    gallery = page.locator("#search-gallery")
    expect(page.locator("#search-status")).to_contain_text(f"12 result(s) of {SCENES} images")
    expect(gallery.locator("img")).to_have_count(12)
    gallery.locator("img").nth(2).click()
    expect(page.locator("#search-why img")).to_be_visible()
    expect(page.locator("#search-why-info")).to_contain_text("a red circle")
    page.screenshot(path=shots / "search.png", full_page=True)
    page.get_by_role("button", name="More like this").click()
    expect(page.locator("#search-status")).to_contain_text("result(s)")
    expect(page.locator("#search-why-info")).to_have_text("")  # the new results have not been clicked yet


def test_search_by_image_finds_that_image_first(page, served, shots):
    _, tmp = served
    open_tab(page, "Search")
    upload(page, "search-example", tmp / "shapes" / "images" / "000007.png")
    expect(page.locator("#search-gallery")).to_contain_text("1.000")  # the same image, cosine 1, comes first
    page.screenshot(path=shots / "search-image.png", full_page=True)


def test_tiles_folders_and_the_decoder_say_what_they_are(page, served):
    _, tmp = served
    open_tab(page, "Search")
    page.locator("#search-query textarea").fill("a red circle")
    page.locator("#search-query textarea").press("Enter")
    tile = page.locator("#search-gallery .gallery-item").first
    caption = tile.locator(".caption-label")
    expect(caption).to_have_attribute("title", re.compile(r"^-?\d\.\d{3} · "))  # the whole caption on hover
    box, cap, img = tile.bounding_box(), caption.bounding_box(), tile.locator("img").bounding_box()
    assert cap["y"] >= img["y"] + img["height"] - 1  # below the picture, not over it
    assert cap["width"] >= 0.95 * box["width"] - 4  # as wide as the tile
    # Add images names the folders it may read before anyone is refused
    page.get_by_text("Add images").click()
    folder_info = page.locator("#search-add-folder")
    expect(folder_info).to_contain_text("inside one of the folders this app may read")
    expect(folder_info).to_contain_text(str(tmp))
    # no decoder has been trained: only the training-free method, and how to get a decoder
    open_tab(page, "Segment")
    expect(page.locator("#segment-method")).to_be_hidden()
    expect(page.locator("#segment-no-decoder")).to_contain_text("vlm train-seg --model vlm-tiny")


def test_segment_shows_masks_and_heat_maps(page, served, shots):
    _, tmp = served
    open_tab(page, "Segment")
    upload(page, "segment-image", tmp / "shapes" / "images" / "000001.png")
    page.locator("#segment-phrases textarea").fill("a red circle\na green star")
    page.get_by_role("button", name="Segment", exact=True).click()
    # the first segmentation measures the model's "absent" threshold (vlm.segment.absent) first
    expect(page.locator("#segment-overlay img")).to_be_visible(timeout=90_000)
    expect(page.locator("#segment-summary")).to_contain_text("a green star")
    expect(page.locator("#segment-summary li")).to_have_count(2)
    page.screenshot(path=shots / "segment.png", full_page=True)


def test_why_it_matched_tab(page, served, shots):
    _, tmp = served
    open_tab(page, "Why it matched")
    upload(page, "explain-image", tmp / "shapes" / "images" / "000002.png")
    page.locator("#explain-text textarea").fill("a blue square")
    page.locator("#explain-text textarea").press("Enter")
    expect(page.locator("#explain-picture img")).to_be_visible()
    info = page.locator("#explain-info")
    expect(info).to_contain_text("Whole-image cosine similarity")  # and what it is beside the map:
    expect(info).to_contain_text("It is a different measure from the map")
    expect(info).to_contain_text(re.compile(r"scores? -?\d+\.\d\d"))  # the map's own peak
    page.screenshot(path=shots / "explain.png", full_page=True)


def test_short_training_run_becomes_the_active_model(page, served, shots):
    _, tmp = served
    open_tab(page, "Train")
    page.locator("#train-data textarea, #train-data input").first.fill(str(tmp / "train" / "pairs.csv"))
    page.locator("#train-steps input").fill("3")
    page.locator("#train-batch input").fill("8")
    page.get_by_role("button", name="Start training").click()
    expect(page.locator("#train-used")).to_contain_text("Started: ")
    status = page.locator("#train-status")
    expect(status).to_contain_text("finished", timeout=90_000)
    expect(status).to_contain_text("step 3 / 3")
    expect(page.locator("#train-loss")).to_be_visible()
    page.screenshot(path=shots / "train.png", full_page=True)
    # A reload keeps the run: its status comes from the run folder, not from the page (issue 15).
    page.reload()
    open_tab(page, "Train")
    expect(status).to_contain_text("finished", timeout=30_000)
    expect(status).to_contain_text("step 3 / 3")
    page.get_by_role("button", name="Use this model").click()
    expect(page.locator("#banner")).to_contain_text("checkpoint", timeout=60_000)
    expect(page.locator("#banner")).to_contain_text(f"collection of {SCENES} images")
    open_tab(page, "Model")
    expect(page.locator("#model-details")).to_contain_text("trained by vlm")
    page.screenshot(path=shots / "model.png", full_page=True)
