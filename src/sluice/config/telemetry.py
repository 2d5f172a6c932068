"""Metrics and traces: the ``metrics`` key, ``PROMETHEUS_MULTIPROC_DIR`` and the standard
OpenTelemetry variables (``OTEL_*``) that turn tracing on."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sluice.config.errors import ConfigError, Keys
from sluice.config.values import check_keys, flag, mapping

#: Span exporters Sluice can build: OTLP over HTTP (protobuf), and stdout for a look.
EXPORTERS = ("otlp", "console")


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    """The ``metrics:`` section, and where worker processes keep their metrics."""

    #: ``GET /metrics`` answers without a key.
    public: bool = False
    #: ``PROMETHEUS_MULTIPROC_DIR``: each process writes its metrics there and a scrape
    #: adds them up (``sluice serve --workers N`` sets it); None: this process alone.
    multiprocess_dir: str | None = None


@dataclass(frozen=True, slots=True)
class TraceSettings:
    """Tracing, from the standard variables; off unless one of them asks for it."""

    #: The span exporters (``otlp``, ``console``); empty: tracing is off.
    exporters: tuple[str, ...] = ()

    @property
    def enabled(self) -> bool:
        return bool(self.exporters)


def metrics(raw: Mapping[str, Any], env: Mapping[str, str]) -> MetricsSettings:
    at: Keys = ("metrics",)
    data = mapping(raw, "metrics", ())
    check_keys(data, {"public"}, at)
    return MetricsSettings(
        public=flag(data, "public", at, False),
        multiprocess_dir=env.get("PROMETHEUS_MULTIPROC_DIR") or None,
    )


def traces(env: Mapping[str, str]) -> TraceSettings:
    """On when ``OTEL_TRACES_EXPORTER`` names an exporter, or, with that unset, when an
    OTLP endpoint is set (``OTEL_EXPORTER_OTLP_ENDPOINT`` or its ``_TRACES_`` form);
    off with ``OTEL_SDK_DISABLED=true`` or ``OTEL_TRACES_EXPORTER=none``.

    The SDK reads the rest itself when tracing starts: the endpoint, headers, timeout
    and compression of the exporter, ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``,
    the sampler and the batch processor's delays.
    """
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return TraceSettings()
    named = env.get("OTEL_TRACES_EXPORTER", "").strip()
    if named:
        names = [name.strip().lower() for name in named.split(",") if name.strip()]
        unknown = [name for name in names if name not in (*EXPORTERS, "none")]
        if unknown:
            raise ConfigError(
                f"OTEL_TRACES_EXPORTER: unknown exporter(s) {', '.join(map(repr, unknown))};"
                f" known: {', '.join(EXPORTERS)}, none"
            )
        exporters = tuple(dict.fromkeys(name for name in names if name != "none"))
    elif env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        exporters = ("otlp",)
    else:
        exporters = ()
    if "otlp" in exporters:
        for name in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
            protocol = env.get(name, "").strip()
            if protocol:
                if protocol != "http/protobuf":
                    raise ConfigError(
                        f"{name}: Sluice exports traces over OTLP/HTTP only: expected"
                        f" http/protobuf, got {protocol!r}"
                    )
                break
    return TraceSettings(exporters)
