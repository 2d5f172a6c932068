"""Budgets: what each request cost, and refusing a key that spent its budget.

``settle`` puts a request's cost on its record and, for a key with a budget, adds it to
the key's running spend in the shared state (``spend:<key id>``), so that every
instance sees it. It runs once per request that reached the pipeline: for a key with a
budget, in the policy as soon as the stream is complete (before the client sees its
end, so its next request is checked against it); otherwise in the app once usage is
final (reported by the upstream, or estimated after the client left or the stream
broke). A cache hit or a coalesced reader called no upstream: it costs 0; so does a
simulator's answer, unless ``pricing:`` names its model.

``Budgets.policy`` refuses a key whose running spend reached its budget, before the
upstream is called: 429 ``insufficient_quota``, as OpenAI answers an exhausted quota.
Requests in flight count too: each admitted request *holds* what it may cost — its
prompt's estimate plus the output it allows (``max_tokens`` times ``n``, else
``limits.output_estimate``), priced — and a request is admitted only if the spend, the
holds of the requests in flight and its own estimate stay within the budget (one atomic
step in the shared state, so concurrent requests racing for the last of a budget are
refused up front). The hold is dropped when the request is settled, in the same step
that adds its real cost. A hold left by an instance that died lapses after
``HOLD_TTL``. The spend can still pass the budget by what an estimate missed: an answer
longer than its estimate, when the request set no ``max_tokens``. A model without a
price holds nothing (its cost is unknown, as on its record).

The records are the durable truth. The running spend is seeded from them
(SUM(cost_usd) of the key's records) when the shared state has none — after a restart
with the memory backend, or a Redis that lost its data — and re-read from them every
``RESEED_INTERVAL`` seconds, which also repairs increments lost while the shared state
was unreachable. When other instances write to the same records (PostgreSQL) but the
running spend is kept in this process (no Redis), the app asks for a short interval, so
that spend on any instance counts on every other within seconds. While the shared state
is unreachable, the check reads the spend from the records (neither failing open nor
closed; they lag by the record writer's flush interval, and the answer is kept for a
second). If the records cannot be read either, the request is served and that is
logged once.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Callable

from sluice.config import Deployment
from sluice.errors import BudgetExceeded
from sluice.events import Batch, ChatRequest, estimate_input_tokens
from sluice.policies import Call, Handler
from sluice.pricing import FREE, Price, PriceTable
from sluice.state import SharedState, StateUnavailable
from sluice.store import StoreError, VirtualKey
from sluice.store.keys import KeyStore

log = logging.getLogger("sluice.budget")

#: Seconds between re-reads of a key's running spend from the records.
RESEED_INTERVAL = 600.0
#: Seconds a request's hold on its key's budget lasts unless settled first.
HOLD_TTL = 900.0
#: Record.cache values that mean this request called no upstream.
_FREE = frozenset({"hit", "coalesced"})


def _spend_key(key_id: str) -> str:
    # The hash tag puts a key's spend and its holds in one Redis Cluster slot.
    return f"spend:{{{key_id}}}"


def _holds_key(key_id: str) -> str:
    return f"spend-holds:{{{key_id}}}"


class Budgets:
    def __init__(
        self,
        prices: PriceTable,
        state: SharedState,
        keys: KeyStore,
        reseed_interval: float | None = None,
        *,
        output_estimate: int = 256,
        resolve: Callable[[str], Deployment | None] | None = None,
    ) -> None:
        self._prices = prices
        self._output_estimate = output_estimate
        self._resolve = resolve
        self._state = state
        self._keys = keys
        self._reseed = RESEED_INTERVAL if reseed_interval is None else reseed_interval
        #: Keys whose increment was lost to an outage: re-read from the records next time.
        self._unsynced: set[str] = set()
        #: While the shared state is down: key id → (monotonic deadline, spend).
        self._from_records: dict[str, tuple[float, float]] = {}
        self._degraded = False
        self._records_failing = False

    # -- the policy -------------------------------------------------------------------------

    def policy(self, handler: Handler) -> Handler:
        def handle(request: ChatRequest, call: Call) -> AsyncGenerator[Batch, None]:
            key = call.key
            if key is None or key.budget_usd is None:
                return handler(request, call)  # no budget: no hop at all
            return self._guarded(handler, request, call, key, key.budget_usd)

        return handle

    async def _guarded(
        self, handler: Handler, request: ChatRequest, call: Call, key: VirtualKey, budget: float
    ) -> AsyncGenerator[Batch, None]:
        spent = await self.spent(key)
        if spent >= budget:
            raise self._refusal(key, budget, spent)
        estimate = self.estimate(request)
        try:
            held, spent, holding = await self._state.reserve(
                _spend_key(key.id), _holds_key(key.id), call.record.id, estimate, budget, HOLD_TTL
            )
        except StateUnavailable:
            # Degraded (logged by ``spent``): no holds, but not past the budget alone.
            held, holding = spent + estimate <= budget, 0.0
        if not held:
            raise self._refusal(key, budget, spent, holding, estimate)
        try:
            stream = handler(request, call)
            async with contextlib.aclosing(stream):
                async for batch in stream:
                    yield batch
            # A complete stream: count it before the client sees the end, so that the
            # client's next request is checked against it. Other ends are settled by
            # the app; the hold goes then, or here at the latest.
            await self.settle(request, call)
        finally:
            if call.record.cost_usd is None:
                with contextlib.suppress(StateUnavailable):
                    await self._state.unreserve(
                        _spend_key(key.id), _holds_key(key.id), call.record.id, 0.0
                    )

    @staticmethod
    def _refusal(
        key: VirtualKey, budget: float, spent: float, holding: float = 0.0, estimate: float = 0.0
    ) -> BudgetExceeded:
        message = (
            f"You exceeded your current quota: the API key {key.id} ({key.name}) has"
            f" spent ${spent:.4f} of its ${budget:.2f} budget"
        )
        if holding or estimate:
            message += (
                f", ${holding:.4f} is held by its requests in flight, and this request"
                f" may cost up to ${estimate:.4f}"
            )
        return BudgetExceeded(message + ".")

    def _price(self, request: ChatRequest, call: Call | None = None) -> Price | None:
        deployment = call.deployment if call is not None else None
        if deployment is None and self._resolve is not None:
            deployment = self._resolve(request.model)
        upstream = deployment.upstream_model(request.model) if deployment else None
        if deployment is not None and deployment.provider == "simulator":
            # Generated here: no upstream was paid, whatever the list price of the name.
            return self._prices.price(request.model, upstream, listed=False) or FREE
        return self._prices.price(request.model, upstream)

    def estimate(self, request: ChatRequest) -> float:
        """What the request may cost: its prompt's estimate and the output it allows."""
        output = 0
        if request.operation != "embeddings":
            allowed = request.max_tokens
            if not isinstance(allowed, int) or allowed < 1:
                allowed = self._output_estimate
            output = allowed * max(1, request.n)
        cost = self._prices.cost(self._price(request), estimate_input_tokens(request), output)
        return cost or 0.0

    # -- the running spend ------------------------------------------------------------------

    async def spent(self, key: VirtualKey) -> float:
        """The key's running spend, seeded from the records when the shared state has none."""
        state = self._state
        name = _spend_key(key.id)
        try:
            raw = await state.get(name)
            due = await state.add(f"spend-seeded:{key.id}", b"1", self._reseed)
            if raw is not None and not due and key.id not in self._unsynced:
                self._recovered()
                return float(raw)
            total = await self._recorded(key)
            if total is None:  # the records cannot be read: keep the running spend
                return float(raw) if raw is not None else 0.0
            # SET, not DELETE + INCR: concurrent seeders all write the same total.
            await state.set(name, repr(total).encode())
            self._unsynced.discard(key.id)
            self._recovered()
            return total
        except StateUnavailable:
            self._lost()
        # Neither Redis nor the records: serve (logged), rather than refuse every key.
        return await self._recorded(key, cached=True) or 0.0

    async def _recorded(self, key: VirtualKey, cached: bool = False) -> float | None:
        """The key's spend in the records; while the shared state is down the answer is
        kept for a second, so that a busy key does not re-add its history per request."""
        now = time.monotonic()
        if cached:
            hit = self._from_records.get(key.id)
            if hit is not None and hit[0] > now:
                return hit[1]
        try:
            total = await self._keys.spend(key.id)
        except StoreError as exc:
            if not self._records_failing:
                self._records_failing = True
                log.error("budgets: cannot read spend from the request records: %s", exc)
            return None
        if self._records_failing:
            self._records_failing = False
            log.warning("budgets: reading spend from the request records again")
        if cached:
            if len(self._from_records) > 10_000:
                self._from_records.clear()
            self._from_records[key.id] = (now + 1.0, total)
        return total

    async def settle(self, request: ChatRequest, call: Call) -> None:
        """Put the request's cost on its record and add it to the key's running spend.
        Once per request: a record that has a cost is settled already."""
        record = call.record
        if record.cost_usd is not None:
            return
        if record.cache in _FREE:
            record.cost_usd = 0.0
            await self._count(call, 0.0)
            return
        price = self._price(request, call)
        record.cost_usd = self._prices.cost(price, record.input_tokens, record.output_tokens)
        await self._count(call, record.cost_usd)

    async def _count(self, call: Call, cost: float | None) -> None:
        """Add a settled request's cost to its key's spend and drop its hold."""
        key = call.key
        if key is None or key.budget_usd is None:
            return
        try:
            await self._state.unreserve(
                _spend_key(key.id), _holds_key(key.id), call.record.id, cost or 0.0
            )
        except StateUnavailable:
            self._unsynced.add(key.id)
            self._lost()

    def _lost(self) -> None:
        if not self._degraded:
            self._degraded = True
            log.warning("budgets: shared state unavailable; reading spend from the request records")

    def _recovered(self) -> None:
        if self._degraded:
            self._degraded = False
            log.warning("budgets: shared state available again")
