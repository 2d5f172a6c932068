"""Which records to show, and the per-model and per-key summaries ``sluice stats`` prints.

Backend-agnostic: a store turns a ``RecordQuery`` into its own query (``where`` gives
the SQL shared by SQLite and PostgreSQL, with ``?`` placeholders) and feeds
``summarise`` the rows of ``SUMMARY_COLUMNS``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from sluice.store import Record

__all__ = ["SUMMARY_COLUMNS", "Grouping", "RecordQuery", "Summary", "percentile", "summarise"]

Grouping = Literal["model", "key_id"]
#: What a summary reads of each record, after the column it groups by.
SUMMARY_COLUMNS = ("outcome", "ttft_ms", "input_tokens", "output_tokens", "cost_usd")
#: Outcomes that count as errors: failed, or refused before an answer.
ERRORS = frozenset({"error", "rejected"})


@dataclass(frozen=True, slots=True)
class RecordQuery:
    """Records for a model, a key id, an outcome, started at or after ``since`` (unix
    seconds); None matches anything."""

    model: str | None = None
    key_id: str | None = None
    outcome: str | None = None
    since: float | None = None

    def where(self) -> tuple[str, list[Any]]:
        """``WHERE ...`` (or ``""``) and its arguments."""
        clauses: list[str] = []
        args: list[Any] = []
        for column, value in (
            ("model", self.model),
            ("key_id", self.key_id),
            ("outcome", self.outcome),
        ):
            if value is not None:
                clauses.append(f"{column} = ?")
                args.append(value)
        if self.since is not None:
            clauses.append("started_at >= ?")
            args.append(self.since)
        return ("WHERE " + " AND ".join(clauses) if clauses else ""), args

    def matches(self, record: Record) -> bool:
        return (
            (self.model is None or record.model == self.model)
            and (self.key_id is None or record.key_id == self.key_id)
            and (self.outcome is None or record.outcome == self.outcome)
            and (self.since is None or record.started_at >= self.since)
        )


@dataclass(slots=True)
class Summary:
    """The requests of one model or one key (``name``; None: no key)."""

    name: str | None
    requests: int = 0
    errors: int = 0
    ttft_p50_ms: float | None = None
    ttft_p95_ms: float | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    #: The sum of the known costs; None when no request had one (no price for the model).
    cost_usd: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "requests": self.requests,
            "errors": self.errors,
            "ttft_p50_ms": self.ttft_p50_ms,
            "ttft_p95_ms": self.ttft_p95_ms,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cost_usd": self.cost_usd,
        }


def percentile(ordered: list[float], q: float) -> float | None:
    """The nearest-rank percentile (``q`` from 0 to 1) of sorted values: always one of
    them, so a p95 of few requests is the slowest rather than an interpolation."""
    if not ordered:
        return None
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


def summarise(
    rows: Iterable[tuple[str | None, str, float | None, int | None, int | None, float | None]],
) -> list[Summary]:
    """Rows of (group, *SUMMARY_COLUMNS) → one summary per group, most requests first.
    Time to first token is over the requests that had one; unknown tokens count as 0,
    and unknown costs are left out of the sum."""
    groups: dict[str | None, tuple[Summary, list[float]]] = {}
    for name, outcome, ttft, tokens_in, tokens_out, cost in rows:
        found = groups.get(name)
        if found is None:
            found = groups[name] = (Summary(name), [])
        summary, ttfts = found
        summary.requests += 1
        summary.errors += outcome in ERRORS
        if ttft is not None:
            ttfts.append(ttft)
        summary.input_tokens += tokens_in or 0
        summary.output_tokens += tokens_out or 0
        if cost is not None:
            summary.cost_usd = cost + (summary.cost_usd or 0.0)
    out = []
    for summary, ttfts in groups.values():
        ttfts.sort()
        summary.ttft_p50_ms = percentile(ttfts, 0.50)
        summary.ttft_p95_ms = percentile(ttfts, 0.95)
        out.append(summary)
    out.sort(key=lambda s: (-s.requests, s.name or ""))
    return out
