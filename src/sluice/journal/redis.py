"""Journals on Redis (or Valkey): live journals mirrored to Redis Streams, kept entries
shared by every gateway instance.

Keys (``prefix`` is ``sluice:{cache}:``; its hash tag puts every key below in one Redis
Cluster slot, since the scripts that keep the bounds touch many of them at once and
build some names from values they read):

- ``journal:{id}`` — a stream of entries each holding consecutive batches (field ``o``:
  the first one's offset, ``b``: the batches), with the explicit id ``0-{n}`` where
  ``n - 1`` is the offset of the entry's last batch; then one end entry (field ``e``:
  complete or failed, and the error). While live it expires ``live_ttl`` after it was
  last renewed, then ``tail_ttl`` after its end (for late readers), or with the cache
  entry that keeps it.
- ``journal:{id}:readers`` — readers on other instances, so the writer does not stop a
  generation somebody elsewhere still reads.
- ``cache:{name}`` — the id of the journal kept as entry ``name``, with the entry's TTL.
- ``cache:lru`` / ``cache:expiry`` (sorted sets), ``cache:sizes`` (hash), ``cache:bytes``
  — the bookkeeping that keeps entries within ``max_entries`` and ``max_bytes``, done
  inside one script per change. Each script names ``cache:lru`` as its key, so that a
  cluster client sends it to the node holding the slot.

The writer never waits for Redis: a batch costs it a list append. One flusher task per
process writes, every ``tick`` (50 ms), in one pipeline: the journals that readers
elsewhere follow (one ``XADD`` per journal, whatever accumulated) and the ones that
ended (whole, for the cache); it also asks (``MGET`` of the readers counters) whether
somebody elsewhere started to follow a journal not written yet. A generation nobody on
another instance reads thus costs Redis one pipeline at its end. (redis-py spends tens
of microseconds of CPU per command: an ``XADD`` per batch would cost more than the
rest of the hot path.) Readers in this process follow the in-memory
journal; readers elsewhere follow the stream with ``XREAD BLOCK``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from functools import partial
from typing import Any, TypeVar

from sluice.events import Batch
from sluice.journal import Alive, Journal, Recording, Replay, WriterGone, size_of
from sluice.journal.codec import decode_batches, decode_end, encode_batches, encode_end
from sluice.state import SharedState, StateUnavailable

T = TypeVar("T")
log = logging.getLogger("sluice.cache")

_FORGET = """
local function forget(prefix, name)
  local sizes, total = prefix .. 'cache:sizes', prefix .. 'cache:bytes'
  local size = redis.call('HGET', sizes, name)
  if size then redis.call('DECRBY', total, size) end
  redis.call('HDEL', sizes, name)
  redis.call('ZREM', prefix .. 'cache:lru', name)
  redis.call('ZREM', prefix .. 'cache:expiry', name)
  local entry = prefix .. 'cache:' .. name
  local id = redis.call('GET', entry)
  if id then redis.call('DEL', prefix .. 'journal:' .. id) end
  redis.call('DEL', entry)
end
-- Microseconds: entries kept or used within one millisecond still have an order.
local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
"""

# ARGV: prefix, name, journal id, size, ttl ms, max entries, max bytes
_KEEP = (
    _FORGET
    + """
local prefix, name, id = ARGV[1], ARGV[2], ARGV[3]
local size, ttl = tonumber(ARGV[4]), tonumber(ARGV[5])
local max_entries, max_bytes = tonumber(ARGV[6]), tonumber(ARGV[7])
local lru, expiry = prefix .. 'cache:lru', prefix .. 'cache:expiry'
local now = now_us()
for _, old in ipairs(redis.call('ZRANGEBYSCORE', expiry, '-inf', now)) do forget(prefix, old) end
forget(prefix, name)
if size > max_bytes or max_entries < 1 then return 0 end
redis.call('SET', prefix .. 'cache:' .. name, id, 'PX', ttl)
redis.call('PEXPIRE', prefix .. 'journal:' .. id, ttl)
redis.call('HSET', prefix .. 'cache:sizes', name, size)
redis.call('INCRBY', prefix .. 'cache:bytes', size)
redis.call('ZADD', lru, now, name)
redis.call('ZADD', expiry, now + ttl * 1000, name)
while redis.call('ZCARD', lru) > max_entries
    or tonumber(redis.call('GET', prefix .. 'cache:bytes') or '0') > max_bytes do
  local oldest = redis.call('ZRANGE', lru, 0, 0)[1]
  if not oldest then break end
  forget(prefix, oldest)
