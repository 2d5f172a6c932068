"""The Anthropic Messages dialect on its own: request bodies → canonical requests, and
canonical event streams → bytes that the ``anthropic`` SDK reads back (served by a real
HTTP server on loopback, read by the SDK's own stream accumulation)."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import anthropic
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sluice.dialects.anthropic_messages import AnthropicMessagesDialect, StreamEncoder
from sluice.dialects.anthropic_request import AS_SENT, SERVER_TOOLS
from sluice.errors import (
    AuthenticationError,
    BodyTooLarge,
    MethodNotAllowed,
    NotFound,
    PermissionDenied,
    RateLimited,
    RequestError,
    SluiceError,
    UpstreamConnectError,
    UpstreamError,
    UpstreamTimeout,
)
from sluice.events import (
    Annotations,
    Batch,
    ChatRequest,
    Finish,
    FinishReason,
    ImagePart,
    Message,
    OpaquePart,
    PartEnd,
    ReasoningDelta,
    ReasoningPart,
    RedactedReasoning,
    RedactedReasoningPart,
    RefusalDelta,
    ResponseFormat,
    Start,
    StreamError,
    StreamEvent,
    TextDelta,
    TextPart,
    Tool,
    ToolCallDelta,
    ToolCallPart,
    ToolChoice,
    ToolResultPart,
    Usage,
    Verbatim,
)

DIALECT = AnthropicMessagesDialect()
REQUEST = ChatRequest(model="m", messages=[Message("user", [TextPart("Hello there")])])


def decode(body: dict[str, Any], headers: dict[str, str] | None = None) -> ChatRequest:
    full = {"model": "m", "max_tokens": 2000, **body}
    return DIALECT.decode(orjson.dumps(full), {}, headers or {}, "default")


# -- requests -----------------------------------------------------------------------


def test_a_full_request_in_canonical_form() -> None:
    cache = {"type": "ephemeral"}
    request = decode(
        {
            "system": [{"type": "text", "text": "Be brief.", "cache_control": cache}],
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Look", "cache_control": cache},
                        {
                            "type": "image",
                            "source": {"type": "base64", "media_type": "image/png", "data": "iVB"},
                        },
                        {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}},
                        {"type": "document", "source": {"type": "text", "data": "doc"}},
                    ],
                },
                {
                    "role": "assistant",
                    "content": [
                        {"type": "thinking", "thinking": "Hmm.", "signature": "sig1"},
                        {"type": "redacted_thinking", "data": "enc"},
                        {"type": "tool_use", "id": "t1", "name": "f", "input": {"a": [1]}},
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": "t1",
                            "is_error": True,
                            "content": [{"type": "text", "text": "boom"}],
                        },
                        {"type": "text", "text": "Again?"},
                    ],
                },
            ],
            "tools": [
                {"name": "f", "description": "F", "input_schema": {"type": "object"}},
                {"type": "web_search_20250305", "name": "web_search", "max_uses": 1},
            ],
            "tool_choice": {"type": "tool", "name": "f", "disable_parallel_tool_use": True},
            "temperature": 0.2,
            "top_p": 0.9,
            "top_k": 5,
            "stop_sequences": ["END"],
            "stream": True,
            "metadata": {"user_id": "u1"},
            "thinking": {"type": "enabled", "budget_tokens": 1024},
            "service_tier": "auto",
        },
        {"anthropic-beta": "b1,b2", "anthropic-version": "2023-06-01"},
    )
    assert request.source == "anthropic_messages"
    assert request.model == "m" and request.max_tokens == 2000 and request.stream
    assert request.system == [TextPart("Be brief.", cache)]
    user, assistant, result, again = request.messages
    assert user == Message(
        "user",
        [
            TextPart("Look", cache),
            ImagePart("data:image/png;base64,iVB"),
            ImagePart("https://x/y.png"),
            OpaquePart(
                "anthropic_messages",
                {"type": "document", "source": {"type": "text", "data": "doc"}},
            ),
        ],
    )
    assert assistant == Message(
        "assistant",
        [
            ReasoningPart("Hmm.", "sig1"),
            RedactedReasoningPart("enc"),
            ToolCallPart("t1", "f", '{"a":[1]}'),
        ],
    )
    assert result == Message("tool", [ToolResultPart("t1", [TextPart("boom")], is_error=True)])
    assert again == Message("user", [TextPart("Again?")])
    assert request.tools == [Tool("f", "F", {"type": "object"})]
    assert request.tool_choice == ToolChoice("tool", "f")
    assert request.parallel_tool_calls is False
    assert (request.temperature, request.top_p, request.stop) == (0.2, 0.9, ["END"])
    assert request.reasoning is not None and request.reasoning.budget_tokens == 1024
    assert request.extra == {
        "top_k": 5,
        "metadata": {"user_id": "u1"},
        "service_tier": "auto",
        SERVER_TOOLS: [{"type": "web_search_20250305", "name": "web_search", "max_uses": 1}],
        AS_SENT: {"thinking": {"type": "enabled", "budget_tokens": 1024}},
    }
    assert request.headers == {"anthropic-beta": "b1,b2"}


def test_newer_request_fields() -> None:
    request = decode(
        {
            "messages": [{"role": "user", "content": "Hi"}],
            "thinking": {"type": "adaptive"},
            "output_config": {
                "effort": "high",
                "format": {"type": "json_schema", "schema": {"type": "object"}},
            },
            "cache_control": {"type": "ephemeral"},
        }
    )
    assert request.reasoning is not None
    assert (request.reasoning.effort, request.reasoning.budget_tokens) == ("high", None)
    assert request.response_format == ResponseFormat("json_schema", {"type": "object"})
    # Top-level cache_control marks the last block, as Anthropic applies it.
    assert request.messages[0].parts == [TextPart("Hi", {"type": "ephemeral"})]
    # As sent, for an Anthropic upstream: adaptive thinking and an effort read the same.
    assert request.extra == {
        AS_SENT: {
            "thinking": {"type": "adaptive"},
            "output_config": {
                "effort": "high",
                "format": {"type": "json_schema", "schema": {"type": "object"}},
            },
        }
    }
    # What the canonical form cannot say stays, for an Anthropic upstream.
    kept = decode(
        {
            "messages": [{"role": "user", "content": "Hi"}],
            "thinking": {"type": "adaptive", "display": "omitted"},
        }
    )
    assert kept.extra == {"thinking": {"type": "adaptive", "display": "omitted"}}


def test_count_tokens_bodies_have_no_max_tokens() -> None:
    body = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "Hi"}]})
    assert DIALECT.decode_count(body, {}).max_tokens is None
    with pytest.raises(RequestError, match=r"^max_tokens: Field required$"):
        DIALECT.decode(body, {}, {}, "default")


@pytest.mark.parametrize(
    ("exc", "status", "kind"),
    [
        (RequestError("bad"), 400, "invalid_request_error"),
        (AuthenticationError("who"), 401, "authentication_error"),
        (PermissionDenied("not yours"), 403, "permission_error"),
        (NotFound("where"), 404, "not_found_error"),
        (BodyTooLarge("big"), 413, "request_too_large"),
        (MethodNotAllowed("no"), 405, "invalid_request_error"),
        (RateLimited("slow", headers={"Retry-After": "3"}), 429, "rate_limit_error"),
        (UpstreamConnectError("down"), 529, "overloaded_error"),
        (UpstreamError("broke"), 502, "api_error"),
        (UpstreamTimeout("late"), 504, "timeout_error"),
        (SluiceError("ours"), 500, "api_error"),
    ],
)
def test_errors_in_anthropic_shape(exc: SluiceError, status: int, kind: str) -> None:
    got, headers, body = DIALECT.error_response(exc)
    assert got == status
    assert json.loads(body) == {"type": "error", "error": {"type": kind, "message": exc.message}}
    assert (b"content-type", b"application/json") in headers
    if isinstance(exc, RateLimited):
        assert (b"retry-after", b"3") in headers


# -- the SDK reads what the stream encoder writes ---------------------------------------


class _Replay(http.server.BaseHTTPRequestHandler):
    """Answers every POST with the server's ``writes``, one HTTP chunk each."""

    protocol_version = "HTTP/1.1"
    server: _ReplayServer

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", "0")))
        self.send_response(200)
        self.send_header("content-type", "text/event-stream; charset=utf-8")
        self.send_header("transfer-encoding", "chunked")
        self.send_header("connection", "close")
        self.end_headers()
        self.close_connection = True
        for data in self.server.writes:
            if data:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.write(b"0\r\n\r\n")

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _ReplayServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    writes: list[bytes] = []


