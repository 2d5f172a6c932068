"""Bad input gets the documented error and a record, and the gateway keeps serving."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import StartGateway
from tests.gateway import RunningGateway

KEY_ENV = {"TEST_UPSTREAM_KEY": "sk-test"}
MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture
def gateway(start_gateway: StartGateway, upstream: Any) -> RunningGateway:
    config = {
        "default_model": "normal",
        "max_body_bytes": 4096,
        "models": {
            "normal": {
                "provider": "openai",
                "base_url": upstream.url,
                "api_key_env": "TEST_UPSTREAM_KEY",
            }
        },
    }
    return start_gateway(config, env=KEY_ENV)


CASES: list[tuple[str, str, str, Any, int, str | None]] = [
    (
        "malformed-json",
        "POST",
        "/v1/chat/completions",
        b'{"model": "normal", "messages": [',
        400,
        None,
    ),
    ("not-an-object", "POST", "/v1/chat/completions", b"[1, 2]", 400, None),
    ("empty-body", "POST", "/v1/chat/completions", b"", 400, None),
    ("no-model", "POST", "/v1/chat/completions", {"messages": MESSAGES}, 400, "model"),
    (
        "model-not-string",
        "POST",
        "/v1/chat/completions",
        {"model": 5, "messages": MESSAGES},
        400,
        "model",
    ),
    (
        "empty-messages",
        "POST",
        "/v1/chat/completions",
        {"model": "normal", "messages": []},
        400,
        "messages",
    ),
    (
        "messages-not-list",
        "POST",
        "/v1/chat/completions",
        {"model": "normal", "messages": "hi"},
        400,
        "messages",
    ),
    (
        "bad-role",
        "POST",
        "/v1/chat/completions",
        {"model": "normal", "messages": [{"role": "robot", "content": "x"}]},
        400,
        "messages[0].role",
    ),
    (
        "role-not-a-string",
        "POST",
        "/v1/chat/completions",
        {"model": "normal", "messages": [{"role": {}, "content": "x"}]},
        400,
        "messages[0].role",
    ),
    (
        "tools-not-a-list",
        "POST",
        "/v1/chat/completions",
        {"model": "normal", "messages": MESSAGES, "tools": {"type": "function"}},
        400,
        "tools",
    ),
    (
        "tool-choice-without-tools",
        "POST",
        "/v1/chat/completions",
        {"model": "normal", "messages": MESSAGES, "tool_choice": "auto"},
        400,
        "tool_choice",
    ),
    (
        "stream-not-bool",
        "POST",
        "/v1/chat/completions",
        {"model": "normal", "messages": MESSAGES, "stream": "yes"},
        400,
        "stream",
    ),
    (
        "temperature-range",
        "POST",
        "/v1/chat/completions",
        {"model": "normal", "messages": MESSAGES, "temperature": 9},
        400,
        "temperature",
    ),
    (
        "max-tokens-type",
        "POST",
        "/v1/chat/completions",
        {"model": "normal", "messages": MESSAGES, "max_tokens": "many"},
        400,
        "max_tokens",
    ),
    (
        "unknown-model",
        "POST",
        "/v1/chat/completions",
        {"model": "nope", "messages": MESSAGES},
        404,
        "model",
    ),
    (
        "too-large",
        "POST",
        "/v1/chat/completions",
        {"model": "normal", "messages": [{"role": "user", "content": "x" * 5000}]},
        413,
        None,
    ),
    ("wrong-method", "GET", "/v1/chat/completions", None, 405, None),
    ("unknown-route", "GET", "/v2/nothing", None, 404, None),
]


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "param"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_bad_request(
    gateway: RunningGateway, method: str, path: str, body: Any, status: int, param: str | None
) -> None:
    content = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    with httpx.Client(timeout=10) as client:
        response = client.request(
            method,
            gateway.url + path,
            content=content,
            headers={"content-type": "application/json"},
        )
        assert response.status_code == status
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["message"]
        if param:
            assert error["param"] == param
        if status == 405:
            assert response.headers["allow"] == "POST"
        # The gateway keeps serving.
        ok = client.post(
            f"{gateway.api}/chat/completions", json={"model": "normal", "messages": MESSAGES}
        )
        assert ok.status_code == 200
    rows = gateway.wait_records(2)
    bad = rows[-2]
    assert bad["status"] == status
    assert bad["outcome"] == "rejected"
    assert bad["error"]
    assert bad["route"] == path


def test_sdk_sees_standard_errors(gateway: RunningGateway) -> None:
    client = openai.OpenAI(base_url=gateway.api, api_key="x", max_retries=0)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=MESSAGES)  # type: ignore[arg-type]
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="normal", messages=[])
