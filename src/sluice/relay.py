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
from sluice.events import TextDelta, Usage
from sluice.exchange import Exchange
from sluice.policies import Call
from sluice.providers import Batch


async def _next(stream: AsyncIterator[Batch]) -> Batch | None:
    try:
        return await stream.__anext__()
    except StopAsyncIteration:
        return None


async def _first(
    exchange: Exchange,
    stream: AsyncIterator[Batch],
    encoder: Encoder,
    interval: float,
    admitted: Callable[[], bool],
) -> Batch | None:
    """Wait for the first batch; on a stream, send keep-alives while it takes long.

    The head goes out with the first keep-alive, so until then a failure still gets
    a proper HTTP status.
    """
    keepalive = encoder.keepalive
    if keepalive is None or interval <= 0 or not encoder.streaming:
        return await _next(stream)
    pending = asyncio.ensure_future(_next(stream))
    try:
        while True:
            done, _ = await asyncio.wait((pending,), timeout=interval)
            if done:
                return pending.result()
            if not admitted():
                continue
            if not exchange.started:
                await exchange.start(200, head(encoder))
            await exchange.write(keepalive)
    finally:
        if not pending.done():
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait((pending,))


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
    if call is not None:
        # The router has run by now (policies in front of it may start it late).
        encoder.passthrough = call.passthrough
    encode = encoder.encode
    write = exchange.write
    chunks = 0
    while batch is not None:
        chunks += len(batch)
        for event in batch:
            if type(event) is Usage:
                record.input_tokens = event.input_tokens
                record.output_tokens = event.output_tokens
                record.usage_source = event.source
            elif text is not None and type(event) is TextDelta:
                text.append(event.text)
        data = encode(batch)
        if record.ttft_ms is None and (data or not encoder.streaming):
            record.ttft_ms = (time.perf_counter() - t0) * 1000
        if data and encoder.streaming:
            if not exchange.started:
                await exchange.start(200, head(encoder))
            await write(data)
        record.chunks = chunks
        batch = await _next(stream)
    if text is not None:
        record.response = "".join(text)
    tail = encoder.end()
    if not exchange.started:
        await exchange.start(200, head(encoder))
    await write(tail, more=False)
