"""Limits on what one request may be: body size (413), JSON depth and message count
(400) and header size (431), each in the error shape of the API asked, each recorded,
through a real gateway; and their settings."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from sluice import config
from tests.conftest import StartGateway, upstream_config
from tests.gateway import RunningGateway

KEY_ENV = {"TEST_UPSTREAM_KEY": "sk-test"}
LIMITS = {
    "max_body_bytes": 20_000,
    "max_json_depth": 12,
    "max_messages": 5,
    "max_header_bytes": 4096,
}


@pytest.fixture
def gateway(start_gateway: StartGateway, upstream: Any) -> RunningGateway:
    return start_gateway(upstream_config(upstream.url, **LIMITS), env=KEY_ENV)


def chat(messages: list[Any]) -> dict[str, Any]:
    return {"model": "normal", "messages": messages}


def anthropic(messages: list[Any]) -> dict[str, Any]:
    return {"model": "normal", "max_tokens": 10, "messages": messages}


def responses(items: list[Any]) -> dict[str, Any]:
    return {"model": "normal", "input": items}


def ui(messages: list[Any]) -> dict[str, Any]:
    return {"model": "normal", "messages": messages}


def ui_message(text: str, i: int = 0) -> dict[str, Any]:
    return {"id": f"m{i}", "role": "user", "parts": [{"type": "text", "text": text}]}


def nested(depth: int) -> Any:
    """A value that takes ``depth`` levels of JSON."""
    value: Any = "deep"
    for _ in range(depth):
        value = {"x": value}
    return value


#: route → (body with n messages, the API's error shape)
APIS = {
    "/v1/chat/completions": (lambda n: chat([{"role": "user", "content": "hi"}] * n), "openai"),
    "/v1/messages": (lambda n: anthropic([{"role": "user", "content": "hi"}] * n), "anthropic"),
    "/v1/messages/count_tokens": (
        lambda n: {"model": "normal", "messages": [{"role": "user", "content": "hi"}] * n},
        "anthropic",
    ),
    "/v1/responses": (lambda n: responses([{"role": "user", "content": "hi"}] * n), "openai"),
    "/api/chat": (lambda n: ui([ui_message("hi", i) for i in range(n)]), "openai"),
    "/v1/embeddings": (lambda n: {"model": "normal", "input": ["hi"] * n}, "openai"),
}


def error_of(response: httpx.Response, shape: str) -> dict[str, Any]:
    body = response.json()
    if shape == "anthropic":
        assert body["type"] == "error", body
        error: dict[str, Any] = body["error"]
        assert set(error) == {"type", "message"}, body
        return error
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, body
    return error


def post(gateway: RunningGateway, path: str, body: Any, **headers: str) -> httpx.Response:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"content-type": "application/json", "anthropic-version": "2023-06-01", **headers}
    return httpx.post(f"{gateway.url}{path}", content=raw, headers=headers, timeout=20)


@pytest.mark.parametrize("path", sorted(APIS))
def test_limits_in_each_api(gateway: RunningGateway, path: str) -> None:
    make, shape = APIS[path]
    within = make(LIMITS["max_messages"])
    assert post(gateway, path, within).status_code == 200

    # Too deep: a tool schema (or any member) nesting past max_json_depth.
    deep = {**make(1), "metadata_x": nested(LIMITS["max_json_depth"])}
    response = post(gateway, path, deep)
    assert response.status_code == 400, response.text
    error = error_of(response, shape)
    assert "max_json_depth" in error["message"] and "12 levels" in error["message"]
    if shape == "openai":
        assert error["code"] == "json_too_deep"
    # One level less is fine as far as depth goes (the member may be refused as unknown).
    shallow = {**make(1), "metadata_x": nested(LIMITS["max_json_depth"] - 3)}
    response = post(gateway, path, shallow)
    assert "max_json_depth" not in response.text
    statuses = [200, 400, response.status_code]

    # Too many messages (embeddings: inputs are not messages, and not counted).
    many = make(LIMITS["max_messages"] + 1)
    response = post(gateway, path, many)
    statuses.append(response.status_code)
    if path == "/v1/embeddings":
        assert response.status_code == 200, response.text
    else:
        assert response.status_code == 400, response.text
        error = error_of(response, shape)
        assert "maximum length 5, but got an array with length 6" in error["message"]
        if shape == "openai":
            assert error["param"] in ("messages", "input")
            assert error["code"] == "array_above_max_length"

    # Too large a body: 413 before it is read to the end.
    big = make(1)
    big["padding"] = "x" * LIMITS["max_body_bytes"]
    response = post(gateway, path, big)
    assert response.status_code == 413, response.text
    error = error_of(response, shape)
    if shape == "anthropic":
        assert error["type"] == "request_too_large"
    else:
        assert error["code"] == "request_too_large"

    # Header fields past max_header_bytes: 431.
    response = post(gateway, path, within, **{"x-padding": "p" * LIMITS["max_header_bytes"]})
    assert response.status_code == 431, response.text
    error = error_of(response, shape)
    assert "max_header_bytes" in error["message"]
    if shape == "openai":
        assert error["code"] == "request_header_fields_too_large"

    rows = gateway.wait_records(6)
    assert [row["status"] for row in rows] == [*statuses, 413, 431]
    assert all(row["route"] == path for row in rows)


def test_the_defaults_and_their_settings() -> None:
    defaults = config.Settings()
    assert (defaults.max_body_bytes, defaults.max_json_depth) == (4 * 1024 * 1024, 64)
    assert (defaults.max_messages, defaults.max_header_bytes) == (10_000, 32 * 1024)
    text = "max_json_depth: 20\nmax_messages: 100\nmax_header_bytes: 8192\n"
    settings = config.parse(text, {}, origin="sluice.yaml")
    assert (settings.max_json_depth, settings.max_messages, settings.max_header_bytes) == (
        20,
        100,
        8192,
    )
    with pytest.raises(config.ConfigError, match="max_header_bytes: expected an integer >= 1024"):
        config.parse("max_header_bytes: 10\n", {}, origin="sluice.yaml")
    with pytest.raises(config.ConfigError, match="max_messages"):
        config.parse("max_messages: 0\n", {}, origin="sluice.yaml")


@pytest.mark.parametrize("limit", [2, 5, 64])
def test_depth_is_counted_exactly(limit: int) -> None:
    from sluice.dialects.bounds import check_depth
    from sluice.errors import RequestError

    for depth in range(1, limit + 3):
        # ``depth`` containers, alternating objects and arrays, each beside containers
        # no deeper than the one it holds.
        value: Any = "leaf"
        for i in range(depth):
            if i == 0:
                value = [value, 1]
            else:
                value = {"a": value, "b": [1, "x"]} if i % 2 else [value, {}, "y"]
        if depth > limit:
            with pytest.raises(RequestError, match=f"deeper than {limit} levels"):
                check_depth(value, limit)
        else:
            check_depth(value, limit)
