"""What the gateway tells operators about requests: Prometheus metrics (``metrics``) and
OpenTelemetry traces (``traces``).

Both read a request's record once it is finished; neither runs per chunk. Tracing is off
unless the standard ``OTEL_*`` variables turn it on, and then ``traces`` (and the
OpenTelemetry SDK) is imported; otherwise nothing on the request path calls a tracer.
The protocols below are all that the rest of the package sees of it.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Protocol

from sluice.config import Deployment
from sluice.events import Batch, ChatRequest
from sluice.store import Record


class Attempt(Protocol):
    """The span of one upstream attempt, a child of its request's span."""

    def current(self) -> AbstractContextManager[None]:
        """While entered, the attempt is the current span: the request sent upstream
        meanwhile carries it as its ``traceparent``."""
        ...

    def answered(self, first: Batch | None) -> None:
        """The upstream started to answer; ``first`` is its first batch."""
        ...

    def failed(self, exc: BaseException) -> None:
        """The attempt failed (before or after its first batch); ends it."""
        ...

    def end(self) -> None:
        """The stream is closed. Ending twice does nothing."""
        ...


class RequestSpan(Protocol):
    def end(self, record: Record) -> None:
        """The request is over: its attributes, from ``record``, and the end."""
        ...


class Tracer(Protocol):
    def attempt(
        self, request: ChatRequest, deployment: Deployment, upstream_model: str, number: int
    ) -> Attempt: ...

    def headers(self) -> dict[str, str]:
        """The headers that carry the current span to an upstream (``traceparent``)."""
        ...
