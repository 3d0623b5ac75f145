"""A first visit with the demo model (issue 15): examples from the model's card, one click each, fill the inputs
and run. Headless Debian Chromium through Playwright."""

from __future__ import annotations

import pytest

playwright = pytest.importorskip("playwright.sync_api", reason="Python playwright is not installed")
from app_harness import browser_page, need_chromium, serving  # noqa: E402
from playwright.sync_api import expect  # noqa: E402
from test_app_e2e import open_tab  # noqa: E402

from ui.app import create_state  # noqa: E402
from vlm import demo  # noqa: E402
from vlm.demo_examples import demo_examples  # noqa: E402
from vlm.synth import generate  # noqa: E402

pytestmark = [pytest.mark.e2e, pytest.mark.filterwarnings("ignore:.*no_silent_downcasting")]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    need_chromium()
    tmp = tmp_path_factory.mktemp("first-visit")
    generate(tmp / "shapes", 6, seed=5, image_size=64, progress=False)
    state = create_state("demo", images=[tmp / "shapes" / "images"], cache_dir=tmp / "cache",
                         runs_dir=tmp / "runs", allowed_dirs=[tmp], device="cpu", progress=False)  # fmt: skip
    with serving(state) as url, browser_page(url) as page:
        expect(page.locator("#banner")).to_contain_text("Demo", timeout=60_000)  # the page has loaded
        yield page, state


def test_one_click_on_an_example_classifies_it_and_one_searches(served):
    page, state = served
    examples = demo_examples(state.active.encoders.provenance)
    rows = page.locator("#classify-examples tbody tr")
    expect(rows).to_have_count(len(examples))
    rows.nth(0).locator("td").first.click()
    expect(page.locator("#classify-labels textarea")).to_have_value(", ".join(examples[0].labels))
    # The first answer waits for the calibration, measured once per set of weights (10-30 s alone, more under load).
    expect(page.locator("#classify-scores")).to_contain_text(examples[0].label, timeout=120_000)
    expect(page.locator("#classify-notes")).to_contain_text("prompt templates")  # the classification ran
    open_tab(page, "Search")
    query = demo.describe(state.active.encoders.provenance).queries[0]
    page.locator("#search-examples").get_by_text(query, exact=True).click()
    expect(page.locator("#search-query textarea")).to_have_value(query)
    expect(page.locator("#search-status")).to_contain_text("result(s) of 6 images", timeout=60_000)
