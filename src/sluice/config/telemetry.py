"""Metrics: the ``metrics`` key and ``PROMETHEUS_MULTIPROC_DIR``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sluice.config.errors import Keys
from sluice.config.values import check_keys, flag, mapping


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    """The ``metrics:`` section, and where worker processes keep their metrics."""

    #: ``GET /metrics`` answers without a key.
    public: bool = False
    #: ``PROMETHEUS_MULTIPROC_DIR``: each process writes its metrics there and a scrape
    #: adds them up (``sluice serve --workers N`` sets it); None: this process alone.
    multiprocess_dir: str | None = None


def metrics(raw: Mapping[str, Any], env: Mapping[str, str]) -> MetricsSettings:
    at: Keys = ("metrics",)
    data = mapping(raw, "metrics", ())
    check_keys(data, {"public"}, at)
    return MetricsSettings(
        public=flag(data, "public", at, False),
        multiprocess_dir=env.get("PROMETHEUS_MULTIPROC_DIR") or None,
    )