@pytest.fixture(scope="module")
def replay() -> Iterator[_ReplayServer]:
    server = _ReplayServer(("127.0.0.1", 0), _Replay)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def sdk_read(server: _ReplayServer, writes: list[bytes]) -> anthropic.types.Message:
    server.writes = writes
    port = server.server_address[1]
    client = anthropic.Anthropic(
        base_url=f"http://127.0.0.1:{port}", api_key="x", max_retries=0, timeout=10
    )
    with (
        client,
        client.messages.stream(
            model="m", max_tokens=10, messages=[{"role": "user", "content": "x"}]
        ) as stream,
    ):
        for _ in stream:
            pass
        return stream.get_final_message()


@dataclass
class Part:
    kind: str  # text, refusal, thinking, redacted, tool
    pieces: list[str] = field(default_factory=list)
    signature: str | None = None
    call_id: str = ""
    name: str = ""
    arguments: Any = None
    end: bool = True


TEXT = st.text(min_size=1, max_size=6)
PARTS = st.one_of(
    st.builds(Part, st.just("text"), st.lists(TEXT, min_size=1, max_size=4)),
    st.builds(Part, st.just("refusal"), st.lists(TEXT, min_size=1, max_size=3)),
    st.builds(
        Part,
        st.just("thinking"),
        st.lists(TEXT, max_size=3),
        st.one_of(st.none(), st.text(alphabet="abcdef0123456789", min_size=1, max_size=12)),
    ),
    st.builds(
        Part,
        st.just("redacted"),
        st.lists(st.text(alphabet="xyz=", min_size=1), min_size=1, max_size=1),
    ),
    st.builds(
        Part,
        st.just("tool"),
        st.just([]),
        st.none(),
        st.text(alphabet="abc_123", min_size=1, max_size=8),
        st.sampled_from(["get_weather", "search", "run"]),
        st.dictionaries(st.text(max_size=4), st.one_of(st.integers(), TEXT, st.none()), max_size=3),
    ),
)


