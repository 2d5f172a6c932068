"""The Anthropic Messages wire without I/O: request bodies, stream decoding, errors."""

from __future__ import annotations

import itertools
import json
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sluice.errors import (
    ContextWindowExceeded,
    ModelNotFound,
    RequestError,
    Unsupported,
    UpstreamProtocolError,
    UpstreamStatusError,
)
from sluice.events import (
    Batch,
    ChatRequest,
    Finish,
    ImagePart,
    Message,
    OpaquePart,
    PartEnd,
    Reasoning,
    ReasoningDelta,
    ReasoningPart,
    RedactedReasoning,
    RedactedReasoningPart,
    ResponseFormat,
    Start,
    TextDelta,
    TextPart,
    Tool,
    ToolCallDelta,
    ToolCallPart,
    ToolChoice,
    ToolResultPart,
    Usage,
    Verbatim,
    expand,
)
from sluice.providers.anthropic import (
    AnthropicWire,
    MessagesDecoder,
    plain_events,
    plain_payloads,
)
from tests.upstream import messages as am

WIRE = AnthropicWire()
CACHE = {"type": "ephemeral"}


def body(request: ChatRequest, wire: AnthropicWire = WIRE) -> dict[str, Any]:
    result: dict[str, Any] = orjson.loads(wire.body(request, "claude-x"))
    return result


def user(text: str) -> Message:
    return Message("user", [TextPart(text)])


def request(*messages: Message, **fields: Any) -> ChatRequest:
    return ChatRequest("claude", list(messages or [user("hi")]), **fields)


# -- the request -------------------------------------------------------------------


def test_a_plain_request() -> None:
    sent = body(request(user("hello")))
    assert sent == {
        "model": "claude-x",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hello"}]}],
        "max_tokens": 4096,
        "stream": True,
    }


def test_system_and_developer_messages_are_hoisted_in_order_with_cache_control() -> None:
    sent = body(
        request(
            Message("system", [TextPart("one", CACHE)]),
            user("q"),
            Message("developer", [TextPart("two")]),
            system=[TextPart("zero")],
        )
    )
    assert sent["system"] == [
        {"type": "text", "text": "zero"},
        {"type": "text", "text": "one", "cache_control": CACHE},
        {"type": "text", "text": "two"},
    ]
    assert [m["role"] for m in sent["messages"]] == ["user"]


def test_a_system_message_with_an_image_is_refused_naming_it() -> None:
    message = Message("system", [ImagePart("https://x.test/a.png")])
    with pytest.raises(Unsupported) as info:
        body(request(message, user("q")))
    assert info.value.param == "messages[0]"


def test_tool_calls_and_results_become_tool_use_and_tool_result_blocks() -> None:
    sent = body(
        request(
            user("weather?"),
            Message(
                "assistant",
                [
                    TextPart(""),
                    ToolCallPart("call_1", "get_weather", '{"city": "Paris"}'),
                    ToolCallPart("call_2", "get_time", ""),
                ],
            ),
            Message("tool", [ToolResultPart("call_1", [TextPart("sunny", CACHE)])]),
            Message("tool", [ToolResultPart("call_2", [], is_error=True, cache_control=CACHE)]),
            user("thanks"),
        )
    )
    assert sent["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "weather?"}]},
        {
            "role": "assistant",
            "content": [
                {
                    "type": "tool_use",
                    "id": "call_1",
                    "name": "get_weather",
                    "input": {"city": "Paris"},
                },
                {"type": "tool_use", "id": "call_2", "name": "get_time", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "call_1",
                    "content": [{"type": "text", "text": "sunny", "cache_control": CACHE}],
                },
                {
                    "type": "tool_result",
                    "tool_use_id": "call_2",
                    "is_error": True,
                    "cache_control": CACHE,
                },
                {"type": "text", "text": "thanks"},
            ],
        },
    ]


@pytest.mark.parametrize("arguments", ['{"city": ', "[1, 2]"])
def test_tool_call_arguments_that_are_not_a_json_object_are_a_400(arguments: str) -> None:
    call = Message("assistant", [ToolCallPart("call_1", "f", arguments)])
    with pytest.raises(RequestError) as info:
        body(request(user("q"), call))
    assert info.value.status == 400 and info.value.param == "messages[1]"
    assert "call_1" in info.value.message


