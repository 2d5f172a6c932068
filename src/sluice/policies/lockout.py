"""Failed authentication, limited per client address.

Each refused key (wrong, missing, revoked, expired) counts against the address it
came from in a moving window of one minute, in the ``limits`` library's storage over
the shared state (memory, or Redis so that every instance counts together). Past
``auth.max_failures`` in the window, every request from that address that needs a key,
with a right key or a wrong one, is refused with 429 and ``Retry-After`` until the
window has room again: guessing keys from one address stops paying.

Only addresses that failed lately on this instance are looked up in the shared
window (a bounded set kept here), so a request with a good key from anywhere else
costs no round trip. When the shared state is down, nothing is refused for this
(failing open: the keys are still checked).
"""

from __future__ import annotations

import contextlib
import math
import time

from limits import RateLimitItemPerMinute
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string

from sluice.errors import RateLimited
from sluice.state import SharedState, StateUnavailable

#: Addresses with a recent failure remembered by one instance; past it the oldest go.
MAX_SUSPECTS = 100_000
WINDOW = 60.0


class Lockout:
    def __init__(self, state: SharedState, max_failures: int) -> None:
        self._state = state
        storage = storage_from_string(state.limits_uri, **state.limits_options)
        self._limiter = MovingWindowRateLimiter(storage)
        self._item = RateLimitItemPerMinute(max_failures, namespace="sluice-auth-failures")
        #: Address → when its last failure here leaves the window (insertion ordered).
        self._suspects: dict[str, float] = {}

    async def check(self, client: str) -> None:
        """Raise ``RateLimited`` if ``client`` failed too often in the last minute."""
        until = self._suspects.get(client)
        if until is None:
            return
        if until < time.monotonic():
            del self._suspects[client]
            return
        try:
            stats = await self._state.run(
                lambda: self._limiter.get_window_stats(self._item, "client", client)
            )
        except StateUnavailable:
            return  # the state logged it; keys are still checked
        if stats.remaining > 0:
            return
        wait = max(stats.reset_time - time.time(), 1.0)
        raise RateLimited(
            f"Too many failed authentication attempts from {client}: more than"
            f" {self._item.amount} per minute. Try again in {math.ceil(wait)} s.",
            code="too_many_failed_attempts",
            headers={"Retry-After": str(math.ceil(wait))},
        )

    async def failed(self, client: str) -> None:
        """Count a refused key from ``client``."""
        self._suspects.pop(client, None)
        self._suspects[client] = time.monotonic() + WINDOW
        if len(self._suspects) > MAX_SUSPECTS:
            del self._suspects[next(iter(self._suspects))]
        with contextlib.suppress(StateUnavailable):  # the state logged it
            await self._state.run(lambda: self._limiter.hit(self._item, "client", client))
