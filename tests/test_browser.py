"""What a person sees: the seed endpoint in a real headless Chromium.

A plain-text answer is only useful in a browser if it appears as it streams. Chromium
renders ``text/plain`` progressively when nothing buffers the body and the type is not
sniffed, which is what the gateway's stream headers ask for.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from playwright.sync_api import Page

from tests.browser import open_page, screenshots
from tests.conftest import StartGateway
from tests.gateway import RunningGateway

#: Slow enough to watch: dozens of words at 20 a second, a few seconds in all.
STORY = {
    "default_model": "story",
    "models": {
        "story": {"provider": "simulator", "ttft": 0.1, "tokens_per_second": 20, "max_tokens": 60}
    },
}

#: The page's document state and how much text it shows.
SAMPLE = "() => [document.readyState, document.body ? document.body.innerText.length : 0]"


def fetch(url: str) -> tuple[int, dict[str, str], str]:
    """The same URL outside the browser: status, headers, body."""
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, dict(exc.headers), exc.read().decode()


def seed_records(gateway: RunningGateway, count: int) -> list[dict[str, Any]]:
    """Wait for ``count`` records of ``GET /`` (the browser also asks for a favicon)."""
    deadline = time.monotonic() + 10
    while True:
        rows = [r for r in gateway.records() if r["route"] == "/"]
        if len(rows) >= count or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


def watch(page: Page, timeout: float = 30) -> list[tuple[str, int]]:
    """Sample the page every ~50 ms until its document is complete."""
    samples: list[tuple[str, int]] = []
    deadline = time.monotonic() + timeout
    while True:
        state, length = page.evaluate(SAMPLE)
        samples.append((state, length))
        if state == "complete":
            return samples
        if time.monotonic() > deadline:
            raise AssertionError(f"the page did not finish loading in {timeout} s: {samples}")
        page.wait_for_timeout(50)


def test_the_story_grows_on_screen(start_gateway: StartGateway) -> None:
    gateway = start_gateway(STORY)
    url = f"{gateway.url}/"
    with open_page() as page:
        # "commit": return as soon as the head is in and the document exists, not at
        # the end of the stream, so the page can be watched while the body arrives.
        response = page.goto(url, wait_until="commit")
        assert response is not None
        samples = watch(page)
        shown = page.evaluate("() => document.body.innerText")
        page.screenshot(path=str(screenshots("story") / "story.png"), full_page=True)
        assert response.status == 200
        headers = response.headers
        body = response.text()

    assert headers["content-type"] == "text/plain; charset=utf-8"
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["cache-control"] == "no-cache"
    assert headers["x-accel-buffering"] == "no"

    lengths = [length for _, length in samples]
    assert lengths == sorted(lengths), f"the text shrank: {samples}"
    final = lengths[-1]
    # Lengths seen while the document was still loading, i.e. with the stream in flight.
    growing = sorted({n for state, n in samples if state == "loading" and 0 < n < final})
    assert len(growing) >= 3, f"the text did not visibly grow before the end: {samples}"

    # What the page shows is the whole answer: the same story outside the browser
    # (the simulator is deterministic for a model and prompt).
    status, _, expected = fetch(url)
    assert status == 200
    assert body == expected
    assert shown.strip() == expected.strip()
    assert final == len(shown)

    records = seed_records(gateway, 2)
    assert [(r["model"], r["outcome"]) for r in records] == [("story", "ok")] * 2


def test_an_unknown_model_shows_the_error(start_gateway: StartGateway) -> None:
    gateway = start_gateway(STORY)
    query = urllib.parse.urlencode({"prompt": "Tell me about the sea", "model": "unknown"})
    url = f"{gateway.url}/?{query}"
    with open_page() as page:
        response = page.goto(url)
        assert response is not None
        shown = page.evaluate("() => document.body.innerText")
        page.screenshot(
            path=str(screenshots("unknown-model") / "unknown-model.png"), full_page=True
        )
        status = response.status
        headers = response.headers
        body = response.text()

    # With no "*" entry in the config, an unknown name is not served by any deployment.
    assert status == 404
    assert headers["content-type"] == "text/plain; charset=utf-8"
    assert body.startswith("error: ")
    assert "'unknown' does not exist" in body
    assert shown.strip() == body.strip()

    assert fetch(url)[::2] == (404, body)
    records = seed_records(gateway, 2)
    assert [(r["model"], r["status"], r["outcome"]) for r in records] == [
        ("unknown", 404, "rejected")
    ] * 2