def test_images_from_data_and_http_urls() -> None:
    sent = body(
        request(
            Message(
                "user",
                [
                    ImagePart("data:image/png;base64,iVBORw0KGgo=", "low", CACHE),
                    ImagePart("https://example.test/cat.jpg"),
                ],
            )
        )
    )
    assert sent["messages"][0]["content"] == [
        {
            "type": "image",
            "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
            "cache_control": CACHE,
        },
        {"type": "image", "source": {"type": "url", "url": "https://example.test/cat.jpg"}},
    ]
    for url in ("ftp://x.test/a.png", "data:image/png,raw"):
        with pytest.raises(RequestError) as info:
            body(request(Message("user", [ImagePart(url)])))
        assert info.value.param == "messages[0]"


def test_signed_and_redacted_reasoning_go_back_unsigned_reasoning_does_not() -> None:
    sent = body(
        request(
            user("q"),
            Message(
                "assistant",
                [
                    ReasoningPart("thought", "sig"),
                    RedactedReasoningPart("opaque"),
                    ReasoningPart("unsigned"),
                    TextPart("answer"),
                ],
            ),
            user("more"),
        )
    )
    assert sent["messages"][1]["content"] == [
        {"type": "thinking", "thinking": "thought", "signature": "sig"},
        {"type": "redacted_thinking", "data": "opaque"},
        {"type": "text", "text": "answer"},
    ]


def test_opaque_parts_go_only_to_their_own_format() -> None:
    document = {"type": "document", "source": {"type": "text", "data": "x"}}
    sent = body(request(Message("user", [OpaquePart("anthropic_messages", document)])))
    assert sent["messages"][0]["content"] == [document]
    audio = OpaquePart("openai_chat", {"type": "input_audio", "input_audio": {}})
    with pytest.raises(Unsupported) as info:
        body(request(user("a"), Message("user", [audio])))
    assert info.value.param == "messages[1]"
    assert "input_audio" in info.value.message and "Anthropic" in info.value.message


def test_tools_and_tool_choice() -> None:
    tools = [
        Tool("f", "does f", {"type": "object", "properties": {"a": {}}}, True, CACHE),
        Tool("g"),
    ]
    sent = body(request(tools=tools, tool_choice=ToolChoice("required")))
    assert sent["tools"] == [
        {
            "name": "f",
            "description": "does f",
            "input_schema": {"type": "object", "properties": {"a": {}}},
            "cache_control": CACHE,
        },
        {"name": "g", "input_schema": {"type": "object", "properties": {}}},
    ]
    assert sent["tool_choice"] == {"type": "any"}
    for choice, expected in [
        (ToolChoice("auto"), {"type": "auto", "disable_parallel_tool_use": True}),
        (ToolChoice("tool", "g"), {"type": "tool", "name": "g", "disable_parallel_tool_use": True}),
        (ToolChoice("none"), {"type": "none"}),
        (None, {"type": "auto", "disable_parallel_tool_use": True}),
    ]:
        sent = body(request(tools=tools, tool_choice=choice, parallel_tool_calls=False))
        assert sent["tool_choice"] == expected
    assert "tool_choice" not in body(request(tools=tools, parallel_tool_calls=True))


def test_sampling_stop_and_user() -> None:
    sent = body(request(temperature=0.5, top_p=0.9, stop=["END"], user="u-1", max_tokens=99))
    assert (sent["temperature"], sent["top_p"], sent["max_tokens"]) == (0.5, 0.9, 99)
    assert sent["stop_sequences"] == ["END"]
    assert sent["metadata"] == {"user_id": "u-1"}


def test_max_tokens_defaults_to_the_deployment_setting() -> None:
    assert body(request(), AnthropicWire(1000))["max_tokens"] == 1000
    assert body(request(max_tokens=10), AnthropicWire(1000))["max_tokens"] == 10


@pytest.mark.parametrize(
    ("reasoning", "max_tokens", "thinking", "limit"),
    [
        (Reasoning(effort="low"), None, 1024, 1024 + 4096),
        (Reasoning(effort="medium"), None, 4096, 4096 + 4096),
        (Reasoning(effort="high"), None, 16384, 16384 + 4096),
        (Reasoning(effort="high"), 32000, 16384, 32000),
        (Reasoning(effort="high"), 8000, 7999, 8000),  # the client's cap holds
        (Reasoning(budget_tokens=2000), None, 2000, 4096),
        (Reasoning(budget_tokens=5000), None, 5000, 5000 + 4096),
        (Reasoning(effort="none"), None, None, 4096),
    ],
)
def test_reasoning_becomes_a_thinking_budget_below_max_tokens(
    reasoning: Reasoning, max_tokens: int | None, thinking: int | None, limit: int
) -> None:
    sent = body(request(reasoning=reasoning, max_tokens=max_tokens))
    assert sent["max_tokens"] == limit
    if thinking is None:
        assert "thinking" not in sent
    else:
        assert sent["thinking"] == {"type": "enabled", "budget_tokens": thinking}
        assert sent["max_tokens"] > thinking


