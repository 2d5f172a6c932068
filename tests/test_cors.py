"""CORS: off unless ``cors.origins`` lists the page's origin; real preflights, from
httpx (to read every header) and from a real Chromium (to see a browser allow or
block the call)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from sluice import config
from tests.browser import open_page
from tests.conftest import StartGateway, upstream_config
from tests.gateway import RunningGateway

KEY_ENV = {"TEST_UPSTREAM_KEY": "sk-test"}
MASTER = "sk-master-cors-" + "c" * 30
APP = "http://localhost:9"  # a page's origin, for the requests made without a browser
#: What the openai SDK asks to send from a browser.
SDK_HEADERS = "authorization,content-type,x-stainless-os,x-stainless-retry-count"
ANTHROPIC_HEADERS = "anthropic-version,anthropic-dangerous-direct-browser-access,x-api-key"
CHAT = {"model": "normal", "messages": [{"role": "user", "content": "hi"}]}


def preflight(gateway: RunningGateway, path: str, origin: str, headers: str) -> httpx.Response:
    return httpx.options(
        f"{gateway.url}{path}",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": headers,
        },
        timeout=10,
    )


def cors_headers(response: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k.startswith("access-control-")}


def start(start_gateway: StartGateway, upstream: Any, **extra: Any) -> RunningGateway:
    env = {**KEY_ENV, "SLUICE_MASTER_KEY": MASTER}
    return start_gateway(upstream_config(upstream.url, **extra), env=env)


def test_off_by_default(start_gateway: StartGateway, upstream: Any) -> None:
    gateway = start(start_gateway, upstream)
    answer = preflight(gateway, "/v1/chat/completions", APP, SDK_HEADERS)
    assert not answer.is_success
    assert cors_headers(answer) == {}
    auth = {"Authorization": f"Bearer {MASTER}", "Origin": APP}
    response = httpx.post(f"{gateway.api}/chat/completions", json=CHAT, headers=auth)
    assert response.status_code == 200
    assert cors_headers(response) == {}


def test_an_allowed_origin(start_gateway: StartGateway, upstream: Any) -> None:
    gateway = start(
        start_gateway, upstream, cors={"origins": [APP, "https://b.example"], "max_age": 60}
    )
    for path, asked in (
        ("/v1/chat/completions", SDK_HEADERS),
        ("/v1/messages", ANTHROPIC_HEADERS),
        ("/v1/responses", SDK_HEADERS),
        ("/api/chat", "content-type"),
    ):
        answer = preflight(gateway, path, APP, asked)
        assert answer.status_code == 204, answer.text
        got = cors_headers(answer)
        assert got["access-control-allow-origin"] == APP
        assert got["access-control-allow-headers"] == asked.replace(",", ", ")
        assert "POST" in got["access-control-allow-methods"]
        assert got["access-control-max-age"] == "60"
        assert "access-control-allow-credentials" not in got
        assert "Origin" in answer.headers["vary"]

    # Not a listed origin, or a header the SDKs do not send: not answered as allowed.
    for origin, asked in (("https://evil.example", SDK_HEADERS), (APP, "x-custom")):
        answer = preflight(gateway, "/v1/chat/completions", origin, asked)
        assert not answer.is_success
        assert "access-control-allow-origin" not in answer.headers

    # The real request, its errors too, carry the origin and expose the useful headers.
    auth = {"Authorization": f"Bearer {MASTER}", "Origin": APP}
    response = httpx.post(f"{gateway.api}/chat/completions", json=CHAT, headers=auth)
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == APP
    assert "x-request-id" in response.headers["access-control-expose-headers"]
    wrong = httpx.post(
        f"{gateway.api}/chat/completions",
        json=CHAT,
        headers={"Authorization": "Bearer sk-wrong", "Origin": APP},
    )
    assert wrong.status_code == 401
    assert wrong.headers["access-control-allow-origin"] == APP
    other = httpx.post(
        f"{gateway.api}/chat/completions",
        json=CHAT,
        headers={**auth, "Origin": "https://evil.example"},
    )
    assert "access-control-allow-origin" not in other.headers

    records = gateway.wait_records(12)
    preflights = [r for r in records if r["method"] == "OPTIONS"]
    assert [r["status"] for r in preflights][:4] == [204] * 4


def test_extra_headers_and_any_origin(start_gateway: StartGateway, upstream: Any) -> None:
    gateway = start(start_gateway, upstream, cors={"origins": ["*"], "headers": ["X-Custom"]})
    answer = preflight(gateway, "/v1/chat/completions", "https://any.example", "x-custom")
    assert answer.status_code == 204
    assert answer.headers["access-control-allow-origin"] == "*"


FETCH = """async ([url, key, chat]) => {
  try {
    const response = await fetch(url, {
      method: "POST",
      headers: {"Authorization": "Bearer " + key, "Content-Type": "application/json",
                "X-Stainless-Retry-Count": "0"},
      body: JSON.stringify(chat),
    });
    return {status: response.status, id: response.headers.get("x-request-id"),
            body: await response.json()};
  } catch (error) {
    return {error: String(error)};
  }
}"""


@pytest.mark.parametrize("allowed", ["page", "none", "other"])
def test_a_browser_page_calls_the_api_only_from_an_allowed_origin(
    start_gateway: StartGateway, upstream: Any, allowed: str
) -> None:
    # The page: whatever the test upstream answers at http://localhost:PORT/, an origin
    # other than the gateway's, on loopback as the browser's local network checks want.
    page_origin = "http://localhost:" + upstream.url.split(":")[2].split("/")[0]
    origins = {"page": [page_origin], "none": [], "other": ["https://other.example"]}[allowed]
    gateway = start(start_gateway, upstream, cors={"origins": origins})
    with open_page() as page:
        page.goto(f"{page_origin}/")
        result = page.evaluate(FETCH, [f"{gateway.api}/chat/completions", MASTER, CHAT])
    if allowed == "page":
        assert result["status"] == 200, result
        assert result["body"]["choices"][0]["message"]["content"]
        assert result["id"]  # an exposed header
    else:
        assert "error" in result, result
    records = gateway.wait_records(1)
    preflights = [r for r in records if r["method"] == "OPTIONS"]
    assert preflights, "the browser sent no preflight"
    served = [r for r in records if r["method"] == "POST"]
    assert len(served) == (1 if allowed == "page" else 0)


def test_cors_settings() -> None:
    assert config.Settings().cors.origins == ()
    settings = config.parse("cors: {origins: ['https://a.example:8443']}\n", {}, origin="x")
    assert settings.cors.origins == ("https://a.example:8443",)
    for bad in ("https://a.example/", "a.example", "https://a.example/app"):
        with pytest.raises(config.ConfigError, match=r"cors\.origins"):
            config.parse(f"cors: {{origins: ['{bad}']}}\n", {}, origin="x")
    with pytest.raises(config.ConfigError, match="cors: unknown key"):
        config.parse("cors: {allow: []}\n", {}, origin="x")
