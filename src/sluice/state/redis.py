"""The shared backend: Redis or Valkey through ``redis.asyncio``, a single server (or a
primary) or a Redis Cluster (``redis+cluster://host:port[,host:port…]``).

One connection pool per process, short socket timeouts, one immediate retry on a
broken connection (what a Redis restart leaves in the pool) and none on a timeout.
Every error of the client becomes ``StateUnavailable`` with the cause kept. The first
failure logs ``redis unavailable: …`` once and starts a back-off (0.25 s, doubling up
to 2 s) during which calls fail at once without touching the network; after it one
call probes the server while the others keep failing fast, so an outage costs no
reconnect storm. The first success after an outage logs the recovery once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar, cast
from urllib.parse import unquote, urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from sluice.state import StateUnavailable

T = TypeVar("T")
log = logging.getLogger("sluice.state")

SCHEMES = ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster")

# INCRBYFLOAT, and an expiry only on a counter that has none yet: one atomic step,
# on any Redis or Valkey version (``EXPIRE … NX`` needs Redis 7).
_INCR = """
local value = redis.call('INCRBYFLOAT', KEYS[1], ARGV[1])
if ARGV[2] ~= '' and redis.call('PTTL', KEYS[1]) == -1 then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return value
"""

# A lease renewed or released only by its holder: GET and compare, then act, atomically,
# so that a lease another instance took over after ours lapsed is never touched.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""

# A budget's holds: a sorted set of "id amount" members scored by their expiry (server
# time, ms), next to the spend counter. Both keys carry one hash tag (one slot).
_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local held = 0
for _, member in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
    held = held + tonumber(string.match(member, ' (.+)$'))
end
local counted = tonumber(redis.call('GET', KEYS[1]) or '0')
local amount = tonumber(ARGV[2])
if counted + held + amount > tonumber(ARGV[3]) then
    return {0, tostring(counted), tostring(held)}
end
local expires = now + tonumber(ARGV[4])
redis.call('ZADD', KEYS[2], expires, ARGV[1] .. ' ' .. ARGV[2])
if redis.call('PTTL', KEYS[2]) < tonumber(ARGV[4]) then
    redis.call('PEXPIRE', KEYS[2], ARGV[4])
end
return {1, tostring(counted), tostring(held)}
"""
_UNRESERVE = """
for _, member in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
    if string.sub(member, 1, string.len(ARGV[1]) + 1) == ARGV[1] .. ' ' then
        redis.call('ZREM', KEYS[2], member)
    end
end
if tonumber(ARGV[2]) ~= 0 then
    redis.call('INCRBYFLOAT', KEYS[1], ARGV[2])
end
return 1
"""


def is_redis_url(url: str) -> bool:
    return urlsplit(url).scheme in SCHEMES


def is_cluster_url(url: str) -> bool:
    return urlsplit(url).scheme.endswith("+cluster")


def cluster_nodes(url: str) -> list[tuple[str, int]]:
    """``redis+cluster://[user:password@]host:port[,host:port…]`` → the nodes to start
    from (the client discovers the others)."""
    netloc = urlsplit(url).netloc.rsplit("@", 1)[-1]
    nodes = []
    for node in netloc.split(","):
        host, _, port = node.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"a cluster node must be host:port, got {node!r}")
        nodes.append((host.strip("[]"), int(port)))
    return nodes


