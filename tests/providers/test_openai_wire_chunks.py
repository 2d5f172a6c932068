"""``plain_chunks`` and ``expand``: reads of content chunks passed along unread.

The property: whenever ``plain_chunks`` takes a read that starts at an event boundary
(the only reads it is given), forwarding the read unchanged and expanding it give
exactly what the full decode path gives for the same bytes, and no read holding a
finish, usage, error or ``[DONE]`` event is ever taken.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from itertools import pairwise
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sluice.errors import UpstreamProtocolError
from sluice.events import Chunks, Finish, StreamEvent, TextDelta, Usage
from sluice.providers.openai_wire import chunk_events, decode_chunk, expand, plain_chunks
from sluice.sse import SSEDecoder

# Text that tries to look like the markers the checks search for, and like framing.
TRICKS = [
    '"finish_reason":null',
    '"finish_reason": null',
    '"finish_reason":"stop"',
    "finish_reason",
    "[DONE]",
    "data: [DONE]",
    '"usage":{',
    '"usage": {"prompt_tokens":1}',
    '"usage":null',
    "usage",
    '"error"',
    "error",
    "data: {",
    "}\n\ndata: {",
    "\n\n",
    "\n",
    "\r\n",
    "\\",
    '\\"',
    '"',
    "\\u0075sage",
    "\u00e9",
    "\u2028",
    "\U0001f600",
    "\x00\x1f\x7f",
    "}",
]
text = st.one_of(
    st.sampled_from(TRICKS),
    st.text(max_size=8),
    st.lists(st.sampled_from(TRICKS), min_size=2, max_size=4).map("".join),
)

Payload = dict[str, Any]


def _chunk(choices: list[Payload], include_usage: bool, **extra: Any) -> Payload:
    chunk: Payload = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "m",
        "system_fingerprint": "fp_1",
        "choices": choices,
        **extra,
    }
    if include_usage and "usage" not in chunk:
        chunk["usage"] = None
    return chunk


def _choice(delta: Payload, finish: str | None = None, index: int = 0) -> Payload:
    return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}


role = st.just({"role": "assistant", "content": ""})
content = text.map(lambda t: {"content": t})
reasoning = st.tuples(st.sampled_from(["reasoning_content", "reasoning"]), text).map(
    lambda kv: {kv[0]: kv[1]}
)
tool_call = st.builds(
    lambda index, id, name, arguments: {
        "tool_calls": [
            {
                "index": index,
                **({"id": id, "type": "function"} if id else {}),
                "function": {
                    **({"name": name} if name else {}),
                    "arguments": arguments,
                },
            }
        ]
    },
    st.integers(0, 2),
    st.one_of(st.none(), st.just("call_1")),
    st.one_of(st.none(), st.just("get_weather")),
    text,
)
deltas = st.one_of(role, content, content, content, reasoning, tool_call)


@st.composite
def chunk_stream(draw: st.DrawFn) -> list[tuple[str, Payload]]:
    """A realistic stream: a role chunk, deltas, a finish chunk, maybe a usage chunk,
    sometimes a late error. Each chunk is tagged with what it is."""
    include_usage = draw(st.booleans())
    chunks: list[tuple[str, Payload]] = [("plain", _chunk([_choice(draw(role))], include_usage))]
    for delta in draw(st.lists(deltas, max_size=12)):
        chunks.append(("plain", _chunk([_choice(delta)], include_usage)))
    ending = draw(st.sampled_from(["finish", "finish", "error", "finish-with-content"]))
    if ending == "error":
        chunks.append(("error", {"error": {"message": draw(text), "type": "server_error"}}))
        return chunks
    reason = draw(st.sampled_from(["stop", "length", "tool_calls"]))
    delta = {"content": draw(text)} if ending == "finish-with-content" else {}
    chunks.append(("finish", _chunk([_choice(delta, reason)], include_usage)))
    if include_usage:
        usage = {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}
        chunks.append(("usage", _chunk([], False, usage=usage)))
    return chunks


SERIALISERS: dict[str, Callable[[Payload], bytes]] = {
    "orjson": orjson.dumps,
    "json spaced": lambda c: json.dumps(c).encode(),
    "json spaced utf-8": lambda c: json.dumps(c, ensure_ascii=False).encode(),
    "json compact": lambda c: json.dumps(c, separators=(",", ":")).encode(),
}


def full_path(payloads: list[bytes]) -> list[StreamEvent]:
    """The events the provider's decode path makes of these payloads."""
    out: list[StreamEvent] = []
    for payload in payloads:
        chunk_events(decode_chunk(payload), payload, out)
    return out


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(
    chunk_stream(),
    st.sampled_from(sorted(SERIALISERS)),
    st.lists(st.integers(0, 10_000), max_size=8),
    st.lists(st.integers(0, 40), max_size=6),
)
def test_taken_reads_forward_and_expand_as_the_full_path(
    tagged: list[tuple[str, Payload]], serialiser: str, cuts: list[int], event_cuts: list[int]
) -> None:
    dumps = SERIALISERS[serialiser]
    events = [(kind, b"data: " + dumps(chunk) + b"\n\n") for kind, chunk in tagged]
    events.append(("done", b"data: [DONE]\n\n"))
    stream = b"".join(e for _, e in events)
    boundaries = [0]
    for _, e in events:
        boundaries.append(boundaries[-1] + len(e))
    # Arbitrary cut points, plus some at event boundaries (the reads that qualify).
    points = {0, len(stream)} | {c % (len(stream) + 1) for c in cuts}
    points |= {boundaries[c % len(boundaries)] for c in event_cuts}
    decoder = SSEDecoder()
    for start, end in pairwise(sorted(points)):
        read = stream[start:end]
        if not read:
            continue
        taken = plain_chunks(read) if start in boundaries else None
        payloads = decoder.feed_data(read)
        if taken is None:
            continue
        assert end in boundaries, "a taken read ends at an event boundary"
        first, last = boundaries.index(start), boundaries.index(end)
        kinds = [kind for kind, _ in events[first:last]]
        assert kinds == ["plain"] * len(kinds), kinds
        assert taken.data is read
        assert taken.count == last - first == len(payloads)
        expanded = expand([taken])
        assert expanded == full_path(payloads)
        assert not any(type(e) in (Finish, Usage) for e in expanded)


