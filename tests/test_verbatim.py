"""``Verbatim`` through every consumer of event batches: the encoders, the journal, its
codec and kept entries, and the relay.

The batches are what the OpenAI chat wire makes of one upstream stream, read by read,
with ``verbatim`` and without. An OpenAI stream encoder writes the former's bytes as
they came; every other consumer must give what the decoded batches give.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator
from itertools import pairwise
from typing import Any

import orjson
import pytest

from sluice.dialects import Encoder
from sluice.dialects.openai_chat import CompletionEncoder, StreamEncoder
from sluice.dialects.text import TextEncoder
from sluice.events import (
    Batch,
    ChatRequest,
    Finish,
    Message,
    PartEnd,
    Start,
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
from sluice.journal.memory import MemoryJournals
from sluice.providers.openai_chat import OpenAIChatWire
from sluice.relay import relay
from sluice.store import Record
from tests.providers.openai_chunks import Payload, choice, chunk

TEXTS = ["Once", ' upon "a" time\n', "\\ \u00e9\U0001f600", '"finish_reason":"stop"']
CALL = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": ""}}
USAGE = {
    "prompt_tokens": 7,
    "completion_tokens": 9,
    "total_tokens": 16,
    "prompt_tokens_details": {"cached_tokens": 3},
    "completion_tokens_details": {"reasoning_tokens": 2},
}


def _event(delta: Payload, finish: str | None = None) -> bytes:
    return b"data: " + orjson.dumps(chunk([choice(delta, finish)], True)) + b"\n\n"


#: One upstream stream and the reads it arrives in: the role chunk; the reasoning; two
#: content chunks and the start of a third; the rest of it and a fourth; a tool call,
#: the finish, the usage and ``[DONE]``.
CHUNKS = [
    _event({"role": "assistant", "content": ""}),
    _event({"reasoning_content": "hmm", "content": None}),
    _event({"reasoning_content": " well", "content": None}),
    *(_event({"content": text}) for text in TEXTS),
    _event({"tool_calls": [CALL]}),
    _event({"tool_calls": [{"index": 0, "function": {"arguments": '{"a":1}'}}]}),
    _event({}, "tool_calls"),
    b"data: " + orjson.dumps(chunk([], False, usage=USAGE)) + b"\n\n",
]
DONE = b"data: [DONE]\n\n"
UPSTREAM = b"".join(CHUNKS) + DONE
_ENDS = [len(b"".join(CHUNKS[:i])) for i in (1, 3)] + [len(b"".join(CHUNKS[:5])) + 20]
_ENDS += [len(b"".join(CHUNKS[:7])), len(UPSTREAM)]
READS = [UPSTREAM[a:b] for a, b in pairwise([0, *_ENDS])]


def _request(stream: bool = True, include_usage: bool = True) -> ChatRequest:
    return ChatRequest(
        model="alias",
        messages=[Message("user", [TextPart("hi")])],
        stream=stream,
        include_usage=include_usage,
    )


def _batches(verbatim: bool) -> list[Batch]:
    decoder = OpenAIChatWire().decoder(_request(), verbatim)
    batches = [decoder.feed(read) for read in READS]
    assert decoder.done and decoder.error is None
    return batches


@pytest.fixture(autouse=True)
def _fixed_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    # Encoders stamp ``created`` when the stream's Start does not: two encoders must agree.
    monkeypatch.setattr(time, "time", lambda: 1_700_000_000.0)


def _encode(encoder: Encoder, batches: list[Batch]) -> bytes:
    return b"".join(encoder.encode(batch) for batch in batches) + encoder.end()


def _read_back(sse: bytes) -> list[StreamEvent]:
    """What an OpenAI chat wire makes of an encoder's output."""
    decoder = OpenAIChatWire().decoder(_request(), False)
    events = decoder.feed(sse)
    assert decoder.done
    return events


def test_the_stream_passes_its_text_unread() -> None:
    verbatim, decoded = _batches(True), _batches(False)
    assert [expand(b) for b in verbatim] == decoded
    # Content chunks that start a read go along unread; the cut one is read.
    unread = [e for b in verbatim for e in b if type(e) is Verbatim and e.events is None]
    assert [v.count for v in unread] == [2, 1]
    events = [e for b in decoded for e in b]
    assert [type(e) for e in events].count(TextDelta) == len(TEXTS)
    assert events[-3:] == [
        PartEnd(2),
        Finish("tool_calls", "tool_calls"),
        Usage(7, 9, "reported", 3, 0, 2),
    ]


