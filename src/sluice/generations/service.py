"""Generations that outlive the request that started them.

A generation runs in a task of its own, owned here, and writes a journal; the client
that asked for it is only its first reader. Any reader, on any instance, may come later
and read it from any offset: the events already written, then the rest as they come.
This is what Responses background mode, resumable chat completions and the UI stream's
resume are made of.

What other instances need goes to the shared state (``SharedState``: memory, or Redis
with ``redis_url``), the events to the journal backend (memory, or Redis Streams):

- ``gen:{id}`` — the generation's description (kind, owning key, writing instance,
  whatever its surface needs to encode it again), while it runs and ``retention`` after
  its end, then a day longer as a tombstone, so that an evicted generation is reported
  as evicted, not unknown.
- ``gen:writer:{instance}`` — renewed every third of ``lease`` while the instance writes
  generations; readers elsewhere presume the writer dead once it lapsed
  (``WriterGone``: they get an error, never a stream that hangs).
- ``gen:{id}:cancel`` and the counter ``gen:cancels`` — a cancel asked on another
  instance; the writer looks at the counter every ``TICK`` and at the flags of its own
  generations only when it moved, so cancelling takes well under a second.
- ``gen:{id}:resumes``, ``gen:{id}:delivered`` — how often it was resumed and whether
  somebody read it to its end. Its record is made at its end with the resumes so far;
  a resume after that raises the record's count (``count_resumes``, the record
  store's ``resumed``), from whichever instance serves it.
- ``gen:active:{key}`` — the background generations a key has running, each held for
  ``lease`` and renewed by its writer with its own lease (``SharedState.hold``): those
  of an instance that died stop counting within ``lease``.

A generation is cancelled (``cancel``) when asked, stopped when nobody read it for
``window`` seconds (unless it runs in the background), and failed at ``shutdown``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from sluice.config.generations import GenerationSettings
from sluice.errors import RateLimited, ServiceUnavailable, SluiceError
from sluice.events import Batch
from sluice.generations.generation import (
    Generation,
    GenerationEvicted,
    Info,
    OnCancel,
    Produce,
    ShuttingDown,
)
from sluice.journal import Abandoned, Journal, Journals, WriterGone
from sluice.state import SharedState, StateUnavailable

log = logging.getLogger("sluice.generations")

#: Seconds between the writer's looks at cancels, idle generations and its lease.
TICK = 0.2
#: Seconds a tombstone outlives a generation's events.
TOMBSTONE = 86_400.0
#: Seconds between the tries to count a late resume on a record not written yet
#: (records are written in batches, by whichever instance ran the generation).
RECOUNT_DELAYS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)

#: Raises a record's resumes to at least a count; False if the record is not found.
CountResumes = Callable[[str, int], Awaitable[bool]]


def _active(key_id: str | None) -> str:
    """The set of the background generations key ``key_id`` has running."""
    return f"gen:active:{key_id or '-'}"


@dataclass(slots=True)
class _Ended:
    generation: Generation
    expires: float


class Generations:
    """The generations of this gateway: started here, followed from anywhere."""

    def __init__(
        self,
        settings: GenerationSettings,
        state: SharedState,
        journals: Journals,
        instance: str | None = None,
        count_resumes: CountResumes | None = None,
    ) -> None:
        self.settings = settings
        self._count_resumes = count_resumes
        self._state = state
        self._journals = journals
        self.instance = instance or uuid.uuid4().hex[:16]
        self._live: dict[str, Generation] = {}
        #: Generations written elsewhere that readers here follow: one tail of the Redis
        #: Stream per generation, whatever the number of readers (each would hold a
        #: connection of the pool for its blocking read).
        self._replicas: dict[str, Generation] = {}
        #: Ended generations whose events only this process holds (memory journals).
        self._ended: OrderedDict[str, _Ended] = OrderedDict()
        self._bytes = 0
        self._keeper: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._cancels: bytes | None = None
        self.closed = False

    def __len__(self) -> int:
        return len(self._live)

    @property
    def distributed(self) -> bool:
        """Whether other instances follow the generations written here."""
        return self._journals.distributed

    @property
    def bytes(self) -> int:
        """What the generations this process holds take, roughly."""
        return sum(g.size for g in self._live.values()) + self._bytes

    # -- starting --------------------------------------------------------------------

    async def begin(
        self,
        id: str,
        kind: str,
        key_id: str | None,
        data: dict[str, Any],
        produce: Produce,
        *,
        background: bool = False,
        on_cancel: OnCancel | None = None,
        record_id: str | None = None,
    ) -> Generation:
        """Start ``produce`` as generation ``id``: it must run its event stream through
        ``Generation.tee``. Refused (raises) past the bounds."""
        if self.closed:
            raise ServiceUnavailable("the gateway is shutting down; try again")
        self._evict()
        if self.bytes > self.settings.max_total_bytes:
            raise ServiceUnavailable(
                "too many generations are held now (generations.max_total_bytes); try again later",
                code="generations_full",
            )
        if background:
            await self._admit_background(key_id, id)
        info = Info(id, kind, key_id, self.instance, background, data, record_id=record_id)
        # A background generation is mostly read later, often elsewhere: mirrored from its
        # start, a reader on another instance need not wait for the writer to notice it.
        journal = self._journals.create(id, mirrored=background)
        generation = Generation(info, journal, on_cancel, max_bytes=self.settings.max_bytes)
        self._live[id] = generation
        try:
            await self._put(info)
        except StateUnavailable:
            if self._journals.distributed:
                log.warning("generation %s is not shared: the shared state is down", id)
        generation.task = self._spawn(self._run(generation, produce))
        if self._keeper is None:
            self._keeper = self._spawn(self._keep())
        return generation

    async def _admit_background(self, key_id: str | None, id: str) -> None:
        settings = self.settings
        try:
            held = await self._state.hold(_active(key_id), id, settings.lease, settings.per_key)
        except StateUnavailable:
            return  # fail open, as rate limits do by default
        if not held:
            raise RateLimited(
                f"this key has {self.settings.per_key} background responses running, the most"
                " it may (generations.per_key); wait for one to end or cancel one",
                code="too_many_background_generations",
            )

    async def _run(self, generation: Generation, produce: Produce) -> None:
        info, journal = generation.info, generation.journal
        try:
            await produce(generation)
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("generation %s failed", info.id)
        finally:
            if journal.live:
                journal.fail(Abandoned("the generation ended without an end"))
            info.live = False
            info.ended_at = time.time()
            if journal.error is not None:
                info.error = journal.error.message
            await self._settle(generation)
            await self._resumed_meanwhile(generation)

    async def _settle(self, generation: Generation) -> None:
        info, journal = generation.info, generation.journal
        with contextlib.suppress(StateUnavailable, asyncio.CancelledError):
            await self._journals.seal(journal)
        with contextlib.suppress(StateUnavailable, asyncio.CancelledError):
            await self._put(info)
            if info.background:
                await self._state.unhold(_active(info.key_id), info.id)
        self._journals.release(journal)
        if not self._journals.distributed:
            self._ended[info.id] = _Ended(generation, time.monotonic() + self.settings.retention)
            self._bytes += generation.size
        del self._live[info.id]
        generation.done.set()

    async def _put(self, info: Info) -> None:
        ttl = self.settings.retention + TOMBSTONE
        await self._state.set(f"gen:{info.id}", info.dump(), ttl=ttl)

    def _evict(self) -> None:
        """Drop ended generations past their retention, and the oldest ones while this
        process holds more than it may."""
        now = time.monotonic()
        ended = self._ended
        while ended:
            id, entry = next(iter(ended.items()))
            if entry.expires > now and self.bytes <= self.settings.max_total_bytes:
                break
            del ended[id]
            self._bytes -= entry.generation.size

    # -- reading ---------------------------------------------------------------------

    async def find(self, id: str) -> Info | None:
        """The generation ``id`` as every instance knows it, or None."""
        local = self._live.get(id)
        if local is not None:
            return local.info
        ended = self._ended.get(id)
        if ended is not None:
            return ended.generation.info
        try:
            raw = await self._state.get(f"gen:{id}")
        except StateUnavailable as exc:
            raise ServiceUnavailable(
                "generations cannot be looked up now: the shared state is unreachable"
            ) from exc
        return None if raw is None else Info.load(id, raw)

    def follow(self, info: Info, offset: int = 0) -> AsyncGenerator[Batch, None]:
        """Its batches from ``offset``, then live ones until it ends. Raises
        ``GenerationEvicted`` (before the first batch) when its events are gone."""
        local = self._live.get(info.id)
        if local is not None:
            return self._read(local, offset)
        self._evict()
        ended = self._ended.get(info.id)
        if ended is not None:
            return self._read(ended.generation, offset)
        if not self._journals.distributed or (
            not info.live
            and info.ended_at is not None
            and info.ended_at + self.settings.retention < time.time()
        ):
            raise GenerationEvicted(
                f"the events of generation {info.id} are no longer kept (they are kept"
                f" {self.settings.retention:g} s after it ends)"
            )
        replica = self._replicas.get(info.id)
        if replica is None:
            replica = Generation(info, Journal(info.id))
            replica.task = self._spawn(self._tail(replica))
            self._replicas[info.id] = replica
        return self._read(replica, offset)

    async def _tail(self, replica: Generation) -> None:
        """Copy a generation written elsewhere into this process as it comes."""
        info, journal = replica.info, replica.journal
        writer = f"gen:writer:{info.instance}"

        async def alive() -> bool:
            if not info.live:
                return False  # ended: its stream holds everything, or it was evicted
            try:
                return await self._state.get(writer) is not None
            except StateUnavailable:
                return False

        try:
            async with contextlib.aclosing(self._journals.follow(info.id, 0, alive)) as batches:
                async for batch in batches:
                    journal.append(batch)
        except SluiceError as exc:
            journal.fail(exc)
        except StateUnavailable:
            journal.fail(WriterGone("the shared state became unreachable while following"))
        except asyncio.CancelledError:
            journal.fail(Abandoned("nobody here reads the generation any more"))
            raise
        else:
            journal.complete()
        finally:
            if self._replicas.get(info.id) is replica:
                del self._replicas[info.id]

    async def _read(self, generation: Generation, offset: int) -> AsyncGenerator[Batch, None]:
        generation.readers += 1
        try:
            async with contextlib.aclosing(generation.journal.follow(offset)) as batches:
                async for batch in batches:
                    yield batch
        finally:
            generation.readers -= 1
            if generation.readers == 0:
                generation.idle_since = time.monotonic()
                if self._replicas.get(generation.id) is generation and generation.task:
                    del self._replicas[generation.id]  # a new reader starts a new tail
                    generation.task.cancel()  # nobody here reads it: stop tailing

    async def resumed(self, info: Info) -> None:
        """Count a resume of generation ``info`` (its record says how many). Once it
        ended its record exists, or is about to: the count is raised there."""
        try:
            count = await self._state.incr(
                f"gen:{info.id}:resumes", 1, ttl=self.settings.retention + 3600
            )
        except StateUnavailable:
            return
        if info.record_id is None or self._count_resumes is None:
            return
        # Looked at after counting: if it still runs, its end reads the count (or
        # ``_resumed_meanwhile`` does, when the end came between the two).
        try:
            now = await self.find(info.id)
        except ServiceUnavailable:
            return
        if now is not None and not now.live:
            self._spawn(self._recount(info.record_id, int(count)))

    async def resumes(self, id: str) -> int:
        """How many times generation ``id`` was resumed so far (its record is made with
        this count)."""
        try:
            value = await self._state.get(f"gen:{id}:resumes")
        except StateUnavailable:
            return 0
        count = int(float(value)) if value else 0
        local = self._live.get(id)
        if local is not None:
            local.recorded_resumes = count
        return count

    async def _resumed_meanwhile(self, generation: Generation) -> None:
        """Resumes counted after its record was made and before its end was shared."""
        record_id = generation.info.record_id
        if record_id is None or self._count_resumes is None:
            return
        count = await self.resumes(generation.id)
        if count > generation.recorded_resumes:
            self._spawn(self._recount(record_id, count))

    async def _recount(self, record_id: str, count: int) -> None:
        """Raise the record's resumes to ``count``, waiting a little for a record that is
        not written yet."""
        assert self._count_resumes is not None
        for delay in RECOUNT_DELAYS:
            await asyncio.sleep(delay)
            if await self._count_resumes(record_id, count):
                return
        log.warning("record %s was not found to count its resumes (%d)", record_id, count)

    async def name(self, name: str, id: str) -> None:
        """Make ``name`` find generation ``id`` (a chat's answer in flight)."""
        with contextlib.suppress(StateUnavailable):
            await self._state.set(f"gen:name:{name}", id.encode(), ttl=TOMBSTONE)

    async def named(self, name: str) -> Info | None:
        """The generation ``name`` was last given to."""
        raw = await self._state.get(f"gen:name:{name}")
        return None if raw is None else await self.find(raw.decode())

    async def delivered(self, id: str) -> None:
        """Somebody read generation ``id`` to its end."""
        with contextlib.suppress(StateUnavailable):
            await self._state.set(f"gen:{id}:delivered", b"1", ttl=self.settings.retention)

    async def was_delivered(self, id: str) -> bool:
        try:
            return await self._state.get(f"gen:{id}:delivered") is not None
        except StateUnavailable:
            return False

    # -- cancelling ------------------------------------------------------------------

    async def cancel(self, info: Info) -> bool:
        """Cancel generation ``info`` wherever it runs; False if it had ended or was
        cancelled already."""
        local = self._live.get(info.id)
        if local is not None:
            return local.cancel()
        if not info.live:
            return False
        fresh = await self._state.add(f"gen:{info.id}:cancel", b"1", ttl=self.settings.retention)
        if fresh:
            await self._state.incr("gen:cancels", 1)
        return fresh

    async def wait(self, id: str, seconds: float) -> Info | None:
        """Generation ``id`` once it ended (or as it is after ``seconds``)."""
        local = self._live.get(id)
        if local is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(seconds):
                    await local.done.wait()
            return local.info
        deadline = time.monotonic() + seconds
        while True:
            info = await self.find(id)
            if info is None or not info.live or time.monotonic() >= deadline:
                return info
            await asyncio.sleep(0.05)

    async def writer_alive(self, info: Info) -> bool:
        """Whether the instance writing live generation ``info`` still renews its lease."""
        if info.id in self._live or info.instance == self.instance:
            return info.id in self._live
        try:
            return await self._state.get(f"gen:writer:{info.instance}") is not None
        except StateUnavailable:
            return True  # unknown: not presumed dead

    # -- the writer's tick -----------------------------------------------------------

    async def _keep(self) -> None:
        """While this process writes generations: renew its lease, look for cancels
        asked elsewhere, stop the ones nobody read for ``window`` seconds."""
        lease = self.settings.lease
        writer = f"gen:writer:{self.instance}"
        renew_at = 0.0
        try:
            while self._live:
                now = time.monotonic()
                with contextlib.suppress(StateUnavailable):
                    if now >= renew_at:
                        await self._state.set(writer, b"1", ttl=lease)
                        renew_at = now + lease / 3
                        await self._state.renew_holds(
                            [
                                (_active(g.info.key_id), g.id)
                                for g in self._live.values()
                                if g.info.background
                            ],
                            lease,
                        )
                    await self._poll_cancels()
                window = self.settings.window
                for generation in list(self._live.values()):
                    if (
                        not generation.info.background
                        and generation.readers == 0
                        and now - generation.idle_since > window
                        and not await self._read_elsewhere(generation)
                    ):
                        generation.cancel(f"nobody read it for {window:g} s (generations.window)")
                await asyncio.sleep(TICK)
        finally:
            self._keeper = None

    async def _poll_cancels(self) -> None:
        if not self._journals.distributed:
            return  # every cancel is asked of this process
        count = await self._state.get("gen:cancels")
        if count == self._cancels:
            return
        self._cancels = count
        for generation in list(self._live.values()):
            if await self._state.get(f"gen:{generation.id}:cancel") is not None:
                generation.cancel()

    async def _read_elsewhere(self, generation: Generation) -> bool:
        try:
            return await self._journals.remote_readers(generation.id) > 0
        except StateUnavailable:
            return False

    # -- the end ---------------------------------------------------------------------

    def _spawn(self, work: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def shutdown(self, grace: float = 5.0) -> None:
        """Fail every generation still running here (its readers get the error, its
        surface records it as failed) and stop taking new ones."""
        self.closed = True
        live = list(self._live.values())
        for generation in live:
            generation.journal.fail(
                ShuttingDown("the gateway shut down before the generation ended")
            )
            if generation.task is not None:
                generation.task.cancel()
        tasks = [g.task for g in live if g.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=grace)
        if self._keeper is not None:
            self._keeper.cancel()
        rest = list(self._tasks)
        for task in rest:
            task.cancel()
        if rest:
            await asyncio.wait(rest, timeout=grace)
        self._ended.clear()
        self._bytes = 0

    async def close(self) -> None:
        await self.shutdown()
        await self._journals.close()
