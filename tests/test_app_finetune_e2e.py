"""The Train tab's fine-tune in headless Chromium (issue 14): with the demo model active, the tab offers the fine-tune
learning rate (never the from-scratch one) and says why, and a short fine-tune shows both scores, "your data" and
"what it knew", beside the curves; its WiSE-FT panel then scores each α, draws the frontier and uses the chosen one."""

from __future__ import annotations

import pytest
import torch

playwright = pytest.importorskip("playwright.sync_api")
from app_harness import browser_page, need_chromium, serving  # noqa: E402
from playwright.sync_api import expect  # noqa: E402

from ui import wise  # noqa: E402
from ui.app import create_state  # noqa: E402
from vlm.synth import generate  # noqa: E402

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.filterwarnings("ignore:.*no_silent_downcasting", "ignore:The copy keyword is deprecated"),
]

WAIT_MS = 60_000  # a busy 2-core machine: the start and the first poll can take many seconds


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    need_chromium()
    tmp = tmp_path_factory.mktemp("e2e-finetune")
    generate(tmp / "shapes", 24, seed=4, image_size=64, progress=False)
    torch.manual_seed(0)
    state = create_state("demo", images=[tmp / "shapes" / "images"], cache_dir=tmp / "cache", runs_dir=tmp / "runs",
                         allowed_dirs=[tmp], device="cpu", progress=False)  # fmt: skip
    with serving(state) as url:
        yield url, tmp


def test_fine_tune_shows_the_recipe_and_both_scores_then_wise_ft_uses_an_alpha(served, monkeypatch):
    url, tmp = served
    with browser_page(url) as page:
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
        # WiSE-FT of the finished fine-tune: both scores at the picked α, the frontier, then the model at that α.
        monkeypatch.setattr(wise, "ALPHAS", "0,0.5,1")  # three α keep the test short
        page.get_by_text("WiSE-FT: between the model it started from and the fine-tune").click()
        page.locator("#train-wise-sweep").click()
        scores = page.locator("#train-wise-scores")
        expect(scores).to_contain_text("what it knew", timeout=2 * WAIT_MS)
        expect(scores).to_contain_text("Picked by best-sum")
        expect(page.locator("#train-wise-frontier img")).to_be_visible()
        page.locator("#train-wise-use").click()
        expect(page.locator("#train-wise-used")).to_contain_text("Using α =", timeout=2 * WAIT_MS)
