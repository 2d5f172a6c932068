"""The provider's read splitter: any stream, cut into any reads, gives the same events
whether plain content chunks are left undecoded or not."""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sluice.events import Chunks, StreamEvent
from sluice.providers.openai import _split
from sluice.providers.openai_wire import DecodeError, chunk_events, decode_chunk, expand
from sluice.sse import SSEDecoder
from tests.providers.test_openai_wire_chunks import SERIALISERS, chunk_stream


def _reads(stream: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(stream)} | {c % (len(stream) + 1) for c in cuts})
    return [stream[a:b] for a, b in itertools.pairwise(points) if b > a]


def _events(item: bytes | Chunks) -> list[Any]:
    """What the provider makes of one item: events, or the payload itself for what
    it acts on rather than decodes ([DONE], error events, bad JSON)."""
    if isinstance(item, Chunks):
        return list(expand([item]))
    try:
        chunk = decode_chunk(item)
    except DecodeError:
        return [item]
    if chunk.error is not None:
        return [item]
    out: list[StreamEvent] = []
    chunk_events(chunk, item, out)
    for event in out:
        event.raw = None  # a run's events carry their own payloads; compare content
    return out


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(
    chunk_stream(),
    st.sampled_from(sorted(SERIALISERS)),
    st.lists(st.integers(0, 10_000), max_size=10),
    st.booleans(),
)
def test_split_reads_give_the_same_events(
    tagged: list[tuple[str, Any]], serialiser: str, cuts: list[int], crlf: bool
) -> None:
    dumps = SERIALISERS[serialiser]
    eol = b"\r\n" if crlf else b"\n"
    stream = b"".join(b"data: " + dumps(chunk) + eol + eol for _, chunk in tagged)
    stream += b"data: [DONE]" + eol + eol
    plain_decoder, split_decoder = SSEDecoder(), SSEDecoder()
    expected: list[Any] = []
    got: list[Any] = []
    forwarded: list[bytes] = []
    for read in _reads(stream, cuts):
        for payload in plain_decoder.feed_data(read):
            expected.extend(_events(payload))
        for item in _split(read, split_decoder):
            got.extend(_events(item))
            if isinstance(item, Chunks):
                forwarded.append(item.data)
    for event in got:
        if not isinstance(event, bytes):
            event.raw = None
    assert got == expected
    assert expected[-1] == b"[DONE]"
    if crlf:
        assert not forwarded  # only LF-framed events are passed along undecoded
    assert all(data in stream for data in forwarded)  # as the upstream sent them


def test_a_burst_read_passes_its_content_chunks_undecoded() -> None:
    chunk = b'data: {"choices":[{"index":0,"delta":{"content":"w%d"},"finish_reason":null}]}\n\n'
    body = b"".join(chunk.replace(b"%d", str(i).encode()) for i in range(50))
    finish = b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
    usage = b'data: {"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":50}}\n\n'
    stream = body + finish + usage + b"data: [DONE]\n\n"
    decoder = SSEDecoder()
    # Cut inside the 10th event, then read the rest at once (with the finish and usage).
    cut = len(chunk) * 9 + 20
    first = _split(stream[:cut], decoder)
    second = _split(stream[cut:], decoder)
    assert [type(i) for i in first] == [bytes, Chunks]  # the very first event is decoded
    assert isinstance(first[1], Chunks) and first[1].count == 8
    assert [type(i) for i in second] == [bytes, Chunks, bytes, bytes, bytes]
    assert isinstance(second[1], Chunks) and second[1].count == 40
    assert second[2:] == [finish[6:-2], usage[6:-2], b"[DONE]"]
