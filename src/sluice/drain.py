"""Graceful shutdown: what SIGTERM does to a gateway that is serving streams.

    SIGTERM ─► draining: /readyz answers 503, new requests 503 (``shutting_down``)
                 │  streams in flight run on, for up to ``shutdown_grace`` seconds
                 ▼
               the grace is over (or nothing runs any more: requests, and the
                 │  generations that run without a client, ``busy``)
                 │  each stream still running is stopped: its API's in-band error,
                 │  a record with outcome ``shutdown``; generations fail
                 ▼
               the ASGI server's own shutdown: connections closed, lifespan shutdown
               (pending records written), the process exits

The server (uvicorn, also each of ``--workers``) catches SIGTERM itself and then stops
listening at once. ``install`` puts a handler in front of the server's: the first SIGTERM
starts draining, and only once the drain is over is the server's handler called, as if
the signal arrived then. SIGINT (Ctrl+C) or a second SIGTERM skips the grace: the
streams are stopped at once, the same way; a signal after that goes to the server.

What is stopped at the deadline registers a stop with ``track``: every stream the
gateway relays does, and so does the generations service (app.py), so that a generation
still running is marked failed rather than lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any, cast

log = logging.getLogger("sluice")

_SIGNALS = (signal.SIGTERM, signal.SIGINT)

#: After the stops at the deadline, how long the stopped requests get to write their
#: error and their record before the server's shutdown takes over.
STOP_WAIT = 5.0
#: Seconds between two looks at what is still running.
_POLL = 0.05

Stop = Callable[[], None]
_Handler = Callable[[int, FrameType | None], Any]


class Drain:
    """Requests in flight, and the drain that SIGTERM starts."""

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self.draining = False
        self._inflight = 0
        self._stops: dict[object, Stop] = {}
        #: Work besides requests that the drain waits for (generations running without
        #: a client): how much is left. Stopped at the deadline through ``track``.
        self.busy: Callable[[], int] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._previous: dict[int, _Handler] = {}
        self._task: asyncio.Task[None] | None = None
        #: Set to stop the streams in flight now rather than at the end of the grace.
        self._hurry: asyncio.Event | None = None
        #: Set when a request ends or the streams are to be stopped now (while draining).
        self._changed: asyncio.Event | None = None
        #: The signal that started the drain: the server is handed it at the end.
        self._signum: int = signal.SIGTERM

    # -- requests ----------------------------------------------------------------

    def enter(self) -> None:
        self._inflight += 1

    def leave(self) -> None:
        self._inflight -= 1
        if self._changed is not None:
            self._changed.set()

    def track(self, stop: Stop) -> Callable[[], None]:
        """Call ``stop`` if the grace ends while this is still running; the function
        returned forgets it (call it when done)."""
        token = object()
        self._stops[token] = stop

        def forget() -> None:
            self._stops.pop(token, None)

        return forget

    # -- the signals -------------------------------------------------------------

    def install(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Put the drain in front of the server's SIGTERM and SIGINT handlers; False
        (nothing done) off the main thread, or without Python handlers to hand over to."""
        if threading.current_thread() is not threading.main_thread():
            return False
        previous = {signum: signal.getsignal(signum) for signum in _SIGNALS}
        if not all(callable(handler) for handler in previous.values()):
            return False
        self._loop = loop
        self._previous = cast(dict[int, _Handler], previous)
        for signum in _SIGNALS:
            signal.signal(signum, self._on_signal)
        return True

    def uninstall(self) -> None:
        for signum, handler in self._previous.items():
            if signal.getsignal(signum) == self._on_signal:
                signal.signal(signum, handler)
        self._previous = {}

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self._loop is None:
            return
        if self._hurry is not None and self._hurry.is_set():
            self._hand_over(signum)  # streams are being stopped already: the server's way
            return
        self._loop.call_soon_threadsafe(self._signalled, signum)

    def _signalled(self, signum: int) -> None:
        again = self.draining
        self.begin(signum)
        if signum != signal.SIGTERM or again:
            assert self._hurry is not None and self._changed is not None
            self._hurry.set()  # Ctrl+C, or a second SIGTERM: stop the streams now
            self._changed.set()

    def _hand_over(self, signum: int) -> None:
        previous = self._previous.get(signum)
        if previous is not None:
            previous(signum, None)

    # -- the drain ---------------------------------------------------------------

    def begin(self, signum: int = signal.SIGTERM) -> None:
        """Start draining (on the loop); the server is told to stop when it is over."""
        if self.draining:
            return
        self.draining = True
        self._signum = signum
        self._hurry = asyncio.Event()
        self._changed = asyncio.Event()
        log.info(
            "draining: %d requests in flight, up to %g s before they are stopped",
            self._inflight,
            self.grace,
        )
        self._task = asyncio.get_running_loop().create_task(self._run(), name="sluice.drain")

    async def _run(self) -> None:
        assert self._hurry is not None
        loop = asyncio.get_running_loop()
        await self._until_quiet(loop.time() + self.grace, stop_early=True)
        if not self._quiet():
            self._hurry.set()
            stops = list(self._stops.values())
            self._stops.clear()
            log.warning("grace over: stopping %d streams and generations still running", len(stops))
            for stop in stops:
                stop()
            await self._until_quiet(loop.time() + STOP_WAIT, stop_early=False)
            if not self._quiet():
                log.warning("%d requests still running at shutdown", self._inflight)
        log.info("drained")
        self._hand_over(self._signum)

    def _quiet(self) -> bool:
        return self._inflight <= 0 and not (self.busy is not None and self.busy())

    async def _until_quiet(self, end: float, stop_early: bool) -> None:
        """Until nothing runs or ``end`` (or, with ``stop_early``, until the streams
        are to be stopped now), looking again when a request ends or ``_POLL`` passed
        (``busy`` tells no one when it changes)."""
        assert self._hurry is not None and self._changed is not None
        loop = asyncio.get_running_loop()
        while not self._quiet() and loop.time() < end:
            if stop_early and self._hurry.is_set():
                return
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(_POLL, end - loop.time())):
                    await self._changed.wait()
