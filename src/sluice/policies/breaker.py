"""A circuit breaker per deployment: one that keeps failing is cooled down for a while.

Closed: requests flow; each failure counts and a success resets the count. After
``allowed_fails`` consecutive failures the breaker opens: a cooldown key with a TTL
goes into the shared state, so every gateway instance skips the deployment for
``cooldown`` seconds. When the key expires the breaker is half-open: the next request
tries the deployment again; a success closes the breaker, a failure opens it again at
once, without waiting for ``allowed_fails`` more.

Failures are counted per process (no round trip per request); the cooldown is shared.
When the shared state cannot be reached, this process's own memory keeps the cooldowns
it set (the state backend logs the outage once), so the breaker keeps working alone.
"""

from __future__ import annotations

import contextlib
import logging

from sluice.config import Deployment, Routing
from sluice.state import SharedState, StateUnavailable
from sluice.state.memory import MemoryState

log = logging.getLogger("sluice.route")

_PREFIX = "sluice:cooldown:"


class Breaker:
    def __init__(self, routing: Routing, state: SharedState | None = None) -> None:
        self._allowed_fails = routing.allowed_fails
        self._cooldown = routing.cooldown
        self._state = state
        #: This process's cooldowns: the fallback while the shared state is down.
        self._local = MemoryState(max_entries=10_000)
        #: Deployment key → consecutive failures.
        self._failures: dict[str, int] = {}
        #: Deployments seen cooling down: one more failure opens them again at once.
        self._half_open: set[str] = set()

    @property
    def enabled(self) -> bool:
        return self._allowed_fails > 0 and self._cooldown > 0

    async def cooling(self, deployment: Deployment) -> bool:
        """Whether ``deployment`` is cooling down, here or in any other instance."""
        if not self.enabled:
            return False
        key = _PREFIX + deployment.key
        found = await self._local.get(key)
        if found is None and self._state is not None:
            try:
                found = await self._state.get(key)
            except StateUnavailable:
                found = None
        if found is not None:
            self._half_open.add(deployment.key)
            return True
        return False

    def succeeded(self, deployment: Deployment) -> None:
        if self._failures or self._half_open:
            self._failures.pop(deployment.key, None)
            self._half_open.discard(deployment.key)

    async def failed(self, deployment: Deployment, reason: str) -> bool:
        """Count a failure; True if it opened the breaker (the deployment cools down)."""
        if not self.enabled:
            return False
        key = deployment.key
        count = self._failures.get(key, 0) + 1
        if count < self._allowed_fails and key not in self._half_open:
            self._failures[key] = count
            return False
        self._failures.pop(key, None)
        self._half_open.add(key)
        await self._local.set(_PREFIX + key, b"1", ttl=self._cooldown)
        if self._state is not None:
            # When it fails this process still skips the deployment; the backend logged it.
            with contextlib.suppress(StateUnavailable):
                await self._state.set(_PREFIX + key, b"1", ttl=self._cooldown)
        log.warning(
            "deployment %s of model %r cools down for %g s after %d failure(s) in a row: %s",
            deployment.index,
            deployment.name,
            self._cooldown,
            count,
            reason,
        )
        return True
