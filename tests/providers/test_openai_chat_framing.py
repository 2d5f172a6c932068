"""The OpenAI chat decoder under every SSE framing an upstream may use: LF, CRLF or CR
line ends (mixed too), ``data:`` with or without its space, an event's JSON split over
several ``data:`` lines, comment blocks and comment lines (keep-alives), a leading BOM.

Whatever the framing and however the body is cut into reads, the three ways of
decoding give the same events, and the ``Verbatim`` bytes a passthrough client reads
hold exactly the upstream's ``data`` payloads, framed as one clean ``data:`` event each.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sluice.errors import SluiceError
from sluice.events import Batch, Start, StreamEvent, TextDelta, Verbatim, expand
from sluice.providers.openai_chat import ChatDecoder
from sluice.sse import SSEDecoder
from tests.providers.openai_chunks import SERIALISERS, Payload, Tagged, chunk_stream, reads

#: (verbatim, plain): unread content runs, every chunk as a Verbatim, decoded events.
MODES = [(True, True), (True, False), (False, False)]


@dataclass(frozen=True)
class Framing:
    eol: bytes
    space: bool  #: ``data: `` rather than ``data:``
    lines: bool  #: the JSON split over several ``data:`` lines
    block: bool  #: a comment block (a keep-alive event) before the event
    inline: bool  #: a comment line inside the event


#: As OpenAI frames its events: most are, so runs of them are left unread in between.
CLEAN = Framing(b"\n", space=True, lines=False, block=False, inline=False)
framings = st.one_of(
    st.just(CLEAN),
    st.builds(
        Framing,
        st.sampled_from([b"\n", b"\r\n", b"\r"]),
        st.booleans(),
        st.booleans(),
        st.booleans(),
        st.booleans(),
    ),
)


def _frame(payload: bytes, how: Framing) -> bytes:
    field_ = b"data: " if how.space else b"data:"
    out = b": keep-alive" + how.eol + how.eol if how.block else b""
    if how.inline:
        out += b": ping" + how.eol
    return out + b"".join(field_ + line + how.eol for line in payload.split(b"\n")) + how.eol


def _payload(item: Payload | bytes, serialiser: str, how: Framing) -> bytes:
    if isinstance(item, bytes):
        return item
    if how.lines:
        # JSON may break lines between tokens; each line becomes a ``data:`` line.
        return json.dumps(item, indent=1, ensure_ascii=not serialiser.endswith("utf-8")).encode()
    return SERIALISERS[serialiser](item)


@dataclass
class Decoded:
    batches: list[Batch] = field(default_factory=list)
    raised: str | None = None
    error: str | None = None

    def events(self) -> list[StreamEvent]:
        return [e for batch in self.batches for e in expand(batch)]

    def written(self) -> list[Verbatim]:
        return [e for batch in self.batches for e in batch if type(e) is Verbatim]


def decode(data: list[bytes], verbatim: bool, plain: bool) -> Decoded:
    """As the upstream loop feeds a decoder: read by read, until done or the body ends."""
    decoder = ChatDecoder(verbatim, plain)
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


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from([1, 1, 2]).flatmap(chunk_stream),
    st.sampled_from(sorted(SERIALISERS)),
    st.data(),
    st.booleans(),
    st.lists(st.integers(0, 20_000), max_size=10),
)
def test_any_framing_decodes_alike_and_passes_the_payloads_through(
    tagged: Tagged, serialiser: str, data: st.DataObject, bom: bool, cuts: list[int]
) -> None:
    items = [payload for _, payload in tagged]
    hows = data.draw(st.lists(framings, min_size=len(items) + 1, max_size=len(items) + 1))
    payloads = [_payload(item, serialiser, how) for item, how in zip(items, hows, strict=False)]
    payloads.append(b"[DONE]")
    raw = (b"\xef\xbb\xbf" if bom else b"") + b"".join(
        _frame(p, how) for p, how in zip(payloads, hows, strict=True)
    )
    # What the upstream said, as any SSE reader sees it.
    sent = SSEDecoder().feed_data(raw)
    assert sent == _seen(payloads, hows)

    data_reads = reads(raw, cuts)
    got = [decode(data_reads, verbatim, plain) for verbatim, plain in MODES]
    whole = decode([raw], False, False)
    reference = got[-1]
    for decoded in got:
        assert (decoded.raised, decoded.error) == (reference.raised, reference.error)
        # Read by read: what arrived together still goes out together.
        assert [expand(b) for b in decoded.batches] == reference.batches
    assert (whole.raised, whole.error) == (reference.raised, reference.error)
    if reference.raised is None:
        assert whole.events() == reference.events()
        # First, who answers: the upstream's id, model, time and fingerprint.
        start = Start(
            "openai_chat", "chatcmpl-1", "m", 1_700_000_000, None, {"system_fingerprint": "fp_1"}
        )
        assert reference.events()[0] == start

    forwarded = [tag for tag, _ in tagged]
    ended = next((i for i, tag in enumerate(forwarded) if tag in ("error", "bad")), len(items))
    for decoded in got[:2]:
        written = decoded.written()
        out = b"".join(v.data for v in written)
        # Clean framing: LF only, ``data: `` lines only, no comments.
        events = out.split(b"\n\n")
        assert events[-1] == b""
        lines = [line for event in events[:-1] for line in event.split(b"\n")]
        assert all(line.startswith(b"data: ") for line in lines)
        assert b"\r" not in out
        if reference.raised is None:
            # The client reads the upstream's payloads, each once, in order, byte for byte.
            assert SSEDecoder().feed_data(out) == sent[:ended]
            assert sum(v.count for v in written) == ended


def _seen(payloads: list[bytes], hows: list[Framing]) -> list[bytes]:
    """The payloads as an SSE reader gets them: ``data:`` without its space loses no
    byte, but a line that then starts with a space loses it (it reads as the space)."""
    out = []
    for payload, how in zip(payloads, hows, strict=True):
        lines = payload.split(b"\n")
        if not how.space:
            lines = [line.removeprefix(b" ") for line in lines]
        out.append(b"\n".join(lines))
    return out


def test_a_chunk_over_several_data_lines_goes_out_as_several_lines() -> None:
    role = b'data: {"id":"c1","model":"m","choices":[{"index":0,"delta":{"role":"assistant"}}]}\n\n'
    split = b'data: {"choices":[{"index":0,\ndata: "delta":{"content":"hi"}}]}\n\n'
    decoded = decode([role, b": keep-alive\n\n" + split], verbatim=True, plain=True)
    (chunk,) = decoded.batches[1]
    assert isinstance(chunk, Verbatim) and chunk.count == 1
    # Not ``data: {...,\n"delta":...}``: its second line would read as a field named
    # ``"delta"`` and the client would get half a chunk.
    assert chunk.data == split
    assert SSEDecoder().feed_data(chunk.data) == [
        b'{"choices":[{"index":0,\n"delta":{"content":"hi"}}]}'
    ]
    assert chunk.events == [TextDelta("hi")]