def test_passthrough_writes_the_upstream_bytes_one_write_per_read() -> None:
    encoder = StreamEncoder(_request(), "chatcmpl-own")
    batches = _batches(True)
    writes = [encoder.encode(batch) for batch in batches]
    # Each read's whole chunks; the cut one goes out with the read that ends it.
    assert writes == [
        READS[0],
        READS[1],
        b"".join(CHUNKS[3:5]),
        CHUNKS[5] + CHUNKS[6],
        READS[4][: -len(DONE)],
    ]
    assert b"".join(writes) + encoder.end() == UPSTREAM


def test_a_read_left_unread_is_written_as_that_very_object() -> None:
    decoder = OpenAIChatWire().decoder(_request(), True)
    decoder.feed(CHUNKS[0] + CHUNKS[3])  # the first read is read: the text part is open
    [run] = decoder.feed(CHUNKS[4] + CHUNKS[5])
    assert type(run) is Verbatim and run.events is None
    encoder = StreamEncoder(_request(), "chatcmpl-own")
    assert encoder.encode([run]) is run.data  # no copy


def test_passthrough_drops_the_usage_chunk_only_the_gateway_asked_for() -> None:
    got = _encode(StreamEncoder(_request(include_usage=False), "chatcmpl-own"), _batches(True))
    assert got == b"".join(CHUNKS[:-1]) + DONE


def test_passthrough_and_encoding_anew_tell_the_same_stream() -> None:
    passed = _encode(StreamEncoder(_request(), "chatcmpl-own"), _batches(True))
    encoded = _encode(StreamEncoder(_request(), "chatcmpl-own"), _batches(False))
    assert passed != encoded  # one is the upstream's bytes, the other the gateway's
    assert _read_back(passed) == _read_back(encoded) == [e for b in _batches(False) for e in b]


def test_events_after_verbatim_chunks_carry_their_id_and_no_second_role() -> None:
    encoder = StreamEncoder(_request(), "chatcmpl-own")
    encoder.encode(_batches(True)[0])
    # Events of another format in the same response: encoded under the upstream's id
    # and model (its Start was this format's), and the role was already sent.
    other = Verbatim("anthropic_messages", b"event: x\ndata: {}\n\n", 1, None, [TextDelta("own")])
    later = orjson.loads(encoder.encode([other])[6:-2])
    assert (later["id"], later["model"], later["created"]) == ("chatcmpl-1", "m", 1700000000)
    assert later["choices"][0]["delta"] == {"content": "own"}


def test_a_start_of_another_format_keeps_the_gateway_id() -> None:
    encoder = StreamEncoder(_request(), "chatcmpl-own")
    start = Start("anthropic_messages", "msg_1", "claude", 5)
    body = Verbatim("anthropic_messages", b"event: x\ndata: {}\n\n", 1, None, [TextDelta("hi")])
    first = orjson.loads(encoder.encode([start, body])[6:-2])
    assert (first["id"], first["model"], first["created"]) == ("chatcmpl-own", "claude", 1700000000)
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": "hi"}


def test_a_whole_completion_reads_verbatim_chunks() -> None:
    got = _encode(CompletionEncoder(_request(False), "chatcmpl-own"), _batches(True))
    want = _encode(CompletionEncoder(_request(False), "chatcmpl-own"), _batches(False))
    assert got == want
    answer = orjson.loads(got)
    assert (answer["id"], answer["model"], answer["system_fingerprint"]) == (
        "chatcmpl-1",
        "m",
        "fp_1",
    )
    message = answer["choices"][0]["message"]
    assert message["content"] == "".join(TEXTS)
    assert message["reasoning_content"] == "hmm well"
    assert message["tool_calls"][0]["function"] == {"name": "f", "arguments": '{"a":1}'}
    assert answer["usage"]["prompt_tokens_details"] == {"cached_tokens": 3}


def test_the_text_dialect_reads_verbatim_chunks() -> None:
    got = _encode(TextEncoder(), _batches(True))
    assert got == _encode(TextEncoder(), _batches(False)) == "".join(TEXTS).encode()


