"""The cache policy: exact-match response cache and request coalescing.

A request is *cacheable* when the cache is on for its model and it is deterministic
(``temperature`` 0 or a ``seed``), or when it says ``x-sluice-cache: on``. Its key is a
hash of the normalised request: model, messages and every option that changes what the
model writes — not ``stream``, ``stream_options``, ``user`` and the like — so streamed
and non-streamed requests share entries (both are stored as events).

A cacheable request is, in this order: joined to an identical generation in flight
(``coalesced``), replayed from a kept entry (``hit``), or generated upstream and kept
once it completed (``miss``). Entries and generations are shared within a scope
(``cache.scope``): each virtual key's own by default, or every caller's (``global``);
the scope is part of the key. ``x-sluice-cache: refresh`` skips the entry, ``off`` skips
the whole policy. A hit is replayed batch by batch through the client's dialect, like
any other stream (optionally at the original pace), usage included. Only complete
generations are kept: ended by the upstream with a ``Finish`` and no error.

When the shared state is unreachable the request goes straight upstream (``bypass``).
The outcome is on the record (``cache``) and in the ``x-sluice-cache`` response header.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import uuid
from collections.abc import AsyncGenerator
from typing import Any

import orjson

from sluice.config import CacheSettings
from sluice.errors import RequestError, UpstreamError
from sluice.events import Batch, ChatRequest, Start
from sluice.journal import Abandoned, Journal, Journals, Recording, WriterGone
from sluice.policies import Call, Handler
from sluice.policies.coalesce import Flights
from sluice.state import SharedState, StateUnavailable

HEADER = "x-sluice-cache"
_HEADER_BYTES = HEADER.encode()
MODES = ("on", "off", "refresh")
#: ``Record.cache`` values of an answer no upstream produced for this request.
FREE = frozenset({"hit", "coalesced"})
#: Request fields that do not change what the model writes.
NOT_IN_KEY = frozenset(
    {
        "stream",
        "stream_options",
        "user",
        "safety_identifier",
        "metadata",
        "store",
        "service_tier",
        "prompt_cache_key",
        "prompt_cache_retention",
    }
)
#: Bumped when the key's recipe or the stored format changes.
KEY_VERSION = 3
#: Canonical fields that do not change what the model writes.
_NOT_ANSWER = frozenset({"stream", "include_usage", "user", "source", "extra"})
_INT64 = 1 << 63


def _canonical(value: Any) -> Any:
    """JSON with the spellings that mean the same thing made equal: null members
    dropped, integral floats as integers (``0.0`` is ``0``). Numbers JSON cannot hold
    exactly as 64-bit (``2**64``, ``1e20``) are kept as their decimal text, tagged, so
    they still key apart from every other value."""
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: _canonical(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if getattr(value, f.name) is not None
        } | {"_": type(value).__name__}
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, float):
        if value.is_integer():
            value = int(value)
        elif value != value or value in (float("inf"), float("-inf")):
            return {"$float": repr(value)}
        else:
            return value
    if isinstance(value, int):
        return value if -_INT64 <= value < _INT64 else {"$int": str(value)}
    return {"$repr": repr(value)}


def normalise(request: ChatRequest) -> dict[str, Any]:
    """The parts of a request that decide its answer, in one canonical shape."""
    fields = {
        f.name: getattr(request, f.name)
        for f in dataclasses.fields(request)
        if f.name not in _NOT_ANSWER
    }
    fields["extra"] = {k: v for k, v in request.extra.items() if k not in NOT_IN_KEY}
    return {"v": KEY_VERSION, **_canonical(fields)}


def cache_key(request: ChatRequest, scope: str = "") -> str:
    """The entry's name: the normalised request, within ``scope`` (who may share it)."""
    body = orjson.dumps({"scope": scope, **normalise(request)}, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(body).hexdigest()


def scope_of(call: Call, scope: str) -> str:
    """Whose entries a request reads and writes. ``key``: the virtual key's id (the
    master key's own; ``public`` for callers without a key on the public route;
    ``open`` when the gateway has no keys at all: everyone is the same caller)."""
    if scope == "global":
        return "global"
    if call.key is not None:
        return f"key:{call.key.id}"
    return "public" if call.public else "open"


def deterministic(request: ChatRequest) -> bool:
    # An embedding depends on its input alone.
    return request.operation == "embeddings" or request.temperature == 0 or request.seed is not None


def _new_id() -> str:
    return uuid.uuid4().hex


async def replay(recording: Recording, paced: bool) -> AsyncGenerator[Batch, None]:
    """A kept generation, batch by batch; ``paced`` waits as long as the original did."""
    batches, times = recording.batches, recording.times
    if not paced:
        for batch in batches:
            yield batch
        return
    loop = asyncio.get_running_loop()
    start = loop.time()
    for batch, elapsed in zip(batches, times, strict=True):
        delay = start + elapsed - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        yield batch


class _Retry(Exception):
    """The generation to follow went away before it gave anything: decide again."""


class Cache:
    """The cache-and-coalesce policy (``Handler -> Handler``)."""

    def __init__(self, settings: CacheSettings, journals: Journals, state: SharedState) -> None:
        self.settings = settings
        self.journals = journals
        self.state = state
        self.flights = Flights(settings, journals, state)

    async def close(self) -> None:
        await self.flights.close()
        await self.journals.close()

    def __call__(self, inner: Handler) -> Handler:
        def handle(request: ChatRequest, call: Call) -> AsyncGenerator[Batch, None]:
            mode = self.mode(request, call)
            if mode is None or self.flights.closed:
                return inner(request, call)
            if mode == "off":
                self._say(call, "bypass")
                return inner(request, call)
            return self._serve(inner, request, call, mode)

        return handle

    def mode(self, request: ChatRequest, call: Call) -> str | None:
        """``on``, ``refresh`` or ``off`` for a request the cache applies to, else None."""
        asked = call.headers.get(HEADER)
        if asked is not None:
            asked = asked.strip().lower()
            if asked not in MODES:
                raise RequestError(
                    f"the {HEADER} header must be one of {', '.join(MODES)}; got {asked!r}",
                    param=HEADER,
                )
        enabled, _ = self.settings.for_model(request.model)
        if not enabled:
            return None
        if asked is not None:
            return asked
        return "on" if deterministic(request) else None

    async def answered(self, request: ChatRequest, call: Call) -> bool:
        """Whether the request would be answered without an upstream now: its entry is
        kept, or a generation it would join runs here. A lookup of its own, so asked
        only where it changes a decision (a request short of tokens)."""
        if self.flights.closed or self.mode(request, call) != "on":
            return False
        key = cache_key(request, scope_of(call, self.settings.scope))
        if self.flights.get(key) is not None:
            return True
        try:
            return await self.journals.lookup(key) is not None
        except StateUnavailable:
            return False

    @staticmethod
    def _say(call: Call, status: str) -> None:
        call.record.cache = status
        if status in ("hit", "coalesced"):
            call.admitted = True  # an answer is on its way: keep-alives may start
        headers = call.response_headers
        headers[:] = [h for h in headers if h[0] != _HEADER_BYTES]
        headers.append((_HEADER_BYTES, status.encode()))

    async def _serve(
        self, inner: Handler, request: ChatRequest, call: Call, mode: str
    ) -> AsyncGenerator[Batch, None]:
        call.verbatim = None  # journals keep events
        key = cache_key(request, scope_of(call, self.settings.scope))
        for _ in range(3):
            try:
                source = await self._source(inner, request, call, key, mode)
            except StateUnavailable:
                break
            except _Retry:
                continue
            yielded = False
            # A hit or a shared generation is a response of its own: it gets its own id.
            fresh = call.record.cache in ("hit", "coalesced")
            try:
                async with contextlib.aclosing(source):
                    async for batch in source:
                        if fresh and not yielded:
                            batch = [
                                dataclasses.replace(e, id="") if type(e) is Start else e
                                for e in batch
                            ]
                        yielded = True
                        yield batch
                return
            except (Abandoned, WriterGone):
                if yielded:
                    raise
            except StateUnavailable as exc:
                if yielded:
                    raise UpstreamError("lost the shared generation mid-stream") from exc
                break
        # The shared state is down, or the generations to share kept going away.
        self._say(call, "bypass")
        async with contextlib.aclosing(inner(request, call)) as stream:
            async for batch in stream:
                yield batch

    async def _source(
        self, inner: Handler, request: ChatRequest, call: Call, key: str, mode: str
    ) -> AsyncGenerator[Batch, None]:
        """Decide where this request's stream comes from, and say so."""
        flights = self.flights
        flight = flights.get(key)
        if flight is None and mode != "refresh":
            recording = await self.journals.lookup(key)
            if recording is not None:
                self._say(call, "hit")
                return replay(recording, self.settings.paced)
            flight = flights.get(key)
        if flight is not None:
            self._say(call, "coalesced")
            return flights.read(flight)
        _, ttl = self.settings.for_model(request.model)
        id = _new_id()
        if not self.settings.coalesce:
            self._say(call, "miss")
            return self._tee(inner, request, call, key, id, ttl)
        lock = None
        if self.journals.distributed:
            lock = f"cache:lead:{key}"
            if not await self.state.add(lock, id.encode(), ttl=self.settings.lease):
                holder = await self.state.get(lock)
                flight = flights.get(key)
                if flight is not None:
                    self._say(call, "coalesced")
                    return flights.read(flight)
                if holder is None:
                    raise _Retry
                self._say(call, "coalesced")
                return flights.follow(holder.decode(), lock)
        self._say(call, "miss")
        flight = flights.start(key, id, inner, request, call, ttl=ttl, store=True, lock=lock)
        return flights.read(flight)

    async def _tee(
        self, inner: Handler, request: ChatRequest, call: Call, key: str, id: str, ttl: float
    ) -> AsyncGenerator[Batch, None]:
        """Without coalescing: stream straight through, and keep the journal if complete."""
        journal: Journal = self.journals.create(id)
        try:
            async with contextlib.aclosing(inner(request, call)) as stream:
                async for batch in stream:
                    journal.append(batch)
                    yield batch
            journal.complete()
        finally:
            if journal.live:
                journal.fail(Abandoned("the stream ended early"))
            self.journals.release(journal)
        # In the background: the client's stream ends now.
        self.flights.spawn(self.flights.keep(key, journal, ttl))
