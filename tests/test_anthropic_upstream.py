"""The ``anthropic`` provider end to end: the real gateway in front of the test upstream's
``POST /v1/messages``, driven by the official ``openai`` SDK.

The model name picks the upstream's scenario (``tests/upstream/messages.py``); the
upstream's ``/_log`` shows what the gateway sent. Each test marks its prompt so that it
finds its own request there.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.gateway import RunningGateway, run_gateway
from tests.upstream import messages as am
from tests.upstream.fixture import Upstream

KEY = "sk-ant-upstream-secret"
CACHED_MODEL = "normal:n=4,cache_read=7,cache_write=3"
#: USD per million tokens, for the model above.
PRICE = {"input": 3.0, "output": 15.0}


@pytest.fixture(scope="module")
def gateway(
    upstream: Upstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningGateway]:
    deployment = {"provider": "anthropic", "base_url": upstream.base, "api_key_env": "UP_KEY"}
    config = {
        "default_model": "normal",
        "models": {
            "*": deployment,
            "short": {**deployment, "model": "normal:n=2", "max_tokens_default": 100},
        },
        # Every failure reaches the client as it is: no retry waits on a 429 or 529.
        "routing": {"retries": 0},
        "pricing": {CACHED_MODEL: PRICE},
        "keepalive_interval": 5,
    }
    path = tmp_path_factory.mktemp("anthropic-gateway")
    with run_gateway(path, config, env={"UP_KEY": KEY}) as running:
        yield running


@pytest.fixture
def client(gateway: RunningGateway) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gateway.api, api_key="unused", max_retries=0, timeout=20) as sdk:
        yield sdk


def prompt(text: str = "Tell me a story") -> tuple[str, list[Any]]:
    """A user message marked so that its request can be found in the upstream's log."""
    mark = uuid.uuid4().hex[:12]
    return mark, [{"role": "user", "content": f"{text} {mark}"}]


def sent(upstream: Upstream, mark: str) -> dict[str, Any]:
    """The request the upstream received whose body holds ``mark``."""

    def find(log: dict[str, Any]) -> list[dict[str, Any]]:
        return [r for r in log["requests"] if mark in json.dumps(r["body"])]

    found = find(upstream.wait_log(lambda log: bool(find(log))))
    assert len(found) == 1, f"{len(found)} upstream requests hold {mark}"
    return found[0]


def last_record(gateway: RunningGateway, model: str, count: int = 1) -> dict[str, Any]:
    """The last record of ``model`` once there are ``count`` of them (records hold no
    prompt here, and are written off the hot path)."""
    deadline = time.monotonic() + 10
    while True:
        rows = [r for r in gateway.records() if r["model"] == model]
        if len(rows) >= count or time.monotonic() > deadline:
            assert len(rows) >= count, f"{len(rows)} records of {model}, expected {count}"
            return rows[-1]
        time.sleep(0.05)


