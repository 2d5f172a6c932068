"""The hot path: pull event batches, encode, write, account. Nothing else per chunk.

The next batch is pulled only after the previous write returned (the ASGI server's
``send`` waits for the socket to drain), so a slow client slows its own upstream read
and no queue grows anywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

from sluice.dialects import STREAM_HEADERS, Encoder
from sluice.events import (
    Batch,
    Embedding,
    Finish,
    ReasoningDelta,
    RefusalDelta,
    Start,
    StreamEvent,
    TextDelta,
    ToolCallDelta,
    Usage,
    Verbatim,
)
from sluice.exchange import Exchange
from sluice.policies import Call
from sluice.store import Record, timeline


async def _next(stream: AsyncIterator[Batch]) -> Batch | None:
    try:
        return await stream.__anext__()
    except StopAsyncIteration:
        return None


class _KeepAlive:
    """Keep-alive comments every ``interval`` while the first batch is awaited.

    While nothing is due it costs one timer on the loop, not a task: the task that
    writes is made only when a keep-alive is due, and never two at once, so there is
    one writer at a time and the head goes out once.
    """

    __slots__ = ("_admitted", "_encoder", "_exchange", "_handle", "_interval", "_loop", "_task")

    def __init__(
        self,
        exchange: Exchange,
        encoder: Encoder,
        interval: float,
        admitted: Callable[[], bool],
    ) -> None:
        self._exchange = exchange
        self._encoder = encoder
        self._interval = interval
        self._admitted = admitted
        self._loop = asyncio.get_running_loop()
        self._task: asyncio.Task[None] | None = None
        self._handle: asyncio.TimerHandle | None = self._loop.call_later(interval, self._due)

    def _due(self) -> None:
        self._handle = None
        self._task = self._loop.create_task(self._send())

    async def _send(self) -> None:
        exchange, encoder = self._exchange, self._encoder
        try:
            if self._admitted():
                if not exchange.started:
                    await exchange.start(200, head(encoder))
                assert encoder.keepalive is not None
                await exchange.write(encoder.keepalive)
        except Exception:  # the client is gone or the head failed: the main path will see
            return
        self._handle = self._loop.call_later(self._interval, self._due)

    async def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._handle is not None:  # re-armed by a send that finished meanwhile
            self._handle.cancel()
            self._handle = None


async def _first(
    exchange: Exchange,
    stream: AsyncIterator[Batch],
    encoder: Encoder,
    interval: float,
    admitted: Callable[[], bool],
) -> Batch | None:
    """Wait for the first batch; on a stream, send keep-alives while it takes long.

    The head goes out with the first keep-alive, so until then a failure still gets
    a proper HTTP status; keep-alives start only once the request was admitted.
    """
    if encoder.keepalive is None or interval <= 0 or not encoder.streaming:
        return await _next(stream)
    keeper = _KeepAlive(exchange, encoder, interval, admitted)
    try:
        return await _next(stream)
    finally:
        await keeper.stop()


def head(encoder: Encoder) -> list[tuple[bytes, bytes]]:
    headers = [(b"content-type", encoder.content_type)]
    if encoder.streaming:
        headers.extend(STREAM_HEADERS)
    return headers


async def relay(
    exchange: Exchange,
    stream: AsyncIterator[Batch],
    encoder: Encoder,
    keepalive_interval: float,
    keep_text: bool = False,
    call: Call | None = None,
) -> None:
    record = exchange.record
    t0 = time.perf_counter() - (time.time() - record.started_at)
    text: list[str] | None = [] if keep_text else None
    admitted = (lambda: call.admitted) if call is not None else (lambda: True)
    batch = await _first(exchange, stream, encoder, keepalive_interval, admitted)
    encode = encoder.encode
    write = exchange.write
    anext = stream.__anext__
    chunks = 0
    # The token timeline (store/timeline.py): a mark per batch, one byte for the common
    # one; on the record from the start, so a stream cut short keeps what it had.
    # Milliseconds from an integer clock (cheaper than a float one converted); one-byte
    # marks go in while ``chunks <= room``, which keeps the bytes under the cap.
    record.timeline = marks = timeline.new()
    mark = marks.append
    clock_ns = time.perf_counter_ns
    t0_ns = clock_ns() - int((time.time() - record.started_at) * 1e9)
    last = counted = grain = 0
    room = timeline.MAX_BYTES - len(marks)
    while batch is not None:
        for event in batch:
            kind = type(event)
            if kind is TextDelta:
                chunks += 1
                if text is not None and not event.choice:  # type: ignore[union-attr]
                    text.append(event.text)  # type: ignore[union-attr]
            elif kind is Verbatim:
                inner = event.events  # type: ignore[union-attr]
                if inner is not None:
                    chunks += _account(inner, record, text)
                else:
                    # A run of plain content chunks: one delta each, and no usage; its
                    # text is read only when kept.
                    chunks += event.count  # type: ignore[union-attr]
                    if text is not None:
                        _account(event.expanded(), record, text)  # type: ignore[union-attr]
            elif kind in _DELTAS:
                chunks += 1
            elif kind is Usage:
                _usage(event, record)  # type: ignore[arg-type]
            elif kind is Start:
                record.response_id = event.id  # type: ignore[union-attr]
                record.response_model = event.model  # type: ignore[union-attr]
            elif kind is Finish:
                _finish(event, record)  # type: ignore[arg-type]
        gap = (clock_ns() - t0_ns) // 1_000_000 - last
        if gap >= grain:
            if gap < 64 and chunks - counted == 1 and chunks <= room:
                mark(gap + gap)
            else:
                grain, room = timeline.append(marks, gap, chunks - counted, grain, chunks)
            last += gap
            counted = chunks
        data = encode(batch)
        if record.ttft_ms is None and (data or not encoder.streaming):
            record.ttft_ms = (time.perf_counter() - t0) * 1000
        if data and encoder.streaming:
            if not exchange.started:
                await exchange.start(200, head(encoder))
            await write(data)
        record.chunks = chunks
        try:
            batch = await anext()
        except StopAsyncIteration:
            batch = None
    if chunks != counted:  # left for a mark that a coarse grain did not make
        gap = (clock_ns() - t0_ns) // 1_000_000 - last
        timeline.append(marks, gap, chunks - counted, grain, chunks)
    if text is not None:
        record.response = "".join(text)
    tail = encoder.end()
    if not exchange.started:
        await exchange.start(200, head(encoder))
    await write(tail, more=False)


#: The events that carry output, besides text: what ``record.chunks`` counts (and what
#: an estimate of output tokens counts, when the upstream reported none).
_DELTAS = frozenset({ReasoningDelta, ToolCallDelta, RefusalDelta, Embedding})


def _usage(usage: Usage, record: Record) -> None:
    record.input_tokens = usage.input_tokens
    record.output_tokens = usage.output_tokens
    record.usage_source = usage.source


def _finish(finish: Finish, record: Record) -> None:
    reasons = record.finish_reasons
    record.finish_reasons = finish.reason if reasons is None else f"{reasons},{finish.reason}"


def _account(events: list[StreamEvent], record: Record, text: list[str] | None) -> int:
    """Read usage, finish reasons and (when kept) choice 0's text from ``events``; how
    many deltas."""
    deltas = 0
    for event in events:
        kind = type(event)
        if kind is TextDelta:
            deltas += 1
            if text is not None and not event.choice:  # type: ignore[union-attr]
                text.append(event.text)  # type: ignore[union-attr]
        elif kind in _DELTAS:
            deltas += 1
        elif kind is Usage:
            _usage(event, record)  # type: ignore[arg-type]
        elif kind is Finish:
            _finish(event, record)  # type: ignore[arg-type]
    return deltas