end
return 1
"""
)

# ARGV: prefix, name. Returns false, or {journal id, XRANGE of its stream}.
_LOOKUP = (
    _FORGET
    + """
local prefix, name = ARGV[1], ARGV[2]
local id = redis.call('GET', prefix .. 'cache:' .. name)
if not id then return false end
redis.call('ZADD', prefix .. 'cache:lru', 'XX', now_us(), name)
return {id, redis.call('XRANGE', prefix .. 'journal:' .. id, '-', '+')}
"""
)

_FORGET_ONE = _FORGET + "\nforget(ARGV[1], ARGV[2])\nreturn 1\n"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _fields(raw: Any) -> dict[str, Any]:
    """Stream entry fields, as redis-py parses them (a dict) or as a script returns them."""
    if isinstance(raw, dict):
        return {_text(k): v for k, v in raw.items()}
    return {_text(raw[i]): raw[i + 1] for i in range(0, len(raw), 2)}


def _entries(reply: Any) -> list[tuple[str, dict[str, Any]]]:
    """The entries of the one stream an ``XREAD`` asked about (RESP2 or RESP3 shape)."""
    if not reply:
        return []
    streams = reply.values() if isinstance(reply, dict) else (item[1] for item in reply)
    out: list[tuple[str, dict[str, Any]]] = []
    for entries in streams:
        for entry in entries:
            if isinstance(entry, list | tuple) and len(entry) == 1:  # RESP3 nests once more
                entry = entry[0]
            out.append((_text(entry[0]), _fields(entry[1])))
    return out


class _Mirror:
    """What of one live journal still has to reach its stream."""

    __slots__ = (
        "broken",
        "done",
        "end_entry",
        "key",
        "mirrored",
        "next",
        "pending",
        "readers",
        "renew_at",
        "wake",
    )

    def __init__(self, key: str, wake: asyncio.Event) -> None:
        self.key = key
        self.readers = f"{key}:readers"
        self.wake = wake
        self.pending: list[tuple[float, Batch]] = []
        #: The offset of ``pending[0]``.
        self.next = 0
        self.end_entry: tuple[int, bytes] | None = None
        #: Somebody elsewhere reads it: batches go out every tick, not only at the end.
        self.mirrored = False
        #: Batches were lost on the way: the stream must not end cleanly.
        self.broken = False
        self.renew_at = 0.0
        #: Resolved once the end reached the stream (or could not).
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def push(self, offset: int, elapsed: float, batch: Batch) -> None:
        self.pending.append((elapsed, batch))

    def end(self, journal: Journal) -> None:
        self.end_entry = (len(journal.batches) + 1, encode_end(journal.state, journal.error))
        self.wake.set()

    def fill(self, pipe: Any, now: float, live_ttl: float, tail_ttl: float) -> bool:
        """Add what is due to ``pipe``; True if it wrote batches."""
        wrote = False
        if self.pending and (self.mirrored or self.end_entry is not None):
            first = self.next
            last = first + len(self.pending) - 1
            entry = {"o": first, "b": encode_batches(self.pending)}
            pipe.xadd(self.key, entry, id=f"0-{last + 1}")
            self.next += len(self.pending)
            self.pending = []
            wrote = True
        if self.end_entry is not None:
            end = self.end_entry[1]
            if self.broken:
                # Readers elsewhere missed batches: never let them see a clean end.
                end = encode_end("failed", WriterGone("lost part of the generation's stream"))
            pipe.xadd(self.key, {"e": end}, id=f"0-{self.end_entry[0]}")
            pipe.pexpire(self.key, round(tail_ttl * 1000))
        elif wrote and now >= self.renew_at:
            pipe.pexpire(self.key, round(live_ttl * 1000))
            self.renew_at = now + live_ttl / 3
        return wrote

    def finish(self) -> None:
        if not self.done.done():
            self.done.set_result(None)


class RedisJournals:
    name = "redis"
    distributed = True

    def __init__(
        self,
        state: SharedState,
        max_entries: int,
        max_bytes: int,
        prefix: str = "sluice:{cache}:",
        live_ttl: float = 900.0,
        tail_ttl: float = 60.0,
        block: float = 0.5,
        tick: float = 0.05,
    ) -> None:
        self._state = state
        #: A ``redis.asyncio.Redis`` client.
        self.client = client = state.client()
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.prefix = prefix
        self.live_ttl = live_ttl
        self.tail_ttl = tail_ttl
        self.tick = tick
        self._block_ms = max(1, round(block * 1000))
        self._live: dict[str, Journal] = {}
        self._mirrors: dict[str, _Mirror] = {}
        self._wake = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._keep = client.register_script(_KEEP)
        self._lookup = client.register_script(_LOOKUP)
        self._forget = client.register_script(_FORGET_ONE)
        #: The key every script names: it routes the script to the slot of the prefix.
        self._slot_key = [f"{prefix}cache:lru"]

    # -- plumbing ------------------------------------------------------------------

    async def run(self, operation: Callable[[], Awaitable[T]]) -> T:
        """A Redis call under the shared state's outage handling (``StateUnavailable``)."""
        return await self._state.run(operation)

    def _key(self, id: str) -> str:
        return f"{self.prefix}journal:{id}"

    def _spawn(self, operation: Callable[[], Awaitable[Any]]) -> None:
        async def quietly() -> None:
            with contextlib.suppress(StateUnavailable):
                await self.run(operation)

        task = asyncio.get_running_loop().create_task(quietly())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _flush(self) -> None:
        """One task writes every live journal of this process, once per ``tick`` (or
        at once when one ended), in one pipeline. A journal nobody elsewhere reads is
        written in one go at its end (for the cache); one that somebody does is
        written every tick, one ``XADD`` per journal whatever accumulated."""
        loop = asyncio.get_running_loop()
        mirrors = self._mirrors
        while mirrors:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.tick):
                    await self._wake.wait()
            self._wake.clear()
            now = loop.time()
            pipe = self.client.pipeline(transaction=False)
            watched = [m for m in mirrors.values() if not m.mirrored and m.end_entry is None]
            if watched:
                pipe.mget([m.readers for m in watched])
            wrote, ended = [], []
            for mirror in list(mirrors.values()):
                if mirror.fill(pipe, now, self.live_ttl, self.tail_ttl):
                    wrote.append(mirror)
                if mirror.end_entry is not None:
                    ended.append(mirror)
                    del mirrors[mirror.key]
            try:
                results = await self.run(pipe.execute)
            except StateUnavailable:
                for mirror in wrote:
                    mirror.broken = True  # readers elsewhere notice; this process carries on
            except Exception:
                log.exception("writing generations to redis failed")
                for mirror in wrote:
                    mirror.broken = True
            else:
                counts = results[0] if watched else ()
                for mirror, count in zip(watched, counts, strict=True):
                    if count is not None and int(count) > 0:
                        mirror.mirrored = True
                        self._wake.set()  # catch the new reader up now
            for mirror in ended:
                mirror.finish()
        self._flusher = None

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        tasks = list(self._background)
        if self._flusher is not None:
            tasks.append(self._flusher)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        for mirror in self._mirrors.values():
            mirror.finish()
        self._mirrors.clear()
        self._live.clear()

    # -- live journals ---------------------------------------------------------------

    def create(self, id: str, mirrored: bool = False) -> Journal:
        journal = Journal(id)
        mirror = _Mirror(self._key(id), self._wake)
        mirror.mirrored = mirrored
        journal.mirror = mirror
        self._live[id] = journal
        self._mirrors[mirror.key] = mirror
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush())
        return journal

    def local(self, id: str) -> Journal | None:
        return self._live.get(id)

    async def seal(self, journal: Journal) -> None:
        mirror = journal.mirror
        if isinstance(mirror, _Mirror):
            # shield: cancelling the sealer must not cancel the future others wait on.
            await asyncio.shield(mirror.done)

    def release(self, journal: Journal) -> None:
        if self._live.get(journal.id) is journal:
            del self._live[journal.id]

    def follow(
        self, id: str, offset: int = 0, alive: Alive | None = None
    ) -> AsyncGenerator[Batch, None]:
        journal = self._live.get(id)
        if journal is not None:
            return journal.follow(offset)
        return self._follow_remote(id, offset, alive)

    async def _follow_remote(
        self, id: str, offset: int, alive: Alive | None
    ) -> AsyncGenerator[Batch, None]:
        key = self._key(id)
        readers = f"{key}:readers"
        pipe = self.client.pipeline(transaction=False)
        pipe.incr(readers)
        pipe.pexpire(readers, round(self.live_ttl * 1000))
        await self.run(pipe.execute)
        client = self.client
        try:
            last = f"0-{offset}"
            while True:
                read = partial(client.xread, {key: last}, count=1024)
                reply = await self.run(partial(read, block=self._block_ms))
                entries = _entries(reply)
                if not entries and alive is not None and not await alive():
                    # The writer may have ended just before it let go: one last look.
                    reply = await self.run(read)
                    entries = _entries(reply)
                    if not entries:
                        raise WriterGone("the instance writing this generation went away")
                for entry_id, fields in entries:
                    last = entry_id
                    data = fields.get("b")
                    if data is not None:
                        first = int(fields["o"])
                        for i, (_, batch) in enumerate(decode_batches(data)):
                            if first + i >= offset:
                                yield batch
                        continue
                    _, error = decode_end(fields["e"])
                    if error is not None:
                        raise error
                    return
        finally:
            self._spawn(lambda: client.decr(readers))

    async def remote_readers(self, id: str) -> int:
        key = f"{self._key(id)}:readers"
        value = await self.run(lambda: self.client.get(key))
        return int(value or 0)

    # -- kept entries ------------------------------------------------------------------

    async def keep(self, name: str, journal: Journal, ttl: float) -> bool:
        size = size_of(journal.batches)
        args = [
            self.prefix,
            name,
            journal.id,
            size,
            max(1, round(ttl * 1000)),
            self.max_entries,
            self.max_bytes,
        ]
        kept = await self.run(lambda: self._keep(keys=self._slot_key, args=args))
        return bool(kept)

    async def lookup(self, name: str) -> Recording | None:
        found = await self.run(lambda: self._lookup(keys=self._slot_key, args=[self.prefix, name]))
        if not found:
            return None
        replay = Replay()
        complete = False
        try:
            for raw in found[1]:
                fields = _fields(raw[1])
                data = fields.get("b")
                if data is not None:
                    for elapsed, batch in decode_batches(data):
                        replay.batches.append(batch)
                        replay.times.append(elapsed)
                elif "e" in fields:
                    complete = decode_end(fields["e"])[0] == "complete"
        except (ValueError, TypeError, KeyError, IndexError):
            log.warning("cache entry %s is unreadable (another version wrote it?): dropped", name)
            complete = False
        if not complete:
            # The stream went away under its entry, never finished or is unreadable.
            await self.forget(name)
            return None
        return replay

    async def forget(self, name: str) -> None:
        await self.run(lambda: self._forget(keys=self._slot_key, args=[self.prefix, name]))
