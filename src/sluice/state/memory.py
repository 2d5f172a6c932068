"""The embedded backend: one process's dicts, with TTL expiry and a size bound."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

T = TypeVar("T")

#: Entries kept at most; past it the least recently used entry goes first.
DEFAULT_MAX_ENTRIES = 100_000


def format_number(value: float) -> bytes:
    """A counter as Redis stores one (INCRBYFLOAT): ``3``, ``2.5``."""
    return str(int(value) if value.is_integer() else value).encode()


class MemoryState:
    name = "memory"
    limits_uri = "async+memory://"
    limits_options: Mapping[str, Any] = {}

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        self._max_entries = max_entries
        #: key → (value, expiry on the monotonic clock or None), least recent first.
        self._entries: OrderedDict[str, tuple[bytes, float | None]] = OrderedDict()
        #: holds key → {id: (amount, expiry on the monotonic clock)}.
        self._holds: dict[str, dict[str, tuple[float, float]]] = {}

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        self._entries.clear()
        self._holds.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def _live(self, key: str) -> tuple[bytes, float | None] | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires = entry[1]
        if expires is not None and expires <= time.monotonic():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry

    def _put(self, key: str, value: bytes, expires: float | None) -> None:
        self._entries[key] = (value, expires)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    @staticmethod
    def _expiry(ttl: float | None) -> float | None:
        return None if ttl is None else time.monotonic() + ttl

    async def get(self, key: str) -> bytes | None:
        entry = self._live(key)
        return None if entry is None else entry[0]

    async def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        self._put(key, value, self._expiry(ttl))

    async def add(self, key: str, value: bytes, ttl: float) -> bool:
        if self._live(key) is not None:
            return False
        self._put(key, value, self._expiry(ttl))
        return True

    async def delete(self, key: str) -> None:
        self._entries.pop(key, None)

    async def renew(self, key: str, value: bytes, ttl: float) -> bool:
        entry = self._live(key)
        if entry is None or entry[0] != value:
            return False
        self._put(key, value, self._expiry(ttl))
        return True

    async def release(self, key: str, value: bytes) -> bool:
        entry = self._live(key)
        if entry is None or entry[0] != value:
            return False
        del self._entries[key]
        return True

    async def reserve(
        self, total: str, holds: str, id: str, amount: float, ceiling: float, ttl: float
    ) -> tuple[bool, float, float]:
        now = time.monotonic()
        live = {k: v for k, v in self._holds.get(holds, {}).items() if v[1] > now}
        entry = self._live(total)
        counted = float(entry[0]) if entry is not None else 0.0
        held = sum(amount for amount, _ in live.values())
        done = counted + held + amount <= ceiling
        if done:
            live[id] = (amount, now + ttl)
        if live:
            self._holds[holds] = live
        else:
            self._holds.pop(holds, None)
        return done, counted, held

    async def unreserve(self, total: str, holds: str, id: str, amount: float) -> None:
        mine = self._holds.get(holds)
        if mine is not None:
            mine.pop(id, None)
            if not mine:
                del self._holds[holds]
        if amount:
            await self.incr(total, amount)

    async def incr(self, key: str, amount: float, ttl: float | None = None) -> float:
        entry = self._live(key)
        if entry is None:
            total, expires = float(amount), self._expiry(ttl)
        else:
            total, expires = float(entry[0]) + amount, entry[1]
        self._put(key, format_number(total), expires)
        return total

    async def run(self, operation: Callable[[], Awaitable[T]]) -> T:
        return await operation()

    def client(self) -> Any:
        return None
