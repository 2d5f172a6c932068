"""The Anthropic Messages API through the official ``anthropic`` SDK, against the real
gateway: over the simulator, and over the OpenAI-compatible test upstream."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import pytest

from tests.conftest import StartGateway, upstream_config
from tests.gateway import RunningGateway, run_gateway
from tests.upstream.scenarios import (
    MULTIBYTE_TEXT,
    TOOL_ARGUMENTS,
    TOOL_CALL_ID,
    TOOL_NAME,
    expected_reasoning,
    expected_text,
)

KEY_ENV = {"TEST_UPSTREAM_KEY": "sk-upstream-secret"}
MESSAGES: list[Any] = [{"role": "user", "content": "Tell me a story"}]
WEATHER_TOOL: dict[str, Any] = {
    "name": TOOL_NAME,
    "description": "The weather in a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
        "required": ["city"],
    },
}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, upstream: Any) -> Iterator[RunningGateway]:
    """``story`` is the simulator; every other name goes to the test upstream, where
    the name picks the scenario. One attempt per request and no circuit breaker:
    failures are the point, and one test's must not cool the upstream for the next."""
    config = upstream_config(
        upstream.url,
        routing={"retries": 0, "allowed_fails": 0},
        timeouts={"idle": 2},
        keepalive_interval=0.2,
    )
    config["models"]["story"] = {
        "provider": "simulator",
        "ttft": 0.01,
        "tokens_per_second": 0,
        "max_tokens": 40,
    }
    with run_gateway(tmp_path_factory.mktemp("anthropic"), config, KEY_ENV) as running:
        yield running


def sdk(gateway: RunningGateway, **options: Any) -> anthropic.Anthropic:
    options.setdefault("api_key", "unused")
    return anthropic.Anthropic(base_url=gateway.url, max_retries=0, timeout=20, **options)


def raw_stream(gateway: RunningGateway, body: dict[str, Any]) -> tuple[httpx.Response, bytes]:
    with (
        httpx.Client(timeout=20) as client,
        client.stream("POST", f"{gateway.url}/v1/messages", json=body) as response,
    ):
        return response, b"".join(response.iter_raw())