def test_reasoning_that_cannot_fit_or_is_unknown_is_refused() -> None:
    with pytest.raises(Unsupported) as info:
        body(request(reasoning=Reasoning(effort="high"), max_tokens=500))
    assert info.value.param == "max_tokens"
    with pytest.raises(Unsupported) as info:
        body(request(reasoning=Reasoning(effort="extreme")))
    assert info.value.param == "reasoning_effort"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"extra": {"logprobs": True}}, "logprobs"),
        ({"extra": {"top_logprobs": 3}}, "top_logprobs"),
        ({"extra": {"logit_bias": {"1": 2}}}, "logit_bias"),
        ({"extra": {"frequency_penalty": 0.5}}, "frequency_penalty"),
        ({"extra": {"presence_penalty": 1}}, "presence_penalty"),
        ({"extra": {"audio": {"voice": "x"}}}, "audio"),
        ({"extra": {"modalities": ["text", "audio"]}}, "modalities"),
        ({"extra": {"prediction": {"type": "content"}}}, "prediction"),
        ({"n": 2}, "n"),
        ({"seed": 7}, "seed"),
        ({"temperature": 1.5}, "temperature"),
        ({"response_format": ResponseFormat("json_object")}, "response_format"),
        ({"response_format": ResponseFormat("json_schema", {}, "x")}, "response_format"),
    ],
)
def test_what_another_format_asked_for_is_refused_naming_it(
    fields: dict[str, Any], param: str
) -> None:
    with pytest.raises(Unsupported) as info:
        body(request(**fields))
    assert info.value.param == param and info.value.status == 400
    assert info.value.code == "unsupported_parameter"
    assert f"'{param}'" in info.value.message or param in info.value.message
    assert "Anthropic" in info.value.message


def test_what_does_not_change_the_answer_is_dropped() -> None:
    extra = {
        "metadata": {"a": "b"},
        "store": True,
        "service_tier": "auto",
        "max_completion_tokens": 50,
        "logprobs": False,
        "frequency_penalty": 0,
        "modalities": ["text"],
        "top_logprobs": None,
    }
    sent = body(request(extra=extra, max_tokens=50, response_format=ResponseFormat("text")))
    assert set(sent) == {"model", "messages", "max_tokens", "stream"}


def test_an_anthropic_clients_extra_fields_and_beta_header_are_forwarded() -> None:
    native = request(
        source="anthropic_messages",
        extra={"top_k": 5, "thinking": {"type": "disabled"}},
        headers={"Anthropic-Beta": "prompt-caching-2024-07-31"},
    )
    sent = body(native)
    assert (sent["top_k"], sent["thinking"]) == (5, {"type": "disabled"})
    assert WIRE.request_headers(native) == {"anthropic-beta": "prompt-caching-2024-07-31"}
    foreign = request(headers={"anthropic-beta": "x"}, extra={"top_k": 5})
    assert WIRE.request_headers(foreign) == {}
    with pytest.raises(Unsupported, match="top_k"):
        body(foreign)


def test_a_beta_header_with_a_line_break_is_refused() -> None:
    native = request(source="anthropic_messages", headers={"anthropic-beta": "a\r\nx-evil: 1"})
    with pytest.raises(RequestError):
        WIRE.request_headers(native)


def test_auth_headers() -> None:
    assert WIRE.auth_headers("sk-ant", "https://api.anthropic.com") == {"x-api-key": "sk-ant"}
    # The version goes with every request, also through a keyless proxy.
    assert dict(WIRE.fixed_headers) == {"anthropic-version": "2023-06-01"}


# -- the stream ----------------------------------------------------------------------


def stream(model: str, prompt: int = 5) -> bytes:
    spec = am.parse_spec(model)
    return b"".join(am.stream_events(spec, model, prompt))


def decode(
    data: bytes | list[bytes], verbatim: bool = False
) -> tuple[list[Batch], MessagesDecoder]:
    decoder = MessagesDecoder(verbatim)
    reads = [data] if isinstance(data, bytes) else data
    batches = []
    for read in reads:
        batch = decoder.feed(read)
        if batch:
            batches.append(batch)
        if decoder.done:
            break
    return batches, decoder