@st.composite
def streams(draw: st.DrawFn) -> tuple[list[Batch], list[Part], Finish | None, Usage | None, str]:
    parts = draw(st.lists(PARTS, max_size=5))
    for part in parts:
        part.end = draw(st.booleans())
    events: list[StreamEvent] = []
    for i, part in enumerate(parts):
        if part.kind == "text":
            events += [TextDelta(t, i) for t in part.pieces]
            if draw(st.booleans()):
                events.append(Annotations([{"type": "url_citation"}], i))
        elif part.kind == "refusal":
            events += [RefusalDelta(t, i) for t in part.pieces]
        elif part.kind == "thinking":
            events += [ReasoningDelta(t, i) for t in part.pieces]
            if part.signature is not None or not part.pieces:
                part.signature = part.signature or "sig"
                events.append(ReasoningDelta("", i, signature=part.signature))
        elif part.kind == "redacted":
            events.append(RedactedReasoning(part.pieces[0], i))
        else:
            text = json.dumps(part.arguments)
            cuts = sorted(draw(st.sets(st.integers(0, len(text)), max_size=4)))
            pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
            events.append(ToolCallDelta(i, part.call_id, part.name, pieces[0]))
            events += [ToolCallDelta(i, None, None, piece) for piece in pieces[1:]]
        if part.end:
            events.append(PartEnd(i))
    ending = draw(st.sampled_from(["finish", "finish", "in-band error", "raised error"]))
    finish: Finish | None = None
    usage: Usage | None = None
    if ending == "finish":
        reason: FinishReason = draw(
            st.sampled_from(["stop", "length", "tool_calls", "content_filter", "other"])
        )
        stop_sequence = draw(st.one_of(st.none(), st.just("END"))) if reason == "stop" else None
        finish = Finish(reason, None, stop_sequence=stop_sequence)
        events.append(finish)
        if draw(st.booleans()):
            cached, written = draw(st.integers(0, 50)), draw(st.integers(0, 50))
            usage = Usage(
                100 + cached + written, draw(st.integers(1, 99)), "reported", cached, written
            )
            events.append(usage)
    elif ending == "in-band error":
        events.append(StreamError("upstream fell over"))
    # Some events arrive wrapped, as an OpenAI upstream's verbatim chunks do.
    wrapped: list[StreamEvent] = []
    for event in events:
        if draw(st.integers(0, 4)) == 0:
            wrapped.append(Verbatim("openai_chat", b"data: {}\n\n", 1, None, [event]))
        else:
            wrapped.append(event)
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(wrapped))), max_size=6)))
    batches = [wrapped[a:b] for a, b in zip([0, *cuts], [*cuts, len(wrapped)], strict=True)]
    batches = [b for b in batches if b]
    start = Start("openai_chat", "chatcmpl-up", "upstream-model", 1)
    if batches:
        batches[0].insert(0, start)
    else:
        batches = [[start]]
    return batches, parts, finish, usage, ending


