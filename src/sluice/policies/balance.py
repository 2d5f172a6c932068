"""Choosing one of a model's deployments: weighted random, or the least busy.

"Busy" is the number of this process's requests that a deployment is serving right
now (from the attempt's start until its stream is closed). Each instance balances its
own traffic; with instances behind a load balancer that evens out without a round trip
per request.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from sluice.config import Deployment


class Balancer:
    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()
        #: Deployment key → streams open on it in this process.
        self._in_flight: dict[str, int] = {}

    def in_flight(self, deployment: Deployment) -> int:
        return self._in_flight.get(deployment.key, 0)

    def started(self, deployment: Deployment) -> None:
        key = deployment.key
        self._in_flight[key] = self._in_flight.get(key, 0) + 1

    def finished(self, deployment: Deployment) -> None:
        key = deployment.key
        left = self._in_flight.get(key, 0) - 1
        if left > 0:
            self._in_flight[key] = left
        else:
            self._in_flight.pop(key, None)

    def choose(self, candidates: Sequence[Deployment], strategy: str) -> Deployment:
        """One of ``candidates`` (not empty). ``least-busy`` takes the one with the
        fewest requests in flight, weights deciding between equally busy ones."""
        if len(candidates) == 1:
            return candidates[0]
        if strategy == "least-busy":
            fewest = min(self.in_flight(d) for d in candidates)
            candidates = [d for d in candidates if self.in_flight(d) == fewest]
            if len(candidates) == 1:
                return candidates[0]
        return self._rng.choices(candidates, weights=[d.weight for d in candidates])[0]
