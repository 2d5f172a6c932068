"""Coalescing: identical requests in flight at the same time share one generation.

The first request becomes the leader: its generation runs in a task owned here, not by
the leader's request, and writes a journal; every client of it (the leader's included)
reads that journal from offset 0, so each gets the whole stream from the start while
the upstream is called once. A client leaving only stops reading. When the last reader
left — here and, with Redis, on every other instance — the generation is cancelled (and
the upstream request with it), unless ``cache.finish_abandoned`` asks to let it finish
and be stored.

Across instances the leader holds a lock in the shared state (``SET NX`` with a TTL,
renewed every third of ``cache.lease`` while it runs, by compare-and-set: only while
it still holds this leader's journal id) whose value is the journal id;
other instances follow that journal through the Redis Streams mirror. A leader that
died stops renewing: its followers see the lock lapse and start over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Coroutine
from dataclasses import dataclass
from typing import Any

from sluice.config import CacheSettings
from sluice.errors import SluiceError
from sluice.events import Batch, ChatRequest
from sluice.journal import Abandoned, Journal, Journals
from sluice.policies import Call, Handler
from sluice.state import SharedState, StateUnavailable

log = logging.getLogger("sluice.cache")


@dataclass(slots=True, eq=False)
class Flight:
    """One generation in flight in this process, and who reads it here."""

    key: str
    journal: Journal
    #: The shared-state lock this flight holds (other instances follow it), if any.
    lock: str | None = None
    task: asyncio.Task[None] | None = None
    readers: int = 0


class Flights:
    """The generations this process leads, by cache key."""

    def __init__(self, settings: CacheSettings, journals: Journals, state: SharedState) -> None:
        self._settings = settings
        self._journals = journals
        self._state = state
        self._flights: dict[str, Flight] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        #: Shut down: requests go straight upstream, nothing new is led.
        self.closed = False

    def __len__(self) -> int:
        return len(self._flights)

    def get(self, key: str) -> Flight | None:
        """The flight for ``key`` that a new reader may still join."""
        flight = self._flights.get(key)
        if flight is None or flight.journal.state == "failed":
            return None
        return flight

    def start(
        self,
        key: str,
        id: str,
        inner: Handler,
        request: ChatRequest,
        call: Call,
        *,
        ttl: float,
        store: bool,
        lock: str | None,
        shared: bool = True,
    ) -> Flight:
        """Lead a new generation; ``shared`` lets later identical requests join it."""
        flight = Flight(key, self._journals.create(id), lock)
        if shared:
            self._flights[key] = flight
        flight.task = self.spawn(self._generate(flight, inner, request, call, ttl, store))
        return flight

    async def read(self, flight: Flight) -> AsyncGenerator[Batch, None]:
        """The flight's whole stream from the start, for one client."""
        flight.readers += 1
        try:
            async with contextlib.aclosing(flight.journal.follow(0)) as batches:
                async for batch in batches:
                    yield batch
        finally:
            self._leave(flight)

    def _leave(self, flight: Flight) -> None:
        flight.readers -= 1
        if flight.readers > 0 or not flight.journal.live or self._settings.finish_abandoned:
            return
        if self._journals.distributed and flight.lock is not None:
            self.spawn(self._abandon_if_alone(flight))
        elif flight.task is not None:
            flight.task.cancel()

    async def _abandon_if_alone(self, flight: Flight) -> None:
        """Cancel the generation unless readers on other instances still follow it."""
        while flight.readers == 0 and flight.journal.live:
            try:
                remote = await self._journals.remote_readers(flight.journal.id)
            except StateUnavailable:
                remote = 0
            if flight.readers > 0 or not flight.journal.live:
                return
            if remote <= 0:
                assert flight.task is not None
                flight.task.cancel()
                return
            await asyncio.sleep(0.25)

    def follow(self, id: str, lock: str) -> AsyncGenerator[Batch, None]:
        """Follow a generation another instance leads, while it holds ``lock``."""

        async def alive() -> bool:
            return await self._state.get(lock) == id.encode()

        return self._journals.follow(id, 0, alive)

    async def _generate(
        self,
        flight: Flight,
        inner: Handler,
        request: ChatRequest,
        call: Call,
        ttl: float,
        store: bool,
    ) -> None:
        journal = flight.journal
        renew = self.spawn(self._renew(flight)) if flight.lock is not None else None
        try:
            try:
                async with contextlib.aclosing(inner(request, call)) as stream:
                    async for batch in stream:
                        journal.append(batch)
            except asyncio.CancelledError:
                journal.fail(Abandoned("every client of this generation left"))
                raise
            except SluiceError as exc:
                journal.fail(exc)
            except Exception as exc:
                log.exception("generation %s failed", journal.id)
                journal.fail(SluiceError(f"internal error: {type(exc).__name__}"))
            else:
                journal.complete()
            if store:
                await self.keep(flight.key, journal, ttl)
        finally:
            if renew is not None:
                renew.cancel()
            if self._flights.get(flight.key) is flight:
                del self._flights[flight.key]
            self._journals.release(journal)
            if flight.lock is not None:
                self.spawn(self._unlock(journal, flight.lock))

    async def keep(self, key: str, journal: Journal, ttl: float) -> None:
        """Keep a finished journal as the entry ``key`` if it is complete and clean."""
        await self._journals.seal(journal)
        if journal.storable():
            with contextlib.suppress(StateUnavailable):
                await self._journals.keep(key, journal, ttl)

    async def _renew(self, flight: Flight) -> None:
        """Renew the lock while it is ours. A leader paused past its lease (a long GC,
        a stopped process, a partition) may find that another instance took the lock
        over and leads its own generation: then it stops renewing, and never writes
        over the other's lock; its own readers here still get its generation."""
        assert flight.lock is not None
        lease = self._settings.lease
        value = flight.journal.id.encode()
        while True:
            await asyncio.sleep(lease / 3)
            try:
                held = await self._state.renew(flight.lock, value, ttl=lease)
            except StateUnavailable:
                continue
            if not held:
                log.warning(
                    "generation %s lost its coalescing lease to another instance", value.decode()
                )
                return

    async def _unlock(self, journal: Journal, lock: str) -> None:
        # Followers elsewhere read the end before they see the lock gone.
        await self._journals.seal(journal)
        with contextlib.suppress(StateUnavailable):
            await self._state.release(lock, journal.id.encode())

    def spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def close(self) -> None:
        self.closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        self._flights.clear()