def expected_blocks(parts: list[Part]) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    for part in parts:
        if part.kind in ("text", "refusal"):
            blocks.append({"type": "text", "text": "".join(part.pieces)})
        elif part.kind == "thinking":
            blocks.append(
                {
                    "type": "thinking",
                    "thinking": "".join(part.pieces),
                    "signature": part.signature or "",
                }
            )
        elif part.kind == "redacted":
            blocks.append({"type": "redacted_thinking", "data": part.pieces[0]})
        else:
            blocks.append(
                {"type": "tool_use", "id": part.call_id, "name": part.name, "input": part.arguments}
            )
    return blocks


def expected_stop(parts: list[Part], finish: Finish) -> str:
    if any(p.kind == "tool" for p in parts):
        return "tool_use"
    if finish.reason == "length":
        return "max_tokens"
    if finish.reason == "content_filter" or any(p.kind == "refusal" for p in parts):
        return "refusal"
    if finish.reason == "tool_calls":
        return "tool_use"
    return "stop_sequence" if finish.stop_sequence else "end_turn"


@settings(max_examples=100, deadline=None)
@given(streams())
def test_the_sdk_reads_back_what_was_streamed(
    replay: _ReplayServer,
    case: tuple[list[Batch], list[Part], Finish | None, Usage | None, str],
) -> None:
    batches, parts, finish, usage, ending = case
    encoder = StreamEncoder(REQUEST, "msg_gateway1")
    writes = [encoder.encode(batch) for batch in batches]
    if ending == "raised error":
        writes.append(encoder.error(UpstreamError("the upstream connection broke")))
    else:
        writes.append(encoder.end())
    if ending != "finish":
        with pytest.raises(anthropic.APIStatusError) as caught:
            sdk_read(replay, writes)
        body: Any = caught.value.body
        assert body["type"] == "error" and body["error"]["type"] == "api_error"
        assert b"message_stop" not in b"".join(writes)
        return
    assert finish is not None
    message = sdk_read(replay, writes)
    assert message.id == "msg_gateway1"
    assert message.model == "upstream-model"
    got = [block.to_dict(exclude_none=True) for block in message.content]
    for block in got:
        block.pop("parsed_output", None)
        block.pop("citations", None)
    assert got == expected_blocks(parts)
    assert message.stop_reason == expected_stop(parts, finish)
    assert message.stop_sequence == (
        finish.stop_sequence if message.stop_reason == "stop_sequence" else None
    )
    if usage is not None:
        assert message.usage.input_tokens == 100
        assert message.usage.cache_read_input_tokens == usage.cached_tokens
        assert message.usage.cache_creation_input_tokens == usage.cache_write_tokens
        assert message.usage.output_tokens == usage.output_tokens
    else:
        assert message.usage.input_tokens == 3  # the estimate of "Hello there"
    # Block indices count from 0 with no gaps, each block closed before the next opens.
    raw = b"".join(writes).decode()
    opened: list[int] = []
    open_now: int | None = None
    for line in raw.split("\n"):
        if not line.startswith("data: "):
            continue
        event = json.loads(line[6:])
        if event["type"] == "content_block_start":
            assert open_now is None
            open_now = event["index"]
            opened.append(open_now)
        elif event["type"] == "content_block_stop":
            assert event["index"] == open_now
            open_now = None
        elif event["type"] == "content_block_delta":
            assert event["index"] == open_now
    assert opened == list(range(len(parts)))
    assert raw.count("event: message_start") == 1


def test_anthropic_verbatim_bytes_pass_through_unchanged(replay: _ReplayServer) -> None:
    """An Anthropic upstream's bytes (here: what one encoder wrote) go out as they came,
    with no second message_start and nothing added at the end."""
    events: list[Batch] = [
        [Start("openai_chat", "x", "claude-x"), TextDelta("Hi", 0), PartEnd(0)],
        [ToolCallDelta(1, "toolu_1", "f", '{"a":'), ToolCallDelta(1, None, None, "1}")],
        [Finish("tool_calls"), Usage(10, 5)],
    ]
    first = StreamEncoder(REQUEST, "msg_upstream")
    upstream = [first.encode(batch) for batch in events] + [first.end()]
    passthrough = StreamEncoder(REQUEST, "msg_gateway")
    start = Start("anthropic_messages", "msg_upstream", "claude-x", 0, Usage(10, 0))
    out = [passthrough.encode([start])]
    for data in upstream:
        out.append(passthrough.encode([Verbatim("anthropic_messages", data, 1, None, [])]))
    out.append(passthrough.end())
    assert b"".join(out) == b"".join(upstream)
    message = sdk_read(replay, out)
    assert message.id == "msg_upstream"
    assert message.stop_reason == "tool_use"
    assert message.content[1].type == "tool_use" and message.content[1].input == {"a": 1}


