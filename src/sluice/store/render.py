"""Records as a plain-text table, for ``sluice requests --last N``."""

from __future__ import annotations

import time
from collections.abc import Callable

from sluice.store import Record

__all__ = ["render_table"]

UNKNOWN = "-"


def _clock(r: Record) -> str:
    return time.strftime("%H:%M:%S", time.localtime(r.started_at))


def _short_id(r: Record) -> str:
    # The tail, not the head: ids often share a prefix ("req_", "chatcmpl-") or, for
    # time-ordered ids, a leading timestamp, so neighbours differ only at the end.
    return r.id if len(r.id) <= 10 else r.id[-8:]


def _ms(value: float | None) -> str:
    return UNKNOWN if value is None else f"{value:.0f}"


def _tokens(r: Record) -> str:
    if r.input_tokens is None and r.output_tokens is None:
        return UNKNOWN
    pair = f"{_int(r.input_tokens)}/{_int(r.output_tokens)}"
    return f"~{pair}" if r.usage_source == "estimated" else pair


def _int(value: int | None) -> str:
    return UNKNOWN if value is None else str(value)


def _cost(r: Record) -> str:
    return UNKNOWN if r.cost_usd is None else f"{r.cost_usd:.6f}"


# (header, cell, right-aligned, widest cell before truncation)
_Column = tuple[str, Callable[[Record], str], bool, int | None]
_COLUMNS: list[_Column] = [
    ("time", _clock, False, None),
    ("id", _short_id, False, None),
    ("route", lambda r: r.route or UNKNOWN, False, 32),
    ("model", lambda r: r.model or UNKNOWN, False, 28),
    ("outcome", lambda r: r.outcome, False, None),
    ("status", lambda r: str(r.status), True, None),
    ("ttft ms", lambda r: _ms(r.ttft_ms), True, None),
    ("total ms", lambda r: _ms(r.duration_ms), True, None),
    ("tokens in/out", _tokens, True, None),
    ("chunks", lambda r: str(r.chunks), True, None),
    ("cost usd", _cost, True, None),
    ("cache", lambda r: r.cache or UNKNOWN, False, None),
    ("key", lambda r: r.key_id or UNKNOWN, False, 16),
    ("error", lambda r: r.error or UNKNOWN, False, 60),
]


def render_table(records: list[Record]) -> str:
    """An aligned table, one line per record in the order given, header first."""
    rows = [[header for header, *_ in _COLUMNS]]
    for record in records:
        rows.append([_fit(cell(record), limit) for _, cell, _, limit in _COLUMNS])
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    lines = []
    for row in rows:
        cells = [
            text.rjust(width) if right else text.ljust(width)
            for text, width, (_, _, right, _) in zip(row, widths, _COLUMNS, strict=True)
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _fit(text: str, limit: int | None) -> str:
    # Newlines and tabs in an error message would break the row.
    text = " ".join(text.split()) or UNKNOWN
    if limit is not None and len(text) > limit:
        return text[: limit - 1] + "…"
    return text
