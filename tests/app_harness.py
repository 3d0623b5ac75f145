"""What the app tests share: a free port, an app served for a module, and for browser tests Chromium and a page.

with serving(state) as url, browser_page(url) as page:
    ...
"""

from __future__ import annotations

import contextlib
import socket
from pathlib import Path

import pytest

from ui.app import build_app, close, launch

CHROMIUM = Path("/usr/bin/chromium")
# From ../shared/DESIGN.md: without the background-networking flags Chromium floods a closed network with requests.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip


def need_chromium() -> None:
    if not CHROMIUM.exists():
        pytest.skip("no /usr/bin/chromium: apt-get install -y chromium")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(state):
    """The app over `state` on a free loopback port, closed (with its state) afterwards; yields its URL."""
    demo = build_app(state)
    url = launch(demo, state, port=free_port(), block=False, quiet=True)
    try:
        yield url
    finally:
        close(demo, state)


@contextlib.contextmanager
def browser_page(url: str, *, height: int = 1000, timeout_ms: int = 30_000):
    """A headless Chromium page opened at `url`."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": height})
            page.set_default_timeout(timeout_ms)
            page.goto(url)
            yield page
        finally:
            browser.close()