def test_a_journal_holds_events_not_verbatim() -> None:
    journal = Journal("j1")
    for batch in _batches(True):
        journal.append(batch)
    journal.complete()
    assert journal.batches == _batches(False)
    assert journal.storable()
    # The Redis backend's codec takes every batch.
    stored = decode_batches(encode_batches([(0.0, b) for b in journal.batches]))
    assert [batch for _, batch in stored] == _batches(False)


def test_the_codec_refuses_verbatim() -> None:
    with pytest.raises(TypeError, match="Verbatim"):
        encode_batches([(0.0, _batches(True)[1])])


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
        # A replay has only events: an OpenAI client gets them encoded anew.
        return kept, _encode(StreamEncoder(_request(), "chatcmpl-own"), kept)

    kept, replay = asyncio.run(replayed(_batches(True)))
    assert (kept, replay) == asyncio.run(replayed(_batches(False)))
    assert _read_back(replay) == [e for b in _batches(False) for e in b]


async def _relay(
    batches: list[Batch], encoder: Encoder, keep_text: bool
) -> tuple[Record, list[ASGIMessage]]:
    """Relay ``batches`` to an ASGI ``send`` that keeps what it was given."""
    record = Record(id="r1", started_at=time.time(), route="/v1/chat/completions")
    sent: list[ASGIMessage] = []

    async def receive() -> ASGIMessage:
        await asyncio.Event().wait()
        return {}

    async def send(message: ASGIMessage) -> None:
        sent.append(message)

    async def stream() -> AsyncGenerator[Batch, None]:
        for batch in batches:
            yield batch

    exchange = Exchange({"headers": []}, receive, send, record)
    await relay(exchange, stream(), encoder, 0, keep_text=keep_text)
    return record, sent


def _body(sent: list[ASGIMessage]) -> list[Any]:
    return [m["body"] for m in sent if m["type"] == "http.response.body"]


@pytest.mark.parametrize("keep_text", [False, True])
def test_the_relay_writes_each_read_and_accounts_from_the_verbatim_events(keep_text: bool) -> None:
    record, sent = asyncio.run(
        _relay(_batches(True), StreamEncoder(_request(), "chatcmpl-own"), keep_text)
    )
    # One write per upstream read, then the end.
    assert _body(sent) == [*(w for w in _passthrough_writes()), DONE]
    assert b"".join(_body(sent)) == UPSTREAM
    # Chunks counts the deltas that carried output: 2 reasoning, 4 text, 2 tool call.
    assert record.chunks == 8
    assert (record.input_tokens, record.output_tokens, record.usage_source) == (7, 9, "reported")
    assert record.response == ("".join(TEXTS) if keep_text else None)


def _passthrough_writes() -> list[bytes]:
    encoder = StreamEncoder(_request(), "chatcmpl-own")
    return [encoder.encode(batch) for batch in _batches(True)]


def test_the_relay_through_the_text_dialect_reads_the_verbatim_text() -> None:
    record, sent = asyncio.run(_relay(_batches(True), TextEncoder(), True))
    decoded, _ = asyncio.run(_relay(_batches(False), TextEncoder(), True))
    assert b"".join(_body(sent)) == "".join(TEXTS).encode()
    assert record.response == decoded.response == "".join(TEXTS)
    assert (record.input_tokens, record.output_tokens) == (decoded.input_tokens, 9)


def test_expand_leaves_a_batch_without_verbatim_as_it_is() -> None:
    batch: Batch = [TextDelta("a"), Finish("stop")]
    assert expand(batch) is batch


def test_expand_keeps_order_around_verbatim_and_reads_lazily() -> None:
    calls: list[bytes] = []

    def decode(data: bytes) -> list[StreamEvent]:
        calls.append(data)
        return [TextDelta("b"), TextDelta("c")]

    lazy = Verbatim("openai_chat", b"bc", 2, decode)
    decoded = Verbatim("openai_chat", b"d", 1, None, [ToolCallDelta(1, "x")])
    assert calls == []
    expanded = expand([TextDelta("a"), lazy, decoded, Finish("stop")])
    assert expanded == [
        TextDelta("a"),
        TextDelta("b"),
        TextDelta("c"),
        ToolCallDelta(1, "x"),
        Finish("stop"),
    ]
    assert calls == [b"bc"]
