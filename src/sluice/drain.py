"""Graceful shutdown: what SIGTERM does to a gateway that is serving streams.

    SIGTERM ─► draining: /readyz answers 503, new requests 503 (``shutting_down``)
                 │  streams in flight run on, for up to ``shutdown_grace`` seconds
                 ▼
               the grace is over (or nothing is in flight any more)
                 │  each stream still running is stopped: its API's in-band error,
                 │  a record with outcome ``shutdown``
                 ▼
               the ASGI server's own shutdown: connections closed, lifespan shutdown
               (pending records written), the process exits

The server (uvicorn, also each of ``--workers``) catches SIGTERM itself and then stops
listening at once. ``install`` puts a handler in front of the server's: the first SIGTERM
starts draining, and only once the drain is over is the server's handler called, as if
the signal arrived then. A second SIGTERM, or SIGINT, goes to the server at once.

What is stopped at the deadline registers a stop with ``track``: every stream the
gateway relays does, and so must any generation that runs without a client (background
generations), so that it is marked failed rather than lost.
"""

from __future__ import annotations

import asyncio
import logging
import math
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

log = logging.getLogger("sluice")

#: After the stops at the deadline, how long the stopped requests get to write their
#: error and their record before the server's shutdown takes over.
STOP_WAIT = 5.0

Stop = Callable[[], None]
_Handler = Callable[[int, FrameType | None], Any]


class Drain:
    """Requests in flight, and the drain that SIGTERM starts."""

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self.draining = False
        self._inflight = 0
        self._stops: dict[object, Stop] = {}
        self._idle: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._previous: _Handler | None = None
        self._task: asyncio.Task[None] | None = None

    # -- requests ----------------------------------------------------------------

    def enter(self) -> None:
        self._inflight += 1

    def leave(self) -> None:
        self._inflight -= 1
        if self._inflight <= 0 and self._idle is not None:
            self._idle.set()

    def track(self, stop: Stop) -> Callable[[], None]:
        """Call ``stop`` if the grace ends while this is still running; the function
        returned forgets it (call it when done)."""
        token = object()
        self._stops[token] = stop

        def forget() -> None:
            self._stops.pop(token, None)

        return forget

    # -- the signal --------------------------------------------------------------

    def install(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Put the drain in front of the server's SIGTERM handler; False (nothing done)
        off the main thread, or when no Python handler is there to hand over to."""
        if threading.current_thread() is not threading.main_thread():
            return False
        previous = signal.getsignal(signal.SIGTERM)
        if not callable(previous):
            return False
        self._loop = loop
        self._previous = previous
        signal.signal(signal.SIGTERM, self._on_signal)
        return True

    def uninstall(self) -> None:
        if self._previous is not None and signal.getsignal(signal.SIGTERM) == self._on_signal:
            signal.signal(signal.SIGTERM, self._previous)
        self._previous = None

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.draining or self._loop is None:
            self._hand_over()  # a second SIGTERM: do not wait any longer
            return
        self._loop.call_soon_threadsafe(self.begin)

    def _hand_over(self) -> None:
        previous = self._previous
        if previous is not None:
            previous(signal.SIGTERM, None)

    # -- the drain ---------------------------------------------------------------

    def begin(self) -> None:
        """Start draining (on the loop); the server is told to stop when it is over."""
        if self.draining:
            return
        self.draining = True
        self._idle = asyncio.Event()
        if self._inflight <= 0:
            self._idle.set()
        log.info(
            "draining: %d requests in flight, up to %g s before they are stopped",
            self._inflight,
            self.grace,
        )
        self._task = asyncio.get_running_loop().create_task(self._run(), name="sluice.drain")

    async def _run(self) -> None:
        assert self._idle is not None
        try:
            async with asyncio.timeout(self.grace if math.isfinite(self.grace) else None):
                await self._idle.wait()
        except TimeoutError:
            stops = list(self._stops.values())
            self._stops.clear()
            log.warning("grace over: stopping %d streams still in flight", len(stops))
            for stop in stops:
                stop()
            try:
                async with asyncio.timeout(STOP_WAIT):
                    await self._idle.wait()
            except TimeoutError:
                log.warning("%d requests still running at shutdown", self._inflight)
        log.info("drained")
        self._hand_over()
