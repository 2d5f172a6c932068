"""Journals in this process's memory: the embedded default.

Live journals are found by id while they are written. Kept entries are bounded by count
and by bytes; the least recently used goes first, and an expired one is dropped when it
is next looked up or reached by eviction.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass

from sluice.events import Batch
from sluice.journal import Alive, Journal, Recording, Replay, size_of


async def _nothing() -> AsyncGenerator[Batch, None]:
    return
    yield


@dataclass(slots=True)
class _Entry:
    recording: Replay
    size: int
    expires: float


class MemoryJournals:
    name = "memory"
    distributed = False

    def __init__(
        self, max_entries: int, max_bytes: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._clock = clock
        self._live: dict[str, Journal] = {}
        self._kept: OrderedDict[str, _Entry] = OrderedDict()
        self._bytes = 0

    @property
    def bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._kept)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        self._live.clear()
        self._kept.clear()
        self._bytes = 0

    def create(self, id: str, mirrored: bool = False) -> Journal:
        journal = Journal(id)
        self._live[id] = journal
        return journal

    def local(self, id: str) -> Journal | None:
        return self._live.get(id)

    def follow(
        self, id: str, offset: int = 0, alive: Alive | None = None
    ) -> AsyncGenerator[Batch, None]:
        journal = self._live.get(id)
        return _nothing() if journal is None else journal.follow(offset)

    async def seal(self, journal: Journal) -> None:
        return None

    def release(self, journal: Journal) -> None:
        if self._live.get(journal.id) is journal:
            del self._live[journal.id]

    async def keep(self, name: str, journal: Journal, ttl: float) -> bool:
        size = size_of(journal.batches)
        if size > self.max_bytes or self.max_entries < 1:
            return False
        # A copy without the raw payloads: half the memory, and readers of the journal
        # (still sending them, maybe) are left alone.
        recording = Replay(list(journal.batches), list(journal.times))
        self._drop(name)
        self._kept[name] = _Entry(recording, size, self._clock() + ttl)
        self._bytes += size
        while len(self._kept) > self.max_entries or self._bytes > self.max_bytes:
            oldest = next(iter(self._kept))
            self._drop(oldest)
        return True

    def _drop(self, name: str) -> None:
        entry = self._kept.pop(name, None)
        if entry is not None:
            self._bytes -= entry.size

    async def lookup(self, name: str) -> Recording | None:
        entry = self._kept.get(name)
        if entry is None:
            return None
        if entry.expires <= self._clock():
            self._drop(name)
            return None
        self._kept.move_to_end(name)
        return entry.recording

    async def forget(self, name: str) -> None:
        self._drop(name)

    async def remote_readers(self, id: str) -> int:
        return 0
