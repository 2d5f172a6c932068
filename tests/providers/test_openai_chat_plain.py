"""``plain_payloads`` and ``plain_events``: the check that lets a run of content chunks
pass along unread, and the way its events are read when someone asks.

The property: a read that starts at an event boundary (the only reads it is given) is
taken only when it is whole LF-framed content chunks, each with some text; then its
payloads are the SSE decoder's and its events the text deltas the chunks hold. A read
holding a finish, usage, error, refusal, tool call or ``[DONE]`` is never taken; a run
of content chunks always is, whatever the text says.
"""

from __future__ import annotations

import json
from itertools import pairwise
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sluice.events import TextDelta
from sluice.providers.openai_chat import plain_events, plain_payloads
from sluice.sse import SSEDecoder
from tests.providers.openai_chunks import (
    SERIALISERS,
    Payload,
    Tagged,
    choice,
    chunk,
    chunk_stream,
    sse,
)


def _text(payload: Payload | bytes) -> str:
    assert not isinstance(payload, bytes)
    return str(payload["choices"][0]["delta"]["content"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    chunk_stream(),
    st.sampled_from(sorted(SERIALISERS)),
    st.lists(st.integers(0, 10_000), max_size=8),
    st.lists(st.integers(0, 40), max_size=6),
)
def test_taken_reads_are_content_chunks_and_expand_to_their_text(
    tagged: Tagged, serialiser: str, cuts: list[int], event_cuts: list[int]
) -> None:
    events = sse(tagged, SERIALISERS[serialiser])
    kinds = [kind for kind, _ in tagged] + ["done"]
    stream = b"".join(events)
    boundaries = [0]
    for event in events:
        boundaries.append(boundaries[-1] + len(event))
    # Arbitrary cut points, plus some at event boundaries (the reads that qualify).
    points = {0, len(stream)} | {c % (len(stream) + 1) for c in cuts}
    points |= {boundaries[c % len(boundaries)] for c in event_cuts}
    decoder = SSEDecoder()
    for start, end in pairwise(sorted(points)):
        read = stream[start:end]
        taken = plain_payloads(read) if start in boundaries else None
        payloads = decoder.feed_data(read)
        if taken is None:
            continue
        assert end in boundaries, "a taken read ends at an event boundary"
        first, last = boundaries.index(start), boundaries.index(end)
        assert kinds[first:last] == ["plain"] * (last - first)
        assert taken == payloads
        texts = [_text(payload) for _, payload in tagged[first:last]]
        assert plain_events(3, read) == [TextDelta(t, 3) for t in texts]


@settings(max_examples=300, deadline=None)
@given(chunk_stream(), st.sampled_from(sorted(SERIALISERS)), st.data())
def test_a_read_is_taken_exactly_when_it_is_content_chunks(
    tagged: Tagged, serialiser: str, data: st.DataObject
) -> None:
    events = sse(tagged, SERIALISERS[serialiser])
    kinds = [kind for kind, _ in tagged] + ["done"]
    start = data.draw(st.integers(0, len(events) - 1))
    end = data.draw(st.integers(start + 1, len(events)))
    read = b"".join(events[start:end])
    taken = plain_payloads(read)
    if kinds[start:end] == ["plain"] * (end - start):
        # Whatever the text, a run of content chunks is taken: no false negatives.
        assert taken is not None and len(taken) == end - start
    else:
        assert taken is None


def _events(*chunks: Payload, dumps: Any = orjson.dumps) -> bytes:
    return b"".join(b"data: " + dumps(c) + b"\n\n" for c in chunks)


def _content(text: str, **extra: Any) -> Payload:
    return chunk([choice({"content": text})], True, **extra)


def test_a_run_of_content_chunks_is_taken_whole() -> None:
    read = _events(_content("Hi"), _content(" there"))
    assert plain_payloads(read) == [orjson.dumps(_content("Hi")), orjson.dumps(_content(" there"))]
    assert plain_events(0, read) == [TextDelta("Hi"), TextDelta(" there")]


_A = b'data: {"choices":[{"index":0,"delta":{"content":"a"},"finish_reason":null}]}\n\n'


@pytest.mark.parametrize(
    "read",
    [
        # framing
        _A[:-1],
        _A.replace(b"\n", b"\r\n"),
        _A.replace(b"data: ", b"data:"),
        _A + b"\n\n",
        b"event: x\n" + _A,
        _A + b": ping\n\n",
        b'data: {"choices":[{"delta":{"content":"a"},\ndata: "finish_reason":null}]}\n\n',
        b"\xef\xbb\xbf" + _A,
        b"data: [DONE]\n\n",
        _A + b"data: [DONE]\n\n",
        # a CR is JSON whitespace, but ends the SSE line
        b'data: {"choices":[{"delta":{"content":"a"},\r"finish_reason":null}]}\n\n',
        # an empty event between two
        _A + b"\n\n" + _A,
        _A + b"data: \n\n",
        # no text: such a chunk starts no part, so it is read
        b'data: {"choices":[{"index":0,"delta":{"content":""}}]}\n\n',
        b'data: {"choices":[{"index":0,"delta":{"content":null}}]}\n\n',
        b'data: {"choices":[{"index":0,"delta":{"role":"assistant"}}]}\n\n',
        b'data: {"choices":[{"index":0,"delta":{}}]}\n\n',
        b'data: {"choices":[{"index":0}]}\n\n',
        b'data: {"choices":[]}\n\n',
        b'data: {"choices":[],"prompt_filter_results":[]}\n\n',
        b"data: {}\n\n",
        # another choice, or two
        b'data: {"choices":[{"index":1,"delta":{"content":"a"}}]}\n\n',
        b'data: {"choices":[{"delta":{"content":"a"}},{"delta":{"content":"b"}}]}\n\n',
        # more than text
        b'data: {"choices":[{"delta":{"content":"a","refusal":"no"}}]}\n\n',
        b'data: {"choices":[{"delta":{"content":"a","reasoning_content":"r"}}]}\n\n',
        b'data: {"choices":[{"delta":{"content":"a","tool_calls":[]}}]}\n\n',
        b'data: {"choices":[{"delta":{"content":"a","annotations":[]}}]}\n\n',
        b'data: {"choices":[{"delta":{"content":"a"},"logprobs":{"content":[]}}]}\n\n',
        # finish, usage and error, however spelled
        b'data: {"choices":[{"delta":{"content":"a"},"finish_reason":"stop"}]}\n\n',
        b'data: {"choices":[{"delta":{"content":"a"},"finish_reason" : "stop"}]}\n\n',
        b'data: {"choices":[{"delta":{"content":"a"},'
        b'"finish_reason":"stop","finish_reason":null}]}\n\n',
        b'data: {"choices":[{"delta":{"content":"a"},"finish_reason":null}],"usage":{}}\n\n',
        b'data: {"choices":[{"delta":{"content":"a"}}],"usage" :{"prompt_tokens":1}}\n\n',
        b'data: {"choices":[{"delta":{"content":"a"}}],"usage":\t{}}\n\n',
        b'data: {"choices":[{"delta":{"content":"a"}}],"\\u0075sage":{}}\n\n',
        b'data: {"choices":[{"delta":{"content":"a"}}],"error":{"message":"x"}}\n\n',
        b'data: {"choices":[{"delta":{"content":"a"}}],"error" :"x"}\n\n',
        b'data: {"error":{"message":"overloaded"}}\n\n',
        # payloads the full path could not decode
        b'data: {"choices":[{"delta":{"content":1},"finish_reason":null}]}\n\n',
        b'data: {"choices":[{"delta":{"content":"a"},"finish_reason":null}]} {}\n\n',
        b'data: {"choices":[{"delta":{"content":"a"},"finish_reason":null}]\n\n',
        b'data: {"choices":[{"delta":{"content":"\xff"},"finish_reason":null}]}\n\n',
        b"data: ping\n\n",
    ],
)
def test_reads_that_are_not_content_chunks_are_refused(read: bytes) -> None:
    assert plain_payloads(read) is None


def test_a_key_mentioned_in_text_does_not_fool_the_check() -> None:
    # Inside strings the quotes are escaped, so these are text, not keys.
    tricky = '"usage":{"prompt_tokens":1}, "error": "x", "finish_reason":"stop" [DONE]'
    read = _events(_content(tricky), _content(tricky, service_tier="default"))
    assert plain_payloads(read) is not None
    assert plain_events(0, read) == [TextDelta(tricky), TextDelta(tricky)]


def test_spaced_json_and_unknown_fields_are_taken() -> None:
    spaced = _events(_content("a"), _content("b \u00e9"), dumps=lambda c: json.dumps(c).encode())
    assert b'"finish_reason": null' in spaced
    assert plain_payloads(spaced) is not None
    extra = _events(_content("a", obfuscation="xyz", provider="p"))
    assert plain_payloads(extra) is not None
