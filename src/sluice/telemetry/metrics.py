"""Prometheus metrics, observed once per request from its record.

The OpenTelemetry GenAI metrics under their Prometheus names (``.`` → ``_``, the unit as
a suffix: ``gen_ai.client.operation.duration`` in seconds is
``gen_ai_client_operation_duration_seconds``), with the conventions' bucket boundaries
and attributes as labels; then the gateway's own (``sluice_*``). A label that is not
known for a request (the provider of a cache hit, the response model of a refusal) is
empty, which PromQL treats as absent.

Nothing here runs per chunk: ``observe`` reads the finished record, and the in-flight
gauge moves once when a stream starts and once when it ends.

In one process the histograms are kept by ``_Histogram``: a bisect and two additions
per observation, where ``prometheus_client``'s takes a lock per bucket and per sum (five
histograms made it most of what a request's observation cost). Under several worker
processes (``PROMETHEUS_MULTIPROC_DIR`` set) every process writes its values to files
in that directory with ``prometheus_client``'s own metrics, and a scrape of any worker
adds up the files of all of them (its multiprocess mode).
"""

from __future__ import annotations

import glob
import math
import os
import re
from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from typing import Generic, Protocol, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from sluice.store import Record

#: The GenAI semantic conventions' boundaries, each for its metric.
DURATION_BUCKETS = (
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
)  # fmt: skip
TOKEN_BUCKETS = (
    1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864,
)  # fmt: skip
TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
)  # fmt: skip
PER_TOKEN_BUCKETS = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
)  # fmt: skip

#: The GenAI attributes every GenAI metric carries, as Prometheus labels.
GENAI_LABELS = (
    "gen_ai_operation_name",
    "gen_ai_request_model",
    "gen_ai_response_model",
    "gen_ai_provider_name",
)

_LIVE_GAUGE = re.compile(r"gauge_live\w*?_(\d+)\.db$")

C = TypeVar("C")


class _Labelled(Generic[C]):
    """A metric's children by label values, each looked up once: ``labels()`` checks
    and locks on every call, a dict of tuples does not."""

    __slots__ = ("_children", "_labels")

    def __init__(self, labels: Callable[..., C]) -> None:
        self._labels = labels
        self._children: dict[tuple[str, ...], C] = {}

    def __call__(self, *values: str) -> C:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._labels(*values)
        return child


class _Observer(Protocol):
    def observe(self, amount: float) -> None: ...


