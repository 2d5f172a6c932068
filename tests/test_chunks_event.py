"""``Chunks`` through every consumer of event batches: the encoders, the journal and
the relay. Each must give what the same chunks decoded into events give today, but for
a passthrough stream, which writes the upstream's bytes as they came."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator
from typing import Any

import orjson
import pytest

from sluice.dialects import Encoder
from sluice.dialects.openai_chat import CompletionEncoder, StreamEncoder
from sluice.dialects.text import TextEncoder
from sluice.events import (
    ChatRequest,
    Chunks,
    Finish,
    ReasoningDelta,
    StreamEvent,
    TextDelta,
    ToolCallDelta,
    Usage,
)
from sluice.exchange import Exchange, Message
from sluice.journal import Journal, bare
from sluice.journal.codec import decode_batches, encode_batches
from sluice.journal.memory import MemoryJournals
from sluice.providers import Batch
from sluice.providers.openai_wire import chunk_events, decode_chunk, expand, plain_chunks
from sluice.relay import relay
from sluice.store import Record


def _chunk(delta: dict[str, Any] | None, finish: str | None = None, **extra: Any) -> bytes:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    body = {"id": "chatcmpl-up", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    return orjson.dumps({**body, "choices": choices, "usage": None, **extra})


ROLE = _chunk({"role": "assistant", "content": ""})
TEXTS = ["Once", ' upon "a" time\n', "\\ \u00e9\U0001f600", '"finish_reason":"stop"']
REASONING = _chunk({"reasoning_content": "hmm"})
TOOL = _chunk(
    {"tool_calls": [{"index": 0, "id": "call_1", "function": {"name": "f", "arguments": "{"}}]}
)
FINISH = _chunk({}, "stop")
USAGE = _chunk(None, usage={"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12})


def _sse(*payloads: bytes) -> bytes:
    return b"".join(b"data: " + p + b"\n\n" for p in payloads)


def _events(*payloads: bytes) -> list[StreamEvent]:
    """What the provider's decode path makes of these payloads."""
    out: list[StreamEvent] = []
    for payload in payloads:
        chunk_events(decode_chunk(payload), payload, out)
    return out


def _plain(*payloads: bytes) -> Chunks:
    chunks = plain_chunks(_sse(*payloads))
    assert chunks is not None
    return chunks


def _stream() -> list[Batch]:
    """A generation as the provider hands it over with plain chunks taken whole: the
    content reads as Chunks, the finish and usage decoded."""
    texts = [_chunk({"content": t}) for t in TEXTS]
    return [
        [_plain(ROLE, texts[0])],
        [_plain(*texts[1:], REASONING, TOOL)],
        _events(FINISH, USAGE),
    ]


def _decoded() -> list[Batch]:
    """The same generation decoded in full, as the provider hands it over today."""
    return [expand(batch) for batch in _stream()]


@pytest.fixture(autouse=True)
def _fixed_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    # Encoders stamp ``created``: two encoders built a second apart must agree.
    monkeypatch.setattr(time, "time", lambda: 1_700_000_000.0)


def _request(stream: bool = True) -> ChatRequest:
    return ChatRequest(
        model="m", messages=[{"role": "user", "content": "hi"}], stream=stream, include_usage=True
    )


def _passthrough_encoder() -> StreamEncoder:
    encoder = StreamEncoder(_request(), "chatcmpl-own")
    encoder.passthrough = True
    return encoder


def _encode(encoder: Encoder, batches: list[Batch]) -> bytes:
    return b"".join(encoder.encode(batch) for batch in batches) + encoder.end()


def test_the_stream_has_what_it_should() -> None:
    kinds = [type(e) for batch in _decoded() for e in batch]
    assert kinds == [TextDelta] * 5 + [ReasoningDelta, ToolCallDelta, Finish, Usage]
    assert [batch[0].count for batch in _stream()[:2]] == [2, 5]  # type: ignore[union-attr]


def test_passthrough_writes_the_upstream_bytes() -> None:
    batches = _stream()
    encoder = _passthrough_encoder()
    first, second = batches[0][0], batches[1][0]
    assert isinstance(first, Chunks)
    assert isinstance(second, Chunks)
    assert encoder.encode(batches[0]) is first.data
    assert encoder.encode(batches[1]) is second.data
    # The same bytes as forwarding each decoded event's raw payload.
    raw = _passthrough_encoder()
    assert b"".join(raw.encode(batch) for batch in _decoded()[:2]) == first.data + second.data
    assert _encode(encoder, batches[2:]) == _encode(raw, _decoded()[2:])


def test_passthrough_chunks_count_as_the_role_sent() -> None:
    encoder = StreamEncoder(_request(), "chatcmpl-own")
    encoder.passthrough = True
    encoder.encode([_plain(ROLE)])
    later = encoder.encode([TextDelta("own")])
    assert b'"role"' not in later
    assert b'"content":"own"' in later