@settings(max_examples=300)
@given(chunk_stream(), st.sampled_from(sorted(SERIALISERS)), st.data())
def test_reads_with_finish_usage_error_or_done_are_never_taken(
    tagged: list[tuple[str, Payload]], serialiser: str, data: st.DataObject
) -> None:
    dumps = SERIALISERS[serialiser]
    events = [(kind, b"data: " + dumps(chunk) + b"\n\n") for kind, chunk in tagged]
    events.append(("done", b"data: [DONE]\n\n"))
    start = data.draw(st.integers(0, len(events) - 1))
    end = data.draw(st.integers(start + 1, len(events)))
    read = b"".join(e for _, e in events[start:end])
    taken = plain_chunks(read)
    if any(kind != "plain" for kind, _ in events[start:end]):
        assert taken is None
    else:
        # Whatever the text, a run of content chunks is taken: no false negatives.
        assert taken == Chunks(read, end - start)


def _events(*chunks: Payload, dumps: Callable[[Payload], bytes] = orjson.dumps) -> bytes:
    return b"".join(b"data: " + dumps(c) + b"\n\n" for c in chunks)


def _content(text: str, **extra: Any) -> Payload:
    return _chunk([_choice({"content": text})], True, **extra)


def test_a_run_of_content_chunks_is_taken_whole() -> None:
    read = _events(_chunk([_choice({"role": "assistant", "content": ""})], True), _content("Hi"))
    taken = plain_chunks(read)
    assert taken == Chunks(read, 2)
    assert taken is not None
    assert [type(e) for e in expand([taken])] == [TextDelta, TextDelta]
    assert [e.text for e in expand([taken]) if type(e) is TextDelta] == ["", "Hi"]


