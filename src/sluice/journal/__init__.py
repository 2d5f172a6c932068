"""The generation journal: every generation written as it streams, followed by its readers.

A ``Journal`` is one generation: an append-only list of event batches (the offset of a
batch is its index), each with the time it arrived, and an id. It is *live* until it
ends, ``complete`` or ``failed`` (with the error its readers raise). Any number of
readers follow it from any offset; a reader that caught up waits for the next append,
without a queue of its own: the journal is the only buffer, and it holds exactly one
generation.

A finished, complete journal kept under a name is a cache entry, replayed as a stream.
Backends (``Journals``): ``memory`` (this process; kept entries bounded by count and
bytes, least recently used evicted first) and ``redis`` (live journals mirrored to Redis
Streams so readers on other instances follow them; kept entries shared by every
instance).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol

from sluice.errors import SluiceError, UpstreamError
from sluice.events import (
    Batch,
    Embedding,
    Finish,
    ReasoningDelta,
    StreamError,
    TextDelta,
    ToolCallDelta,
    expand,
)
from sluice.journal.codec import copy_error

if TYPE_CHECKING:
    from sluice.state import SharedState

State = Literal["live", "complete", "failed"]
#: Asks whether the writer of a remote live journal is still alive.
Alive = Callable[[], Awaitable[bool]]


class Abandoned(UpstreamError):
    """Every reader left, so the generation was stopped before it finished."""

    code = "generation_abandoned"


class WriterGone(UpstreamError):
    """The instance writing a live journal stopped renewing it: presumed dead."""

    code = "generation_lost"


class Cancelled(SluiceError):
    """The generation was cancelled on request (``POST .../cancel``, a stop)."""

    status = 409
    code = "cancelled"


class Recording(Protocol):
    """A finished generation: its batches and when each arrived (seconds from start)."""

    @property
    def batches(self) -> Sequence[Batch]: ...

    @property
    def times(self) -> Sequence[float]: ...


class Mirror(Protocol):
    """Copies a live journal elsewhere (another backend's storage) as it is written."""

    def push(self, offset: int, elapsed: float, batch: Batch) -> None: ...

    def end(self, journal: Journal) -> None: ...


class Journal:
    """One generation, written by one task and followed by any number of readers."""

    __slots__ = ("_clock", "_t0", "_waiters", "batches", "error", "id", "mirror", "state", "times")

    def __init__(self, id: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.id = id
        self.batches: list[Batch] = []
        self.times: list[float] = []
        self.state: State = "live"
        self.error: SluiceError | None = None
        self.mirror: Mirror | None = None
        self._clock = clock
        self._t0 = clock()
        self._waiters: list[asyncio.Future[None]] = []

    @property
    def live(self) -> bool:
        return self.state == "live"

    def append(self, batch: Batch) -> None:
        """The hot path: one list append, a clock read, and wake whoever waits.

        ``Verbatim`` events are expanded first: a journal holds events, which its readers encode
        in their own dialects and its backends store (see ``journal.codec``)."""
        batch = expand(batch)
        elapsed = self._clock() - self._t0
        self.batches.append(batch)
        self.times.append(elapsed)
        if self.mirror is not None:
            self.mirror.push(len(self.batches) - 1, elapsed, batch)
        if self._waiters:
            self._wake()

    def complete(self) -> None:
        self._end("complete", None)

    def fail(self, error: SluiceError) -> None:
        self._end("failed", error)

    def _end(self, state: State, error: SluiceError | None) -> None:
        if self.state != "live":
            return
        self.state = state
        self.error = error
        if self.mirror is not None:
            self.mirror.end(self)
        self._wake()

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def follow(self, offset: int = 0) -> AsyncGenerator[Batch, None]:
        """Every batch from ``offset``, waiting for more while the journal is live;
        a failed journal raises its error (a copy: each reader gets its own) at the end."""
        batches = self.batches
        while True:
            while offset < len(batches):
                yield batches[offset]
                offset += 1
            if self.state != "live":
                break
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            await waiter
        if self.error is not None:
            raise copy_error(self.error) from self.error

    def storable(self) -> bool:
        """Complete, ended by a ``Finish`` that is not an error, with no in-band error."""
        if self.state != "complete":
            return False
        finished = False
        for batch in self.batches:
            for event in batch:
                kind = type(event)
                if kind is Finish:
                    finished = event.reason != "error"  # type: ignore[union-attr]
                elif kind is StreamError:
                    return False
        return finished


@dataclass(slots=True)
class Replay:
    """A finished generation held apart from its journal: a kept entry."""

    batches: list[Batch] = field(default_factory=list)
    times: list[float] = field(default_factory=list)


def size_of(batches: Sequence[Batch]) -> int:
    """Roughly the bytes a recording takes in this process's memory (the text it carries
    plus the objects around it); serialised in Redis it takes less."""
    size = 0
    for batch in batches:
        size += 96
        for event in batch:
            size += 112
            kind = type(event)
            if kind is TextDelta or kind is ReasoningDelta:
                size += len(event.text)  # type: ignore[union-attr]
            elif kind is Embedding:
                vector = event.vector  # type: ignore[union-attr]
                size += len(vector) * (1 if isinstance(vector, str) else 32)
            elif kind is ToolCallDelta:
                size += len(event.arguments) + len(event.name or "") + len(event.id or "")  # type: ignore[union-attr]
    return size


class Journals(Protocol):
    """Where journals live: created here, followed by id, kept as named entries."""

    #: "memory" or "redis".
    name: str
    #: Readers on other instances may follow this backend's journals.
    distributed: bool

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def create(self, id: str, mirrored: bool = False) -> Journal:
        """A new live journal written by this process; ``mirrored``: copied where other
        instances read it from its first batch on, not only once one of them does (a
        background generation, which is read elsewhere more often than not)."""
        ...

    def local(self, id: str) -> Journal | None:
        """The live journal ``id`` if this process writes it."""
        ...

    def follow(
        self, id: str, offset: int = 0, alive: Alive | None = None
    ) -> AsyncGenerator[Batch, None]:
        """Follow journal ``id`` wherever it is written; ``alive`` tells whether its
        writer is still there when it goes quiet (raises ``WriterGone`` if not)."""
        ...

    async def seal(self, journal: Journal) -> None:
        """Wait until the journal's end has reached the backend's storage."""
        ...

    def release(self, journal: Journal) -> None:
        """The writer is done with a finished journal."""
        ...

    async def keep(self, name: str, journal: Journal, ttl: float) -> bool:
        """Keep a complete journal as the entry ``name`` for ``ttl`` seconds, evicting
        others to stay within bounds; False if it is too large to keep."""
        ...

    async def lookup(self, name: str) -> Recording | None: ...

    async def forget(self, name: str) -> None: ...

    async def remote_readers(self, id: str) -> int:
        """How many readers on other instances follow journal ``id``."""
        ...


def journals_for(
    state: SharedState, max_entries: int, max_bytes: int, tail_ttl: float | None = None
) -> Journals:
    """The journal backend that goes with the shared state: Redis Streams next to a
    Redis state, process memory otherwise. ``tail_ttl``: seconds an ended journal's
    stream stays in Redis for late readers (the backend's default when None)."""
    if state.name == "redis":
        from sluice.journal.redis import RedisJournals

        if tail_ttl is not None:
            return RedisJournals(
                state, max_entries=max_entries, max_bytes=max_bytes, tail_ttl=tail_ttl
            )
        return RedisJournals(state, max_entries=max_entries, max_bytes=max_bytes)
    from sluice.journal.memory import MemoryJournals

    return MemoryJournals(max_entries=max_entries, max_bytes=max_bytes)
