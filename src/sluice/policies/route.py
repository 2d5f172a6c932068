"""The innermost handler: pick a deployment, retry, fall back, then stream from it.

For one request:

- the model's deployments are tried first, then its fallbacks in order (each model at
  most once; a fallback's own fallbacks are not followed; a key restricted to some
  models skips the fallbacks it may not use);
- within a model, up to ``1 + retries`` attempts; each picks a deployment that is not
  cooling down (``breaker``) and not tried yet if there is one, by the model's strategy
  (``balance``); trying the same deployment again waits an exponential back-off with
  full jitter (at least the upstream's ``Retry-After``);
- an attempt succeeds when its first batch arrives. Only then does anything go
  downstream, so everything above happens before the client saw a byte of the answer.
  A failure after that propagates as it is and becomes the in-band error: a second
  generation would repeat text the client already has (litellm #31067).

What a failed attempt leads to (``verdict``): a context-window error goes to the
context-window fallbacks; a request the upstream refused as the client's fault
(400, unknown model) goes back to the client at once; a timeout or refused upstream
credentials rule that deployment out for this request; 429, 5xx, connection failures
and broken streams may be retried on the same deployment. Every failure but the
client's own counts towards the deployment's circuit breaker.

Deployments cooling down are skipped while something else can serve; when nothing
else can (the last model in the chain), they are tried anyway: the breaker routes
around failures, it does not refuse requests by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import logging
import random
from collections.abc import AsyncGenerator

from sluice.config import Deployment, ModelRoute, Settings
from sluice.errors import (
    ContextWindowExceeded,
    ModelNotFound,
    RequestError,
    SluiceError,
    UpstreamConnectError,
    UpstreamError,
    UpstreamStatusError,
    UpstreamTimeout,
    UpstreamTLSError,
)
from sluice.events import Batch, ChatRequest
from sluice.policies import Call
from sluice.policies.auth import may_use
from sluice.policies.balance import Balancer
from sluice.policies.breaker import Breaker
from sluice.providers.registry import Providers
from sluice.state import SharedState
from sluice.telemetry import Attempt, Tracer

log = logging.getLogger("sluice.route")

Stream = AsyncGenerator[Batch, None]
#: The deployment that answered, its stream, the first batch, and the attempt's span.
Opened = tuple[Deployment, Stream, Batch | None, Attempt | None]


def describe(provider: str, model: str, base_url: str) -> str:
    if provider == "simulator":
        return f"simulator:{model}"
    host = base_url.split("/")[2] if "://" in base_url else base_url
    return f"{provider}:{model}@{host}"


class Verdict(enum.Enum):
    #: The request's own fault: no other deployment would take it.
    FATAL = "fatal"
    #: The messages do not fit: only a model with a larger window helps.
    CONTEXT = "context"
    #: Worth another try, on this deployment too (429, 5xx, connect, broken stream).
    RETRY = "retry"
    #: Not this deployment again for this request (timeouts, refused credentials).
    MOVE = "move"


def verdict(exc: SluiceError) -> Verdict:
    if isinstance(exc, ContextWindowExceeded):
        return Verdict.CONTEXT
    if isinstance(exc, RequestError) or not isinstance(exc, UpstreamError):
        return Verdict.FATAL
    if isinstance(exc, UpstreamTimeout | UpstreamTLSError):
        return Verdict.MOVE
    if isinstance(exc, UpstreamStatusError):
        # The client's own 4xx faults are RequestError already: what is left here is
        # the deployment's problem (rate limit, outage, credentials, quota, base URL).
        status = exc.upstream_status or exc.status
        if status == 429 or status >= 500 or status in (408, 409):
            return Verdict.RETRY
        return Verdict.MOVE
    return Verdict.RETRY


def retry_after(exc: SluiceError) -> float | None:
    """The upstream's ``Retry-After`` in seconds (the HTTP-date form is ignored)."""
    value = exc.headers.get("Retry-After")
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


async def _close(stream: Stream) -> None:
    with contextlib.suppress(Exception):
        await stream.aclose()


@dataclasses.dataclass(slots=True)
class _Tries:
    """What one model's attempts have learnt during one request."""

    tried: set[str] = dataclasses.field(default_factory=set)
    #: Deployments not to try again for this request.
    excluded: set[str] = dataclasses.field(default_factory=set)
    #: Deployment key → the upstream's Retry-After.
    waits: dict[str, float] = dataclasses.field(default_factory=dict)
    repeats: int = 0


