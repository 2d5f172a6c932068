"""What metrics and traces cost per request, in process, without sockets.

``python -m bench.telemetry_cost [--requests 20000]``

Each row is nanoseconds per request (best of five rounds) of what the gateway does
once per request for them, on a finished record of a streamed chat answer:

- ``metrics.observe``: the Prometheus observations of one request (always on);
- ``metrics, in flight``: the in-flight gauge up and down around the stream;
- ``traces on``: the request's span continued from a ``traceparent``, one attempt's
  span made current while the ``traceparent`` for the upstream is built, its first
  batch read, both spans ended with their attributes; spans go to the SDK's batch
  processor, whose exporter here drops them (the export itself runs on the SDK's
  thread, off the event loop);
- ``traces off``: what the request path does instead: ``is None`` checks.

A chunk costs the relay a few microseconds (``bench/README.md``): divide a row by the
chunks of a typical answer to see it per chunk.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SpanExporter,
    SpanExportResult,
)

from sluice.config import Deployment, TraceSettings
from sluice.events import ChatRequest, Message, Start, TextPart
from sluice.store import Record
from sluice.telemetry.metrics import Metrics
from sluice.telemetry.traces import Tracing

HEADERS = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}


class Drop(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def record() -> Record:
    now = time.time()
    return Record(
        id="0123456789abcdef01234567",
        started_at=now,
        route="/v1/chat/completions",
        method="POST",
        api="openai_chat",
        model="gpt-4o-mini",
        upstream="openai:gpt-4o-mini@api.openai.com",
        ended_at=now + 1.2,
        ttft_ms=210.0,
        duration_ms=1200.0,
        input_tokens=25,
        output_tokens=200,
        usage_source="reported",
        chunks=200,
        attempts=1,
        operation="chat",
        provider="openai",
        response_model="gpt-4o-mini-2024-07-18",
        response_id="chatcmpl-abc",
        finish_reasons="stop",
    )


def best(run: Callable[[int], None], count: int, rounds: int = 5) -> float:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter_ns()
        run(count)
        times.append((time.perf_counter_ns() - t0) / count)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.telemetry_cost", description=__doc__)
    parser.add_argument("--requests", type=int, default=20_000)
    args = parser.parse_args(argv)
    metrics = Metrics(None, lambda path: path)
    tracing = Tracing(TraceSettings(), lambda path: path, [BatchSpanProcessor(Drop())])
    rec = record()
    request = ChatRequest(model="gpt-4o-mini", messages=[Message("user", [TextPart("hi")])])
    deployment = Deployment(name="gpt-4o-mini", provider="openai")
    first = [Start("openai_chat", "chatcmpl-abc", "gpt-4o-mini-2024-07-18")]
    off: object | None = None

    def observe(n: int) -> None:
        for _ in range(n):
            metrics.observe(rec)

    def in_flight(n: int) -> None:
        for _ in range(n):
            metrics.stream_started(rec)
            metrics.stream_ended(rec)

    def traced(n: int) -> None:
        for _ in range(n):
            span = tracing.request(rec, HEADERS)
            attempt = tracing.attempt(request, deployment, "gpt-4o-mini", 1)
            with attempt.current():
                tracing.headers()
            attempt.answered(first)  # type: ignore[arg-type]
            attempt.end()
            assert span is not None
            span.end(rec)

    def untraced(n: int) -> None:
        for _ in range(n):
            if off is not None:  # the request span, the attempt, the upstream headers
                raise AssertionError
            if off is not None:
                raise AssertionError
            if off is not None:
                raise AssertionError

    rows = [
        ("metrics.observe", observe),
        ("metrics, in flight", in_flight),
        ("traces on", traced),
        ("traces off", untraced),
    ]
    print(f"{'per request':<22}{'ns':>10}")
    for name, run in rows:
        print(f"{name:<22}{best(run, args.requests):>10,.0f}", flush=True)
    tracing.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
