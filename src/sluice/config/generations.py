"""The ``generations:`` section: generations that outlive their request (Responses
background mode, resumable chat, the UI stream's resume)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sluice.config.errors import Keys, error_at
from sluice.config.values import check_keys, integer, mapping, number


@dataclass(frozen=True, slots=True)
class GenerationSettings:
    #: Seconds the events of a generation stay readable after it ended.
    retention: float = 600.0
    #: Bytes one generation's events may take; past it the generation fails.
    max_bytes: int = 16 * 1024 * 1024
    #: Bytes all the generations this process holds may take; past it new ones are refused.
    max_total_bytes: int = 512 * 1024 * 1024
    #: Background generations one key may have running at once.
    per_key: int = 100
    #: Seconds a generation goes on once nobody reads it (resumable chat, UI stream);
    #: background generations run to their end.
    window: float = 300.0
    #: Seconds an instance's claim on its generations lives unless renewed: readers on
    #: other instances presume the writer dead when it lapses.
    lease: float = 10.0


def generations(raw: Mapping[str, Any]) -> GenerationSettings:
    at: Keys = ("generations",)
    data = mapping(raw, "generations", ())
    check_keys(
        data, {"retention", "max_bytes", "max_total_bytes", "per_key", "window", "lease"}, at
    )
    base = GenerationSettings()
    lease = number(data, "lease", at, base.lease)
    if lease <= 0:
        raise error_at((*at, "lease"), f"expected a number above 0, got {lease!r}")
    return GenerationSettings(
        retention=number(data, "retention", at, base.retention),
        max_bytes=integer(data, "max_bytes", at, base.max_bytes, minimum=1),
        max_total_bytes=integer(data, "max_total_bytes", at, base.max_total_bytes, minimum=1),
        per_key=integer(data, "per_key", at, base.per_key, minimum=1),
        window=number(data, "window", at, base.window),
        lease=lease,
    )