def events_of(data: bytes | list[bytes], verbatim: bool = False) -> Batch:
    batches, _ = decode(data, verbatim)
    return [e for batch in batches for e in expand(batch)]


def test_text_with_usage_and_cache_counts_added_back() -> None:
    model = "normal:n=2,cache_read=7,cache_write=3"
    events = events_of(stream(model, prompt=5))
    start = events[0]
    assert isinstance(start, Start)
    assert (start.format, start.id, start.model) == (
        "anthropic_messages",
        am.message_id(model),
        model,
    )
    assert start.usage == Usage(5 + 7 + 3, 1, "reported", 7, 3)
    assert events[1:] == [
        TextDelta("word0", 0),
        TextDelta(" word1", 0),
        PartEnd(0),
        Finish("stop", "end_turn", 0, None),
        Usage(15, 2, "reported", 7, 3),
    ]


@pytest.mark.parametrize(
    ("stop", "reason", "sequence"),
    [
        ("end_turn", "stop", None),
        ("max_tokens", "length", None),
        ("stop_sequence", "stop", am.STOP_SEQUENCE),
        ("tool_use", "tool_calls", None),
        ("refusal", "content_filter", None),
    ],
)
def test_stop_reasons(stop: str, reason: str, sequence: str | None) -> None:
    (finish,) = [e for e in events_of(stream(f"normal:n=1,stop={stop}")) if isinstance(e, Finish)]
    assert finish == Finish(reason, stop, 0, sequence)  # type: ignore[arg-type]


def test_thinking_with_its_signature_then_text() -> None:
    events = events_of(stream("thinking:steps=2,n=1"))[1:]
    assert events[:6] == [
        ReasoningDelta("think0", 0),
        ReasoningDelta(" think1", 0),
        ReasoningDelta("", 0, 0, am.SIGNATURE),
        PartEnd(0),
        TextDelta("word0", 1),
        PartEnd(1),
    ]


def test_redacted_thinking_is_one_event() -> None:
    events = events_of(stream("redacted:n=1"))[1:]
    assert events[:3] == [RedactedReasoning(am.REDACTED, 0), PartEnd(0), TextDelta("word0", 1)]


def test_parallel_tool_calls_with_their_arguments_in_pieces() -> None:
    events = events_of(stream("tool_use:calls=2"))
    calls = [e for e in events if isinstance(e, ToolCallDelta)]
    first, second = am.TOOL_CALLS
    assert calls[0] == ToolCallDelta(1, first.id, first.name, "")
    assert [c.arguments for c in calls if c.index == 1] == ["", *first.pieces]
    assert calls[len(first.pieces) + 1] == ToolCallDelta(2, second.id, second.name, "")
    assert [c.arguments for c in calls if c.index == 2] == ["", *second.pieces]
    assert all(c.id is None and c.name is None for c in calls if c.arguments)
    assert Finish("tool_calls", "tool_use") in events


def test_a_servers_tool_input_is_not_a_tool_call() -> None:
    data = (
        stream("normal:n=1")
        .replace(
            b'"content_block":{"type":"text","text":""}',
            b'"content_block":{"type":"server_tool_use","id":"srvtoolu_1","name":"web_search","input":{}}',
        )
        .replace(
            b'"delta":{"type":"text_delta","text":"word0"}',
            b'"delta":{"type":"input_json_delta","partial_json":"{}"}',
        )
    )
    events = events_of(data)
    assert not [e for e in events if isinstance(e, ToolCallDelta | TextDelta)]


def test_an_error_event_is_the_decoders_error() -> None:
    data = stream("normal:n=1").split(b"event: content_block_stop")[0]
    data += am.error_event("overloaded_error", "Overloaded")
    batches, decoder = decode(data)
    assert decoder.done
    error = decoder.error
    assert isinstance(error, UpstreamStatusError)
    assert (error.status, error.upstream_status, error.code) == (503, 529, "overloaded_error")
    assert "Overloaded" in error.message
    assert [type(e) for e in batches[0]] == [Start, TextDelta]