def redacted(url: str) -> str:
    """The URL with its password (in the authority or the query) masked."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        user = parts.username or ""
        netloc = f"{user}:****@{netloc.rsplit('@', 1)[1]}"
    query = "&".join(
        "password=****" if item.startswith("password=") else item
        for item in parts.query.split("&")
        if item
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def limits_uri(url: str) -> str:
    scheme, rest = url.split("://", 1)
    if scheme.endswith("+cluster"):
        return f"async+redis+cluster://{rest}"  # TLS: limits takes ``ssl`` as an option
    return f"async+{'redis+unix' if scheme == 'unix' else scheme}://{rest}"


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class RedisState:
    name = "redis"

    def __init__(
        self,
        url: str,
        *,
        socket_timeout: float = 1.0,
        connect_timeout: float = 0.5,
        max_connections: int = 64,
        min_backoff: float = 0.25,
        max_backoff: float = 2.0,
    ) -> None:
        self.where = redacted(url)
        self.limits_uri = limits_uri(url)
        self.cluster = is_cluster_url(url)
        self._pool: aioredis.BlockingConnectionPool | None = None
        self._client: Any
        if self.cluster:
            # Every multi-key script and command names keys of one hash tag (one slot).
            parts = urlsplit(url)
            tls = parts.scheme.startswith("rediss")
            self._client = RedisCluster(
                startup_nodes=[ClusterNode(host, port) for host, port in cluster_nodes(url)],
                username=unquote(parts.username) if parts.username else None,
                password=unquote(parts.password) if parts.password else None,
                ssl=tls,
                socket_timeout=socket_timeout,
                socket_connect_timeout=connect_timeout,
                max_connections=max_connections,
            )
            self.limits_options: Mapping[str, Any] = {
                "implementation": "redispy",
                "socket_timeout": socket_timeout,
                "socket_connect_timeout": connect_timeout,
                **({"ssl": True} if tls else {}),
            }
        else:
            # Nothing connects here: the pool opens connections on first use.
            self._pool = aioredis.BlockingConnectionPool.from_url(
                url,
                socket_timeout=socket_timeout,
                socket_connect_timeout=connect_timeout,
                max_connections=max_connections,
                timeout=socket_timeout,  # waiting for a free connection
                retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
            )
            self._client = aioredis.Redis(connection_pool=self._pool)
            self.limits_options = {"implementation": "redispy", "connection_pool": self._pool}
        self._incr = self._client.register_script(_INCR)
        self._renew = self._client.register_script(_RENEW)
        self._release = self._client.register_script(_RELEASE)
        self._reserve = self._client.register_script(_RESERVE)
        self._unreserve = self._client.register_script(_UNRESERVE)
        self._min_backoff = min_backoff
        self._max_backoff = max_backoff
        self._backoff = min_backoff
        self._down_since: float | None = None
        self._retry_at = 0.0
        self._reason = ""

    @property
    def available(self) -> bool:
        """False from a failure until the next success."""
        return self._down_since is None

    async def start(self) -> None:
        try:
            await self.run(self._client.ping)
        except StateUnavailable:
            return  # logged; callers fail open or closed until it comes back
        log.info("shared state: redis at %s", self.where)

    async def close(self) -> None:
        await self._client.aclose()
        if self._pool is not None:
            await self._pool.disconnect()

    async def run(self, operation: Callable[[], Awaitable[T]]) -> T:
        if self._down_since is not None:
            now = time.monotonic()
            if now < self._retry_at:
                raise StateUnavailable(f"redis unavailable: {self._reason}")
            # This call probes; the others keep failing fast until it is done.
            self._retry_at = now + self._backoff
        try:
            result = await operation()
        except (RedisError, OSError) as exc:
            self._failed(exc)
            raise StateUnavailable(f"redis unavailable: {self._reason}") from exc
        if self._down_since is not None:
            self._recovered()
        return result

    def _failed(self, exc: BaseException) -> None:
        self._reason = _describe(exc)
        if self._down_since is None:
            self._down_since = time.monotonic()
            self._backoff = self._min_backoff
            log.warning(
                "redis unavailable: %s (%s); shared state degrades until it returns",
                self._reason,
                self.where,
            )
        else:
            self._backoff = min(self._backoff * 2, self._max_backoff)
        self._retry_at = time.monotonic() + self._backoff

    def _recovered(self) -> None:
        assert self._down_since is not None
        downtime = time.monotonic() - self._down_since
        self._down_since = None
        self._backoff = self._min_backoff
        log.warning("redis available again (%s) after %.1f s", self.where, downtime)

    async def get(self, key: str) -> bytes | None:
        # The client returns bytes: it was not built with ``decode_responses``.
        return cast("bytes | None", await self.run(lambda: self._client.get(key)))

    async def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        px = None if ttl is None else _ms(ttl)
        await self.run(lambda: self._client.set(key, value, px=px))

    async def add(self, key: str, value: bytes, ttl: float) -> bool:
        done = await self.run(lambda: self._client.set(key, value, px=_ms(ttl), nx=True))
        return bool(done)

    async def delete(self, key: str) -> None:
        await self.run(lambda: self._client.delete(key))

    async def renew(self, key: str, value: bytes, ttl: float) -> bool:
        done = await self.run(lambda: self._renew(keys=[key], args=[value, _ms(ttl)]))
        return bool(done)

    async def release(self, key: str, value: bytes) -> bool:
        done = await self.run(lambda: self._release(keys=[key], args=[value]))
        return bool(done)

    async def reserve(
        self, total: str, holds: str, id: str, amount: float, ceiling: float, ttl: float
    ) -> tuple[bool, float, float]:
        args: list[str | int] = [id, repr(float(amount)), repr(float(ceiling)), _ms(ttl)]
        done, counted, held = await self.run(lambda: self._reserve(keys=[total, holds], args=args))
        return bool(done), float(counted), float(held)

    async def unreserve(self, total: str, holds: str, id: str, amount: float) -> None:
        args = [id, repr(float(amount))]
        await self.run(lambda: self._unreserve(keys=[total, holds], args=args))

    async def incr(self, key: str, amount: float, ttl: float | None = None) -> float:
        px = "" if ttl is None else str(_ms(ttl))
        value = await self.run(lambda: self._incr(keys=[key], args=[repr(float(amount)), px]))
        return float(value)

    def client(self) -> Any:
        return self._client
