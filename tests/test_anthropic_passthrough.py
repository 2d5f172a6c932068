"""Anthropic → Anthropic passthrough end to end: the gateway in front of the test
upstream's ``POST /v1/messages``. An Anthropic client gets the upstream's event bytes as
they came, one write per upstream read; what it sends that only Anthropic reads
(``anthropic-beta``, server tools, ``top_k``, adaptive thinking, ``output_config``)
reaches the upstream as it was sent; an OpenAI client over the same upstream gets chat
completion chunks."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import pytest

from tests.api_clients import PROMPT, PROMPT_WORDS
from tests.gateway import RunningGateway, run_gateway
from tests.upstream import messages as am
from tests.upstream.fixture import Upstream

KEY = "sk-ant-upstream-secret"


@pytest.fixture(scope="module")
def gateway(
    upstream: Upstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningGateway]:
    deployment = {"provider": "anthropic", "base_url": upstream.base, "api_key_env": "UP_KEY"}
    config = {
        "models": {"*": deployment},
        "routing": {"retries": 0, "allowed_fails": 0},
        "keepalive_interval": 5,
    }
    path = tmp_path_factory.mktemp("anthropic-passthrough")
    with run_gateway(path, config, env={"UP_KEY": KEY}) as running:
        yield running


def sdk(gateway: RunningGateway) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.url, api_key="unused", max_retries=0, timeout=20)


def writes(
    gateway: RunningGateway, path: str, body: dict[str, Any]
) -> tuple[httpx.Response, list[bytes]]:
    """The response and its body as the gateway wrote it: one piece per HTTP chunk
    (h11 never joins two chunks into one piece)."""
    with (
        httpx.Client(timeout=20) as http,
        http.stream("POST", f"{gateway.url}{path}", json=body) as response,
    ):
        return response, list(response.iter_raw())


def upstream_bytes(model: str, prompt: int = PROMPT_WORDS) -> list[bytes]:
    """The events the test upstream streams for ``model``, each as it frames it."""
    return list(am.stream_events(am.parse_spec(model), model, prompt))


def body(model: str, **fields: Any) -> dict[str, Any]:
    messages = [{"role": "user", "content": PROMPT}]
    return {"model": model, "max_tokens": 100, "messages": messages, "stream": True, **fields}


@pytest.mark.parametrize(
    "model",
    [
        "normal:n=5",
        "normal:n=3,stop=stop_sequence",
        "normal:n=3,cache_read=7,cache_write=3",
        "multibyte",
        "thinking",
        "redacted",
        "tool_use:calls=2",
    ],
)
def test_the_client_receives_the_upstream_bytes(gateway: RunningGateway, model: str) -> None:
    response, pieces = writes(gateway, "/v1/messages", body(model))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert b"".join(pieces) == b"".join(upstream_bytes(model))
    # And the SDK reads it as the upstream's message.
    request = {k: v for k, v in body(model).items() if k != "stream"}
    with sdk(gateway).messages.stream(**request) as stream:
        message = stream.get_final_message()
    assert message.id == am.message_id(model) and message.model == model
    assert message.stop_reason == am.stop_reason(am.parse_spec(model))


def test_one_write_per_upstream_read(gateway: RunningGateway) -> None:
    """The upstream writes each event on its own, 50 ms apart: each reaches the client
    as a write of its own, whole, never split and never held back for the next."""
    model = "normal:n=6,interval=0.05"
    events = upstream_bytes(model)
    _, pieces = writes(gateway, "/v1/messages", body(model))
    assert b"".join(pieces) == b"".join(events)
    at = 0
    for piece in pieces:  # every write is whole events, in the upstream's framing
        count = 0
        while piece:
            assert piece.startswith(events[at]), piece
            piece = piece[len(events[at]) :]
            at += 1
            count += 1
        assert count >= 1
    # Never more writes than upstream reads; two reads merge only if the gateway fell
    # 50 ms behind, which a loaded machine may do now and then, rarely twice.
    assert len(events) - 2 <= len(pieces) <= len(events)


def test_a_failure_passes_the_bytes_before_it_then_an_error_event(gateway: RunningGateway) -> None:
    _, pieces = writes(gateway, "/v1/messages", body("overloaded:after=3"))
    raw = b"".join(pieces)
    before = b"".join(upstream_bytes("overloaded:after=3"))
    assert raw.startswith(before)
    name, data = raw[len(before) :].split(b"\n", 1)
    assert name == b"event: error"
    error = json.loads(data.removeprefix(b"data: "))
    assert error["type"] == "error" and error["error"]["type"] == "overloaded_error"
    assert b"message_stop" not in raw


def sent_with(upstream: Upstream, mark: str) -> dict[str, Any]:
    def find(log: dict[str, Any]) -> list[dict[str, Any]]:
        return [r for r in log["requests"] if mark in json.dumps(r["body"])]

    found = find(upstream.wait_log(lambda log: bool(find(log))))
    assert len(found) == 1
    return found[0]


def test_what_only_anthropic_reads_reaches_the_upstream(
    gateway: RunningGateway, upstream: Upstream
) -> None:
    mark = uuid.uuid4().hex[:12]
    web_search = {"type": "web_search_20250305", "name": "web_search", "max_uses": 2}
    weather = {"name": "get_weather", "input_schema": {"type": "object"}}
    message = sdk(gateway).beta.messages.create(
        model="normal:n=2",
        max_tokens=100,
        messages=[{"role": "user", "content": f"{PROMPT} {mark}"}],
        tools=[weather, web_search],
        betas=["interleaved-thinking-2025-05-14", "context-1m-2025-08-07"],
        metadata={"user_id": "user-7"},
        thinking={"type": "adaptive"},
        extra_body={"top_k": 5, "output_config": {"effort": "low"}},
    )
    assert message.content[0].type == "text"
    sent = sent_with(upstream, mark)
    headers = sent["headers"]
    assert headers["anthropic-beta"] == "interleaved-thinking-2025-05-14,context-1m-2025-08-07"
    assert headers["anthropic-version"] == "2023-06-01"
    assert headers["x-api-key"] == KEY and "authorization" not in headers
    sent_body = sent["body"]
    assert sent_body["tools"] == [{**weather}, web_search]
    assert "server_tools" not in sent_body
    assert (sent_body["top_k"], sent_body["metadata"]) == (5, {"user_id": "user-7"})
    # Adaptive thinking and an effort go as they came, never as a thinking budget.
    assert sent_body["thinking"] == {"type": "adaptive"}
    assert sent_body["output_config"] == {"effort": "low"}
    assert "as_sent" not in sent_body


def test_an_openai_client_over_the_same_upstream_gets_chat_chunks(
    gateway: RunningGateway,
) -> None:
    request = {
        "model": "tool_use:calls=2",
        "messages": [{"role": "user", "content": PROMPT}],
        "stream": True,
    }
    response, pieces = writes(gateway, "/v1/chat/completions", request)
    assert response.status_code == 200
    raw = b"".join(pieces)
    assert b"event:" not in raw and b"ping" not in raw
    blocks = [b for b in raw.split(b"\n\n") if b]
    assert blocks[-1] == b"data: [DONE]"
    chunks = [json.loads(b.removeprefix(b"data: ")) for b in blocks[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert {c["id"] for c in chunks} == {chunks[0]["id"]}
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == am.TOOL_PREAMBLE
    indices = {
        call["index"]
        for c in chunks
        if c["choices"]
        for call in c["choices"][0]["delta"].get("tool_calls") or ()
    }
    assert indices == {0, 1}
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "tool_calls"
