"""OpenTelemetry traces from a real gateway to an OTLP/HTTP receiver on loopback: the
request's span, a span per upstream attempt, ``traceparent`` in and out."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from sluice import config
from tests.conftest import StartGateway, upstream_config
from tests.otlp import Receiver, Span, receive_traces
from tests.upstream import scenarios as sc

KEY_ENV = {"TEST_UPSTREAM_KEY": "sk-test"}
MESSAGES = [{"role": "user", "content": "Tell me a story"}]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with receive_traces() as found:
        yield found


def traced(receiver: Receiver, **extra: str) -> dict[str, str]:
    return {
        **KEY_ENV,
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_SERVICE_NAME": "sluice-under-test",
        "OTEL_BSP_SCHEDULE_DELAY": "50",  # ms: spans leave soon after they end
        **extra,
    }


def traceparent() -> tuple[str, str, str]:
    """A client's trace id, span id, and the header that carries them."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return trace_id, span_id, f"00-{trace_id}-{span_id}-01"


def chat(url: str, model: str, headers: dict[str, str] | None = None, **body: Any) -> int:
    payload = {"model": model, "messages": MESSAGES, "stream": True, **body}
    with (
        httpx.Client(timeout=20) as http,
        http.stream(
            "POST", f"{url}/v1/chat/completions", json=payload, headers=headers or {}
        ) as response,
    ):
        response.read()
        return response.status_code


def of_trace(spans: list[Span], trace_id: str) -> list[Span]:
    return sorted((s for s in spans if s.trace_id == trace_id), key=lambda s: s.start)


def upstream_traceparents(upstream: Any, trace_id: str) -> list[str]:
    """The ``traceparent`` of each request the test upstream got in this trace, in order."""
    found = [r["headers"].get("traceparent", "") for r in upstream.log()["requests"]]
    return [value for value in found if trace_id in value]


def test_a_request_continues_the_client_trace_and_passes_it_upstream(
    start_gateway: StartGateway, upstream: Any, receiver: Receiver
) -> None:
    gateway = start_gateway(upstream_config(upstream.url), env=traced(receiver))
    trace_id, client_span, header = traceparent()
    assert chat(gateway.url, "normal", {"traceparent": header}) == 200

    spans = receiver.wait(lambda s: len(of_trace(s, trace_id)) >= 2)
    server, attempt = of_trace(spans, trace_id)
    assert (server.name, server.kind, server.parent_id) == ("chat normal", "server", client_span)
    assert server.resource["service.name"] == "sluice-under-test"
    attributes = server.attributes
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.request.model"] == "normal"
    assert attributes["gen_ai.response.model"] == "normal"
    assert attributes["gen_ai.provider.name"] == "openai"
    assert attributes["gen_ai.response.id"] == sc.completion_id("normal")
    assert attributes["gen_ai.response.finish_reasons"] == ["stop"]
    assert (attributes["gen_ai.usage.input_tokens"], attributes["gen_ai.usage.output_tokens"]) == (
        4,
        10,
    )
    assert attributes["http.route"] == "/v1/chat/completions"
    assert attributes["http.response.status_code"] == 200
    assert "error.type" not in attributes
    assert server.status == "unset"
    ((name, at, details),) = server.events
    assert name == "first_token"
    assert server.start < at < server.end
    assert details["sluice.ttft_ms"] > 0

    # The attempt: a client span under the request's, named after the upstream's model.
    assert (attempt.name, attempt.kind, attempt.parent_id) == (
        "chat normal",
        "client",
        server.span_id,
    )
    host, port = upstream.base.split("://")[1].split(":")
    assert attempt.attributes["server.address"] == host
    assert attempt.attributes["server.port"] == int(port)
    assert attempt.attributes["gen_ai.provider.name"] == "openai"
    assert attempt.attributes["gen_ai.response.id"] == sc.completion_id("normal")
    assert server.start <= attempt.start <= attempt.end <= server.end
    # The upstream was told which attempt asked.
    assert upstream_traceparents(upstream, trace_id) == [f"00-{trace_id}-{attempt.span_id}-01"]


