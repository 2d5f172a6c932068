"""The OpenAI chat decoder with ``verbatim``: any stream, cut into any reads, gives the
same events read by read as the decoder without it, and its ``Verbatim`` bytes are the
upstream's chunks as they came, each counted once."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sluice.errors import SluiceError
from sluice.events import (
    Annotations,
    Batch,
    ChatRequest,
    Finish,
    Message,
    PartEnd,
    ReasoningDelta,
    RedactedReasoning,
    RefusalDelta,
    Start,
    StreamError,
    StreamEvent,
    TextDelta,
    TextPart,
    ToolCallDelta,
    Usage,
    Verbatim,
    expand,
)
from sluice.providers.openai_chat import OpenAIChatWire
from tests.providers.openai_chunks import SERIALISERS, Tagged, chunk_stream, reads, sse

WIRE = OpenAIChatWire()


def _request(n: int) -> ChatRequest:
    return ChatRequest(model="m", messages=[Message("user", [TextPart("hi")])], n=n)


@dataclass
class Decoded:
    """What the upstream loop gets from a decoder, read by read (empty batches too)."""

    batches: list[Batch] = field(default_factory=list)
    #: What ``feed`` or ``eof`` raised, and the in-band error it reported.
    raised: str | None = None
    error: str | None = None

    def events(self) -> list[StreamEvent]:
        return [e for batch in self.batches for e in expand(batch)]


def decode(data: list[bytes], verbatim: bool, n: int = 1) -> Decoded:
    """Feed ``data`` read by read as ``providers.upstream`` does: stop once done, and
    tell the decoder about the end of the body if it was not."""
    decoder = WIRE.decoder(_request(n), verbatim)
    out = Decoded()
    try:
        for read in data:
            out.batches.append(decoder.feed(read))
            if decoder.done:
                break
        else:
            decoder.eof()
    except SluiceError as exc:
        out.raised = f"{type(exc).__name__}: {exc.message}"
    if decoder.error is not None:
        out.error = decoder.error.message
    return out


_DELTAS = {
    TextDelta: "text",
    Annotations: "text",
    ReasoningDelta: "reasoning",
    RefusalDelta: "refusal",
    ToolCallDelta: "call",
    RedactedReasoning: "redacted",
}


def check_conventions(events: list[StreamEvent]) -> None:
    """The event conventions of ``sluice.events``: one ``Start``, first; per choice,
    parts numbered from 0 in the order they start, each of one kind, each ended by a
    ``PartEnd`` before the next starts and before the choice's ``Finish``."""
    assert not events or type(events[0]) is Start
    assert not any(type(e) is Start for e in events[1:])
    open_: dict[int, int | None] = {}
    kinds: dict[tuple[int, int], str] = {}
    finished: set[int] = set()
    for event in events[1:]:
        kind = type(event)
        if kind in _DELTAS:
            choice: int = event.choice  # type: ignore[union-attr]
            index: int = event.index  # type: ignore[union-attr]
            assert choice not in finished, event
            if open_.get(choice) != index:
                assert open_.get(choice) is None, f"{event} starts before part {open_[choice]} ends"
                assert index == sum(1 for c, _ in kinds if c == choice), event
                open_[choice] = index
                kinds[choice, index] = _DELTAS[kind]
            assert kinds[choice, index] == _DELTAS[kind], event
        elif kind is PartEnd:
            assert isinstance(event, PartEnd)
            assert open_.get(event.choice) == event.index, event
            open_[event.choice] = None
        elif kind is Finish:
            assert isinstance(event, Finish)
            assert open_.get(event.choice) is None, event
            finished.add(event.choice)


def _written(batches: list[Batch]) -> list[Verbatim]:
    return [e for batch in batches for e in batch if type(e) is Verbatim]


def _chunk_events(tagged: Tagged, dumps: Any) -> list[bytes]:
    """The events of the chunks a stream passes along: up to its error, bad payload or
    ``[DONE]``, LF-framed."""
    out = []
    for tag, payload in tagged:
        if tag in ("error", "bad"):
            break
        assert not isinstance(payload, bytes)
        out.append(b"data: " + dumps(payload) + b"\n\n")
    return out


STREAM_SETTINGS = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@STREAM_SETTINGS
@given(
    st.sampled_from([1, 1, 1, 2]).flatmap(lambda n: st.tuples(st.just(n), chunk_stream(n))),
    st.sampled_from(sorted(SERIALISERS)),
    st.lists(st.integers(0, 10_000), max_size=10),
    st.booleans(),
)
def test_verbatim_reads_expand_to_the_decoded_events(
    stream: tuple[int, Tagged], serialiser: str, cuts: list[int], crlf: bool
) -> None:
    n, tagged = stream
    dumps = SERIALISERS[serialiser]
    raw = b"".join(sse(tagged, dumps, b"\r\n" if crlf else b"\n"))
    data = reads(raw, cuts)
    plain = decode(data, verbatim=False, n=n)
    verbatim = decode(data, verbatim=True, n=n)
    # Read by read: what arrived together still goes out together.
    assert [expand(b) for b in verbatim.batches] == plain.batches
    assert (verbatim.raised, verbatim.error) == (plain.raised, plain.error)
    # However the body is cut, the events are the same.
    assert plain.raised is not None or plain.events() == decode([raw], False, n).events()
    check_conventions(plain.events())

    written = _written(verbatim.batches)
    chunks = _chunk_events(tagged, dumps)
    if plain.raised is None:
        # Every chunk passed along exactly once, in order, as the upstream sent it
        # (framed with LF: a CRLF stream is re-framed, its payloads untouched).
        assert b"".join(v.data for v in written) == b"".join(chunks)
        assert sum(v.count for v in written) == len(chunks)
    for v in written:
        assert v.format == "openai_chat"
        inner = v.expanded()
        assert not any(type(e) in (Start, Verbatim) for e in inner)
        if v.events is None:
            # Left unread: only whole LF-framed content chunks of choice 0, which the
            # relay need not look into for usage or an end.
            assert not crlf and n == 1
            assert v.data in raw
            assert all(type(e) is TextDelta and e.choice == 0 for e in inner)
        else:
            assert not any(type(e) is StreamError for e in inner)
    for batch in verbatim.batches:
        for event in batch:
            assert type(event) in (Start, Verbatim), "with verbatim every chunk is a Verbatim"