class _Series:
    """One label set of a ``_Histogram``: counts per bucket (not cumulative), and the sum."""

    __slots__ = ("_bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last: above every bound (+Inf)
        self.sum = 0.0

    def observe(self, amount: float) -> None:
        self.counts[bisect_left(self._bounds, amount)] += 1  # the first bound >= amount
        self.sum += amount


class _Histogram:
    """A histogram of this process alone, without locks: observed on the event loop, and
    read there too when there is one process (``Metrics.shared`` is False), so a scrape
    sees whole observations."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        buckets: Sequence[float],
        registry: CollectorRegistry,
    ) -> None:
        self._name = name
        self._documentation = documentation
        self._labelnames = list(labelnames)
        self._bounds = tuple(float(b) for b in buckets)
        bounds = (*self._bounds, math.inf)
        self._les: list[str] = [floatToGoString(b) for b in bounds]  # type: ignore[no-untyped-call]
        self._series: dict[tuple[str, ...], _Series] = {}
        registry.register(self)

    def labels(self, *values: str) -> _Series:
        series = self._series.get(values)
        if series is None:
            series = self._series[values] = _Series(self._bounds)
        return series

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self._name, self._documentation, labels=self._labelnames)
        for values, series in list(self._series.items()):
            total, buckets = 0, []
            for le, count in zip(self._les, series.counts, strict=True):
                total += count
                buckets.append((le, float(total)))
            family.add_metric(list(values), buckets, series.sum)
        yield family


class Metrics:
    """The gateway's metrics. ``route_label`` maps a request path to its route pattern
    (``/v1/responses/{id}``), so that ids in paths do not become label values."""

    def __init__(self, multiprocess_dir: str | None, route_label: Callable[[str], str]) -> None:
        self._dir = multiprocess_dir
        self._route_label = route_label
        self.registry = registry = CollectorRegistry()

        def histogram(
            name: str, documentation: str, labelnames: Sequence[str], buckets: Sequence[float]
        ) -> _Labelled[_Observer]:
            if multiprocess_dir is None:
                mine = _Histogram(name, documentation, labelnames, buckets, registry)
                return _Labelled(mine.labels)
            shared = Histogram(name, documentation, labelnames, buckets=buckets, registry=registry)
            return _Labelled(shared.labels)

        self.duration = histogram(
            "gen_ai_client_operation_duration_seconds",
            "GenAI operation duration: the whole request, as the gateway served it.",
            (*GENAI_LABELS, "error_type"),
            DURATION_BUCKETS,
        )
        self.tokens = histogram(
            "gen_ai_client_token_usage",
            "Tokens used per request, by token type (input, output).",
            (*GENAI_LABELS, "gen_ai_token_type"),
            TOKEN_BUCKETS,
        )
        self.ttft = histogram(
            "gen_ai_server_time_to_first_token_seconds",
            "Time to the first token of a successful response.",
            GENAI_LABELS,
            TTFT_BUCKETS,
        )
        self.per_token = histogram(
            "gen_ai_server_time_per_output_token_seconds",
            "Time per output token after the first, for successful responses.",
            GENAI_LABELS,
            PER_TOKEN_BUCKETS,
        )
        self.requests = _Labelled(
            Counter(
                "sluice_requests",
                "Requests by route pattern, client API, outcome and status.",
                ("route", "api", "outcome", "status"),
                registry=registry,
            ).labels
        )
        self.streams = _Labelled(
            Gauge(
                "sluice_streams_in_flight",
                "Streamed responses being relayed to clients now.",
                ("api",),
                registry=registry,
                multiprocess_mode="livesum",
            ).labels
        )
        self.cache = _Labelled(
            Counter(
                "sluice_cache_results",
                "Cache results of cacheable requests: hit, miss, coalesced, bypass.",
                ("gen_ai_request_model", "result"),
                registry=registry,
            ).labels
        )
        self.rate_limited = _Labelled(
            Counter(
                "sluice_rate_limit_refusals",
                "Requests refused by the gateway's rate limits (by key id; public: empty).",
                ("key_id", "gen_ai_request_model"),
                registry=registry,
            ).labels
        )
        self.budget_refused = _Labelled(
            Counter(
                "sluice_budget_refusals",
                "Requests refused because the key's budget is spent.",
                ("key_id",),
                registry=registry,
            ).labels
        )
        self.attempts = _Labelled(
            Counter(
                "sluice_upstream_attempts",
                "Upstream attempts, retries and fallbacks included.",
                ("gen_ai_request_model",),
                registry=registry,
            ).labels
        )
        self.fallbacks = _Labelled(
            Counter(
                "sluice_upstream_fallbacks",
                "Times routing moved on to a fallback model.",
                ("gen_ai_request_model",),
                registry=registry,
            ).labels
        )
        if multiprocess_dir is not None:
            _forget_dead_workers(multiprocess_dir)

    # -- the request path: once per request ---------------------------------------

    def stream_started(self, record: Record) -> None:
        if record.stream:
            self.streams(record.api).inc()

    def stream_ended(self, record: Record) -> None:
        if record.stream:
            self.streams(record.api).dec()

    def observe(self, record: Record) -> None:
        """Count a finished request."""
        model = record.model or ""
        route = self._route_label(record.route)
        self.requests(route, record.api, record.outcome, str(record.status)).inc()
        if record.cache is not None:
            self.cache(model, record.cache).inc()
        if record.attempts:
            self.attempts(model).inc(record.attempts)
        if record.fallbacks:
            self.fallbacks(model).inc(record.fallbacks)
        error = record.error_type
        if error == "RateLimited":
            self.rate_limited(record.key_id or "", model).inc()
        elif error == "BudgetExceeded":
            self.budget_refused(record.key_id or "").inc()
        operation = record.operation
        if operation is None:  # not a generation: a listing, a probe, an unknown route
            return
        genai = (operation, model, record.response_model or "", record.provider or "")
        if record.duration_ms is not None:
            self.duration(*genai, error or "").observe(record.duration_ms / 1000)
        if record.input_tokens is not None:
            self.tokens(*genai, "input").observe(record.input_tokens)
        if record.output_tokens is not None and operation != "embeddings":
            self.tokens(*genai, "output").observe(record.output_tokens)
        ttft = record.ttft_ms
        if record.outcome != "ok" or ttft is None:
            return
        self.ttft(*genai).observe(ttft / 1000)
        out = record.output_tokens
        if out is not None and out > 1 and record.duration_ms is not None:
            per_token = max(0.0, record.duration_ms - ttft) / 1000 / (out - 1)
            self.per_token(*genai).observe(per_token)

    # -- scrapes and the end ------------------------------------------------------

    @property
    def shared(self) -> bool:
        """Several processes write the metrics, to files: render off the event loop.
        Otherwise render on it, where the histograms are observed."""
        return self._dir is not None

    def render(self, accept: str | None) -> tuple[bytes, str]:
        """The exposition (text format, or OpenMetrics when ``accept`` asks for it)
        and its content type."""
        encode, content_type = choose_encoder(accept or "")
        if self._dir is None:
            return encode(self.registry), content_type
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=self._dir)  # type: ignore[no-untyped-call]
        return encode(registry), content_type

    def close(self) -> None:
        """This process stops: its in-flight streams no longer count."""
        if self._dir is not None:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(os.getpid(), self._dir)  # type: ignore[no-untyped-call]


def _forget_dead_workers(directory: str) -> None:
    """Drop the live gauges of processes that are gone (a worker that crashed did not
    say so): their streams are not in flight any more."""
    from prometheus_client import multiprocess

    for path in glob.glob(os.path.join(directory, "gauge_live*.db")):
        match = _LIVE_GAUGE.search(os.path.basename(path))
        if match is None:
            continue
        pid = int(match.group(1))
        if pid != os.getpid() and not _alive(pid):
            multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