@pytest.mark.parametrize("typed", [1, 0])
def test_an_error_with_no_event_name_is_the_decoders_error_too(typed: int) -> None:
    """``data: {"type": "error", ...}`` with no ``event:`` line, or ``data: {"error":
    ...}`` alone as some proxies write it: an error, never an event passed on unread."""
    data = stream("normal:n=1").split(b"event: content_block_stop")[0]
    data += am.bare_error(am.parse_spec(f"bare_error:typed={typed}"))
    batches, decoder = decode(data)
    assert decoder.done and isinstance(decoder.error, UpstreamStatusError)
    assert ("Overloaded" if typed else "Upstream proxy failure.") in decoder.error.message
    assert [type(e) for e in batches[0]] == [Start, TextDelta]


def test_an_error_before_message_start_fails_before_any_event() -> None:
    batches, decoder = decode(am.error_event("rate_limit_error", "slow down"))
    assert batches == [] and decoder.done
    assert decoder.error is not None and decoder.error.status == 429


def test_the_end_of_the_body_before_message_stop_is_an_error() -> None:
    data = stream("normal:n=3").split(b"event: message_stop")[0]
    _, decoder = decode(data)
    assert not decoder.done
    with pytest.raises(UpstreamProtocolError, match="message_stop"):
        decoder.eof()


def test_a_stream_that_does_not_start_with_message_start_is_refused() -> None:
    with pytest.raises(UpstreamProtocolError, match="message_start"):
        decode(b'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n')
    # An event that is not JSON ends the stream with an error after what came before it.
    batches, decoder = decode(b"event: message_start\ndata: {not json\n\n")
    assert batches == [] and decoder.done
    assert isinstance(decoder.error, UpstreamProtocolError)


def test_an_event_that_is_not_json_ends_the_stream_after_the_events_before_it() -> None:
    good = stream("normal:n=3").split(b"event: content_block_stop")[0]
    batches, decoder = decode(good + b'event: content_block_delta\ndata: {"ty\xff\n\n')
    assert decoder.done and isinstance(decoder.error, UpstreamProtocolError)
    assert "not a Messages stream event" in decoder.error.message
    texts = [e.text for batch in batches for e in batch if isinstance(e, TextDelta)]
    assert "".join(texts) == am.expected_text("normal:n=3")


def test_crlf_and_comments_decode_the_same() -> None:
    data = stream("thinking")
    odd = b": hello\r\n" + data.replace(b"\n", b"\r\n")
    assert events_of(odd) == events_of(data)
    assert events_of(odd, verbatim=True) == events_of(data)


def test_usage_from_message_delta_wins_and_thinking_tokens_are_read() -> None:
    data = stream("normal:n=1").replace(
        b'"usage":{"output_tokens":1}',
        b'"usage":{"input_tokens":9,"cache_read_input_tokens":2,"output_tokens":4,'
        b'"output_tokens_details":{"thinking_tokens":3}}',
    )
    (usage,) = [e for e in events_of(data) if isinstance(e, Usage)]
    assert usage == Usage(9 + 2, 4, "reported", 2, 0, 3)


# -- verbatim ------------------------------------------------------------------------


def verbatims(batches: list[Batch]) -> list[Verbatim]:
    return [e for batch in batches for e in batch if isinstance(e, Verbatim)]


def test_verbatim_passes_every_upstream_byte_along_up_to_message_stop() -> None:
    first = stream("tool_use:calls=2")
    batches, decoder = decode(first + stream("thinking"), verbatim=True)
    assert decoder.done
    assert isinstance(batches[0][0], Start)
    assert b"".join(v.data for v in verbatims(batches)) == first


def test_a_read_of_text_deltas_is_one_unread_verbatim() -> None:
    data = stream("normal:n=50")
    head, _, rest = data.partition(b"event: content_block_delta")
    rest = b"event: content_block_delta" + rest
    deltas, _, tail = rest.partition(b"event: content_block_stop")
    batches, _ = decode([head, deltas + b"event: content_block_stop" + tail], verbatim=True)
    run = batches[1][0]
    assert isinstance(run, Verbatim)
    assert run.events is None and run.decode is plain_events and run.count == 50
    assert run.data == deltas
    assert run.expanded() == [TextDelta(f"{' ' if i else ''}word{i}", 0) for i in range(50)]
    assert b"".join(v.data for v in verbatims(batches)) == data


