"""`python -m ui.screenshots`: start the app on the demo collection, use each tab in headless Chromium as a person
would, and save one picture per tab to docs/screenshots/<tab>.png (for the README).

    python -m ui.screenshots                          # the demo model (vlm/demo_model)
    python -m ui.screenshots --model runs/x/final     # another model, same demo collection

The Train picture comes from a real short run (vlm-tiny from scratch on the demo's synthetic scenes).
Needs Python `playwright` and the Debian `chromium` binary (launch flags from ../shared/DESIGN.md).
"""

from __future__ import annotations

import argparse
import csv
import logging
import tempfile
from pathlib import Path

from playwright.sync_api import Page, expect, sync_playwright

from ui.app import build_app, close, create_state, launch

LOG = logging.getLogger(__name__)

CHROMIUM = "/usr/bin/chromium"
# Without the background-networking flags Chromium floods a closed network with requests (../shared/DESIGN.md).
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip
VIEWPORT = {"width": 1400, "height": 950}
# Classify: a single-object scene of the demo collection (labels.csv) against labels that differ from its own in
# colour or in shape only, which is what the demo model is made to tell apart.
CLASSIFY_LABEL = "green star"
CLASSIFY_LABELS = "green star, green cross, green triangle, blue star, yellow star, red circle, purple diamond"


def scene_with(shapes: Path, words: str) -> tuple[Path, str]:
    """The first synthetic scene whose caption mentions `words`, and that caption."""
    with open(shapes / "pairs.csv", encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            if words in row["caption"]:
                return shapes / row["path"], row["caption"]
    raise LookupError(f"no scene in {shapes} mentions {words!r}")


def labelled_scene(shapes: Path, label: str) -> Path:
    """The first single-object scene of the demo collection labelled `label` (its labels.csv)."""
    with open(shapes / "labels.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row["label"] == label:
                return shapes / row["path"]
    raise LookupError(f"no scene in {shapes / 'labels.csv'} is labelled {label!r}")


def upload(page: Page, elem_id: str, path: Path) -> None:
    page.locator(f"#{elem_id} input[type=file]").set_input_files(str(path))
    expect(page.locator(f"#{elem_id} img").first).to_be_visible()


def shoot(page: Page, path: Path) -> None:
    page.wait_for_timeout(1000)  # let the outputs' loading shade fade out
    page.screenshot(path=path, full_page=True)


def take(page: Page, home: Path, out: Path, train_steps: int) -> None:
    scene, _ = scene_with(home / "shapes", "red circle")
    tab = lambda name: page.get_by_role("tab", name=name, exact=True).click()  # noqa: E731

    tab("Classify")
    examples = page.locator("#classify-examples tbody tr")
    if examples.count():  # the demo model: its first-visit examples (from its card), one click
        examples.last.locator("td").first.click()
    else:
        upload(page, "classify-image", labelled_scene(home / "shapes", CLASSIFY_LABEL))
        page.locator("#classify-labels textarea").fill(CLASSIFY_LABELS)
        page.locator("#classify-button").click()
    # the first answer measures the model's "none fits" threshold (vlm.calibration), unless it is kept from before
    expect(page.locator("#classify-notes")).to_contain_text("prompt templates", timeout=180_000)
    page.locator("#classify-scores button.confidence-set").first.click()  # the most probable label
    expect(page.locator("#classify-why img")).to_be_visible()
    shoot(page, out / "classify.png")

    tab("Search")
    page.locator("#search-query textarea").fill("a red circle")
    page.locator("#search-query textarea").press("Enter")
    expect(page.locator("#search-status")).to_contain_text("result(s)")
    page.locator("#search-gallery img").first.click()
    expect(page.locator("#search-why img")).to_be_visible()
    shoot(page, out / "search.png")

    tab("Why it matched")
    upload(page, "explain-image", scene)
    page.locator("#explain-text textarea").fill("a red circle")
    page.locator("#explain-text textarea").press("Enter")
    expect(page.locator("#explain-picture img")).to_be_visible()
    shoot(page, out / "why-it-matched.png")

    tab("Segment")
    examples = page.locator("#segment-examples tbody tr")
    if examples.count():  # a shape that is in the scene and one that is not ("not found in this image")
        examples.first.locator("td").first.click()
    else:
        upload(page, "segment-image", scene)
        page.locator("#segment-phrases textarea").fill("a red circle\na green star")
        page.get_by_role("button", name="Segment", exact=True).click()
    expect(page.locator("#segment-summary li")).to_have_count(2, timeout=180_000)  # the first measures "absent"
    shoot(page, out / "segment.png")

    tab("Train")
    page.locator("#train-data textarea, #train-data input").first.fill(str(home / "shapes" / "pairs.csv"))
    page.locator("#train-model input").fill("vlm-tiny (from scratch, 32 px)")
    page.locator("#train-model input").press("Enter")
    page.locator("#train-steps input").fill(str(train_steps))
    page.get_by_role("button", name="Start training").click()
    expect(page.locator("#train-used")).to_contain_text("Started")
    expect(page.locator("#train-status")).to_contain_text("finished", timeout=300_000)
    page.wait_for_timeout(2500)  # the last poll draws the final points
    shoot(page, out / "train.png")

    tab("Model")
    shoot(page, out / "model.png")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="demo")
    p.add_argument("--pretrained")
    p.add_argument("--cache-dir", help="where the demo collection is kept (default: the app's)")
    p.add_argument("--out", default="docs/screenshots")
    p.add_argument("--train-steps", type=int, default=60)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    Path("runs").mkdir(exist_ok=True)  # the pages show the runs folder (Segment's decoder hint): a run folder reads
    with tempfile.TemporaryDirectory(dir="runs", prefix="app-") as runs:  # better there than a /tmp path
        state = create_state(args.model, args.pretrained, cache_dir=args.cache_dir, runs_dir=runs)
        demo = build_app(state)
        url = launch(demo, state, port=None, block=False, quiet=True)
        try:
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                page = browser.new_page(viewport=VIEWPORT)
                page.set_default_timeout(60_000)
                page.goto(url)
                take(page, state.library.home, out, args.train_steps)
                browser.close()
        finally:
            close(demo, state)
    LOG.info("screenshots written to %s", out)


if __name__ == "__main__":
    main()
