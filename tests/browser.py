"""A real headless Chromium for tests: the system's ``/usr/bin/chromium`` driven by Playwright.

Playwright's own browser downloads are never used. Each launch gets a fresh temporary
profile (Playwright creates one per ``launch`` and deletes it on close), so no state
leaks between tests.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

CHROMIUM = Path("/usr/bin/chromium")
#: Where the browser tests keep their screenshots, for people to look at after a run:
#: ``test-artifacts/screenshots/`` in the checkout unless ``SLUICE_TEST_ARTIFACTS``
#: names another folder.
ARTIFACTS = Path(
    os.environ.get(
        "SLUICE_TEST_ARTIFACTS", Path(__file__).resolve().parent.parent / "test-artifacts"
    )
)


def screenshots(name: str) -> Path:
    """A fresh folder for one test's screenshots, kept after the run."""
    folder = ARTIFACTS / "screenshots" / name
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.png"):
        old.unlink()
    return folder


ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def require_chromium() -> None:
    """Skip when there is no browser on a developer's machine; in CI, a missing one fails."""
    if CHROMIUM.exists():
        return
    reason = f"{CHROMIUM} is not installed (install Debian's chromium package)"
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI must run the browser tests", pytrace=False)
    pytest.skip(reason)


@contextlib.contextmanager
def launch() -> Iterator[Browser]:
    require_chromium()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=list(ARGS), timeout=30_000
        )
        try:
            yield browser
        finally:
            browser.close()


@contextlib.contextmanager
def open_page() -> Iterator[Page]:
    """A page in a fresh context, with bounded default timeouts."""
    with launch() as browser:
        context = browser.new_context()
        try:
            page = context.new_page()
            page.set_default_timeout(20_000)
            page.set_default_navigation_timeout(20_000)
            yield page
        finally:
            context.close()