class Router:
    def __init__(
        self,
        settings: Settings,
        providers: Providers,
        state: SharedState | None = None,
        rng: random.Random | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        self._settings = settings
        self._tracer = tracer
        self._providers = providers
        self._routing = settings.routing
        self._rng = rng or random.Random()
        self._balancer = Balancer(self._rng)
        self._breaker = Breaker(settings.routing, state)

    def __call__(self, request: ChatRequest, call: Call) -> Stream:
        route = self._settings.route(request.model)
        if route is None:
            raise ModelNotFound(
                f"The model '{request.model}' does not exist or you do not have access to it.",
                param="model",
            )
        call.deployment = route.deployments[0]
        return self._serve(request, call, route)

    async def _serve(self, request: ChatRequest, call: Call, route: ModelRoute) -> Stream:
        call.admitted = True
        deployment, stream, first, attempt = await self._open(request, call, route)
        try:
            if first is None:
                return
            yield first
            while True:
                try:
                    batch = await stream.__anext__()
                except StopAsyncIteration:
                    return
                except UpstreamError as exc:
                    # Too late to try elsewhere, but it counts against the deployment.
                    await self._breaker.failed(deployment, exc.message)
                    if attempt is not None:
                        attempt.failed(exc)
                    raise
                yield batch
        finally:
            self._balancer.finished(deployment)
            await stream.aclose()
            if attempt is not None:
                attempt.end()

    async def _open(self, request: ChatRequest, call: Call, route: ModelRoute) -> Opened:
        """The first deployment, along the model and its fallbacks, that starts to answer."""
        visited = {route.name, request.model}
        model, model_request = route, request
        while True:
            last_resort = all(name in visited for name in route.fallbacks)
            outcome = await self._attempts(model, model_request, call, last_resort)
            if not isinstance(outcome, SluiceError):
                return outcome
            context = isinstance(outcome, ContextWindowExceeded)
            names = route.context_window_fallbacks if context else route.fallbacks
            # A key limited to some models falls back only to those it may use.
            following = next(
                (name for name in names if name not in visited and may_use(call.key, name)),
                None,
            )
            found = self._settings.route(following) if following is not None else None
            if following is None or found is None:
                raise outcome
            log.debug("model %r failed (%s); falling back to %r", model.name, outcome, following)
            visited.add(following)
            call.record.fallbacks += 1
            model, model_request = found, dataclasses.replace(request, model=following)

    async def _attempts(
        self, model: ModelRoute, request: ChatRequest, call: Call, last_resort: bool
    ) -> Opened | SluiceError:
        """Try ``model``'s deployments; the stream that answered, or the error to pass on."""
        tries = _Tries()
        last: SluiceError | None = None
        for _ in range(1 + model.retries):
            deployment = await self._choose(model, tries, last_resort)
            if deployment is None:
                break
            if deployment.key in tries.tried:
                await asyncio.sleep(self._backoff(tries.repeats, tries.waits.get(deployment.key)))
                tries.repeats += 1
            tries.tried.add(deployment.key)
            call.record.attempts += 1
            call.deployment = deployment
            upstream = deployment.upstream_model(request.model)
            call.record.upstream = describe(deployment.provider, upstream, deployment.base_url)
            call.record.provider = deployment.provider
            provider = self._providers.get(deployment)
            stream = provider.stream(request, verbatim=call.verbatim == provider.format)
            self._balancer.started(deployment)
            attempt = None
            if self._tracer is not None:
                attempt = self._tracer.attempt(request, deployment, upstream, call.record.attempts)
            try:
                if attempt is None:
                    first: Batch | None = await stream.__anext__()
                else:
                    with attempt.current():  # the request sent upstream carries it
                        first = await stream.__anext__()
            except StopAsyncIteration:
                first = None
            except SluiceError as exc:
                if attempt is not None:
                    attempt.failed(exc)
                self._balancer.finished(deployment)
                await _close(stream)
                kind = verdict(exc)
                if kind is Verdict.FATAL:
                    raise
                if kind is Verdict.CONTEXT:
                    return exc
                last = exc
                await self._breaker.failed(deployment, exc.message)
                wait = retry_after(exc)
                if kind is Verdict.MOVE or (wait is not None and wait > self._routing.backoff_max):
                    tries.excluded.add(deployment.key)
                elif wait is not None:
                    tries.waits[deployment.key] = wait
                log.debug("attempt on %s failed: %s", call.record.upstream, exc.message)
                continue
            except BaseException as exc:
                if attempt is not None:
                    attempt.failed(exc)
                self._balancer.finished(deployment)
                await _close(stream)
                raise
            self._breaker.succeeded(deployment)
            if attempt is not None:
                attempt.answered(first)
            return deployment, stream, first, attempt
        if last is None:
            last = UpstreamConnectError(
                f"no deployment of the model '{model.name}' is available: all are cooling down"
            )
        return last

    async def _choose(
        self, model: ModelRoute, tries: _Tries, last_resort: bool
    ) -> Deployment | None:
        candidates = [d for d in model.deployments if d.key not in tries.excluded]
        if not candidates:
            return None
        if last_resort and len(candidates) == 1:
            return candidates[0]  # it is tried whatever its breaker says
        fresh = [d for d in candidates if d.key not in tries.tried]
        again = [d for d in candidates if d.key in tries.tried]
        for group in (fresh, again):
            ready = [d for d in group if not await self._breaker.cooling(d)]
            if ready:
                return self._balancer.choose(ready, model.strategy)
        if last_resort:
            return self._balancer.choose(fresh or again, model.strategy)
        return None

    def _backoff(self, repeats: int, wait: float | None) -> float:
        routing = self._routing
        ceiling = min(routing.backoff_max, routing.backoff_base * 2**repeats)
        return max(self._rng.uniform(0.0, ceiling), wait or 0.0)
