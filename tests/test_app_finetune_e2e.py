"""The Train tab's fine-tune in headless Chromium (issue 14): with the demo model active, the tab offers the fine-tune
learning rate (never the from-scratch one) and says why, and a short fine-tune shows both scores, "your data" and
"what it knew", beside the curves."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch

playwright = pytest.importorskip("playwright.sync_api")
from playwright.sync_api import expect, sync_playwright  # noqa: E402

from ui.app import build_app, close, create_state, launch  # noqa: E402
from vlm.synth import generate  # noqa: E402

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.filterwarnings("ignore:.*no_silent_downcasting", "ignore:The copy keyword is deprecated"),
]

CHROMIUM = Path("/usr/bin/chromium")
WAIT_MS = 60_000  # a busy 2-core machine: the start and the first poll can take many seconds
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    if not CHROMIUM.exists():
        pytest.skip("no /usr/bin/chromium: apt-get install -y chromium")
    tmp = tmp_path_factory.mktemp("e2e-finetune")
    generate(tmp / "shapes", 24, seed=4, image_size=64, progress=False)
    torch.manual_seed(0)
    state = create_state("demo", images=[tmp / "shapes" / "images"], cache_dir=tmp / "cache", runs_dir=tmp / "runs",
                         allowed_dirs=[tmp], device="cpu", progress=False)  # fmt: skip
    app = build_app(state)
    url = launch(app, state, port=free_port(), block=False, quiet=True)
    yield url, tmp
    close(app, state)


def test_fine_tune_shows_the_recipe_and_both_scores(served):
    url, tmp = served
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(30_000)
        page.goto(url)
        page.get_by_role("tab", name="Train", exact=True).click()
        expect(page.locator("#train-recipe")).to_contain_text("Fine-tune recipe", timeout=WAIT_MS)
        expect(page.locator("#train-lr input")).to_have_value("0.00001", timeout=WAIT_MS)
        page.locator("#train-data textarea, #train-data input").first.fill(str(tmp / "shapes" / "pairs.csv"))
        page.locator("#train-steps input").fill("3")
        page.locator("#train-batch input").fill("8")
        page.locator("#train-replay input").uncheck()  # replay would first build the demo recipe's pairs
        page.get_by_role("button", name="Start training").click()
        expect(page.locator("#train-used")).to_contain_text("Fine-tune defaults", timeout=WAIT_MS)
        status = page.locator("#train-status")
        expect(status).to_contain_text("finished", timeout=4 * WAIT_MS)
        expect(status).to_contain_text("Your data: mean recall")
        expect(status).to_contain_text("before the first step")
        expect(status).to_contain_text("What it knew")
        expect(page.locator("#train-recall")).to_be_visible()
        browser.close()
