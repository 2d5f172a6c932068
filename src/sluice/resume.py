"""Relaying a generation that runs on its own (``sluice.generations``) to one client.

The client is one reader among any: when it leaves, only its reading stops. What it is
sent is the surface's encoder over the generation's events, optionally less the first
``skip`` events the encoder writes (a client that resumes after the N-th event).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Awaitable, Callable

from sluice.dialects import Encoder
from sluice.errors import SluiceError
from sluice.events import Batch, WireFormat
from sluice.exchange import Exchange
from sluice.journal import Cancelled
from sluice.relay import relay


class Skipping:
    """An SSE encoder that drops the first ``skip`` events it would write (keep-alive
    comments are not events: the relay writes them apart)."""

    streaming = True
    keepalive: bytes | None
    verbatim: WireFormat | None = None

    def __init__(self, inner: Encoder, skip: int) -> None:
        self._inner = inner
        self._skip = skip
        self.content_type = inner.content_type
        self.keepalive = inner.keepalive

    def _drop(self, data: bytes) -> bytes:
        while self._skip > 0 and data:
            cut = data.find(b"\n\n")
            if cut < 0:  # an event never spans two writes of an encoder
                return b""
            data = data[cut + 2 :]
            self._skip -= 1
        return data

    def encode(self, batch: Batch) -> bytes:
        return self._drop(self._inner.encode(batch))

    def end(self) -> bytes:
        return self._drop(self._inner.end())

    def error(self, exc: SluiceError) -> bytes:
        return self._drop(self._inner.error(exc))


class Discard:
    """The encoder of a generation's own run: its events go to the journal, no bytes
    anywhere (the relay only accounts them on the record)."""

    streaming = False
    content_type = b"application/octet-stream"
    keepalive: bytes | None = None
    verbatim: WireFormat | None = None

    def encode(self, batch: Batch) -> bytes:
        return b""

    def end(self) -> bytes:
        return b""

    def error(self, exc: SluiceError) -> bytes:
        return b""


async def never() -> dict[str, object]:
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


async def discard(message: object) -> None:
    return None


async def follow_to(
    exchange: Exchange,
    stream: AsyncGenerator[Batch, None],
    encoder: Encoder,
    keepalive: float,
    on_end: Callable[[], Awaitable[None]] | None = None,
    on_error: Callable[[SluiceError], bytes | None] | None = None,
) -> None:
    """Relay ``stream`` to the client until it ends or the client leaves.

    An error before the first byte is raised (the caller answers it with a status);
    after it, the encoder's in-band error (or ``on_error``'s bytes, when it gives some)
    and a close. ``on_end`` runs once the stream was sent whole."""
    record = exchange.record
    task = asyncio.current_task()
    assert task is not None
    watcher = exchange.watch_disconnect(task)
    try:
        async with contextlib.aclosing(stream):
            await relay(exchange, stream, encoder, keepalive)
        if on_end is not None:
            await on_end()
    except asyncio.CancelledError:
        if not exchange.disconnected:
            raise
        task.uncancel()
        record.outcome = "client_disconnected"
    except SluiceError as exc:
        if not exchange.started:
            raise
        record.outcome = "cancelled" if isinstance(exc, Cancelled) else "error"
        record.error = exc.message
        record.error_type = type(exc).__name__
        data = on_error(exc) if on_error is not None else None
        with contextlib.suppress(OSError):
            await exchange.write(encoder.error(exc) if data is None else data, more=False)
    finally:
        watcher.cancel()