@pytest.mark.parametrize(
    "read",
    [
        # framing
        b'data: {"choices":[{"delta":{"content":"a"},"finish_reason":null}]}\n',
        b'data: {"choices":[{"delta":{"content":"a"},"finish_reason":null}]}\r\n\r\n',
        b'data:{"choices":[{"delta":{"content":"a"},"finish_reason":null}]}\n\n',
        b'data: {"choices":[{"delta":{"content":"a"},"finish_reason":null}]}\n\n\n\n',
        b'event: x\ndata: {"choices":[{"delta":{"content":"a"},"finish_reason":null}]}\n\n',
        b'data: {"choices":[{"delta":{"content":"a"},"finish_reason":null}]}\n\n: ping\n\n',
        b'data: {"choices":[{"delta":{"content":"a"},\ndata: "finish_reason":null}]}\n\n',
        b'\xef\xbb\xbfdata: {"choices":[{"delta":{"content":"a"},"finish_reason":null}]}\n\n',
        b"data: [DONE]\n\n",
        # a CR is JSON whitespace, but ends the SSE line
        b'data: {"choices":[{"delta":{"content":"a"},\r"finish_reason":null}]}\n\n',
        # an empty event between two
        b'data: {"choices":[{"delta":{"content":"a"},"finish_reason":null}]}\n\n\n\n'
        b'data: {"choices":[{"delta":{"content":"a"},"finish_reason":null}]}\n\n',
        b'data: {"choices":[{"delta":{"content":"a"},"finish_reason":null}]}\n\ndata: \n\n',
        # finish, usage and error, however spelled
        b'data: {"choices":[{"delta":{},"finish_reason":"stop"}]}\n\n',
        b'data: {"choices":[{"delta":{},"finish_reason" : "stop"}]}\n\n',
        b'data: {"choices":[{"delta":{},"finish_reason":"stop","finish_reason":null}]}\n\n',
        b'data: {"choices":[{"delta":{},"finish_reason":null},{"finish_reason":"stop"}]}\n\n',
        b'data: {"choices":[{"delta":{"content":"a"},"finish_reason":null}],"usage":{}}\n\n',
        b'data: {"choices":[{"delta":{},"finish_reason":null}],"usage" :{"prompt_tokens":1}}\n\n',
        b'data: {"choices":[{"delta":{},"finish_reason":null}],"usage":\t{}}\n\n',
        b'data: {"choices":[{"delta":{},"finish_reason":null}],"\\u0075sage":{}}\n\n',
        b'data: {"choices":[{"delta":{},"finish_reason":null}],"error":{"message":"x"}}\n\n',
        b'data: {"choices":[{"delta":{},"finish_reason":null}],"error" :"x"}\n\n',
        b'data: {"error":{"message":"overloaded"}}\n\n',
        # payloads the full path could not decode
        b'data: {"choices":[{"delta":{"content":1},"finish_reason":null}]}\n\n',
        b'data: {"choices":[{"delta":{"content":"a"},"finish_reason":null}]} {}\n\n',
        b'data: {"choices":[{"delta":{"content":"a"},"finish_reason":null}]\n\n',
        b'data: {"choices":[{"delta":{"content":"\xff"},"finish_reason":null}]}\n\n',
        b"data: ping\n\n",
    ],
)
def test_reads_that_are_not_plain_chunks_are_refused(read: bytes) -> None:
    assert plain_chunks(read) is None


def test_a_key_mentioned_in_text_does_not_fool_the_checks() -> None:
    # Inside strings the quotes are escaped, so these are text, not keys.
    tricky = '"usage":{"prompt_tokens":1}, "error": "x", "finish_reason":"stop" [DONE]'
    read = _events(_content(tricky), _content(tricky, service_tier="default"))
    taken = plain_chunks(read)
    assert taken is not None
    assert taken.count == 2
    assert [e.text for e in expand([taken]) if type(e) is TextDelta] == [tricky, tricky]


def test_spaced_json_is_taken() -> None:
    read = _events(_content("a"), _content("b \u00e9"), dumps=lambda c: json.dumps(c).encode())
    assert b'"finish_reason": null' in read
    taken = plain_chunks(read)
    assert taken is not None
    assert taken.count == 2


def test_expand_leaves_a_batch_without_chunks_as_it_is() -> None:
    batch: list[StreamEvent] = [TextDelta("a"), Finish("stop")]
    assert expand(batch) is batch


def test_expand_keeps_order_around_chunks() -> None:
    read = _events(_content("b"), _content("c"))
    taken = plain_chunks(read)
    assert taken is not None
    expanded = expand([TextDelta("a"), taken, Finish("stop")])
    assert [type(e) for e in expanded] == [TextDelta, TextDelta, TextDelta, Finish]
    assert [e.raw for e in expanded[1:3]] == [orjson.dumps(_content(t)) for t in "bc"]


def test_expand_maps_a_broken_payload_to_a_protocol_error() -> None:
    broken = Chunks(b'data: {"choices":[{"delta":{"content":1}}]}\n\n', 1)
    with pytest.raises(UpstreamProtocolError, match="not a chat completion chunk"):
        expand([broken])
