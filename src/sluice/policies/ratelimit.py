"""Rate limits: requests and tokens per minute, per key, per model and per client address.

Which limits apply to a request:

- per key: ``call.key.rpm`` / ``call.key.tpm`` (none for the master key);
- per client address: ``limits.public_rpm``, for a request served without a key on the
  public ``GET /`` route;
- per model: ``limits.models.NAME.rpm`` / ``.tpm`` (``*``: each other model), across
  every key and client.

The counters live in the ``limits`` library's storage over the shared state's server
(``state.limits_uri``): this process's memory, or Redis so that every instance counts
together. Two strategies, one per unit:

- requests: **moving window**, exact: never more than N requests in any 60 seconds,
  across instances (one atomic Lua script per hit in Redis). It stores one timestamp
  per request, at most N per key: cheap for request counts.
- tokens: **sliding window counter**, two counters per limit whatever the cost. A
  moving window stores one entry per unit of cost, so a 4,000-token request would
  push 4,000 list entries and a tpm of a million could hold a million per key. The
  counter approximates the last minute by weighting the previous window, which is
  plenty for token budgets.

Tokens are charged up front from an estimate: prompt characters / 4 plus
``max_completion_tokens`` or ``max_tokens`` (times ``n``), or ``limits.output_estimate``
when the request sets none; a charge larger than the limit itself is capped at the
limit, so a big request can still pass once the window is empty. At the end of a
stream the real usage (the Usage event, as the relay put it on the record) corrects
the charge: what the estimate missed is added at once, even past the limit (``hit``
refuses a cost that would overflow without counting it, and the overrun is exactly
what must count, so the correction calls the storage primitive ``hit`` uses, without
the ceiling). An estimate that was too high cannot be refunded with ``limits``: the
excess stays charged and slides out of the window within a minute, as with OpenAI,
whose limits count ``max_tokens`` too. A stream that ends early (client gone, error)
keeps its estimate.

A request the cache answers (a hit, or one that joined another's generation) called no
upstream: its tokens are given back (a negative charge) once the first batch shows it,
and a request short of tokens is first asked about (``free``: a cache lookup, only on
that path) and served if the cache can answer it. It still counts as a request.

Before charging, every applicable limit is read; if one is short, the request is
refused without charging any. Otherwise each is hit; a limit that another request
exhausted in between refuses atomically (a request counted by the other limits is then
refused anyway, as OpenAI counts refused requests).

A refusal is ``RateLimited`` (429) with ``Retry-After``, ``retry-after-ms`` and the
``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` headers OpenAI sends; the same
headers go on every admitted response. Where several limits of one unit apply, the
headers show the one with the least left.

When the shared state is unavailable, ``limits.fail`` decides: ``open`` (the default)
serves without limits, ``closed`` answers 503; either is logged once per outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

from limits import RateLimitItem, RateLimitItemPerMinute
from limits.aio.storage import SlidingWindowCounterSupport
from limits.aio.strategies import (
    MovingWindowRateLimiter,
    RateLimiter,
    SlidingWindowCounterRateLimiter,
)
from limits.storage import storage_from_string
from limits.util import WindowStats

from sluice.config import LimitSettings
from sluice.errors import RateLimited, ServiceUnavailable
from sluice.events import Batch, ChatRequest, estimate_input_tokens
from sluice.policies import Call, Handler
from sluice.policies.cache import FREE
from sluice.state import SharedState, StateUnavailable

log = logging.getLogger("sluice.ratelimit")

Unit = Literal["requests", "tokens"]
Free = Callable[[ChatRequest, Call], Awaitable[bool]]
#: A corrective token charge is never refused: what was used, was used.
_NO_CEILING = 2**62


@dataclass(frozen=True, slots=True)
class Limit:
    unit: Unit
    item: RateLimitItem
    #: Whose counter: ("key", id), ("model", name) or ("client", address).
    who: tuple[str, str]
    #: How a refusal names it: "key 'ci'", "model 'gpt-4o'", "client 10.0.0.7".
    label: str


def per_minute(unit: Unit, amount: int) -> RateLimitItem:
    return RateLimitItemPerMinute(amount, namespace=f"sluice-{unit}")


def estimate_tokens(request: ChatRequest, output_estimate: int) -> int:
    """The prompt's estimate, plus the output the request allows (or the default)."""
    if request.operation == "embeddings":
        return estimate_input_tokens(request)
    output = request.max_tokens
    if not isinstance(output, int) or output < 1:
        output = output_estimate
    return estimate_input_tokens(request) + output * max(1, request.n)