@pytest.mark.parametrize("verbatim", [True, False])
def test_a_whole_stream_in_one_read_passes_its_text_deltas_unread(verbatim: bool) -> None:
    data = stream("normal:n=50")
    first, _, rest = data.partition(b"event: content_block_delta")
    deltas, _, _ = (b"event: content_block_delta" + rest).partition(b"event: content_block_stop")
    (batch,), decoder = decode(data, verbatim)
    assert decoder.done
    slow = events_of(data.replace(b"\n", b"\r\n"))  # CRLF: every event decoded
    assert list(expand(batch)) == slow
    if verbatim:
        runs = [v for v in batch if isinstance(v, Verbatim) and v.events is None]
        assert [run.data for run in runs] == [deltas]
        assert runs[0].count == 50
        assert b"".join(v.data for v in verbatims([batch])) == data
    else:
        assert not any(isinstance(e, Verbatim) for e in batch)
        assert sum(type(e) is TextDelta for e in batch) == 50
    assert first.count(b"\n\n") == 3  # message_start, ping, content_block_start: decoded


TEXT_DELTA = b'{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"a"}}'
THINKING_DELTA = TEXT_DELTA.replace(b'"text_delta","text"', b'"thinking_delta","thinking"')


@pytest.mark.parametrize(
    "data",
    [
        b"event: content_block_delta\r\ndata: " + TEXT_DELTA + b"\r\n\r\n",
        b"event: content_block_delta\ndata: " + THINKING_DELTA + b"\n\n",
        b"event: content_block_delta\ndata: " + TEXT_DELTA + b"\nid: 1\n\n",
        b"event: content_block_delta\ndata: " + TEXT_DELTA + b"\n",
        b'event: ping\ndata: {"type":"ping"}\n\n',
        b"event: content_block_delta\ndata: " + TEXT_DELTA.replace(b'"a"', b'"\xff"') + b"\n\n",
    ],
)
def test_plain_payloads_refuses_anything_else(data: bytes) -> None:
    assert plain_payloads(data) is None


@st.composite
def split_streams(draw: st.DrawFn) -> tuple[bytes, list[bytes]]:
    model = draw(
        st.sampled_from(
            [
                "normal:n=12,cache_read=4",
                "thinking:steps=3,n=4",
                "redacted:n=2",
                "tool_use:calls=2",
                "multibyte",
            ]
        )
    )
    data = stream(model)
    if draw(st.booleans()):
        data = data.replace(b"\n", b"\r\n")  # still SSE; never the plain fast path
    cuts = sorted(draw(st.sets(st.integers(1, len(data) - 1), max_size=12)))
    bounds = [0, *cuts, len(data)]
    return data, [data[a:b] for a, b in itertools.pairwise(bounds)]


@settings(max_examples=200, deadline=None)
@given(split_streams())
def test_any_split_gives_the_same_events_in_verbatim_and_normal_modes(
    case: tuple[bytes, list[bytes]],
) -> None:
    data, reads = case
    whole = events_of(data)
    assert events_of(reads) == whole
    batches, decoder = decode(reads, verbatim=True)
    assert decoder.done
    assert [e for batch in batches for e in expand(batch)] == whole
    if b"\r" not in data:
        assert b"".join(v.data for v in verbatims(batches)) == data
    assert isinstance(batches[0][0], Start)
    for v in verbatims(batches):
        if v.events is None:  # unread: plain text deltas only, never the accounting ones
            assert all(type(e) is TextDelta for e in v.expanded())


# -- errors --------------------------------------------------------------------------


def error_body(kind: str, message: str) -> bytes:
    return json.dumps(am.error_body(kind, message)).encode()


def test_error_statuses() -> None:
    overloaded = WIRE.error(529, error_body("overloaded_error", "Overloaded"), {})
    assert isinstance(overloaded, UpstreamStatusError)
    assert (overloaded.status, overloaded.upstream_status) == (503, 529)
    limited = WIRE.error(429, error_body("rate_limit_error", "slow"), {"retry-after": "3"})
    assert (limited.status, limited.headers) == (429, {"Retry-After": "3"})
    assert limited.code == "rate_limit_exceeded"
    too_long = WIRE.error(400, error_body("invalid_request_error", am.PROMPT_TOO_LONG), {})
    assert isinstance(too_long, ContextWindowExceeded)
    bad = WIRE.error(400, error_body("invalid_request_error", "max_tokens: too big"), {})
    assert type(bad) is RequestError and "max_tokens: too big" in bad.message
    missing = WIRE.error(404, error_body("not_found_error", "model: claude-nope"), {})
    assert isinstance(missing, ModelNotFound)
    denied = WIRE.error(401, error_body("authentication_error", "invalid x-api-key"), {})
    assert denied.status == 502
    broken = WIRE.error(502, b"<html>bad gateway</html>", {})
    assert "bad gateway" in broken.message
