"""What the server is doing, as a page shows it after a reload and while another visitor changes it (issue 15):
the banner and the Model tab follow the model that actually answers. Headless Debian Chromium through Playwright."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import open_clip
import pytest
import torch

playwright = pytest.importorskip("playwright.sync_api", reason="Python playwright is not installed")
from app_harness import browser_page, need_chromium, serving  # noqa: E402
from gradio_client import Client  # noqa: E402
from playwright.sync_api import expect  # noqa: E402
from test_app_e2e import open_tab, upload  # noqa: E402

from bench.common import SHARED_DATA  # noqa: E402
from ui.app import create_state  # noqa: E402
from vlm.demo_examples import demo_examples  # noqa: E402
from vlm.segment.absent import CALIBRATION_SCENES  # noqa: E402
from vlm.synth import LABELS, generate  # noqa: E402

pytestmark = [pytest.mark.e2e, pytest.mark.filterwarnings("ignore:.*no_silent_downcasting")]

SCENES = 6


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    need_chromium()
    tmp = tmp_path_factory.mktemp("status")
    generate(tmp / "shapes", SCENES, seed=3, image_size=64, progress=False)
    torch.manual_seed(0)
    state = create_state("vlm-tiny", images=[tmp / "shapes" / "images"], cache_dir=tmp / "cache",
                         runs_dir=tmp / "runs", allowed_dirs=[tmp], device="cpu", progress=False)  # fmt: skip
    with serving(state) as url:
        yield url, state


@pytest.fixture(scope="module")
def page(served):
    url, _ = served
    with browser_page(url) as page:
        yield page


def choose(page, elem_id: str, value: str) -> None:
    """Type into a dropdown and leave it, as a person does (Gradio sends a dropdown's input when it loses focus)."""
    field = page.locator(f"#{elem_id} input")
    field.fill(value)
    field.press("Enter")
    page.locator("#banner").click()  # Gradio takes a typed dropdown value when the field loses focus


def test_random_weights_are_a_warning_on_every_page(page):
    banner = page.locator("#banner")
    expect(banner).to_contain_text("Randomly initialised weights")
    expect(banner).to_contain_text("vlm-tiny")


def test_reload_after_a_switch_shows_the_model_that_answers(page, served):
    _, state = served
    open_tab(page, "Model")
    choose(page, "model-choice", "demo")
    expect(page.locator("#model-weights input")).to_have_value("its own weights")
    page.get_by_role("button", name="Load model").click()
    expect(page.locator("#model-plan")).to_contain_text(f"embedding {SCENES} images with this model takes about")
    page.get_by_role("button", name="Embed and switch").click()
    expect(page.locator("#banner")).to_contain_text("Demo", timeout=60_000)
    page.reload()
    # The page was built while vlm-tiny answered; after the reload it must show the demo, which answers now.
    expect(page.locator("#banner")).to_contain_text("Demo")
    expect(page.locator("#banner")).not_to_contain_text("Randomly initialised")
    open_tab(page, "Model")
    expect(page.locator("#model-choice input")).to_have_value("demo")
    expect(page.locator("#model-details")).to_contain_text(state.active.encoders.fingerprint)


def test_a_photo_classified_by_the_demo_model_says_no_label_fits(page, served):
    _, state = served
    assert state.active.is_demo  # switched to in the test above
    photo = SHARED_DATA / "fashion_mnist_train5k" / "images" / "ankle_boot" / "train00000.png"
    if not photo.is_file():
        pytest.skip(f"{photo} (the shared datasets beside the checkout) is missing")
    open_tab(page, "Classify")
    upload(page, "classify-image", photo)
    page.locator("#classify-labels textarea").fill("red circle, blue square, green triangle, yellow star")
    page.locator("#classify-button").click()
    # The first answer waits for the calibration (measured once per set of weights, then read from disk: 10-30 s).
    expect(page.locator("#classify-scores")).to_contain_text(re.compile(r"\d+%"), timeout=90_000)  # sums to 1
    notes = page.locator("#classify-notes")
    expect(notes).to_contain_text("None of the labels fits well")
    # Measured per domain of the demo model's reference data: shape labels by the shape scenes, the rest by icons.
    expect(notes).to_contain_text("the 48 labels of reference-shapes: threshold cosine")
    expect(notes).to_contain_text("any other label: threshold cosine")
    # A scene of the synthetic world gets a label that fits.
    upload(page, "classify-image", labelled_scene())
    expect(notes).to_have_text("")  # a new image clears the old answer (issue 15, item 6)
    expect(page.locator("#classify-scores")).not_to_contain_text("red circle")
    page.locator("#classify-labels textarea").fill("red circle, blue square, green star, yellow star")
    page.locator("#classify-button").click()
    expect(notes).to_contain_text("The best label fits")
    # An emoji the model knows (a first-visit example: its image and the card's labels) fits too, although its
    # cosine is far below the shapes' threshold: emoji and icons are judged by their own true matches.
    emoji = next(ex for ex in demo_examples(state.active.encoders.provenance) if ex.label not in LABELS)
    upload(page, "classify-image", emoji.image)
    page.locator("#classify-labels textarea").fill(", ".join(emoji.labels))
    page.locator("#classify-button").click()
    expect(page.locator("#classify-scores")).to_contain_text(emoji.label)
    expect(notes).to_contain_text("The best label fits")
    expect(notes).not_to_contain_text("None of the labels fits well")


def test_a_phrase_not_in_the_image_gets_no_mask(page, served):
    _, state = served
    assert state.active.is_demo  # switched to in the test above
    open_tab(page, "Segment")
    upload(page, "segment-image", labelled_scene())  # one green star
    page.locator("#segment-phrases textarea").fill("a green star\na red circle")
    page.get_by_role("button", name="Segment", exact=True).click()
    summary = page.locator("#segment-summary")
    # the threshold is measured on the synthetic world on first use: that takes a while on a loaded machine
    expect(summary.locator("li").last).to_contain_text("a red circle: not found in this image", timeout=120_000)
    expect(summary.locator("li").first).to_contain_text(re.compile(r"a green star: \d+\.\d% of the image"))
    expect(summary).to_contain_text(f"absent phrases on {CALIBRATION_SCENES} synthetic scenes")


def labelled_scene() -> Path:
    from vlm.synth import single_object_scene

    path = Path(tempfile.mkdtemp()) / "green-star.png"
    single_object_scene("star", "green", 64, seed=77).save(path)
    return path


def test_an_open_page_follows_a_switch_made_elsewhere(page, served):
    url, state = served
    Client(url, verbose=False).predict("vlm-tiny", "random weights (train from scratch)", api_name="/model_switch")
    fingerprint = state.active.encoders.fingerprint
    # No reload: the page's timer reads the server's status and shows the new model, in the banner and the tab.
    expect(page.locator("#banner")).to_contain_text(fingerprint, timeout=15_000)
    expect(page.locator("#banner")).to_contain_text("Randomly initialised weights")
    expect(page.locator("#model-choice input")).to_have_value("vlm-tiny")
    expect(page.locator("#model-details")).to_contain_text(fingerprint)


def test_an_architecture_without_weights_asks_estimates_and_can_be_cancelled(page, served):
    _, state = served
    before = state.active.encoders.fingerprint
    open_tab(page, "Model")
    choose(page, "model-choice", "ViT-B-32")
    # open_clip's tags for it are real choices, and nothing is chosen for the person.
    expect(page.locator("#model-weights input")).to_have_value("")
    page.locator("#model-weights input").click()
    options = page.locator("#model-weights [role=option]")
    expect(options).to_have_count(len(open_clip.list_pretrained_tags_by_model("ViT-B-32")) + 1)
    expect(options.filter(has_text="laion2b_s34b_b79k")).to_have_count(1)
    expect(options.last).to_contain_text("random weights (train from scratch)")
    page.keyboard.press("Escape")
    expect(page.locator("#model-weights input")).to_have_value("")  # nothing chosen for the person
    page.get_by_role("button", name="Load model").click()
    expect(page.get_by_text("so it would answer at random")).to_be_visible()
    # vlm-small has no published weights: from scratch, chosen explicitly, is estimated first and can be cancelled.
    choose(page, "model-choice", "vlm-small")
    choose(page, "model-weights", "random weights (train from scratch)")
    page.get_by_role("button", name="Load model").click()
    plan = page.locator("#model-plan")
    expect(plan).to_contain_text(re.compile(rf"embedding {SCENES} images with this model takes about \d+ s"))
    expect(plan).to_contain_text("random")
    page.get_by_role("button", name="Cancel").click()
    expect(plan).to_contain_text("Cancelled: nothing was embedded")
    assert state.active.encoders.fingerprint == before
    expect(page.locator("#banner")).to_contain_text(before)
    page.get_by_role("button", name="Load model").click()
    page.get_by_role("button", name="Embed and switch").click()
    expect(page.locator("#banner")).to_contain_text("vlm-small (randomly initialised)", timeout=60_000)
    assert state.active.encoders.model_name == "vlm-small"