def test_the_json_message() -> None:
    request = ChatRequest(model="m", messages=REQUEST.messages, stream=False)
    encoder = DIALECT.encoder(request, "msg_gateway2")
    encoder.encode(
        [
            Start("openai_chat", "chatcmpl-1", "up"),
            ReasoningDelta("Let me ", 0),
            ReasoningDelta("think.", 0),
            ReasoningDelta("", 0, signature="sig"),
            PartEnd(0),
            TextDelta("Answer", 1),
            RefusalDelta(" no", 1),
            ToolCallDelta(2, "call_1", "f", '{"x": '),
            ToolCallDelta(2, None, None, "[1, 2]}"),
            Finish("tool_calls"),
            Usage(40, 7, cached_tokens=30),
        ]
    )
    body = json.loads(encoder.end())
    assert body == {
        "id": "msg_gateway2",
        "type": "message",
        "role": "assistant",
        "model": "up",
        "content": [
            {"type": "thinking", "thinking": "Let me think.", "signature": "sig"},
            {"type": "text", "text": "Answer no"},
            {"type": "tool_use", "id": "call_1", "name": "f", "input": {"x": [1, 2]}},
        ],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 10,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 30,
            "output_tokens": 7,
        },
    }
    failing = DIALECT.encoder(request, "msg_gateway3")
    with pytest.raises(UpstreamError, match="fell over"):
        failing.encode([Start("openai_chat", "c", "up"), TextDelta("a"), StreamError("fell over")])


def test_message_start_waits_for_an_anthropic_upstream() -> None:
    """After a Start of its own format the encoder writes nothing until it knows whether
    the upstream's message_start comes verbatim; events that are not verbatim get ours."""
    encoder = StreamEncoder(REQUEST, "msg_gateway")
    assert (
        encoder.encode([Start("anthropic_messages", "msg_up", "claude-x", 0, Usage(12, 1))]) == b""
    )
    data = encoder.encode([TextDelta("Hi")])
    assert data.startswith(b"event: message_start\n")
    start = json.loads(data.split(b"\n")[1][6:])
    assert start["message"]["id"] == "msg_up"
    assert start["message"]["usage"]["input_tokens"] == 12


def test_interleaved_tool_call_arguments_reach_their_own_blocks(replay: _ReplayServer) -> None:
    """Some upstreams start a second call before the first one's arguments are all
    sent; content blocks cannot interleave, so each call still gets all of its own."""
    encoder = StreamEncoder(REQUEST, "msg_gateway1")
    batches: list[Batch] = [
        [Start("openai", "chatcmpl-1", "upstream-model")],
        [TextDelta("Checking both.", 0), PartEnd(0)],
        [ToolCallDelta(1, "call_a", "weather", '{"city":')],
        [PartEnd(1), ToolCallDelta(2, "call_b", "time", '{"zone":')],
        [ToolCallDelta(1, None, None, '"Paris"}')],
        [ToolCallDelta(2, None, None, '"CET"}')],
        [ToolCallDelta(3, "call_c", "news", "{}")],
        [Finish("tool_calls", "tool_calls")],
    ]
    writes = [encoder.encode(batch) for batch in batches] + [encoder.end()]
    message = sdk_read(replay, writes)
    assert [block.to_dict(exclude_none=True) for block in message.content] == [
        {"type": "text", "text": "Checking both."},
        {"type": "tool_use", "id": "call_a", "name": "weather", "input": {"city": "Paris"}},
        {"type": "tool_use", "id": "call_b", "name": "time", "input": {"zone": "CET"}},
        {"type": "tool_use", "id": "call_c", "name": "news", "input": {}},
    ]
    assert message.stop_reason == "tool_use"
    # Arguments always arrive as input_json_delta events, never in the block's start.
    raw = b"".join(writes).decode()
    assert raw.count('"input":{}') == 3 and raw.count("input_json_delta") == 4
