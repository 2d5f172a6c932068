"""The SSE decoder and encoders, against the WHATWG HTML "event stream interpretation".

https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sluice.sse import (
    DONE,
    ServerSentEvent,
    SSEDecoder,
    encode_comment,
    encode_data,
    encode_event,
)

BOM = b"\xef\xbb\xbf"
#: Characters that ``str.splitlines()`` treats as line breaks but SSE does not, plus
#: multi-byte UTF-8 of every length (2, 3 and 4 bytes) and a BOM inside the text.
SPECIALS = "\u2028\u2029\x85\x0b\x0c\x1c\x1d\x1e\u00e9\u20ac\U0001f600\ufeff"
EOLS = ("\n", "\r", "\r\n")

# Text that fits on one SSE line: anything but CR and LF (and lone surrogates, which
# cannot be encoded), with the special characters drawn often.
line_text = st.text(
    st.one_of(
        st.sampled_from(SPECIALS),
        st.characters(codec="utf-8", exclude_characters="\r\n"),
    ),
    max_size=12,
)


def decode(reads: Iterable[bytes]) -> list[ServerSentEvent]:
    decoder = SSEDecoder()
    events: list[ServerSentEvent] = []
    for read in reads:
        events += decoder.feed(read)
    events += decoder.flush()
    return events


def decode_all(stream: bytes) -> list[ServerSentEvent]:
    return decode([stream])


def datas(events: list[ServerSentEvent]) -> list[bytes]:
    return [event.data for event in events]


@dataclass(frozen=True)
class Expected:
    data: bytes
    event: str
    id: str | None


@st.composite
def streams(draw: st.DrawFn) -> tuple[bytes, list[Expected]]:
    """An SSE byte stream and the events a conforming reader takes from it."""
    lines: list[str] = []
    expected: list[Expected] = []
    last_id: str | None = None

    def comments() -> None:
        for text in draw(st.lists(line_text, max_size=2)):
            lines.append(":" + text)

    for _ in range(draw(st.integers(0, 5))):
        comments()
        name = draw(st.none() | line_text)
        if name is not None:
            lines.append("event: " + name)
        event_id = draw(st.none() | line_text.filter(lambda text: "\0" not in text))
        if event_id is not None:
            lines.append("id: " + event_id)
            last_id = event_id
        data = draw(st.lists(line_text, min_size=1, max_size=4))
        for text in data:
            # "data:" drops one leading space, so only a value without one may omit it.
            spaced = text.startswith(" ") or draw(st.booleans())
            lines.append(("data: " if spaced else "data:") + text)
            comments()
        lines.append("")
        expected.append(Expected("\n".join(data).encode(), name or "message", last_id))
    comments()
    # An unterminated event at the end is discarded.
    lines.extend("data: " + text for text in draw(st.lists(line_text, max_size=2)))

    out: list[str] = []
    previous = ""
    for line in lines:
        eol = draw(st.sampled_from(EOLS))
        if previous == "\r" and not line and eol == "\n":
            # CR, then a blank line ended by LF, would read as one CRLF.
            eol = "\r\n"
        out += (line, eol)
        previous = eol
    stream = "".join(out).encode()
    if draw(st.booleans()):
        stream = BOM + stream
    return stream, expected


def summary(events: list[ServerSentEvent]) -> list[Expected]:
    return [Expected(event.data, event.event, event.id) for event in events]


@given(streams(), st.data())
def test_any_split_gives_the_same_events(
    case: tuple[bytes, list[Expected]], data: st.DataObject
) -> None:
    stream, expected = case
    # Repeated cut points make empty reads, which must change nothing either.
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    reads = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    assert b"".join(reads) == stream

    whole = decode_all(stream)
    assert summary(whole) == expected
    assert decode(reads) == whole
    assert decode(stream[i : i + 1] for i in range(len(stream))) == whole
    # The data-only reader gives each event's data, whatever the reads.
    decoder = SSEDecoder()
    assert [d for read in reads for d in decoder.feed_data(read)] == datas(whole)


#: Bytes that matter to the decoder, drawn often among random ones.
_SSE_BYTES = [b"data:", b"data: ", b"event:", b"id:", b"retry:", b"\n", b"\r", b"\r\n", b":", BOM]


@given(
    st.lists(st.binary(max_size=6) | st.sampled_from(_SSE_BYTES), max_size=40).map(b"".join),
    st.lists(st.integers(0, 400), max_size=10),
)
def test_any_bytes_in_any_reads_decode_alike_without_raising(
    stream: bytes, cuts: list[int]
) -> None:
    """Whatever an upstream sends, the decoder raises nothing, and how the bytes were
    cut into reads changes nothing."""
    points = sorted({0, len(stream)} | {c % (len(stream) + 1) for c in cuts})
    reads = [stream[a:b] for a, b in itertools.pairwise(points)]
    whole = decode_all(stream)
    assert decode(reads) == whole
    decoder = SSEDecoder()
    assert [d for read in reads for d in decoder.feed_data(read)] == datas(whole)


@given(
    st.text(st.one_of(st.sampled_from([*SPECIALS, "\r", "\n"]), st.characters(codec="utf-8"))),
    st.none() | line_text,
)
def test_encode_event_round_trips(text: str, name: str | None) -> None:
    payload = text.encode()
    wire = encode_event(payload, name)
    normal = payload.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    assert summary(decode_all(wire)) == [Expected(normal, name or "message", None)]
    # And with an event before and a comment between, read byte by byte.
    stream = encode_event("first") + encode_comment("ping") + wire
    events = decode(stream[i : i + 1] for i in range(len(stream)))
    assert datas(events) == [b"first", normal]


# -- Spec cases -------------------------------------------------------------------------


def test_one_space_after_the_colon_is_dropped() -> None:
    stream = b"data:a\n\ndata: b\n\ndata:  c\n\ndata:\tt\n\n"
    assert datas(decode_all(stream)) == [b"a", b"b", b" c", b"\tt"]


def test_the_spec_examples() -> None:
    # "The following stream fires two identical events" and the empty-data example.
    assert datas(decode_all(b"data:test\n\ndata: test\n\n")) == [b"test", b"test"]
    assert datas(decode_all(b"data\n\ndata\ndata\n\ndata:")) == [b"", b"\n"]
    stream = b": test stream\n\ndata: first event\nid: 1\n\ndata:second event\nid\n\n"
    stream += b"data:  third event\n\n"
    events = decode_all(stream)
    assert summary(events) == [
        Expected(b"first event", "message", "1"),
        Expected(b"second event", "message", ""),
        Expected(b" third event", "message", ""),
    ]


def test_a_field_with_no_colon_has_an_empty_value() -> None:
    events = decode_all(b"event\ndata\n\n")
    assert summary(events) == [Expected(b"", "message", None)]


def test_empty_data_is_an_empty_string_event() -> None:
    assert datas(decode_all(b"data:\n\n")) == [b""]
    assert datas(decode_all(b"data:\ndata:\n\n")) == [b"\n"]


def test_a_blank_line_without_data_dispatches_nothing() -> None:
    assert decode_all(b"\n\r\n\r: comment\n\nevent: ping\n\nid: 7\n\nretry: 10\n\n") == []
    # It still resets the event type, but not the last event ID.
    events = decode_all(b"event: ping\nid: 7\n\ndata: x\n\n")
    assert summary(events) == [Expected(b"x", "message", "7")]


def test_event_names() -> None:
    stream = "event: delta\ndata: 1\n\nevent:\ndata: 2\n\nevent: ünï\ndata: 3\n\n".encode()
    assert [event.event for event in decode_all(stream)] == ["delta", "message", "ünï"]


def test_unknown_fields_are_ignored() -> None:
    stream = b"foo: bar\nDATA: upper\nData: title\n data: leading space\nx\ndata: kept\n\n"
    assert summary(decode_all(stream)) == [Expected(b"kept", "message", None)]


def test_comments_are_ignored_anywhere() -> None:
    stream = b":\n: one\ndata: a\n:two\ndata: b\n:: three\n\n"
    assert datas(decode_all(stream)) == [b"a\nb"]


def test_the_last_event_id_persists_until_changed() -> None:
    stream = b"id: 1\ndata: a\n\ndata: b\n\nid: 2\ndata: c\n\nid\ndata: d\n\n"
    assert [event.id for event in decode_all(stream)] == ["1", "1", "2", ""]


def test_an_id_holding_nul_is_ignored() -> None:
    stream = b"id: 1\ndata: a\n\nid: 2\x003\ndata: b\n\n"
    assert [event.id for event in decode_all(stream)] == ["1", "1"]


def test_retry_only_takes_ascii_digits() -> None:
    values = ["1500", "0", "15x", "-1", "", " 10", "1.5", "\u0661\u0662"]
    stream = b"".join(f"retry: {v}\ndata: {i}\n\n".encode() for i, v in enumerate(values))
    assert [event.retry for event in decode_all(stream)] == [1500, 0] + [None] * 6


def test_flush_discards_an_unterminated_event() -> None:
    decoder = SSEDecoder()
    assert datas(decoder.feed(b"data: a\n\ndata: b\n")) == [b"a"]
    assert decoder.flush() == []
    assert datas(decode_all(b"data: a\n\ndata: b")) == [b"a"]
    assert decode_all(b"data: a\ndata: b\r") == []


@pytest.mark.parametrize(
    "reads",
    [
        [b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n"],
        [b"data: a\r", b"", b"\ndata: b\r\n", b"\r", b"", b"", b"\n"],
        [b"data: a\r\ndata: b\r", b"\n", b"\r\n"],
    ],
)
def test_a_crlf_split_across_reads_is_one_line_ending(reads: list[bytes]) -> None:
    assert datas(decode(reads)) == [b"a\nb"]


def test_cr_and_lf_alone_each_end_a_line() -> None:
    assert datas(decode_all(b"data: a\r\rdata: b\n\ndata: c\r\n\r\n")) == [b"a", b"b", b"c"]
    assert datas(decode([b"data: a\r", b"\r", b"data: b\n", b"\n"])) == [b"a", b"b"]
    assert datas(decode_all(b"data: a\n\r\n")) == [b"a"]  # LF, then a blank CRLF line


def test_unicode_line_separators_do_not_split_data() -> None:
    text = "a\u2028b\u2029c\x85d\x0be\x0cf\x1cg\x1dh\x1ei"
    assert len(text.splitlines()) == 9  # the bug class: these are not SSE line ends
    payload = text.encode()
    stream = b"data: " + payload + b"\n\n"
    assert datas(decode_all(stream)) == [payload]
    assert datas(decode(stream[i : i + 1] for i in range(len(stream)))) == [payload]


def test_a_character_split_across_reads_is_whole() -> None:
    payload = "é€😀".encode()
    stream = b"data: " + payload + b"\n\n"
    for cut in range(len(stream) + 1):
        assert datas(decode([stream[:cut], stream[cut:]])) == [payload]


def test_one_leading_bom_is_ignored() -> None:
    assert datas(decode_all(BOM + b"data: a\n\n")) == [b"a"]
    stream = BOM + b"data: a\n\n"
    assert datas(decode(stream[i : i + 1] for i in range(len(stream)))) == [b"a"]
    assert datas(decode([BOM, b"data: a\n\n"])) == [b"a"]
    assert datas(decode([BOM[:2], BOM[2:] + b"\n", b"data: a\n\n"])) == [b"a"]


def test_only_one_bom_and_only_at_the_start() -> None:
    # web-platform-tests eventsource/format-bom-2: the second BOM joins the field name.
    assert datas(decode_all(BOM + BOM + b"data: 1\n\ndata: 2\n\n")) == [b"2"]
    # format-bom: a BOM after the start is not special either.
    assert datas(decode_all(BOM + b"data: 1\n\n" + BOM + b"data: 2\n\ndata: 3\n\n")) == [
        b"1",
        b"3",
    ]
    assert datas(decode_all(b"data: " + BOM + b"\n\n")) == [BOM]


def test_a_stream_shorter_than_a_bom() -> None:
    assert decode([b"\xef", b"\xbb"]) == []
    assert datas(decode([b"\xef", b"\n", b"data: a\n\n"])) == [b"a"]
    assert datas(decode([b"\n", b"data: a\n\n"])) == [b"a"]


def test_data_is_bytes_as_sent() -> None:
    payload = b'{"x": "\xff\xfe"}'  # not UTF-8: left to whoever parses the payload
    assert datas(decode_all(b"data: " + payload + b"\n\n")) == [payload]


# -- Encoders --------------------------------------------------------------------------


def test_encode_data() -> None:
    wire = encode_data(b'{"choices":[]}')
    assert wire == b'data: {"choices":[]}\n\n'
    assert datas(decode_all(wire)) == [b'{"choices":[]}']


@pytest.mark.parametrize(
    ("data", "lines"),
    [
        ("one", [b"one"]),
        ("", [b""]),
        ("a\rb\nc\r\nd", [b"a", b"b", b"c", b"d"]),
        ("a\n", [b"a", b""]),
        ("\r\n\r", [b"", b"", b""]),
        (b"a\r\rb", [b"a", b"", b"b"]),
        ("a\u2028b", ["a\u2028b".encode()]),
    ],
)
def test_encode_event_splits_lines_as_readers_do(data: str | bytes, lines: list[bytes]) -> None:
    wire = encode_event(data, "delta")
    assert wire == b"event: delta\n" + b"".join(b"data: " + line + b"\n" for line in lines) + b"\n"
    assert summary(decode_all(wire)) == [Expected(b"\n".join(lines), "delta", None)]


def test_encode_event_without_a_name_is_a_message() -> None:
    assert encode_event("x") == b"data: x\n\n"
    assert [event.event for event in decode_all(encode_event("x", ""))] == ["message"]


@pytest.mark.parametrize("name", ["a\nb", "a\r", "\r\n"])
def test_encode_event_refuses_a_name_that_would_break_the_frame(name: str) -> None:
    with pytest.raises(ValueError, match="event name"):
        encode_event("x", name)


def test_encode_comment() -> None:
    assert encode_comment() == b":\n\n"
    assert encode_comment("ping") == b": ping\n\n"
    assert decode_all(encode_comment() + encode_comment("ping")) == []
    # Every line of a multi-line comment stays a comment: none can inject a field.
    wire = encode_comment("a\ndata: injected\rretry: 1\r\nevent: x")
    assert wire == b": a\n: data: injected\n: retry: 1\n: event: x\n\n"
    assert decode_all(wire + encode_data(b"real")) == [ServerSentEvent(b"real")]


def test_done() -> None:
    assert DONE == b"data: [DONE]\n\n"
    assert datas(decode_all(encode_data(b"{}") + DONE)) == [b"{}", b"[DONE]"]