def _content(i: int) -> bytes:
    body = b'{"choices":[{"index":0,"delta":{"content":"w%d"},"finish_reason":null}]}' % i
    return b"data: " + body + b"\n\n"


def test_a_burst_read_passes_its_content_chunks_unread() -> None:
    role = b'data: {"id":"c1","model":"m","choices":[{"index":0,"delta":{"role":"assistant"}}]}\n\n'
    body = b"".join(_content(i) for i in range(50))
    finish = b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
    usage = b'data: {"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":50}}\n\n'
    raw = role + body + finish + usage + b"data: [DONE]\n\n"
    # The role chunk alone (it names the response, so it is read), then up to inside
    # the 10th content chunk, then the rest at once.
    cut = len(role) + len(_content(0)) * 9 + 20
    decoded = decode([raw[: len(role)], raw[len(role) : cut], raw[cut:]], verbatim=True)
    first, second, third = decoded.batches
    assert decoded.raised is None
    start, role_chunk = first
    assert isinstance(start, Start) and (start.id, start.model) == ("c1", "m")
    assert isinstance(role_chunk, Verbatim) and role_chunk.data == role
    assert role_chunk.events == []
    [run] = second
    assert isinstance(run, Verbatim) and run.events is None and run.count == 9
    assert run.data == raw[len(role) : len(role) + len(_content(0)) * 9]
    assert expand(second) == [TextDelta(f"w{i}") for i in range(9)]
    # The rest of the cut chunk is read through the SSE decoder, the run after it is
    # not, and the finish and usage chunks are read (they end the stream).
    assert [(v.count, v.events is None) for v in _written([third])] == [
        (1, False),
        (40, True),
        (1, False),
        (1, False),
    ]
    tail = _written([third])
    assert tail[0].data == _content(9) and tail[1].data == body[len(_content(0)) * 10 :]
    assert tail[2].events == [PartEnd(0), Finish("stop", "stop")]
    assert tail[3].events == [Usage(1, 50)]
    assert b"".join(v.data for v in _written(decoded.batches)) == raw[: -len(b"data: [DONE]\n\n")]


def test_a_run_after_reasoning_opens_the_text_part_first() -> None:
    role = b'data: {"id":"c1","model":"m","choices":[{"index":0,"delta":{"role":"assistant"}}]}\n\n'
    think = b'data: {"choices":[{"index":0,"delta":{"reasoning_content":"hmm"}}]}\n\n'
    decoded = decode([role + think, _content(0) + _content(1)], verbatim=True)
    run = decoded.batches[1]
    # The reasoning part ends with a Verbatim of no bytes: the run holds only text.
    assert [(type(v), v.data, v.count) for v in run if type(v) is Verbatim] == [
        (Verbatim, b"", 0),
        (Verbatim, _content(0) + _content(1), 2),
    ]
    assert expand(run) == [PartEnd(0), TextDelta("w0", 1), TextDelta("w1", 1)]


def test_a_read_that_ends_a_reasoning_chunk_then_holds_text_numbers_the_text_part() -> None:
    """The run's part is settled after the read's first payload, which finishes an
    event begun in the read before, was decoded."""
    role = b'data: {"id":"c1","model":"m","choices":[{"index":0,"delta":{"role":"assistant"}}]}\n\n'
    think = b'data: {"choices":[{"index":0,"delta":{"reasoning_content":"hmm"}}]}\n\n'
    raw = role + think + _content(0) + _content(1)
    cut = len(role) + 10
    decoded = decode([raw[:cut], raw[cut:]], verbatim=True)
    assert expand(decoded.batches[1]) == [
        ReasoningDelta("hmm", 0),
        PartEnd(0),
        TextDelta("w0", 1),
        TextDelta("w1", 1),
    ]


def test_chunks_without_text_are_read_so_they_start_no_part() -> None:
    """Chunks with empty content, or none, map to no event: left unread they would
    have opened an empty text part between the reasoning and the tool call."""
    role = b'data: {"id":"c1","model":"m","choices":[{"index":0,"delta":{"role":"assistant"}}]}\n\n'
    think = b'data: {"choices":[{"index":0,"delta":{"reasoning_content":"hmm"}}]}\n\n'
    empty = (
        b'data: {"choices":[{"index":0,"delta":{"content":""}}]}\n\n'
        b'data: {"choices":[{"index":0,"delta":{}}]}\n\n'
        b'data: {"choices":[]}\n\n'
    )
    call = b'data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"c"}]}}]}\n\n'
    decoded = decode([role + think, empty, call], verbatim=True)
    assert [v.events is None for v in _written(decoded.batches[1:2])] == [False] * 3
    assert decoded.events()[1:] == [ReasoningDelta("hmm", 0), PartEnd(0), ToolCallDelta(1, "c")]
