"""State shared by every gateway instance: counters, flags, cache entries.

Two backends behind one small seam: ``memory`` (this process only, the embedded
default) and ``redis`` (Redis or Valkey, with ``SLUICE_REDIS_URL``), so any number of
gateway processes behind a load balancer act as one. Only this package and
``sluice.journal`` know a backend.

A backend that cannot reach its server raises ``StateUnavailable`` (the cause kept);
each caller decides whether that fails open or closed. The backend logs an outage once
and its recovery once, never per call.
"""

from __future__ import annotations

from typing import Any, Protocol


class StateUnavailable(Exception):
    """The shared state could not be reached."""


class SharedState(Protocol):
    #: "memory" or "redis".
    name: str
    #: Storage URI for the ``limits`` library: "memory://" or "async+redis://…".
    limits_uri: str

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def get(self, key: str) -> bytes | None: ...

    async def set(self, key: str, value: bytes, ttl: float | None = None) -> None: ...

    async def add(self, key: str, value: bytes, ttl: float) -> bool:
        """Set ``key`` only if absent; True if this call set it."""
        ...

    async def delete(self, key: str) -> None: ...

    async def incr(self, key: str, amount: float, ttl: float | None = None) -> float:
        """Add ``amount`` to a float counter and return the new value."""
        ...

    def client(self) -> Any:
        """The backend's native client (``redis.asyncio.Redis``) or None for memory."""
        ...