def sse(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    """``(event, data)`` of each event of an Anthropic stream (LF line ends only)."""
    out = []
    for block in raw.decode().split("\n\n"):
        if not block:
            continue
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        out.append((lines["event"], json.loads(lines["data"])))
    return out


# -- over the simulator -----------------------------------------------------------


def test_simulator_stream_and_final_message(gateway: RunningGateway) -> None:
    client = sdk(gateway)
    with client.messages.stream(model="story", max_tokens=200, messages=MESSAGES) as stream:
        pieces = list(stream.text_stream)
        message = stream.get_final_message()
    assert len(pieces) > 3
    assert message.id.startswith("msg_")
    assert message.model == "story"
    assert message.role == "assistant"
    [block] = message.content
    assert block.type == "text" and block.text == "".join(pieces)
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens > 0
    assert message.usage.output_tokens == len(pieces)


def test_simulator_create_without_streaming(gateway: RunningGateway) -> None:
    client = sdk(gateway)
    message = client.messages.create(model="story", max_tokens=5, messages=MESSAGES)
    assert message.type == "message" and message.id.startswith("msg_")
    assert message.content[0].type == "text" and message.content[0].text
    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == 5


def test_count_tokens(gateway: RunningGateway) -> None:
    client = sdk(gateway)
    counted = client.messages.count_tokens(
        model="story",
        system="Be brief.",  # 9 characters
        messages=[{"role": "user", "content": "x" * 31}],
    )
    assert counted.input_tokens == 10  # (9 + 31) / 4, rounded up: the gateway's estimate
    with pytest.raises(anthropic.BadRequestError, match="messages"):
        client.messages.count_tokens(model="story", messages=[])


def test_beta_route_and_header(gateway: RunningGateway, upstream: Any) -> None:
    upstream.reset()
    client = sdk(gateway)
    with client.beta.messages.stream(
        model="normal",
        max_tokens=100,
        messages=MESSAGES,
        betas=["interleaved-thinking-2025-05-14"],
    ) as stream:
        message = stream.get_final_message()
    assert message.content[0].type == "text"
    assert message.content[0].text == expected_text("normal")
    sent = upstream.log()["requests"][-1]
    assert "anthropic-beta" not in sent["headers"]  # Anthropic's, for Anthropic only
    assert "anthropic-version" not in sent["headers"]


# -- over the OpenAI-compatible test upstream ---------------------------------------


def test_text_stream_with_real_usage(gateway: RunningGateway, upstream: Any) -> None:
    upstream.reset()
    client = sdk(gateway)
    with client.messages.stream(
        model="normal",
        max_tokens=300,
        system=[
            {"type": "text", "text": "You tell stories.", "cache_control": {"type": "ephemeral"}}
        ],
        messages=MESSAGES,
        stop_sequences=["THE END"],
        # Older SDKs and Claude Code still send sampling parameters; this SDK has none.
        extra_body={"temperature": 0.5},
    ) as stream:
        events = list(stream)
        message = stream.get_final_message()
    assert message.content[0].type == "text"
    assert message.content[0].text == expected_text("normal")
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    start = events[0]
    assert start.type == "message_start"
    estimated = start.message.usage.input_tokens
    assert estimated == (len("You tell stories.") + len("Tell me a story") + 3) // 4
    # The upstream's count (words in the messages) replaces the estimate at the end.
    assert message.usage.input_tokens == 7
    assert message.usage.output_tokens == 10
    sent = upstream.log()["requests"][-1]["body"]
    assert sent["messages"] == [
        {"role": "system", "content": "You tell stories."},
        {"role": "user", "content": "Tell me a story"},
    ]
    assert sent["max_tokens"] == 300
    assert sent["temperature"] == 0.5
    assert sent["stop"] == ["THE END"]


def test_wire_format(gateway: RunningGateway) -> None:
    body = {"model": "normal:n=3", "max_tokens": 50, "messages": MESSAGES, "stream": True}
    response, raw = raw_stream(gateway, body)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["x-accel-buffering"] == "no"
    events = sse(raw)
    names = [name for name, _ in events if name != "ping"]
    assert names == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert all(data["type"] == name for name, data in events)
    message = events[names.index("message_start")][1]["message"]
    assert message["content"] == [] and message["stop_reason"] is None


def test_non_streaming_text(gateway: RunningGateway) -> None:
    message = sdk(gateway).messages.create(model="normal", max_tokens=100, messages=MESSAGES)
    assert message.id.startswith("msg_")
    assert message.model == "normal"
    assert [b.type for b in message.content] == ["text"]
    assert message.content[0].text == expected_text("normal")  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens == 4 and message.usage.output_tokens == 10


@pytest.mark.parametrize(
    ("finish", "reason"), [("length", "max_tokens"), ("content_filter", "refusal")]
)
def test_stop_reasons(gateway: RunningGateway, finish: str, reason: str) -> None:
    model = f"normal:n=2,finish={finish}"
    client = sdk(gateway)
    with client.messages.stream(model=model, max_tokens=10, messages=MESSAGES) as stream:
        assert stream.get_final_message().stop_reason == reason
    assert (
        client.messages.create(model=model, max_tokens=10, messages=MESSAGES).stop_reason == reason
    )


def test_tool_call_becomes_a_tool_use_block(gateway: RunningGateway, upstream: Any) -> None:
    upstream.reset()
    client = sdk(gateway)
    with client.messages.stream(
        model="tool_call",
        max_tokens=100,
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[WEATHER_TOOL],
        tool_choice={"type": "any", "disable_parallel_tool_use": True},
    ) as stream:
        message = stream.get_final_message()
    [block] = message.content
    assert block.type == "tool_use"
    assert block.id == TOOL_CALL_ID and block.name == TOOL_NAME
    assert block.input == json.loads(TOOL_ARGUMENTS)
    assert message.stop_reason == "tool_use"
    sent = upstream.log()["requests"][-1]["body"]
    assert sent["tools"] == [
        {
            "type": "function",
            "function": {
                "name": TOOL_NAME,
                "description": "The weather in a city",
                "parameters": WEATHER_TOOL["input_schema"],
            },
        }
    ]
    assert sent["tool_choice"] == "required"
    assert sent["parallel_tool_calls"] is False

    created = client.messages.create(
        model="tool_call", max_tokens=100, messages=MESSAGES, tools=[WEATHER_TOOL]
    )
    assert created.stop_reason == "tool_use"
    assert created.content[0].type == "tool_use"
    assert created.content[0].input == json.loads(TOOL_ARGUMENTS)


def test_tool_arguments_come_as_input_json_deltas(gateway: RunningGateway) -> None:
    body = {
        "model": "tool_call",
        "max_tokens": 50,
        "messages": MESSAGES,
        "tools": [WEATHER_TOOL],
        "stream": True,
    }
    _, raw = raw_stream(gateway, body)
    events = [data for name, data in sse(raw) if name != "ping"]
    start = next(e for e in events if e["type"] == "content_block_start")
    assert start["index"] == 0
    assert start["content_block"] == {
        "type": "tool_use",
        "id": TOOL_CALL_ID,
        "name": TOOL_NAME,
        "input": {},
    }
    deltas = [e["delta"] for e in events if e["type"] == "content_block_delta"]
    assert {d["type"] for d in deltas} == {"input_json_delta"}
    assert "".join(d["partial_json"] for d in deltas) == TOOL_ARGUMENTS
    assert events[-2]["delta"]["stop_reason"] == "tool_use"


def test_tool_results_go_upstream_as_tool_messages(gateway: RunningGateway, upstream: Any) -> None:
    upstream.reset()
    client = sdk(gateway)
    message = client.messages.create(
        model="normal",
        max_tokens=100,
        tools=[WEATHER_TOOL],
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "Let me look."},
                    {
                        "type": "tool_use",
                        "id": "toolu_1",
                        "name": TOOL_NAME,
                        "input": {"city": "Paris"},
                    },
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18 degrees"},
                    {"type": "text", "text": "And tomorrow?"},
                ],
            },
        ],
    )
    assert message.stop_reason == "end_turn"
    sent = upstream.log()["requests"][-1]["body"]["messages"]
    assert sent == [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": "Let me look.",
            "tool_calls": [
                {
                    "id": "toolu_1",
                    "type": "function",
                    "function": {"name": TOOL_NAME, "arguments": '{"city":"Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_1", "content": "18 degrees"},
        {"role": "user", "content": "And tomorrow?"},
    ]


def test_reasoning_becomes_a_thinking_block(gateway: RunningGateway) -> None:
    client = sdk(gateway)
    with client.messages.stream(
        model="reasoning",
        max_tokens=4096,
        thinking={"type": "enabled", "budget_tokens": 2048},
        messages=MESSAGES,
    ) as stream:
        events = list(stream)
        message = stream.get_final_message()
    thinking, text = message.content
    assert thinking.type == "thinking"
    assert thinking.thinking == expected_reasoning("reasoning")
    assert text.type == "text" and text.text == expected_text("reasoning")
    starts = [e for e in events if e.type == "content_block_start"]
    assert [e.index for e in starts] == [0, 1]  # one thinking block, not one per delta
    created = client.messages.create(model="reasoning", max_tokens=100, messages=MESSAGES)
    assert [b.type for b in created.content] == ["thinking", "text"]
    assert created.content[0].thinking == expected_reasoning("reasoning")  # type: ignore[union-attr]


def test_multibyte_text_split_across_reads(gateway: RunningGateway) -> None:
    with sdk(gateway).messages.stream(
        model="multibyte", max_tokens=100, messages=MESSAGES
    ) as stream:
        assert "".join(stream.text_stream) == MULTIBYTE_TEXT


def test_keepalive_is_a_ping_event(gateway: RunningGateway) -> None:
    body = {
        "model": "slow_first_body:delay=1,n=2",
        "max_tokens": 50,
        "messages": MESSAGES,
        "stream": True,
    }
    _, raw = raw_stream(gateway, body)
    assert raw.startswith(b'event: ping\ndata: {"type": "ping"}\n\n')
    names = [name for name, _ in sse(raw)]
    assert names[names.index("message_start") :].count("ping") == 0
    assert names[-1] == "message_stop"


@pytest.mark.parametrize(
    ("model", "kind"),
    [
        ("midstream_error:after=3", "api_error"),
        ("drop:after=3", "api_error"),
        ("bad_json:after=3", "api_error"),
        ("stall:after=3", "timeout_error"),  # the idle timeout
    ],
)
def test_every_failure_after_the_first_byte_raises(
    gateway: RunningGateway, model: str, kind: str
) -> None:
    client = sdk(gateway)
    texts: list[str] = []
    with (
        pytest.raises(anthropic.APIStatusError) as caught,
        client.messages.stream(model=model, max_tokens=100, messages=MESSAGES) as stream,
    ):
        texts.extend(stream.text_stream)
    body: Any = caught.value.body
    assert body["error"]["type"] == kind
    # What came before the failure (the OpenAI wire loses the chunks that arrived in
    # the same read as a malformed one, so bad_json may have none).
    assert expected_text(model).startswith("".join(texts))
    if not model.startswith("bad_json"):
        assert "".join(texts) == expected_text(model)
    request = {"model": model, "max_tokens": 100, "messages": MESSAGES, "stream": True}
    response, raw = raw_stream(gateway, request)
    if response.status_code == 200:
        name, data = sse(raw)[-1]
        assert name == "error" and data["type"] == "error"
        assert data["error"]["type"] == kind and data["error"]["message"]
        assert b"message_stop" not in raw  # never a clean end
    else:  # the whole upstream answer came in one read, failure included
        assert model.startswith("bad_json") and response.status_code == 502
        assert json.loads(raw)["error"]["type"] == kind


@pytest.mark.parametrize(
    ("status", "error_class", "client_status", "kind"),
    [
        (429, anthropic.RateLimitError, 429, "rate_limit_error"),
        (503, anthropic.OverloadedError, 529, "overloaded_error"),
        (500, anthropic.InternalServerError, 502, "api_error"),
        (404, anthropic.NotFoundError, 404, "not_found_error"),
        (400, anthropic.BadRequestError, 400, "invalid_request_error"),
    ],
)
def test_upstream_error_status_before_the_first_byte(
    gateway: RunningGateway,
    status: int,
    error_class: type[anthropic.APIStatusError],
    client_status: int,
    kind: str,
) -> None:
    client = sdk(gateway)
    with pytest.raises(error_class) as caught:
        client.messages.create(
            model=f"error_status:status={status}", max_tokens=10, messages=MESSAGES, stream=True
        )
    error = caught.value
    assert error.status_code == client_status
    body: Any = error.body
    assert body["type"] == "error" and body["error"]["type"] == kind
    assert body["error"]["message"]
    if status == 429:
        assert error.response.headers["retry-after"] == "1"


def test_missing_max_tokens_is_named(gateway: RunningGateway) -> None:
    with httpx.Client(timeout=20) as client:
        response = client.post(
            f"{gateway.url}/v1/messages", json={"model": "normal", "messages": MESSAGES}
        )
    assert response.status_code == 400
    assert response.json() == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "max_tokens: Field required"},
    }


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"max_tokens": "ten"}, "max_tokens"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"messages": [{"role": "system", "content": "x"}]}, "messages.0.role"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages.0.content"),
        (
            {"messages": [{"role": "user", "content": [{"type": "text"}]}]},
            "messages.0.content.0.text",
        ),
        ({"temperature": 1.5}, "temperature"),
        ({"top_k": -1}, "top_k"),
        ({"stream": "yes"}, "stream"),
        ({"system": [{"type": "image"}]}, "system.0.type"),
        ({"tools": [{"name": "f"}]}, "tools.0.input_schema"),
        ({"tool_choice": {"type": "sometimes"}}, "tool_choice.type"),
        ({"tool_choice": {"type": "tool", "name": "absent"}}, "tool_choice.name"),
        ({"thinking": {"type": "enabled", "budget_tokens": 10}}, "thinking.budget_tokens"),
        ({"stop_sequences": "END"}, "stop_sequences"),
        ({"metadata": {"user_id": 7}}, "metadata.user_id"),
    ],
)
def test_bad_fields_are_named(gateway: RunningGateway, body: dict[str, Any], named: str) -> None:
    full = {"model": "normal", "max_tokens": 10, "messages": MESSAGES, **body}
    with httpx.Client(timeout=20) as client:
        response = client.post(f"{gateway.url}/v1/messages", json=full)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["message"].startswith(f"{named}: ")


