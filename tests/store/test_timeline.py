"""The token timeline: its encoding, its bound, and what the relay marks."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncGenerator
from typing import Any

from sluice.dialects.openai_chat import StreamEncoder
from sluice.events import Batch, ChatRequest, Finish, Message, TextDelta, TextPart, Usage
from sluice.exchange import Exchange
from sluice.relay import relay
from sluice.store import Record, timeline


def test_marks_round_trip_as_times_since_the_start() -> None:
    marks = [(250, 0), (3, 1), (20, 1), (0, 2), (1500, 1), (70, 1), (5, 300)]
    decoded = timeline.decode(timeline.encode(marks))
    assert decoded == [(250, 0), (253, 1), (273, 1), (273, 2), (1773, 1), (1843, 1), (1848, 300)]


def test_a_delta_under_64_ms_after_the_last_is_one_byte() -> None:
    assert len(timeline.encode([(20, 1)] * 100)) == 1 + 100
    assert len(timeline.encode([(64, 1)])) == 1 + 2  # the gap needs a second byte
    assert len(timeline.encode([(20, 2)])) == 1 + 2  # and so does a count other than 1


def test_nothing_or_an_unknown_version_decodes_to_no_marks() -> None:
    assert timeline.decode(None) == []
    assert timeline.decode(b"") == []
    assert timeline.decode(bytes([99, 4, 4])) == []
    assert timeline.decode(bytes(timeline.new())) == []


def test_past_the_cap_marks_coarsen_keeping_the_span_the_start_and_every_delta() -> None:
    marks = [(400, 1)] + [(20, 1)] * 20_000 + [(5000, 1)] + [(20, 1)] * 20_000
    # Drive it as the relay does: one mark per batch, at the grain in force.
    out = timeline.new()
    grain = last = counted = at = chunks = 0
    for gap, count in marks:
        at += gap
        chunks += count
        if at - last >= grain:
            grain, _ = timeline.append(out, at - last, chunks - counted, grain, chunks)
            last, counted = at, chunks
    if chunks != counted:
        timeline.append(out, at - last, chunks - counted, grain, chunks)
    assert len(out) <= timeline.MAX_BYTES
    assert grain > 0
    decoded = timeline.decode(out)
    assert decoded[0] == (400, 1)  # the first token keeps its time
    assert decoded[-1][0] == at  # the whole span
    assert sum(count for _, count in decoded) == chunks  # and every delta
    # The stall of 5 s is still there, to within the grain.
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(decoded)]
    assert max(gaps) >= 5000


async def _send(message: Any) -> None:
    return None


async def _receive() -> dict[str, Any]:
    await asyncio.sleep(3600)
    return {"type": "http.disconnect"}


async def _paced(delays: list[float]) -> AsyncGenerator[Batch, None]:
    for i, delay in enumerate(delays):
        await asyncio.sleep(delay)
        yield [TextDelta(f" w{i}")]
    yield [Finish("stop"), Usage(3, len(delays))]


def _relay(delays: list[float]) -> Record:
    record = Record(id="t", started_at=time.time(), route="/v1/chat/completions")
    scope = {"type": "http", "headers": [], "method": "POST", "path": record.route}
    exchange = Exchange(scope, _receive, _send, record)
    request = ChatRequest("m", [Message("user", [TextPart("hi")])])
    asyncio.run(relay(exchange, _paced(delays), StreamEncoder(request, "chatcmpl-t"), 0))
    return record


def test_the_relay_marks_when_each_batch_arrived() -> None:
    record = _relay([0.15, 0.01, 0.01, 0.3, 0.01])
    marks = timeline.decode(record.timeline)
    assert [count for _, count in marks] == [1, 1, 1, 1, 1, 0]  # the last: finish and usage
    times = [at for at, _ in marks]
    assert 140 <= times[0] < 400  # the first token, since the request started
    assert times == sorted(times)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert max(gaps) == gaps[2] >= 290  # the stall
    assert len(record.timeline or b"") < 20


def test_a_long_stream_stays_under_the_cap() -> None:
    record = _relay([0.0] * 30_000)
    assert record.timeline is not None
    assert len(record.timeline) <= timeline.MAX_BYTES
    assert sum(count for _, count in timeline.decode(record.timeline)) == 30_000


def test_marks_without_deltas_coarsen_too() -> None:
    out = timeline.new()
    grain = 0
    for _ in range(10_000):
        grain, _ = timeline.append(out, 30, 0, grain, 0)
    assert len(out) <= timeline.MAX_BYTES
    assert timeline.decode(out)[-1][0] == 300_000
