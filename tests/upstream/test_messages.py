"""The test upstream's ``POST /v1/messages`` is Anthropic's API as the official SDK reads it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import pytest

from tests.upstream import messages as am
from tests.upstream.fixture import Upstream, start_upstream
from tests.upstream.test_upstream import RawClient, Response

PROMPT: list[Any] = [{"role": "user", "content": "Say three words"}]


@pytest.fixture(scope="module")
def up() -> Iterator[Upstream]:
    with start_upstream() as server:
        yield server


@pytest.fixture(scope="module")
def client(up: Upstream) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=up.base, api_key="test", max_retries=0, timeout=5) as sdk:
        yield sdk


def raw(up: Upstream, body: dict[str, Any]) -> Response:
    c = RawClient(up.port)
    try:
        c.send(body, path="/v1/messages")
        return c.read_response()
    finally:
        c.close()


def streamed(client: anthropic.Anthropic, model: str, **extra: Any) -> Any:
    with client.messages.stream(model=model, max_tokens=64, messages=PROMPT, **extra) as s:
        return s.get_final_message()


def test_specs_parse_with_defaults_and_reject_nonsense() -> None:
    assert am.parse_spec("normal").get("stop") == "end_turn"
    for bad in ("normal:stop=later", "tool_use:calls=3", "error_status:status=200", "nope"):
        with pytest.raises(LookupError if bad == "nope" else ValueError):
            am.parse_spec(bad)


@pytest.mark.parametrize("model", ["normal", "normal:n=3", "multibyte"])
def test_sdk_streams_the_expected_text(client: anthropic.Anthropic, model: str) -> None:
    message = streamed(client, model)
    assert [b.type for b in message.content] == ["text"]
    assert message.content[0].text == am.expected_text(model)
    assert message.stop_reason == "end_turn"
    assert message.model == model and message.id == am.message_id(model)
    assert message.usage.input_tokens == 3  # "Say three words"


def test_sdk_reads_usage_with_cache_counts_and_the_stop_reason(client: anthropic.Anthropic) -> None:
    message = streamed(client, "normal:n=4,cache_read=7,cache_write=5,stop=stop_sequence")
    usage = message.usage
    assert (usage.input_tokens, usage.output_tokens) == (3, 4)
    assert (usage.cache_read_input_tokens, usage.cache_creation_input_tokens) == (7, 5)
    assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", am.STOP_SEQUENCE)


def test_thinking_and_redacted_thinking_come_first(client: anthropic.Anthropic) -> None:
    thinking = streamed(client, "thinking")
    first, text = thinking.content
    assert first.type == "thinking" and text.type == "text"
    assert (first.thinking, first.signature) == (am.expected_thinking("thinking"), am.SIGNATURE)
    redacted = streamed(client, "redacted")
    assert redacted.content[0].type == "redacted_thinking"
    assert redacted.content[0].data == am.REDACTED


def test_tool_use_inputs_arrive_in_pieces(up: Upstream, client: anthropic.Anthropic) -> None:
    message = streamed(client, "tool_use:calls=2")
    preamble, *calls = message.content
    assert preamble.type == "text" and preamble.text == am.TOOL_PREAMBLE
    assert [(c.id, c.name, c.input) for c in calls] == [
        (t.id, t.name, json.loads(t.arguments)) for t in am.TOOL_CALLS
    ]
    assert message.stop_reason == "tool_use"
    body = raw(up, {"model": "tool_use", "max_tokens": 5, "messages": PROMPT, "stream": True})
    pieces = body.body.count(b'"type":"input_json_delta"')
    assert pieces == len(am.TOOL_CALLS[0].pieces) > 1


def test_non_streaming_is_one_message(client: anthropic.Anthropic) -> None:
    message = client.messages.create(model="tool_use:calls=2", max_tokens=64, messages=PROMPT)
    assert [b.type for b in message.content] == ["text", "tool_use", "tool_use"]


def test_events_are_framed_as_anthropic_frames_them(up: Upstream) -> None:
    response = raw(up, {"model": "normal:n=2", "max_tokens": 5, "messages": PROMPT, "stream": True})
    assert response.status == 200 and response.complete
    assert b"\r" not in response.body and response.body.endswith(b"\n\n")
    names = []
    for event in response.body[:-2].split(b"\n\n"):
        head, data = event.split(b"\n")
        name = head.removeprefix(b"event: ").decode()
        assert json.loads(data.removeprefix(b"data: "))["type"] == name
        names.append(name)
    assert names == [
        "message_start",
        "ping",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]


def test_requests_are_logged_with_headers(up: Upstream, client: anthropic.Anthropic) -> None:
    streamed(client, "normal:n=1", system="Be brief.")
    (entry,) = [r for r in up.log()["requests"] if r["body"].get("model") == "normal:n=1"][-1:]
    assert entry["path"] == "/v1/messages"
    # The SDK's own choice of credentials header and API version; logged as sent.
    headers = entry["headers"]
    assert "test" in (headers.get("x-api-key"), headers.get("authorization", "")[7:])
    assert headers["anthropic-version"]
    assert entry["body"]["system"] == "Be brief."


def test_a_late_error_is_an_error_event(client: anthropic.Anthropic, up: Upstream) -> None:
    with pytest.raises(anthropic.APIStatusError, match="overloaded_error"):
        streamed(client, "overloaded")
    body = raw(up, {"model": "overloaded", "max_tokens": 5, "messages": PROMPT, "stream": True})
    assert body.complete and b"event: error\n" in body.body
    assert b"message_stop" not in body.body


def test_a_truncated_stream_ends_cleanly_without_message_stop(up: Upstream) -> None:
    body = raw(
        up, {"model": "truncated:after=2", "max_tokens": 5, "messages": PROMPT, "stream": True}
    )
    assert body.complete and body.body.count(b"text_delta") == 2
    assert b"message_stop" not in body.body and b"content_block_stop" not in body.body


def test_drop_cuts_the_connection(up: Upstream) -> None:
    body = raw(up, {"model": "drop", "max_tokens": 5, "messages": PROMPT, "stream": True})
    assert not body.complete and body.body.count(b"text_delta") == 3


@pytest.mark.parametrize(
    ("model", "error", "status"),
    [
        ("error_status:status=529", anthropic.InternalServerError, 529),
        ("error_status:status=500", anthropic.InternalServerError, 500),
        ("error_status:status=429", anthropic.RateLimitError, 429),
        ("prompt_too_long", anthropic.BadRequestError, 400),
        ("no-such-scenario", anthropic.NotFoundError, 404),
    ],
)
def test_sdk_sees_error_statuses(
    client: anthropic.Anthropic, model: str, error: type[anthropic.APIStatusError], status: int
) -> None:
    with pytest.raises(error) as info:
        streamed(client, model)
    assert info.value.status_code == status
    assert isinstance(info.value.body, dict) and info.value.body["type"] == "error"
    if status == 429:
        assert info.value.response.headers["retry-after"] == "1"
    if model == "prompt_too_long":
        assert "prompt is too long" in info.value.message
