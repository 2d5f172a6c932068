"""OpenTelemetry traces: a span per request, a child span per upstream attempt.

Imported only when tracing is on (see ``sluice.config.telemetry``). Spans follow the
GenAI semantic conventions as of semantic conventions 1.37, where
``gen_ai.provider.name`` replaced ``gen_ai.system``:

- the request's span (kind SERVER) is named ``{gen_ai.operation.name}
  {gen_ai.request.model}`` (``chat gpt-4o-mini``), or ``{method} {route}`` for routes
  that are not a generation; it continues the client's ``traceparent``; its attributes
  are set from the record when the request is over, and an event ``first_token`` marks
  the time to the first token;
- each upstream attempt (kind CLIENT) is named after the model the upstream was asked
  for, so retries and fallbacks show as siblings; the request sent upstream carries the
  attempt as its ``traceparent``.

``gen_ai.provider.name`` is the deployment's provider as configured (``openai``,
``anthropic``, ``openai-responses``, ``simulator``). Spans leave in batches from the
SDK's own thread, through the OTLP/HTTP exporter (or the console one).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from contextvars import Token
from importlib.metadata import PackageNotFoundError, version
from urllib.parse import urlsplit

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagate import get_global_textmap
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode

from sluice.config import Deployment, TraceSettings
from sluice.events import Batch, ChatRequest, Start
from sluice.store import Record

#: Not traced: probes and scrapes, which would bury the requests in noise.
UNTRACED = frozenset({"/healthz", "/readyz", "/metrics"})
FIRST_TOKEN = "first_token"


def _version() -> str:
    try:
        return version("sluice")
    except PackageNotFoundError:
        return "0"


def _exporter(name: str) -> SpanExporter:
    if name == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()  # endpoint, headers, timeout, compression: OTEL_*
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter

    return ConsoleSpanExporter()


class Tracing:
    """The tracer provider and what the gateway does with it."""

    def __init__(
        self,
        settings: TraceSettings,
        route_label: Callable[[str], str],
        processors: list[SpanProcessor] | None = None,
    ) -> None:
        resource = Resource.create({SERVICE_VERSION: _version()})
        if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
            resource = resource.merge(Resource({SERVICE_NAME: "sluice"}))
        self._provider = TracerProvider(resource=resource)  # the sampler: OTEL_TRACES_SAMPLER
        for processor in processors or []:
            self._provider.add_span_processor(processor)
        for name in settings.exporters:
            self._provider.add_span_processor(BatchSpanProcessor(_exporter(name)))
        self._tracer = self._provider.get_tracer("sluice", _version())
        self._propagator = get_global_textmap()  # OTEL_PROPAGATORS; W3C by default
        self._route_label = route_label
        self._servers: dict[str, dict[str, str | int]] = {}  # base URL → server.* attributes

    def request(self, record: Record, headers: Mapping[str, str]) -> _RequestSpan | None:
        """Start the request's span as the current one (continuing the client's trace);
        None for a route that is not traced."""
        if record.route in UNTRACED:
            return None
        parent = self._propagator.extract(headers)
        span = self._tracer.start_span(
            f"{record.method} {self._route_label(record.route)}",
            context=parent,
            kind=SpanKind.SERVER,
        )
        token = otel_context.attach(trace.set_span_in_context(span, parent))
        return _RequestSpan(span, token, self._route_label)

    def attempt(
        self, request: ChatRequest, deployment: Deployment, upstream_model: str, number: int
    ) -> _AttemptSpan:
        server = self._servers.get(deployment.base_url)
        if server is None:
            server = self._servers[deployment.base_url] = _server(deployment.base_url)
        attributes: dict[str, str | int] = {
            "gen_ai.operation.name": request.operation,
            "gen_ai.request.model": upstream_model,
            "gen_ai.provider.name": deployment.provider,
            "sluice.attempt": number,
            "sluice.deployment": deployment.name,
            **server,
        }
        span = self._tracer.start_span(
            f"{request.operation} {upstream_model}", kind=SpanKind.CLIENT, attributes=attributes
        )
        return _AttemptSpan(span)

    def headers(self) -> dict[str, str]:
        carrier: dict[str, str] = {}
        self._propagator.inject(carrier)
        return carrier

    def close(self) -> None:
        """Export what is left and stop (blocks: call it off the event loop)."""
        self._provider.shutdown()


def _server(base_url: str) -> dict[str, str | int]:
    """``server.address`` and ``server.port`` of an upstream, as far as its URL says."""
    try:
        parts = urlsplit(base_url)
        host, port = parts.hostname, parts.port
    except ValueError:
        return {}
    if not host:
        return {}
    return (
        {"server.address": host} if port is None else {"server.address": host, "server.port": port}
    )


class _RequestSpan:
    __slots__ = ("_route_label", "_span", "_token")

    def __init__(
        self,
        span: trace.Span,
        token: Token[otel_context.Context],
        route_label: Callable[[str], str],
    ) -> None:
        self._span = span
        self._token = token
        self._route_label = route_label

    def end(self, record: Record) -> None:
        span = self._span
        try:
            if span.is_recording():
                _describe(span, record, self._route_label(record.route))
            span.end()
        finally:
            otel_context.detach(self._token)


def _describe(span: trace.Span, record: Record, route: str) -> None:
    attributes: dict[str, str | int | float | bool | list[str]] = {
        "http.request.method": record.method,
        "http.route": route,
        "http.response.status_code": record.status,
        "sluice.request.id": record.id,
        "sluice.outcome": record.outcome,
    }
    if record.operation is not None and record.model is not None:
        span.update_name(f"{record.operation} {record.model}")
        attributes["gen_ai.operation.name"] = record.operation
        attributes["gen_ai.request.model"] = record.model
    optional: dict[str, str | int | float | None] = {
        "gen_ai.response.model": record.response_model,
        "gen_ai.response.id": record.response_id,
        "gen_ai.provider.name": record.provider,
        "gen_ai.usage.input_tokens": record.input_tokens,
        "gen_ai.usage.output_tokens": record.output_tokens,
        "error.type": record.error_type,
        "sluice.key.id": record.key_id,
        "sluice.cache": record.cache,
        "sluice.cost_usd": record.cost_usd,
    }
    attributes.update({k: v for k, v in optional.items() if v is not None})
    if record.finish_reasons:
        attributes["gen_ai.response.finish_reasons"] = record.finish_reasons.split(",")
    if record.attempts:
        attributes["sluice.attempts"] = record.attempts
    if record.fallbacks:
        attributes["sluice.fallbacks"] = record.fallbacks
    span.set_attributes(attributes)
    if record.ttft_ms is not None:
        at = int((record.started_at + record.ttft_ms / 1000) * 1e9)
        span.add_event(FIRST_TOKEN, {"sluice.ttft_ms": record.ttft_ms}, timestamp=at)
    if record.outcome == "error" or record.status >= 500:
        span.set_status(Status(StatusCode.ERROR, record.error))


class _AttemptSpan:
    __slots__ = ("_ended", "_span")

    def __init__(self, span: trace.Span) -> None:
        self._span = span
        self._ended = False

    @contextlib.contextmanager
    def current(self) -> Iterator[None]:
        token = otel_context.attach(trace.set_span_in_context(self._span))
        try:
            yield
        finally:
            otel_context.detach(token)

    def answered(self, first: Batch | None) -> None:
        for event in first or ():
            if type(event) is Start:
                self._span.set_attributes(
                    {"gen_ai.response.model": event.model, "gen_ai.response.id": event.id}
                )
                break

    def failed(self, exc: BaseException) -> None:
        if self._ended:
            return
        self._span.set_attribute("error.type", type(exc).__name__)
        self._span.set_status(Status(StatusCode.ERROR, str(exc) or type(exc).__name__))
        self.end()

    def end(self) -> None:
        if not self._ended:
            self._ended = True
            self._span.end()