def stream_text(client: openai.OpenAI, model: str, messages: list[Any]) -> tuple[str, list[Any]]:
    chunks = list(client.chat.completions.create(model=model, messages=messages, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, chunks


def raw_stream(gateway: RunningGateway, body: dict[str, Any]) -> tuple[int, bytes]:
    with (
        httpx.Client(timeout=20) as http,
        http.stream("POST", f"{gateway.api}/chat/completions", json=body) as response,
    ):
        return response.status_code, b"".join(response.iter_raw())


# -- answers -------------------------------------------------------------------------


def test_streamed_text(client: openai.OpenAI, upstream: Upstream) -> None:
    mark, messages = prompt()
    text, chunks = stream_text(client, "normal:n=5", messages)
    assert text == am.expected_text("normal:n=5")
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert {c.id for c in chunks} == {chunks[0].id} and chunks[0].id.startswith("chatcmpl-")
    assert {c.model for c in chunks} == {"normal:n=5"}
    assert chunks[0].choices[0].delta.role == "assistant"
    request = sent(upstream, mark)
    assert request["path"] == "/v1/messages"
    assert request["body"]["stream"] is True


def test_non_streamed_text(client: openai.OpenAI) -> None:
    _, messages = prompt()
    completion = client.chat.completions.create(model="normal:n=3", messages=messages)
    choice = completion.choices[0]
    assert choice.message.content == am.expected_text("normal:n=3")
    assert choice.finish_reason == "stop"
    assert completion.usage is not None and completion.usage.completion_tokens == 3


def test_multibyte_text_split_inside_characters(client: openai.OpenAI) -> None:
    _, messages = prompt()
    text, _ = stream_text(client, "multibyte", messages)
    assert text == am.expected_text("multibyte")


def test_thinking_comes_as_reasoning_content(client: openai.OpenAI) -> None:
    _, messages = prompt()
    chunks = list(
        client.chat.completions.create(model="thinking:steps=3,n=2", messages=messages, stream=True)
    )
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    reasoning = "".join(getattr(d, "reasoning_content", None) or "" for d in deltas)
    content = "".join(d.content or "" for d in deltas)
    assert reasoning == am.expected_thinking("thinking:steps=3,n=2")
    assert content == am.expected_text("thinking:steps=3,n=2")
    first_text = next(i for i, d in enumerate(deltas) if d.content)
    assert all(not getattr(d, "reasoning_content", None) for d in deltas[first_text:])
    whole = client.chat.completions.create(model="thinking:steps=3,n=2", messages=messages)
    message = whole.choices[0].message
    assert message.content == content
    assert (message.model_extra or {}).get("reasoning_content") == reasoning


def test_parallel_tool_calls_stream_with_openai_indices(client: openai.OpenAI) -> None:
    _, messages = prompt("Weather and time in Paris?")
    chunks = list(
        client.chat.completions.create(model="tool_use:calls=2", messages=messages, stream=True)
    )
    calls: dict[int, dict[str, str]] = {}
    content = []
    for chunk in chunks:
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        content.append(delta.content or "")
        for call in delta.tool_calls or ():
            entry = calls.setdefault(call.index, {"id": "", "name": "", "arguments": ""})
            if call.id:
                entry["id"] = call.id
            if call.function and call.function.name:
                entry["name"] += call.function.name
            if call.function and call.function.arguments:
                entry["arguments"] += call.function.arguments
    assert "".join(content) == am.TOOL_PREAMBLE
    assert sorted(calls) == [0, 1]
    for index, expected in enumerate(am.TOOL_CALLS):
        assert calls[index] == {
            "id": expected.id,
            "name": expected.name,
            "arguments": expected.arguments,
        }
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_parallel_tool_calls_in_one_answer(client: openai.OpenAI) -> None:
    _, messages = prompt()
    completion = client.chat.completions.create(model="tool_use:calls=2", messages=messages)
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls or []
    assert [(c.id, c.function.name, json.loads(c.function.arguments)) for c in calls] == [  # type: ignore[union-attr]
        (t.id, t.name, json.loads(t.arguments)) for t in am.TOOL_CALLS
    ]


@pytest.mark.parametrize(
    ("model", "finish"),
    [
        ("normal:n=2,stop=end_turn", "stop"),
        ("normal:n=2,stop=max_tokens", "length"),
        ("normal:n=2,stop=stop_sequence", "stop"),
        ("tool_use", "tool_calls"),
    ],
)
def test_finish_reasons(client: openai.OpenAI, model: str, finish: str) -> None:
    _, messages = prompt()
    _, chunks = stream_text(client, model, messages)
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert reasons[-1] == finish and reasons.count(finish) == 1
    whole = client.chat.completions.create(model=model, messages=messages)
    assert whole.choices[0].finish_reason == finish


def test_usage_counts_cached_tokens_as_input(
    client: openai.OpenAI, gateway: RunningGateway, upstream: Upstream
) -> None:
    mark, messages = prompt("Four words here")  # and the mark: five words
    chunks = list(
        client.chat.completions.create(
            model=CACHED_MODEL,
            messages=messages,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    usage = chunks[-1].usage
    assert usage is not None and chunks[-1].choices == []
    words = am.input_tokens(sent(upstream, mark)["body"])
    assert words == 4
    assert usage.prompt_tokens == words + 7 + 3
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 7
    assert (usage.completion_tokens, usage.total_tokens) == (4, words + 10 + 4)
    row = last_record(gateway, CACHED_MODEL)
    assert row["outcome"] == "ok"
    assert (row["input_tokens"], row["output_tokens"]) == (words + 10, 4)
    assert row["usage_source"] == "reported"
    assert row["upstream"] == f"anthropic:{CACHED_MODEL}@{upstream.base.split('//')[1]}"
    expected = ((words + 10) * PRICE["input"] + 4 * PRICE["output"]) / 1_000_000
    assert row["cost_usd"] == pytest.approx(expected)


def test_usage_without_a_price_has_no_cost(client: openai.OpenAI, gateway: RunningGateway) -> None:
    _, messages = prompt()
    completion = client.chat.completions.create(model="normal:n=2", messages=messages)
    assert completion.usage is not None and completion.usage.prompt_tokens > 0
    row = last_record(gateway, "normal:n=2")
    assert row["input_tokens"] == completion.usage.prompt_tokens
    assert row["cost_usd"] is None  # unknown, never a silent zero


# -- failures ------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["overloaded", "drop", "truncated", "drop:rst=1"])
def test_a_mid_stream_failure_is_an_in_band_error_never_done(
    gateway: RunningGateway, client: openai.OpenAI, model: str
) -> None:
    _, messages = prompt()
    status, raw = raw_stream(gateway, {"model": model, "messages": messages, "stream": True})
    assert status == 200
    assert b"[DONE]" not in raw
    events = [json.loads(line[6:]) for line in raw.split(b"\n") if line.startswith(b"data: {")]
    text = "".join(
        e["choices"][0]["delta"].get("content") or "" for e in events if e.get("choices")
    )
    assert text == am.expected_text(model)
    error = events[-1]["error"]
    assert error["type"] == "upstream_error"
    if model == "overloaded":
        assert error["code"] == "overloaded_error" and "Overloaded" in error["message"]
    else:
        assert error["code"] == "upstream_protocol_error"
    with pytest.raises(openai.APIError):
        stream_text(client, model, messages)
    row = last_record(gateway, model, count=2)
    assert row["outcome"] == "error" and row["status"] == 200


@pytest.mark.parametrize(
    ("model", "status", "code"),
    [
        ("error_status:status=529", 503, "upstream_error"),
        ("error_status:status=500", 502, "upstream_error"),
        ("error_status:status=429", 429, "rate_limit_exceeded"),
        ("prompt_too_long", 400, "context_length_exceeded"),
        ("no-such-model", 404, "model_not_found"),
    ],
)
def test_a_failure_before_the_stream_is_an_http_status(
    client: openai.OpenAI, model: str, status: int, code: str
) -> None:
    _, messages = prompt()
    for stream in (True, False):
        with pytest.raises(openai.APIStatusError) as info:
            if stream:
                stream_text(client, model, messages)
            else:
                client.chat.completions.create(model=model, messages=messages)
        assert info.value.status_code == status
        assert isinstance(info.value.body, dict) and info.value.body["code"] == code
        if status == 429:
            assert info.value.response.headers["retry-after"] == "1"


# -- what the upstream received ------------------------------------------------------


def test_the_request_the_upstream_received(client: openai.OpenAI, upstream: Upstream) -> None:
    mark, _ = prompt()
    tools: list[Any] = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "The weather in a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    messages: list[Any] = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": f"Weather in Paris and Rome? {mark}"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                },
                {
                    "id": "call_2",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_2", "content": "rain"},
        {"role": "developer", "content": "Answer in French."},
        {"role": "user", "content": "And tomorrow?"},
    ]
    client.chat.completions.create(
        model="normal:n=1",
        messages=messages,
        tools=tools,
        tool_choice="required",
        parallel_tool_calls=False,
        stop=["END"],
        temperature=0.3,
        user="user-7",
    )
    request = sent(upstream, mark)
    headers, body = request["headers"], request["body"]
    assert headers["x-api-key"] == KEY
    assert headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in headers
    assert body["system"] == [
        {"type": "text", "text": "Be brief."},
        {"type": "text", "text": "Answer in French."},
    ]
    assert body["messages"] == [
        {
            "role": "user",
            "content": [{"type": "text", "text": f"Weather in Paris and Rome? {mark}"}],
        },
        {
            "role": "assistant",
            "content": [
                {
                    "type": "tool_use",
                    "id": "call_1",
                    "name": "get_weather",
                    "input": {"city": "Paris"},
                },
                {
                    "type": "tool_use",
                    "id": "call_2",
                    "name": "get_weather",
                    "input": {"city": "Rome"},
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "call_1",
                    "content": [{"type": "text", "text": "sunny"}],
                },
                {
                    "type": "tool_result",
                    "tool_use_id": "call_2",
                    "content": [{"type": "text", "text": "rain"}],
                },
                {"type": "text", "text": "And tomorrow?"},
            ],
        },
    ]
    assert body["tools"] == [
        {
            "name": "get_weather",
            "description": "The weather in a city",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
        }
    ]
    assert body["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    assert (body["stop_sequences"], body["temperature"]) == (["END"], 0.3)
    assert body["metadata"] == {"user_id": "user-7"}
    assert body["max_tokens"] == 4096
    assert body["model"] == "normal:n=1"


def test_max_tokens_from_the_request_or_the_deployment(
    client: openai.OpenAI, upstream: Upstream
) -> None:
    mark, messages = prompt()
    client.chat.completions.create(model="short", messages=messages)
    assert sent(upstream, mark)["body"]["max_tokens"] == 100
    assert sent(upstream, mark)["body"]["model"] == "normal:n=2"
    mark, messages = prompt()
    client.chat.completions.create(model="normal:n=1", messages=messages, max_tokens=77)
    assert sent(upstream, mark)["body"]["max_tokens"] == 77


def test_reasoning_effort_becomes_a_thinking_budget(
    client: openai.OpenAI, upstream: Upstream
) -> None:
    mark, messages = prompt()
    client.chat.completions.create(model="thinking", messages=messages, reasoning_effort="low")
    body = sent(upstream, mark)["body"]
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 1024}
    assert body["max_tokens"] == 1024 + 4096


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"logprobs": True}, "logprobs"),
        ({"n": 2}, "n"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
    ],
)
def test_what_anthropic_cannot_carry_is_a_400_naming_it(
    client: openai.OpenAI, upstream: Upstream, fields: dict[str, Any], param: str
) -> None:
    mark, messages = prompt()
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(
                model="normal", messages=messages, stream=stream, **fields
            )
        body = info.value.body
        assert isinstance(body, dict)
        assert (body["code"], body["param"]) == ("unsupported_parameter", param)
        assert param in body["message"] and "Anthropic" in body["message"]
    log = upstream.log()
    assert not [r for r in log["requests"] if mark in json.dumps(r["body"])]


def test_the_model_list_says_anthropic(client: openai.OpenAI) -> None:
    models = {m.id: m.owned_by for m in client.models.list()}
    assert models["short"] == "anthropic"


def test_the_gateway_log_never_shows_the_upstream_key(gateway: RunningGateway) -> None:
    assert KEY not in gateway.log()
