"""The console at /ui/, against a real gateway: who may see it, CSRF, and every page in a
real Chromium with data from real requests to the simulator.

Screenshots of each page are kept in the test's tmp directory.
"""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterator
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import urlsplit

import httpx
import openai
import pytest
from playwright.sync_api import Page, expect

from tests.browser import open_page, screenshots
from tests.conftest import StartGateway
from tests.gateway import RunningGateway
from tests.policies.keys import create_key, sluice

MASTER = "sk-master-console-" + "c" * 24
CONFIG: dict[str, Any] = {
    "default_model": "story",
    "models": {
        "story": {"provider": "simulator", "ttft": 0.05, "tokens_per_second": 400},
        # Slow enough to watch, and to stop halfway.
        "slow": {"provider": "simulator", "ttft": 0.3, "tokens_per_second": 12},
    },
    "pricing": {"story": {"input": 1, "output": 2}, "slow": {"input": 3, "output": 6}},
    "auth": {"cache_ttl": 0.2},
}
MESSAGES: list[Any] = [{"role": "user", "content": "x"}]
PAGES = ["/ui/", "/ui/requests", "/ui/requests/abc", "/ui/keys", "/ui/playground"]
JSON_URLS = [
    "/ui/api/overview",
    "/ui/api/overview?window=week&by=key",
    "/ui/api/requests",
    "/ui/api/requests/abc",
    "/ui/api/facets",
    "/ui/api/keys",
    "/ui/api/models",
    "/ui/api/nothing-here",
]
ASSETS = [
    "/ui/assets/console.css",
    "/ui/assets/js/main.js",
    "/ui/assets/js/playground.js",
    "/ui/assets/vendor/uplot/uPlot.iife.min.js",
    "/ui/assets/vendor/uplot/LICENSE",
]
CHANGES = [
    ("POST", "/ui/api/keys"),
    ("DELETE", "/ui/api/keys/key_123"),
    ("POST", "/ui/play/v1/chat/completions"),
    ("POST", "/ui/logout"),
]


class Answer:
    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name), None)

    def json(self) -> Any:
        return json.loads(self.body)