def test_retries_and_fallbacks_are_sibling_attempts(
    start_gateway: StartGateway, upstream: Any, receiver: Receiver
) -> None:
    base = {"provider": "openai", "base_url": upstream.url, "api_key_env": "TEST_UPSTREAM_KEY"}
    models = {
        "m": {**base, "model": "error_status:status=500", "retries": 1, "fallbacks": ["backup"]},
        "backup": {**base, "model": "normal"},
    }
    settings = {"models": models, "routing": {"backoff": {"base": 0.01, "max": 0.05}}}
    gateway = start_gateway(settings, env=traced(receiver))
    trace_id, _, header = traceparent()
    assert chat(gateway.url, "m", {"traceparent": header}) == 200

    spans = receiver.wait(lambda s: len(of_trace(s, trace_id)) >= 4)
    server, *attempts = of_trace(spans, trace_id)
    assert server.name == "chat m"
    assert (server.attributes["sluice.attempts"], server.attributes["sluice.fallbacks"]) == (3, 1)
    assert server.attributes["gen_ai.response.model"] == "normal"
    assert [a.parent_id for a in attempts] == [server.span_id] * 3
    assert [a.name for a in attempts] == ["chat error_status:status=500"] * 2 + ["chat normal"]
    assert [a.status for a in attempts] == ["error", "error", "unset"]
    assert [a.attributes.get("error.type") for a in attempts] == [
        "UpstreamStatusError",
        "UpstreamStatusError",
        None,
    ]
    assert [a.attributes["sluice.attempt"] for a in attempts] == [1, 2, 3]
    assert [a.attributes["sluice.deployment"] for a in attempts] == ["m", "m", "backup"]
    # Each upstream request carried its own attempt.
    assert upstream_traceparents(upstream, trace_id) == [
        f"00-{trace_id}-{a.span_id}-01" for a in attempts
    ]


def test_failures_and_other_routes(
    start_gateway: StartGateway, upstream: Any, receiver: Receiver
) -> None:
    gateway = start_gateway(upstream_config(upstream.url), env=traced(receiver))
    assert chat(gateway.url, "nope") == 404
    assert chat(gateway.url, "midstream_error") == 200  # then an in-band error
    assert httpx.get(f"{gateway.url}/v1/models", timeout=10).status_code == 200
    assert httpx.get(f"{gateway.url}/healthz", timeout=10).status_code == 200

    def named(spans: list[Span], name: str, kind: str = "server") -> Span:
        (found,) = [s for s in spans if s.name == name and s.kind == kind]
        return found

    spans = receiver.wait(lambda s: len(s) >= 5)
    missing = named(spans, "chat nope")
    assert missing.parent_id == ""  # no traceparent came: a trace of its own
    assert missing.attributes["error.type"] == "ModelNotFound"
    assert missing.attributes["http.response.status_code"] == 404
    assert missing.status == "unset"  # the client's mistake, not the server's
    assert named(spans, "chat nope", "client").attributes["error.type"] == "ModelNotFound"

    broken = named(spans, "chat midstream_error")
    assert broken.attributes["error.type"] == "UpstreamProtocolError"
    assert broken.status == "error"
    assert [e[0] for e in broken.events] == ["first_token"]
    attempt = named(spans, "chat midstream_error", "client")
    assert (attempt.status, attempt.parent_id) == ("error", broken.span_id)

    listing = named(spans, "GET /v1/models")
    assert "gen_ai.operation.name" not in listing.attributes
    assert not [s for s in spans if "healthz" in s.name]  # probes are not traced
    assert {s.trace_id for s in spans if s.kind == "server"} == {s.trace_id for s in spans}, (
        "every attempt is in its request's trace"
    )
    assert len({s.trace_id for s in spans if s.kind == "server"}) == 3


@pytest.mark.parametrize(
    "env",
    [{}, {"OTEL_SDK_DISABLED": "true"}, {"OTEL_TRACES_EXPORTER": "none"}],
    ids=["not-configured", "sdk-disabled", "exporter-none"],
)
def test_off_sends_no_span_and_no_traceparent(
    start_gateway: StartGateway, upstream: Any, receiver: Receiver, env: dict[str, str]
) -> None:
    full = traced(receiver, **env) if env else KEY_ENV
    gateway = start_gateway(upstream_config(upstream.url), env=full)
    trace_id, _, header = traceparent()
    assert chat(gateway.url, "normal", {"traceparent": header}) == 200
    requests = upstream.log()["requests"]
    assert requests
    assert not [r for r in requests if trace_id in r["headers"].get("traceparent", "")]
    assert receiver.wait(lambda s: bool(s), timeout=1.0) == []


@pytest.mark.parametrize(
    ("env", "exporters"),
    [
        ({}, ()),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, ("otlp",)),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, ("otlp",)),
        ({"OTEL_TRACES_EXPORTER": "console"}, ("console",)),
        ({"OTEL_TRACES_EXPORTER": "otlp, console"}, ("otlp", "console")),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c"}, ()),
        ({"OTEL_SDK_DISABLED": "TRUE", "OTEL_TRACES_EXPORTER": "otlp"}, ()),
        ({"OTEL_SDK_DISABLED": "false", "OTEL_TRACES_EXPORTER": "otlp"}, ("otlp",)),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"},
            ("otlp",),
        ),
    ],
)
def test_tracing_is_on_only_when_configured(env: dict[str, str], exporters: tuple[str]) -> None:
    assert config.parse("", env=env).traces.exporters == exporters


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER: unknown exporter(s) 'zipkin'"),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
            "OTEL_EXPORTER_OTLP_PROTOCOL: Sluice exports traces over OTLP/HTTP only",
        ),
    ],
)
def test_tracing_settings_it_cannot_honour_are_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(config.ConfigError) as caught:
        config.parse("", env=env)
    assert message in str(caught.value)