def duration(seconds: float) -> str:
    """As OpenAI writes ``x-ratelimit-reset-*``: ``20ms``, ``1.5s``, ``6m0s``."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    minutes, rest = divmod(round(seconds, 3), 60)
    text = f"{rest:.3f}".rstrip("0").rstrip(".") + "s"
    return f"{int(minutes)}m{text}" if minutes else text


async def _all(operations: Sequence[Awaitable[Any]]) -> list[Any]:
    """Await every operation; raise the first failure once all have finished."""
    if len(operations) == 1:
        return [await operations[0]]
    results = await asyncio.gather(*operations, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results


class RateLimits:
    """The policy: ``RateLimits(settings.limits, state)(handler)`` is the limited handler."""

    def __init__(
        self, settings: LimitSettings, state: SharedState, free: Free | None = None
    ) -> None:
        self._settings = settings
        self._state = state
        #: Whether a request would be answered without an upstream (a cache hit):
        #: asked only before refusing one for want of tokens.
        self._free = free
        storage = storage_from_string(state.limits_uri, **state.limits_options)
        self._storage = cast(SlidingWindowCounterSupport, storage)
        self._limiters: dict[Unit, RateLimiter] = {
            "requests": MovingWindowRateLimiter(storage),
            "tokens": SlidingWindowCounterRateLimiter(storage),
        }
        self._models: dict[str, list[tuple[Unit, RateLimitItem]]] = {}
        for name, spec in settings.models.items():
            items: list[tuple[Unit, RateLimitItem]] = []
            if spec.rpm:
                items.append(("requests", per_minute("requests", spec.rpm)))
            if spec.tpm:
                items.append(("tokens", per_minute("tokens", spec.tpm)))
            if items:
                self._models[name] = items
        self._public = per_minute("requests", settings.public_rpm) if settings.public_rpm else None
        #: Set while the shared state is down, so that the decision is logged once.
        self._degraded = False

    def limits_for(self, request: ChatRequest, call: Call) -> list[Limit]:
        found: list[Limit] = []
        key = call.key
        if key is not None:
            if not key.master:
                label = f"key {key.name!r}"
                if key.rpm:
                    found.append(
                        Limit("requests", per_minute("requests", key.rpm), ("key", key.id), label)
                    )
                if key.tpm:
                    found.append(
                        Limit("tokens", per_minute("tokens", key.tpm), ("key", key.id), label)
                    )
        elif self._public is not None and (call.public or call.record.route == "/"):
            client = call.record.client or "unknown"
            found.append(Limit("requests", self._public, ("client", client), f"client {client}"))
        model = self._models.get(request.model) or self._models.get("*")
        if model is not None:
            label = f"model {request.model!r}"
            found.extend(Limit(unit, item, ("model", request.model), label) for unit, item in model)
        return found

    def __call__(self, handler: Handler) -> Handler:
        def limited(request: ChatRequest, call: Call) -> AsyncGenerator[Batch, None]:
            limits = self.limits_for(request, call)
            if not limits:
                return handler(request, call)
            return self._serve(handler, request, call, limits)

        return limited

    async def _serve(
        self, handler: Handler, request: ChatRequest, call: Call, limits: list[Limit]
    ) -> AsyncGenerator[Batch, None]:
        costs = await self._admit(request, call, limits)
        first = True
        async with contextlib.aclosing(handler(request, call)) as stream:
            async for batch in stream:
                if first:
                    first = False
                    # The cache has decided by now: an answer no upstream produces
                    # for this request gives its tokens back.
                    if costs is not None and call.record.cache in FREE:
                        await self._refund(limits, costs)
                        costs = None
                yield batch
        if costs is not None:
            await self._settle(call, limits, costs)

    # -- admission ---------------------------------------------------------------

    async def _admit(
        self, request: ChatRequest, call: Call, limits: list[Limit]
    ) -> list[int] | None:
        """Charge every limit or raise; the costs charged, or None if not enforced."""
        estimate = 0
        if any(limit.unit == "tokens" for limit in limits):
            estimate = estimate_tokens(request, self._settings.output_estimate)
        costs = [1 if lim.unit == "requests" else min(estimate, lim.item.amount) for lim in limits]
        try:
            stats: list[WindowStats] = await self._state.run(
                lambda: _all([self._stats(limit) for limit in limits])
            )
            short = [
                (limit, stat, cost)
                for limit, stat, cost in zip(limits, stats, costs, strict=True)
                if stat.remaining < cost
            ]
            tokens_only = all(limit.unit == "tokens" for limit, _, _ in short)
            if short and tokens_only and self._free and await self._free(request, call):
                # Out of tokens, but answered from the cache: it counts as a request only.
                costs = [0 if limit.unit == "tokens" else 1 for limit in limits]
                short = []
            if short:
                raise self._refusal(*short[0], limits, stats)
            charged = [(limit, cost) for limit, cost in zip(limits, costs, strict=True) if cost]
            hit_charged: list[bool] = await self._state.run(
                lambda: _all(
                    [
                        self._limiters[limit.unit].hit(limit.item, *limit.who, cost=cost)
                        for limit, cost in charged
                    ]
                )
            )
            hit_by = dict(zip((id(limit) for limit, _ in charged), hit_charged, strict=True))
            hits = [hit_by.get(id(limit), True) for limit in limits]
        except StateUnavailable as exc:
            self._unenforced(exc)
            return None
        self._degraded = False
        for limit, hit, stat, cost in zip(limits, hits, stats, costs, strict=True):
            if not hit:  # another request took the rest in between
                raise self._refusal(limit, WindowStats(stat.reset_time, 0), cost, limits, stats)
        now = time.time()
        left = [
            (limit, max(0, stat.remaining - cost), self._reset_in(limit, stat, now))
            for limit, stat, cost in zip(limits, stats, costs, strict=True)
        ]
        call.response_headers.extend(
            (name.encode(), value.encode()) for name, value in _headers(left).items()
        )
        return costs

    def _stats(self, limit: Limit) -> Awaitable[WindowStats]:
        return self._limiters[limit.unit].get_window_stats(limit.item, *limit.who)

    @staticmethod
    def _reset_in(limit: Limit, stat: WindowStats, now: float) -> float:
        """Seconds until the window has room again (a full window for a fresh one)."""
        reset = stat.reset_time - now
        return reset if reset > 0 else float(limit.item.get_expiry())

    def _refusal(
        self,
        refused: Limit,
        stat: WindowStats,
        cost: int,
        limits: list[Limit],
        stats: list[WindowStats],
    ) -> RateLimited:
        now = time.time()
        wait = max(stat.reset_time - now, 0.001)
        retry = max(1, math.ceil(wait))
        per = "RPM" if refused.unit == "requests" else "TPM"
        message = (
            f"Rate limit reached for {refused.label} on {refused.unit} per min ({per}): "
            f"Limit {refused.item.amount}, Remaining {stat.remaining}, Requested {cost}. "
            f"Please try again in {duration(wait)}."
        )
        # The refused limit speaks for its unit; the other unit shows its tightest limit.
        left = [
            (limit, max(0, limit_stat.remaining), self._reset_in(limit, limit_stat, now))
            for limit, limit_stat in zip(limits, stats, strict=True)
            if limit.unit != refused.unit
        ]
        left.append((refused, stat.remaining, wait))
        headers = {
            "Retry-After": str(retry),
            "retry-after-ms": str(math.ceil(wait * 1000)),
            **_headers(left),
        }
        return RateLimited(message, headers=headers)

    def _unenforced(self, exc: StateUnavailable) -> None:
        closed = self._settings.fail == "closed"
        if not self._degraded:
            # The state logged the cause once; this says what it means for limits.
            self._degraded = True
            if closed:
                log.error("rate limits cannot be checked: refusing requests (limits.fail: closed)")
            else:
                log.warning(
                    "rate limits not enforced while the shared state is down (limits.fail: open)"
                )
        if closed:
            raise ServiceUnavailable(
                "Rate limits cannot be checked because the gateway's shared state (Redis) "
                "is unavailable; requests are refused until it returns (limits.fail: closed).",
                headers={"Retry-After": "1"},
            ) from exc

    # -- the end of a stream -------------------------------------------------------

    async def _refund(self, limits: list[Limit], costs: list[int]) -> None:
        """Give back the tokens charged up front (a negative charge, never refused)."""
        await self._charge(
            [
                (limit, -cost)
                for limit, cost in zip(limits, costs, strict=True)
                if limit.unit == "tokens" and cost
            ]
        )

    async def _charge(self, amounts: list[tuple[Limit, int]]) -> None:
        """Add to token counters without the ceiling ``hit`` applies."""
        if not amounts:
            return
        storage = self._storage
        with contextlib.suppress(StateUnavailable):  # logged by the state
            await self._state.run(
                lambda: _all(
                    [
                        storage.acquire_sliding_window_entry(
                            limit.item.key_for(*limit.who),
                            _NO_CEILING,
                            limit.item.get_expiry(),
                            amount,
                        )
                        for limit, amount in amounts
                    ]
                )
            )

    async def _settle(self, call: Call, limits: list[Limit], costs: list[int]) -> None:
        """Charge what the estimate missed, from the usage the stream reported."""
        record = call.record
        if record.input_tokens is None or record.output_tokens is None:
            return
        used = record.input_tokens + record.output_tokens
        extra = [
            (limit, used - cost)
            for limit, cost in zip(limits, costs, strict=True)
            if limit.unit == "tokens" and used > cost
        ]
        await self._charge(extra)


def _headers(left: list[tuple[Limit, int, float]]) -> dict[str, str]:
    """OpenAI's rate-limit headers: per unit, the limit with the least left."""
    headers: dict[str, str] = {}
    for unit in ("requests", "tokens"):
        mine = [entry for entry in left if entry[0].unit == unit]
        if not mine:
            continue
        limit, remaining, reset = min(mine, key=lambda entry: (entry[1], -entry[2]))
        headers[f"x-ratelimit-limit-{unit}"] = str(limit.item.amount)
        headers[f"x-ratelimit-remaining-{unit}"] = str(remaining)
        headers[f"x-ratelimit-reset-{unit}"] = duration(reset)
    return headers