def call(
    gateway: RunningGateway,
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    body: bytes | str | None = None,
) -> Answer:
    """One request as sent, redirects not followed."""
    url = urlsplit(gateway.url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return Answer(response.status, response.getheaders(), response.read())
    finally:
        conn.close()


def origin(gateway: RunningGateway) -> str:
    return gateway.url


def sign_in(gateway: RunningGateway, key: str, **headers: str) -> Answer:
    return call(
        gateway,
        "POST",
        "/ui/login",
        {"content-type": "application/x-www-form-urlencoded", "origin": origin(gateway), **headers},
        f"key={key}&next=/ui/requests",
    )


def session_of(answer: Answer) -> str:
    raw = answer.header("set-cookie")
    assert raw is not None
    cookie: SimpleCookie = SimpleCookie()
    cookie.load(raw)
    return cookie["sluice_console"].value


def csrf_of(gateway: RunningGateway, session: str) -> str:
    page = call(gateway, "GET", "/ui/", {"cookie": f"sluice_console={session}"})
    assert page.status == 200
    text = page.body.decode()
    start = text.index('name="csrf-token" content="') + len('name="csrf-token" content="')
    return text[start : text.index('"', start)]


@pytest.fixture
def gateway(start_gateway: StartGateway) -> RunningGateway:
    return start_gateway(CONFIG, env={"SLUICE_MASTER_KEY": MASTER})


def test_nothing_of_the_console_without_signing_in(gateway: RunningGateway) -> None:
    for cookie in ({}, {"cookie": "sluice_console=forged"}):
        for path in PAGES:
            answer = call(gateway, "GET", path, cookie)
            assert answer.status == 303, path
            assert answer.header("location") == f"/ui/login?next={path}"
        for path in JSON_URLS + ASSETS:
            answer = call(gateway, "GET", path, cookie)
            assert answer.status == 401, path
            assert b"sign in" in answer.body
        for method, path in CHANGES:
            answer = call(gateway, method, path, {**cookie, "origin": origin(gateway)}, b"{}")
            assert answer.status == 401, (method, path)
    assert call(gateway, "GET", "/ui").status == 303
    login = call(gateway, "GET", "/ui/login")
    assert login.status == 200 and b'name="key"' in login.body
    assert "frame-ancestors 'none'" in (login.header("content-security-policy") or "")
    assert call(gateway, "GET", "/ui/assets/signin.css").status == 200  # the sign-in page's own
    # The console's own requests are not client API calls: none is recorded.
    assert not [r for r in gateway.wait_records(1, timeout=0.5) if r["route"].startswith("/ui")]


def test_sign_in_with_the_master_key_or_an_admin_key_only(gateway: RunningGateway) -> None:
    plain = create_key(gateway.db_path, "plain")["key"]
    admin = create_key(gateway.db_path, "ops", "--admin")
    for wrong in ("nope", MASTER + "x", plain):
        answer = sign_in(gateway, wrong)
        assert answer.status == 401 and answer.header("set-cookie") is None
        assert b"not the master key or an admin key" in answer.body

    signed = sign_in(gateway, MASTER)
    assert signed.status == 303 and signed.header("location") == "/ui/requests"
    cookie = signed.header("set-cookie") or ""
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/ui" in cookie
    assert "Secure" not in cookie  # plain HTTP here
    # Behind a TLS proxy on loopback (uvicorn trusts its X-Forwarded-Proto): Secure.
    https = gateway.url.replace("http://", "https://")
    behind = sign_in(gateway, MASTER, **{"x-forwarded-proto": "https", "origin": https})
    assert "Secure" in (behind.header("set-cookie") or "")

    session = session_of(signed)
    overview = call(gateway, "GET", "/ui/api/overview", {"cookie": f"sluice_console={session}"})
    assert overview.status == 200 and overview.json()["window"] == "hour"
    assert "no-store" in (overview.header("cache-control") or "")

    by_admin = session_of(sign_in(gateway, admin["key"]))
    cookie_header = {"cookie": f"sluice_console={by_admin}"}
    assert call(gateway, "GET", "/ui/api/keys", cookie_header).status == 200
    # Sign-out needs the CSRF token too, and ends the session.
    token = csrf_of(gateway, by_admin)
    same = {**cookie_header, "origin": origin(gateway)}
    assert call(gateway, "POST", "/ui/logout", same).status == 403
    out = call(gateway, "POST", "/ui/logout", {**same, "x-csrf-token": token})
    assert out.status == 303 and "Max-Age=0" in (out.header("set-cookie") or "")
    assert call(gateway, "GET", "/ui/api/keys", cookie_header).status == 401

    # A revoked admin key's sessions end with it.
    again = session_of(sign_in(gateway, admin["key"]))
    assert call(gateway, "GET", "/ui/api/keys", {"cookie": f"sluice_console={again}"}).status == 200
    assert sluice("keys", "revoke", admin["id"], "--db", str(gateway.db_path)).returncode == 0
    assert call(gateway, "GET", "/ui/api/keys", {"cookie": f"sluice_console={again}"}).status == 401
    until(lambda: sign_in(gateway, admin["key"]).status == 401, timeout=5)  # auth.cache_ttl
    assert MASTER not in gateway.log() and admin["key"] not in gateway.log()


def test_every_change_needs_the_csrf_token_and_the_own_origin(gateway: RunningGateway) -> None:
    session = session_of(sign_in(gateway, MASTER))
    token = csrf_of(gateway, session)
    base = {"cookie": f"sluice_console={session}", "content-type": "application/json"}
    body = json.dumps({"name": "from-a-test"})
    own = origin(gateway)
    refused = [
        {**base, "origin": own},  # no token
        {**base, "origin": own, "x-csrf-token": "wrong"},
        {**base, "origin": "http://evil.example", "x-csrf-token": token},
        {**base, "origin": "null", "x-csrf-token": token},
        {**base, "sec-fetch-site": "cross-site", "x-csrf-token": token},
    ]
    for headers in refused:
        answer = call(gateway, "POST", "/ui/api/keys", headers, body)
        assert answer.status == 403, headers
        assert "CSRF" in answer.json()["error"]
    assert call(gateway, "GET", "/ui/api/keys", base).json()["keys"] == []
    allowed = {**base, "origin": own, "x-csrf-token": token}
    created = call(gateway, "POST", "/ui/api/keys", allowed, body)
    assert created.status == 201
    key = created.json()
    assert key["key"].startswith("sk-sluice-") and key["name"] == "from-a-test"
    # The secret is shown once: listings never carry it.
    listing = call(gateway, "GET", "/ui/api/keys", base)
    assert key["key"].encode() not in listing.body and key["id"].encode() in listing.body
    path = f"/ui/api/keys/{key['id']}"
    limits = json.dumps({"rpm": 5, "budget_usd": 1.5, "models": ["story"]})
    assert call(gateway, "POST", path, {**base, "origin": own}, limits).status == 403
    changed = call(gateway, "POST", path, allowed, limits)
    assert changed.status == 200
    assert (changed.json()["rpm"], changed.json()["models"]) == (5, ["story"])
    bad = call(gateway, "POST", path, allowed, json.dumps({"rpm": -1}))
    assert bad.status == 400 and "rpm" in bad.json()["error"]
    assert call(gateway, "DELETE", path, {**base, "origin": own}).status == 403
    revoked = call(gateway, "DELETE", path, {**base, "origin": own, "x-csrf-token": token})
    assert revoked.status == 200 and revoked.json()["revoked"] is True
    # The playground too.
    play = call(
        gateway,
        "POST",
        "/ui/play/v1/chat/completions",
        {**base, "origin": own},
        json.dumps({"model": "story", "messages": [{"role": "user", "content": "hi"}]}),
    )
    assert play.status == 403
    # And the sign-in form, from another site.
    assert sign_in(gateway, MASTER, origin="http://evil.example").status == 403


def test_an_open_gateway_has_an_open_console_on_loopback_only(start_gateway: StartGateway) -> None:
    gateway = start_gateway(CONFIG)  # no key, no master key
    page = call(gateway, "GET", "/ui/")
    assert page.status == 200 and b"open gateway" not in page.body  # the script says so
    assert b'content="true"' in page.body  # sluice-open
    session = session_of(page)
    cookie = {"cookie": f"sluice_console={session}"}
    assert call(gateway, "GET", "/ui/api/overview", cookie).status == 200
    assert call(gateway, "GET", "/ui/login").header("location") == "/ui/"
    # A page that points its own name at 127.0.0.1 does not get the console.
    port = urlsplit(gateway.url).port
    assert call(gateway, "GET", "/ui/", {"host": f"evil.example:{port}"}).status == 421
    assert call(gateway, "GET", "/ui/", {"host": f"localhost:{port}"}).status == 200
    # Changes still need the session's token.
    token = csrf_of(gateway, session)
    headers = {**cookie, "origin": origin(gateway), "content-type": "application/json"}
    body = json.dumps({"name": "first", "admin": True})
    assert call(gateway, "POST", "/ui/api/keys", headers, body).status == 403
    first = call(gateway, "POST", "/ui/api/keys", {**headers, "x-csrf-token": token}, body)
    assert first.status == 201 and first.json()["admin"] is True
    # The first key closes the gateway, and the console with it: sign in with that key.
    deadline = time.monotonic() + 5
    while call(gateway, "GET", "/ui/", cookie).status == 200:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert call(gateway, "GET", "/ui/", cookie).header("location") == "/ui/login?next=/ui/"
    assert sign_in(gateway, first.json()["key"]).status == 303


# -- in the browser ---------------------------------------------------------------------


def seed(gateway: RunningGateway) -> None:
    """Real requests to the simulator through three client APIs, and a refusal."""
    with openai.OpenAI(base_url=gateway.api, api_key=MASTER) as sdk:
        for i in range(4):
            stream = sdk.chat.completions.create(
                model="story", messages=[{"role": "user", "content": f"story {i}"}], stream=True
            )
            assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        stream = sdk.chat.completions.create(
            model="slow",
            messages=[{"role": "user", "content": "slowly"}],
            stream=True,
            max_tokens=12,
        )
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        with pytest.raises(openai.NotFoundError):
            sdk.chat.completions.create(
                model="missing", messages=[{"role": "user", "content": "x"}]
            )
        events = sdk.responses.create(model="story", input="respond", stream=True, store=False)
        assert any(e.type == "response.output_text.delta" for e in events)
    anthropic = httpx.post(
        f"{gateway.url}/v1/messages",
        headers={"x-api-key": MASTER, "anthropic-version": "2023-06-01"},
        json={
            "model": "story",
            "max_tokens": 50,
            "stream": True,
            "messages": [{"role": "user", "content": "claude"}],
        },
        timeout=30,
    )
    assert anthropic.status_code == 200 and "content_block_delta" in anthropic.text


def until(check: Any, timeout: float = 15.0, every: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, "timed out"
        time.sleep(every)


@pytest.fixture
def page(gateway: RunningGateway) -> Iterator[Page]:
    with open_page() as page:
        page.set_viewport_size({"width": 1400, "height": 1000})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        yield page
        assert not errors, errors


def test_the_console_in_a_browser(gateway: RunningGateway, page: Page) -> None:
    seed(gateway)
    gateway.wait_records(8)
    shots = screenshots("console")

    # Signing in, from a deep link.
    page.goto(f"{gateway.url}/ui/keys")
    expect(page).to_have_url(f"{gateway.url}/ui/login?next=/ui/keys")
    page.screenshot(path=str(shots / "signin.png"))
    page.fill("#key", "wrong")
    page.click("button[type=submit]")
    expect(page.locator(".error")).to_contain_text("not the master key")
    page.fill("#key", MASTER)
    page.click("button[type=submit]")
    expect(page).to_have_url(f"{gateway.url}/ui/keys")
    cookie = next(c for c in page.context.cookies() if c["name"] == "sluice_console")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/ui"
    assert page.evaluate("() => document.cookie") == ""  # HttpOnly: not for scripts

    # Overview: cards and a chart per metric, with the seeded requests.
    page.click("nav a[data-page=overview]")
    expect(page.locator("#charts .uplot")).to_have_count(6)
    expect(page.locator("#cards .card").first).to_contain_text("8")
    expect(page.locator("#by-group tbody tr")).to_have_count(3)  # story, slow, missing
    expect(page.locator("#by-group")).to_contain_text("story")
    page.screenshot(path=str(shots / "overview.png"), full_page=True)
    page.click(".segmented button[data-value=key]")
    expect(page.locator("#by-group")).to_contain_text("master")
    page.click(".segmented button[data-value=day]")
    expect(page.locator("#charts .uplot")).to_have_count(6)
    page.click(".segmented button[data-value=model]")
    expect(page.locator("#by-group")).to_contain_text("story")
    page.screenshot(path=str(shots / "overview-day.png"), full_page=True)

    # Requests: every seeded one, filtered, and new ones appear live.
    page.click("nav a[data-page=requests]")
    rows = page.locator("#rows tr[data-id]")
    expect(rows).to_have_count(8)
    expect(page.locator("#summary")).to_have_text("8 matching")
    page.select_option("select[name=model]", "slow")
    expect(rows).to_have_count(1)
    expect(page).to_have_url(f"{gateway.url}/ui/requests?model=slow")
    page.select_option("select[name=model]", "")
    page.select_option("select[name=outcome]", "rejected")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("404")
    page.select_option("select[name=outcome]", "")
    expect(rows).to_have_count(8)
    with openai.OpenAI(base_url=gateway.api, api_key=MASTER) as sdk:
        sdk.chat.completions.create(model="story", messages=[{"role": "user", "content": "new"}])
    expect(rows).to_have_count(9, timeout=10_000)
    expect(page.locator("#rows tr.fresh")).to_have_count(1)
    page.screenshot(path=str(shots / "requests.png"), full_page=True)

    # A request's detail: everything recorded, and its token timeline.
    page.locator('#rows tr:has(td:text-is("slow")) a').first.click()
    expect(page.locator("#fields")).to_contain_text("simulator:slow")
    expect(page.locator("#fields")).to_contain_text("openai_chat")
    expect(page.locator("#timeline .uplot canvas")).to_have_count(1)
    stats = page.locator("#timeline-stats")
    expect(stats).to_contain_text("First token")
    first_token = page.locator("#timeline-stats li").first.inner_text()
    assert "ms" in first_token and 300 <= int(first_token.split()[-2]) < 2000  # ttft 0.3 s
    expect(stats).to_contain_text("Batches")
    page.screenshot(path=str(shots / "detail.png"), full_page=True)

    # Keys: create one (its secret shown once), use it, revoke it.
    page.click("nav a[data-page=keys]")
    page.fill("input[name=name]", "web-app")
    page.fill("input[name=budget_usd]", "2.5")
    page.fill("input[name=rpm]", "100")
    page.click("#create-key button[type=submit]")
    secret = page.locator("#new-secret").inner_text()
    assert secret.startswith("sk-sluice-")
    row = page.locator("#keys tr", has_text="web-app")
    expect(row).to_contain_text("100 rpm")
    expect(row).to_contain_text("of $2.50")
    page.screenshot(path=str(shots / "keys.png"), full_page=True)
    with openai.OpenAI(base_url=gateway.api, api_key=secret, max_retries=0) as sdk:
        answer = sdk.chat.completions.create(
            model="story", messages=[{"role": "user", "content": "with the new key"}]
        )
        assert answer.choices[0].message.content
    page.reload()
    expect(page.locator("#keys tr", has_text="web-app")).to_have_count(1)
    assert secret not in page.content()  # shown once, never again
    # Its limits, changed in place.
    page.locator("#keys tr", has_text="web-app").locator("button[data-edit]").click()
    page.fill("form[data-limits] input[name=rpm]", "1")
    page.fill("form[data-limits] input[name=budget_usd]", "4")
    page.click("form[data-limits] button[type=submit]")
    row = page.locator("#keys tr", has_text="web-app")
    expect(row).to_contain_text("1 rpm")
    expect(row).to_contain_text("of $4.00")

    def limited() -> bool:  # one request a minute now: the second is refused
        with openai.OpenAI(base_url=gateway.api, api_key=secret, max_retries=0) as sdk:
            try:
                for _ in range(2):
                    sdk.chat.completions.create(model="story", messages=MESSAGES)
            except openai.RateLimitError:
                return True
        return False

    until(limited, timeout=10, every=0.5)
    page.on("dialog", lambda dialog: dialog.accept())
    page.locator("#keys tr", has_text="web-app").locator("button[data-revoke]").click()
    expect(page.locator("#keys tr", has_text="web-app")).to_contain_text("revoked")

    def refused() -> bool:
        with openai.OpenAI(base_url=gateway.api, api_key=secret, max_retries=0) as sdk:
            try:
                sdk.chat.completions.create(model="story", messages=MESSAGES)
            except openai.AuthenticationError as exc:
                return "revoked" in str(exc)
            except openai.RateLimitError:
                return False  # still its 1 rpm, until the revocation is seen (cache_ttl)
        return False

    until(refused, timeout=10, every=0.3)

    # Playground: a live stream, stopped halfway; the gateway cancels the upstream.
    page.click("nav a[data-page=playground]")
    page.fill("#model", "slow")
    page.select_option("#api", "chat")
    page.click("#send")
    expect(page.locator("#status")).to_have_text("streaming…")
    until(lambda: int(page.inner_text("#deltas")) >= 6)
    assert page.inner_text("#ttft").endswith("ms")
    assert float(page.inner_text("#speed")) > 0
    page.screenshot(path=str(shots / "playground.png"), full_page=True)
    page.click("#stop")
    expect(page.locator("#status")).to_contain_text("stopped")
    shown = page.inner_text("#output")
    page.wait_for_timeout(500)
    assert page.inner_text("#output") == shown  # nothing more arrives

    def stopped() -> dict[str, Any] | None:
        rows = [r for r in gateway.records() if r["model"] == "slow" and r["key_id"] == "master"]
        return next((r for r in rows if r["outcome"] == "client_disconnected"), None)

    record = until(stopped)
    assert record["route"] == "/v1/chat/completions" and 6 <= record["chunks"] < 100

    # The other two APIs stream in the playground as well.
    for api in ("responses", "messages"):
        page.fill("#model", "story")
        page.select_option("#api", api)
        page.click("#send")
        expect(page.locator("#status")).to_contain_text("done", timeout=15_000)
        assert int(page.inner_text("#deltas")) > 3
        assert page.inner_text("#output").strip()
