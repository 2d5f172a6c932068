"""``Verbatim`` through every consumer, for any chat completion stream cut into any reads.

The stream is generated (one or two choices; content, reasoning, refusals, annotations,
logprobs, tool calls, finish reasons, a usage chunk or none) and decoded by the OpenAI
chat wire with ``verbatim`` and without. Checked against the generated chunks themselves:
what a passthrough client reads, the JSON answer, the text dialect, the journal and the
relay's record.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sluice.dialects import Encoder
from sluice.dialects.openai_chat import CompletionEncoder, StreamEncoder
from sluice.dialects.text import TextEncoder
from sluice.events import (
    Batch,
    ChatRequest,
    Message,
    ReasoningDelta,
    RefusalDelta,
    StreamEvent,
    TextDelta,
    TextPart,
    ToolCallDelta,
    Usage,
    Verbatim,
    expand,
)
from sluice.exchange import Exchange
from sluice.exchange import Message as ASGIMessage
from sluice.journal import Journal
from sluice.journal.codec import decode_batches, encode_batches
from sluice.providers.openai_chat import ChatDecoder
from sluice.relay import relay
from sluice.store import Record
from tests.providers.openai_chunks import (
    SERIALISERS,
    Payload,
    Tagged,
    choice,
    chunk,
    chunk_stream,
    reads,
)

DONE = b"data: [DONE]\n\n"
CREATED = 1_700_000_000


@dataclass
class Stream:
    """A complete upstream stream: its chunks, their SSE events, the reads they came in."""

    n: int
    chunks: list[Payload]
    events: list[bytes]
    reads: list[bytes]

    def batches(self, verbatim: bool) -> list[Batch]:
        # As the wire makes its decoder: unread runs only for one choice.
        decoder = ChatDecoder(verbatim, plain=self.n == 1)
        out = [decoder.feed(read) for read in self.reads]
        assert decoder.done and decoder.error is None
        return out

    def sent(self, include_usage: bool) -> bytes:
        """What a passthrough client reads: every chunk as it came, but the usage chunk
        the gateway asked for when the client did not."""
        return b"".join(
            event
            for payload, event in zip(self.chunks, self.events, strict=True)
            if include_usage or payload["choices"]
        )


def _complete(tagged: Tagged, n: int) -> list[Payload]:
    """The chunks of a generated stream, ended by finish chunks where it failed."""
    chunks = [p for tag, p in tagged if tag not in ("error", "bad") and isinstance(p, dict)]
    if len(chunks) < len(tagged):
        chunks += [chunk([choice({}, "stop", i)], False) for i in range(n)]
    return chunks


@st.composite
def streams(draw: st.DrawFn) -> Stream:
    n = draw(st.sampled_from([1, 1, 2]))
    chunks = _complete(draw(chunk_stream(n)), n)
    dumps = SERIALISERS[draw(st.sampled_from(sorted(SERIALISERS)))]
    events = [b"data: " + dumps(c) + b"\n\n" for c in chunks]
    cuts = draw(st.lists(st.integers(0, 20_000), max_size=10))
    return Stream(n, chunks, events, reads(b"".join(events) + DONE, cuts))


SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(autouse=True)
def _fixed_clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # Encoders stamp ``created`` when no Start gives one: two encoders must agree.
    with monkeypatch.context() as patch:
        patch.setattr(time, "time", lambda: float(CREATED))
        yield


def _request(stream: bool = True, include_usage: bool = True, n: int = 1) -> ChatRequest:
    return ChatRequest(
        model="alias",
        messages=[Message("user", [TextPart("hi")])],
        stream=stream,
        include_usage=include_usage,
        n=n,
    )


def _encode(encoder: Encoder, batches: list[Batch]) -> bytes:
    return b"".join(encoder.encode(batch) for batch in batches) + encoder.end()


def _events(batches: list[Batch]) -> list[StreamEvent]:
    return [e for batch in batches for e in expand(batch)]


# -- the reference: what the chunks say, read without Sluice ---------------------------


def _answer(chunks: list[Payload]) -> dict[str, Any]:
    """The ``chat.completion`` the chunks add up to, as OpenAI answers without ``stream``."""
    choices: dict[int, dict[str, Any]] = {}
    usage = None
    for item in chunks:
        usage = item.get("usage") or usage
        for c in item["choices"]:
            acc = choices.setdefault(
                c["index"],
                {"text": "", "refusal": "", "reasoning": "", "calls": {}, "notes": [], "lp": None},
            )
            delta = c["delta"]
            acc["reasoning"] += delta.get("reasoning_content") or delta.get("reasoning") or ""
            acc["text"] += delta.get("content") or ""
            if c.get("logprobs"):
                acc["lp"] = (acc["lp"] or []) + c["logprobs"]["content"]
            acc["refusal"] += delta.get("refusal") or ""
            acc["notes"] += delta.get("annotations") or []
            for call in delta.get("tool_calls") or ():
                entry = acc["calls"].setdefault(
                    call["index"],
                    {"id": None, "type": "function", "function": {"name": "", "arguments": ""}},
                )
                entry["id"] = call.get("id") or entry["id"]
                entry["function"]["name"] += call["function"].get("name") or ""
                entry["function"]["arguments"] += call["function"].get("arguments") or ""
            acc["finish"] = c["finish_reason"] or acc.get("finish")
    out = []
    for index, acc in sorted(choices.items()):
        content = acc["text"] or (None if acc["calls"] or acc["refusal"] else "")
        message: dict[str, Any] = {
            "role": "assistant",
            "content": content,
            "refusal": acc["refusal"] or None,
        }
        if acc["notes"]:
            message["annotations"] = acc["notes"]
        if acc["reasoning"]:
            message["reasoning_content"] = acc["reasoning"]
        if acc["calls"]:
            message["tool_calls"] = list(acc["calls"].values())
        logprobs = {"content": acc["lp"], "refusal": None} if acc["lp"] is not None else None
        out.append(
            {
                "index": index,
                "message": message,
                "logprobs": logprobs,
                "finish_reason": acc["finish"] or "stop",
            }
        )
    usage = usage or {"prompt_tokens": 0, "completion_tokens": 0}
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": CREATED,
        "model": "m",
        "choices": out,
        "usage": {
            "prompt_tokens": usage["prompt_tokens"],
            "completion_tokens": usage["completion_tokens"],
            "total_tokens": usage["prompt_tokens"] + usage["completion_tokens"],
            "prompt_tokens_details": {
                "cached_tokens": usage.get("prompt_tokens_details", {}).get("cached_tokens", 0)
            },
            "completion_tokens_details": {
                "reasoning_tokens": usage.get("completion_tokens_details", {}).get(
                    "reasoning_tokens", 0
                )
            },
        },
        "system_fingerprint": "fp_1",
    }


def _text(chunks: list[Payload], index: int = 0) -> str:
    return "".join(
        c["delta"].get("content") or ""
        for item in chunks
        for c in item["choices"]
        if c["index"] == index
    )


def _sse_chunks(body: bytes) -> list[Any]:
    assert body.endswith(DONE)
    events = body[: -len(DONE)].split(b"\n\n")
    assert events[-1] == b""
    return [orjson.loads(e.removeprefix(b"data: ")) for e in events[:-1]]


# -- the tests ---------------------------------------------------------------------


@SETTINGS
@given(streams(), st.booleans())
def test_a_passthrough_client_reads_the_upstream_chunks(
    stream: Stream, include_usage: bool
) -> None:
    encoder = StreamEncoder(_request(include_usage=include_usage, n=stream.n), "chatcmpl-own")
    got = _encode(encoder, stream.batches(True))
    assert got == stream.sent(include_usage) + DONE


@SETTINGS
@given(streams(), st.booleans(), st.lists(st.booleans(), min_size=20, max_size=20))
def test_a_mixed_stream_has_one_id_and_one_model(
    stream: Stream, include_usage: bool, decoded: list[bool]
) -> None:
    """Some reads passed along, others encoded anew: one response all the same."""
    batches = [
        expand(batch) if decoded[i % len(decoded)] else batch
        for i, batch in enumerate(stream.batches(True))
    ]
    request = _request(include_usage=include_usage, n=stream.n)
    body = _encode(StreamEncoder(request, "chatcmpl-own"), batches)
    chunks = _sse_chunks(body)
    assert {c["id"] for c in chunks} == {"chatcmpl-1"}
    assert {c["model"] for c in chunks} == {"m"}
    assert {c["created"] for c in chunks} == {CREATED}
    assert {c["system_fingerprint"] for c in chunks} == {"fp_1"}
    assert any(not c["choices"] for c in chunks) == (
        include_usage and any(not c["choices"] for c in stream.chunks)
    )
    # Read back, it is the upstream's stream (less the usage the client did not ask for).
    back = ChatDecoder(verbatim=False, plain=False)
    want = _events(stream.batches(False))
    if not include_usage:
        want = [e for e in want if type(e) is not Usage]
    assert back.feed(body) == want and back.done
    for index in range(stream.n):
        text = "".join(
            c["delta"].get("content") or ""
            for item in chunks
            for c in item["choices"]
            if c["index"] == index
        )
        assert text == _text(stream.chunks, index)


@SETTINGS
@given(streams())
def test_the_json_answer_adds_up_the_chunks(stream: Stream) -> None:
    request = _request(stream=False, n=stream.n)
    got = _encode(CompletionEncoder(request, "chatcmpl-own"), stream.batches(True))
    assert got == _encode(CompletionEncoder(request, "chatcmpl-own"), stream.batches(False))
    assert orjson.loads(got) == _answer(stream.chunks)


@SETTINGS
@given(streams())
def test_the_text_dialect_writes_the_first_choice(stream: Stream) -> None:
    got = _encode(TextEncoder(), stream.batches(True))
    assert got == _encode(TextEncoder(), stream.batches(False))
    assert got == _text(stream.chunks).encode()


@SETTINGS
@given(streams())
def test_a_journal_stores_the_events(stream: Stream) -> None:
    journal = Journal("j")
    for batch in stream.batches(True):
        journal.append(batch)
    journal.complete()
    decoded = stream.batches(False)
    assert journal.batches == decoded
    assert not any(type(e) is Verbatim for batch in journal.batches for e in batch)
    stored = decode_batches(encode_batches([(0.0, batch) for batch in journal.batches]))
    assert [batch for _, batch in stored] == decoded
    with pytest.raises(TypeError, match="Verbatim"):
        encode_batches([(0.0, b) for b in stream.batches(True) if Verbatim in map(type, b)])


async def _relay(batches: list[Batch], encoder: Encoder, keep_text: bool) -> tuple[Record, bytes]:
    """Our relay over a real Exchange, with an ASGI ``send`` that keeps what it gets."""
    record = Record(id="r1", started_at=time.time(), route="/v1/chat/completions")
    sent: list[ASGIMessage] = []

    async def receive() -> ASGIMessage:
        await asyncio.Event().wait()
        return {}

    async def send(message: ASGIMessage) -> None:
        sent.append(message)

    async def source() -> AsyncGenerator[Batch, None]:
        for batch in batches:
            yield batch

    exchange = Exchange({"headers": []}, receive, send, record)
    await relay(exchange, source(), encoder, 0, keep_text=keep_text)
    assert sent[0]["type"] == "http.response.start"
    return record, b"".join(m["body"] for m in sent if m["type"] == "http.response.body")


@SETTINGS
@given(streams(), st.booleans())
def test_the_relay_counts_the_upstream_chunks_and_reads_their_usage(
    stream: Stream, keep_text: bool
) -> None:
    encoder = StreamEncoder(_request(n=stream.n), "chatcmpl-own")
    record, body = asyncio.run(_relay(stream.batches(True), encoder, keep_text))
    assert body == stream.sent(True) + DONE
    # The deltas that carried output (text, reasoning, refusal, tool calls), as the
    # decoded stream has them: verbatim or not, the same count.
    deltas = (TextDelta, ReasoningDelta, RefusalDelta, ToolCallDelta)
    decoded = [e for batch in stream.batches(False) for e in batch]
    assert record.chunks == sum(isinstance(e, deltas) for e in decoded)
    usage = next((c["usage"] for c in reversed(stream.chunks) if c.get("usage")), None)
    if usage is None:
        assert (record.input_tokens, record.output_tokens, record.usage_source) == (None,) * 3
    else:
        assert (record.input_tokens, record.output_tokens, record.usage_source) == (
            usage["prompt_tokens"],
            usage["completion_tokens"],
            "reported",
        )
    if not keep_text:
        assert record.response is None
    elif stream.n == 1:
        assert record.response == _text(stream.chunks)
    # Text of the same stream read by the text dialect: the same record.
    text_record, _ = asyncio.run(_relay(stream.batches(True), TextEncoder(), keep_text))
    assert text_record.response == record.response
    assert text_record.chunks == record.chunks


def test_a_usage_only_chunk_is_passed_along_only_when_the_client_asked() -> None:
    role = chunk([choice({"role": "assistant", "content": ""})], True)
    text = chunk([choice({"content": "hi"})], True)
    finish = chunk([choice({}, "stop")], True)
    usage = chunk([], False, usage={"prompt_tokens": 2, "completion_tokens": 1})
    events = [b"data: " + orjson.dumps(c) + b"\n\n" for c in (role, text, finish, usage)]
    stream = Stream(1, [role, text, finish, usage], events, [b"".join(events) + DONE])
    (batch,) = stream.batches(True)
    last = batch[-1]
    assert isinstance(last, Verbatim) and last.events == [Usage(2, 1)]
    asked = StreamEncoder(_request(include_usage=True), "chatcmpl-own").encode(batch)
    not_asked = StreamEncoder(_request(include_usage=False), "chatcmpl-own").encode(batch)
    assert asked == b"".join(events)
    assert not_asked == b"".join(events[:-1])


def test_a_tool_call_encoded_after_verbatim_ones_gets_the_next_index() -> None:
    def call(index: int) -> Payload:
        head = {"index": index, "id": f"call_{index}", "type": "function"}
        delta = {"tool_calls": [{**head, "function": {"name": "f", "arguments": "{}"}}]}
        return chunk([choice(delta)], False)

    chunks = [chunk([choice({"role": "assistant"})], False), call(0), call(1)]
    chunks.append(chunk([choice({}, "tool_calls")], False))
    events = [b"data: " + orjson.dumps(c) + b"\n\n" for c in chunks]
    stream = Stream(1, chunks, events, [b"".join(events[:2]), b"".join(events[2:]) + DONE])
    passed, anew = stream.batches(True)
    body = _encode(StreamEncoder(_request(), "chatcmpl-own"), [passed, expand(anew)])
    calls = [
        (call["index"], call["id"])
        for item in _sse_chunks(body)
        for c in item["choices"]
        for call in c["delta"].get("tool_calls") or ()
    ]
    # Not (0, "call_1"): the client would add the second call to the first.
    assert calls == [(0, "call_0"), (1, "call_1")]
