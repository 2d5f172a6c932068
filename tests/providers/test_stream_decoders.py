"""Every upstream response decoder, fed what an upstream should never send, answers
with a typed error (``sluice.errors``) or events, never another exception.

Each wire's decoder (OpenAI chat in its verbatim, plain and general modes, Anthropic
messages in both modes, OpenAI Responses, embeddings) gets random bytes, and realistic
streams of its format with events changed (``tests.mutations.change``), dropped,
repeated or cut, in random reads. Verbatim batches are expanded too: what reads them
decodes them later, and must meet the same errors only.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sluice.errors import SluiceError
from sluice.events import expand
from sluice.providers import Decoder
from sluice.providers.anthropic import MessagesDecoder
from sluice.providers.openai_chat import ChatDecoder
from sluice.providers.openai_embeddings import EmbeddingsDecoder
from sluice.providers.openai_responses import ResponsesDecoder
from tests.mutations import change, junk
from tests.providers.openai_chunks import chunk_stream
from tests.upstream import messages as am
from tests.upstream import responses as rs
from tests.upstream import scenarios as sc

Event = tuple[str | None, Any]  # (SSE event name, data as JSON or raw bytes)


def _chat() -> st.SearchStrategy[list[Event]]:
    return (
        st.sampled_from([1, 2])
        .flatmap(chunk_stream)
        .map(lambda tagged: [(None, payload) for _, payload in tagged] + [(None, b"[DONE]")])
    )


def _anthropic() -> st.SearchStrategy[list[Event]]:
    names = ["normal", "thinking", "redacted", "tool_use:calls=2", "overloaded"]
    return st.sampled_from(names).map(
        lambda name: list(am.events(am.parse_spec(name), "claude", 5))
    )


def _responses() -> st.SearchStrategy[list[Event]]:
    names = ["normal", "reasoning", "tool_call:calls=2,text=1", "midstream_error"]
    return st.sampled_from(names).map(
        lambda name: [(e["type"], e) for e in rs.events(sc.parse_spec(name), "gpt", 5)]
    )


def _embeddings() -> st.SearchStrategy[list[Event]]:
    body = {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.1, -0.2, 0.3]}],
        "model": "e",
        "usage": {"prompt_tokens": 2, "total_tokens": 2},
    }
    return st.just([("", body)])  # a whole JSON body, not an event stream


Factory = Callable[[], Decoder]
WIRES: dict[str, tuple[Factory, Callable[[], st.SearchStrategy[list[Event]]]]] = {
    "chat-verbatim": (lambda: ChatDecoder(True, plain=True), _chat),
    "chat-plain": (lambda: ChatDecoder(False, plain=True), _chat),
    "chat-events": (lambda: ChatDecoder(False, plain=False), _chat),
    "anthropic-verbatim": (lambda: MessagesDecoder(True), _anthropic),
    "anthropic-events": (lambda: MessagesDecoder(False), _anthropic),
    "responses": (ResponsesDecoder, _responses),
    "embeddings": (lambda: EmbeddingsDecoder("e"), _embeddings),
}


def _frame(name: str | None, data: Any) -> bytes:
    payload = data if isinstance(data, bytes) else json.dumps(data).encode()
    if name == "":
        return payload
    head = b"event: " + name.encode() + b"\n" if name else b""
    return head + b"data: " + payload + b"\n\n"


@st.composite
def broken_streams(draw: st.DrawFn, events: st.SearchStrategy[list[Event]]) -> bytes:
    stream = list(draw(events))
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(stream) - 1))
        name, data = stream[i]
        how = draw(st.sampled_from(["change", "change", "drop", "repeat", "junk", "cut"]))
        if how == "change" and not isinstance(data, bytes):
            stream[i] = (name, change(draw, data, ("type", "index", "delta", "choices")))
        elif how == "drop" and len(stream) > 1:
            del stream[i]
        elif how == "repeat":
            stream.insert(i, stream[i])
        elif how == "junk":
            stream.insert(i, (name, draw(junk)))
        elif how == "cut":
            stream = stream[: i + 1]
    body = b"".join(_frame(name, data) for name, data in stream)
    if draw(st.booleans()):
        body = body[: draw(st.integers(0, len(body)))]
    return body


def _reads(data: st.DataObject, body: bytes) -> list[bytes]:
    cuts = sorted(data.draw(st.lists(st.integers(0, len(body)), max_size=8)))
    return [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]


def _decode(factory: Factory, reads: list[bytes]) -> None:
    decoder = factory()
    try:
        for read in reads:
            for event in decoder.feed(read):
                expand([event])
        for event in decoder.eof():
            expand([event])
    except SluiceError as exc:
        assert exc.message
    if decoder.error is not None:
        assert isinstance(decoder.error, SluiceError)


FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("wire", sorted(WIRES))
@FUZZ
@given(data=st.data())
def test_a_broken_stream_gives_typed_errors_only(wire: str, data: st.DataObject) -> None:
    factory, events = WIRES[wire]
    body = data.draw(broken_streams(events()))
    _decode(factory, _reads(data, body))


@pytest.mark.parametrize("wire", sorted(WIRES))
@settings(max_examples=100, deadline=None)
@given(
    body=st.binary(max_size=300)
    | st.lists(st.sampled_from([b"data: ", b"event: ", b"\n", b"\r", b":", b"{", b"[DONE]"])).map(
        b"".join
    ),
    data=st.data(),
)
def test_random_bytes_give_typed_errors_only(wire: str, body: bytes, data: st.DataObject) -> None:
    _decode(WIRES[wire][0], _reads(data, body))