def test_what_an_openai_upstream_cannot_do_is_refused_by_name(gateway: RunningGateway) -> None:
    client = sdk(gateway)
    with pytest.raises(anthropic.BadRequestError, match="web_search_20250305"):
        client.messages.create(
            model="normal",
            max_tokens=10,
            messages=MESSAGES,
            tools=[{"type": "web_search_20250305", "name": "web_search", "max_uses": 2}],
        )
    # Choices are not a thing in this API: a client cannot ask for a second one, and
    # other OpenAI fields are refused by name by an OpenAI upstream, never dropped.
    for model in ("normal", "story"):
        with pytest.raises(anthropic.BadRequestError, match="n: Extra inputs are not permitted"):
            client.messages.create(
                model=model, max_tokens=10, messages=MESSAGES, extra_body={"n": 2}
            )
    with pytest.raises(anthropic.BadRequestError, match="'logprobs'"):
        client.messages.create(
            model="normal", max_tokens=10, messages=MESSAGES, extra_body={"logprobs": True}
        )
    with pytest.raises(anthropic.BadRequestError, match="document"):
        client.messages.create(
            model="normal",
            max_tokens=10,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "document",
                            "source": {"type": "text", "media_type": "text/plain", "data": "x"},
                        }
                    ],
                }
            ],
        )


