"""What the server is doing, as a page shows it after a reload and while another visitor changes it (issue 15):
the banner and the Model tab follow the model that actually answers. Headless Debian Chromium through Playwright."""

from __future__ import annotations

import pytest
import torch

playwright = pytest.importorskip("playwright.sync_api", reason="Python playwright is not installed")
from gradio_client import Client  # noqa: E402
from playwright.sync_api import expect, sync_playwright  # noqa: E402
from test_app_e2e import CHROMIUM, CHROMIUM_ARGS, free_port, open_tab  # noqa: E402

from ui.app import build_app, close, create_state, launch  # noqa: E402
from vlm.synth import generate  # noqa: E402

pytestmark = [pytest.mark.e2e, pytest.mark.filterwarnings("ignore:.*no_silent_downcasting")]

SCENES = 6


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    if not CHROMIUM.exists():
        pytest.skip("no /usr/bin/chromium: apt-get install -y chromium")
    tmp = tmp_path_factory.mktemp("status")
    generate(tmp / "shapes", SCENES, seed=3, image_size=64, progress=False)
    torch.manual_seed(0)
    state = create_state("vlm-tiny", images=[tmp / "shapes" / "images"], cache_dir=tmp / "cache",
                         runs_dir=tmp / "runs", allowed_dirs=[tmp], device="cpu", progress=False)  # fmt: skip
    demo = build_app(state)
    url = launch(demo, state, port=free_port(), block=False, quiet=True)
    yield url, state
    close(demo, state)


@pytest.fixture(scope="module")
def page(served):
    url, _ = served
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(30_000)
        page.goto(url)
        yield page
        browser.close()


def test_random_weights_are_a_warning_on_every_page(page):
    banner = page.locator("#banner")
    expect(banner).to_contain_text("Randomly initialised weights")
    expect(banner).to_contain_text("vlm-tiny")


def test_reload_after_a_switch_shows_the_model_that_answers(page, served):
    url, state = served
    open_tab(page, "Model")
    page.locator("#model-choice input").fill("demo")
    page.locator("#model-choice input").press("Enter")
    page.get_by_role("button", name="Load model").click()
    expect(page.locator("#banner")).to_contain_text("Demo", timeout=60_000)
    page.reload()
    # The page was built while vlm-tiny answered; after the reload it must show the demo, which answers now.
    expect(page.locator("#banner")).to_contain_text("Demo")
    expect(page.locator("#banner")).not_to_contain_text("Randomly initialised")
    open_tab(page, "Model")
    expect(page.locator("#model-choice input")).to_have_value("demo")
    expect(page.locator("#model-details")).to_contain_text(state.active.encoders.fingerprint)


def test_an_open_page_follows_a_switch_made_elsewhere(page, served):
    url, state = served
    Client(url, verbose=False).predict("vlm-tiny", "random weights (train from scratch)", api_name="/model_switch")
    fingerprint = state.active.encoders.fingerprint
    # No reload: the page's timer reads the server's status and shows the new model, in the banner and the tab.
    expect(page.locator("#banner")).to_contain_text(fingerprint, timeout=15_000)
    expect(page.locator("#banner")).to_contain_text("Randomly initialised weights")
    expect(page.locator("#model-choice input")).to_have_value("vlm-tiny")
    expect(page.locator("#model-details")).to_contain_text(fingerprint)
