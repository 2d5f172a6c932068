"""The SSE decoder holds at most ``max_event`` bytes of an unfinished event."""

from __future__ import annotations

import pytest

from sluice.sse import MAX_EVENT, EventTooLarge, SSEDecoder


def test_a_line_longer_than_the_bound_is_refused_whatever_the_reads() -> None:
    decoder = SSEDecoder(max_event=1000)
    assert decoder.feed_data(b"data: ok\n\n") == [b"ok"]
    decoder.feed_data(b"data: " + b"x" * 500)
    with pytest.raises(EventTooLarge, match="longer than 1000 bytes"):
        decoder.feed_data(b"x" * 600)


def test_many_data_lines_of_one_event_count_together() -> None:
    decoder = SSEDecoder(max_event=1000)
    with pytest.raises(EventTooLarge):
        for _ in range(20):
            decoder.feed(b"data: " + b"y" * 99 + b"\r\n")


def test_events_up_to_the_bound_pass_and_each_event_starts_afresh() -> None:
    decoder = SSEDecoder(max_event=1000)
    for _ in range(5):
        assert decoder.feed_data(b"data: " + b"z" * 900 + b"\n\n") == [b"z" * 900]
        assert [e.data for e in decoder.feed(b"data: a\r\ndata: b\r\n\r\n")] == [b"a\nb"]


def test_the_default_bound() -> None:
    decoder = SSEDecoder()
    big = b"q" * (MAX_EVENT - 100)
    assert decoder.feed_data(b"data: " + big[:1000]) == []
    assert decoder.feed_data(big[1000:] + b"\n\n") == [big]
    with pytest.raises(EventTooLarge):
        decoder.feed_data(b"data: " + b"q" * (MAX_EVENT + 1))