def test_unknown_paths_and_methods_answer_in_anthropic_shape(gateway: RunningGateway) -> None:
    with httpx.Client(timeout=20) as client:
        missing = client.post(f"{gateway.url}/v1/messages/batches", json={})
        wrong = client.get(f"{gateway.url}/v1/messages")
    assert missing.status_code == 404
    assert missing.json()["error"]["type"] == "not_found_error"
    assert wrong.status_code == 405
    assert wrong.json()["type"] == "error"


# -- keys ---------------------------------------------------------------------------


def test_keys_from_x_api_key_and_bearer(start_gateway: StartGateway, upstream: Any) -> None:
    gateway = start_gateway(
        upstream_config(upstream.url), env={**KEY_ENV, "SLUICE_MASTER_KEY": "sk-master-test"}
    )
    with pytest.raises(anthropic.AuthenticationError) as caught:
        sdk(gateway, api_key="sk-wrong").messages.create(
            model="normal", max_tokens=10, messages=MESSAGES
        )
    assert caught.value.status_code == 401
    assert caught.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    with pytest.raises(anthropic.AuthenticationError):
        sdk(gateway, api_key="sk-wrong").messages.count_tokens(model="normal", messages=MESSAGES)
    with httpx.Client(timeout=20) as client:
        missing = client.post(
            f"{gateway.url}/v1/messages",
            json={"model": "normal", "max_tokens": 10, "messages": MESSAGES},
        )
    assert missing.status_code == 401
    assert missing.json()["error"]["type"] == "authentication_error"
    assert "x-api-key" in missing.json()["error"]["message"]
    by_header = sdk(gateway, api_key="sk-master-test")
    assert by_header.messages.create(model="normal", max_tokens=10, messages=MESSAGES).content
    by_bearer = anthropic.Anthropic(
        base_url=gateway.url, auth_token="sk-master-test", max_retries=0, timeout=20
    )
    assert by_bearer.messages.create(model="normal", max_tokens=10, messages=MESSAGES).content
    rows = gateway.wait_records(5)
    assert [r["status"] for r in rows] == [401, 401, 401, 200, 200]
    assert [r["api"] for r in rows[-2:]] == ["anthropic_messages"] * 2
