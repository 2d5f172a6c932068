"""State shared by every gateway instance: counters, flags, cache entries.

Two backends behind one small seam: ``memory`` (this process only, the embedded
default) and ``redis`` (Redis or Valkey, with ``SLUICE_REDIS_URL`` or the config's
``redis_url``), so any number of gateway processes behind a load balancer act as one.
Only this package and ``sluice.journal`` know a backend; ``open_state`` picks one.

A backend that cannot reach its server raises ``StateUnavailable`` (the cause kept);
each caller decides whether that fails open or closed. The backend logs an outage once
and its recovery once, never per call, and while it is down it fails fast for a short,
growing back-off instead of reconnecting on every call.

Work done with another library over the same server (the ``limits`` storage built from
``limits_uri`` and ``limits_options``, or commands on ``client()``) goes through
``run``, so that it gets the same outage handling as the backend's own methods.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


class StateUnavailable(Exception):
    """The shared state could not be reached."""


class SharedState(Protocol):
    #: "memory" or "redis".
    name: str
    #: Storage URI for the ``limits`` library: "async+memory://" or "async+redis://…".
    #: It may hold a password: never log it.
    limits_uri: str
    #: Keyword arguments for ``limits.storage.storage_from_string`` with ``limits_uri``
    #: (the redis backend hands over its own connection pool).
    limits_options: Mapping[str, Any]

    async def start(self) -> None:
        """Connect if needed. An unreachable server is logged, not raised: the
        gateway starts anyway and each caller fails open or closed."""
        ...

    async def close(self) -> None: ...

    async def get(self, key: str) -> bytes | None: ...

    async def set(self, key: str, value: bytes, ttl: float | None = None) -> None: ...

    async def add(self, key: str, value: bytes, ttl: float) -> bool:
        """Set ``key`` only if absent; True if this call set it."""
        ...

    async def delete(self, key: str) -> None: ...

    async def renew(self, key: str, value: bytes, ttl: float) -> bool:
        """Give ``key`` a new ``ttl`` only if it still holds ``value`` (compare and set,
        one atomic step); False, changing nothing, if it lapsed or holds another value."""
        ...

    async def release(self, key: str, value: bytes) -> bool:
        """Delete ``key`` only if it still holds ``value``; True if this call deleted it."""
        ...

    async def reserve(
        self, total: str, holds: str, id: str, amount: float, ceiling: float, ttl: float
    ) -> tuple[bool, float, float]:
        """Hold ``amount`` under ``id`` in ``holds`` if the counter ``total`` plus every
        live hold plus ``amount`` stays within ``ceiling`` (one atomic step, so requests
        racing for the last of a budget cannot all pass). A hold lapses after ``ttl``
        seconds unless released. Returns (held, the counter, the sum of the holds)."""
        ...

    async def unreserve(self, total: str, holds: str, id: str, amount: float) -> None:
        """Drop hold ``id`` and add ``amount`` (the real cost) to ``total``, in one step."""
        ...

    async def incr(self, key: str, amount: float, ttl: float | None = None) -> float:
        """Add ``amount`` to a float counter and return the new value. ``ttl`` is set
        when the counter is created; later increments keep its expiry."""
        ...

    async def run(self, operation: Callable[[], Awaitable[T]]) -> T:
        """Await ``operation()`` (which talks to this backend's server through
        ``client()`` or a ``limits`` storage) under the backend's outage handling:
        ``StateUnavailable`` at once while the server is known to be down, any error
        of the server's client mapped to ``StateUnavailable``."""
        ...

    def client(self) -> Any:
        """The backend's native client (``redis.asyncio.Redis``) or None for memory."""
        ...


def open_state(url: str | None) -> SharedState:
    """The memory backend without a URL; Redis for ``redis://``, ``rediss://`` and
    ``unix://`` URLs, a Redis Cluster for ``redis+cluster://host:port[,host:port…]``
    (``rediss+cluster://`` with TLS). Nothing connects until ``start()``."""
    if not url:
        from sluice.state.memory import MemoryState

        return MemoryState()
    from sluice.state.redis import RedisState, is_redis_url

    if not is_redis_url(url):
        scheme = url.split("://", 1)[0] if "://" in url else "(none)"
        raise ValueError(f"unsupported shared-state URL scheme {scheme!r}")
    return RedisState(url)