def test_without_passthrough_chunks_encode_as_their_events() -> None:
    mixed: list[Batch] = [[TextDelta("before"), *_stream()[0], Finish("stop")]]
    for batches in (_stream(), mixed):
        expanded = [expand(batch) for batch in batches]
        got = _encode(StreamEncoder(_request(), "chatcmpl-own"), batches)
        want = _encode(StreamEncoder(_request(), "chatcmpl-own"), expanded)
        assert got == want
        assert b"chatcmpl-up" not in got  # encoded anew, for this response


def test_a_whole_completion_reads_chunks() -> None:
    got = _encode(CompletionEncoder(_request(False), "chatcmpl-own"), _stream())
    want = _encode(CompletionEncoder(_request(False), "chatcmpl-own"), _decoded())
    assert got == want
    message = orjson.loads(got)["choices"][0]["message"]
    assert message["content"] == "".join(TEXTS)
    assert message["reasoning_content"] == "hmm"


def test_text_dialect_reads_chunks() -> None:
    got = _encode(TextEncoder(), _stream())
    assert got == _encode(TextEncoder(), _decoded())
    assert got == "".join(TEXTS).encode()


def test_a_journal_holds_events_not_chunks() -> None:
    journal = Journal("j1")
    for batch in _stream():
        journal.append(batch)
    journal.complete()
    assert journal.batches == _decoded()
    assert not any(type(e) is Chunks for batch in journal.batches for e in batch)
    assert journal.storable()
    # The Redis backend's codec takes every batch.
    stored = decode_batches(encode_batches([(0.0, b) for b in journal.batches]))
    assert [batch for _, batch in stored] == [bare(b) for b in _decoded()]


def test_codec_refuses_chunks() -> None:
    with pytest.raises(TypeError, match="Chunks"):
        encode_batches([(0.0, [_plain(ROLE)])])


def test_a_kept_journal_replays_as_the_decoded_stream() -> None:
    async def replayed(batches: list[Batch]) -> tuple[list[Batch], bytes]:
        journals = MemoryJournals(max_entries=10, max_bytes=1 << 20)
        journal = journals.create("j")
        for batch in batches:
            journal.append(batch)
        journal.complete()
        assert await journals.keep("entry", journal, ttl=60)
        recording = await journals.lookup("entry")
        assert recording is not None
        kept = list(recording.batches)
        encoder = StreamEncoder(_request(), "chatcmpl-own")
        encoder.passthrough = True  # a kept entry has no raw payloads: encoded anew
        return kept, _encode(encoder, kept)

    with_chunks = asyncio.run(replayed(_stream()))
    decoded = asyncio.run(replayed(_decoded()))
    assert with_chunks == decoded


async def _relay(
    batches: list[Batch], encoder: Encoder, keep_text: bool
) -> tuple[Record, bytes, list[Message]]:
    record = Record(id="r1", started_at=time.time(), route="/v1/chat/completions")
    sent: list[Message] = []

    async def receive() -> Message:
        await asyncio.Event().wait()
        return {}

    async def send(message: Message) -> None:
        sent.append(message)

    async def stream() -> AsyncGenerator[Batch, None]:
        for batch in batches:
            yield batch

    exchange = Exchange({"headers": []}, receive, send, record)
    await relay(exchange, stream(), encoder, 0, keep_text=keep_text)
    body = b"".join(m.get("body", b"") for m in sent)
    return record, body, sent


@pytest.mark.parametrize("keep_text", [False, True])
def test_relay_counts_the_chunks_inside_and_keeps_their_text(keep_text: bool) -> None:
    encoder = _passthrough_encoder()
    record, body, sent = asyncio.run(_relay(_stream(), encoder, keep_text))
    decoded_record, decoded_body, _ = asyncio.run(
        _relay(_decoded(), _passthrough_encoder(), keep_text)
    )
    # Each upstream chunk here maps to one event, so both ways count the same.
    assert record.chunks == decoded_record.chunks == 9
    assert (record.input_tokens, record.output_tokens) == (7, 5)
    assert record.response == decoded_record.response
    assert record.response == ("".join(TEXTS) if keep_text else None)
    assert body == decoded_body
    assert body.startswith(_sse(ROLE))
    # One write per batch, as before.
    assert len([m for m in sent if m["type"] == "http.response.body"]) == 4


def test_relay_through_the_text_dialect() -> None:
    record, body, _ = asyncio.run(_relay(_stream(), TextEncoder(), True))
    assert body == "".join(TEXTS).encode()
    assert record.response == "".join(TEXTS)
    assert record.chunks == 9
