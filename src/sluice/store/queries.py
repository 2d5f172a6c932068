"""The console's reads of the request records: aggregated in SQL, paged by keys. The
``RecordQueries`` protocol and the SQLite reads (PostgreSQL: store/postgres_queries.py).

Fast on a big log: every query reads an index range (``started_at``, or a filter
column then ``started_at``: ``m007_console_indexes``), and nothing returns more rows
than a chart needs or a page has lines. The overview is one grouped pass over the
window: per time bucket, group and TTFT bin (two significant digits), so the
percentiles come from histograms SQL counted, to within one bin. Reads run in a worker
thread on a connection of their own; WAL lets them run while the gateway writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, Protocol, TypeVar

from sluice.store import Record, timeline
from sluice.store.migrations import migrate

__all__ = ["WINDOWS", "Filters", "RecordQueries", "SQLiteRecordQueries"]

T = TypeVar("T")

#: window → (seconds, bucket seconds)
WINDOWS: dict[str, tuple[int, int]] = {
    "hour": (3600, 60),
    "day": (86_400, 900),
    "week": (7 * 86_400, 3600),
}
#: Series beyond this many groups (by request count) are summed as "other".
MAX_GROUPS = 6
#: Probes are not traffic: left out of the overview and, unless asked for, the list.
PROBES = ("/healthz", "/readyz")
_GROUP = {"model": "COALESCE(model, '')", "key": "COALESCE(key_id, '')"}
_ERRORS = "outcome IN ('error', 'rejected')"
_LIST_COLUMNS = (
    "id",
    "started_at",
    "route",
    "method",
    "api",
    "model",
    "key_id",
    "outcome",
    "status",
    "stream",
    "ttft_ms",
    "duration_ms",
    "input_tokens",
    "output_tokens",
    "cost_usd",
    "cache",
    "error",
)
_RECORD_COLUMNS = tuple(f.name for f in fields(Record))


@dataclass(frozen=True, slots=True)
class Filters:
    model: str | None = None
    key_id: str | None = None
    outcome: str | None = None
    #: An exact status (``429``) or a class (``4`` for 4xx).
    status: int | None = None
    since: float | None = None
    until: float | None = None
    probes: bool = False

    def where(self) -> tuple[str, list[Any]]:
        """A condition with ``?`` placeholders and its arguments."""
        clauses, args = self.clauses()
        return " AND ".join(clauses) or "1", args

    def clauses(self) -> tuple[list[str], list[Any]]:
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
        if self.status is not None:
            if self.status < 10:
                clauses.append("status >= ? AND status < ?")
                args += [self.status * 100, self.status * 100 + 100]
            else:
                clauses.append("status = ?")
                args.append(self.status)
        if self.since is not None:
            clauses.append("started_at >= ?")
            args.append(self.since)
        if self.until is not None:
            clauses.append("started_at < ?")
            args.append(self.until)
        if not self.probes:
            clauses.append(f"route NOT IN ({', '.join('?' * len(PROBES))})")
            args += PROBES
        return clauses, args


def _rate(part: float | None, whole: float | None) -> float | None:
    return None if not whole else (part or 0.0) / whole


class RecordQueries(Protocol):
    async def overview(self, window: str, by: str, now: float | None = None) -> dict[str, Any]:
        """Per bucket of ``window`` and per group (``model`` or ``key``): requests per
        minute, error rate, TTFT p50 and p95, output tokens per second of generation,
        cost; and the same over the whole window, per group and for everything."""
        ...

    async def page(
        self,
        filters: Filters,
        limit: int,
        before: tuple[float, int] | None = None,
        after: tuple[float, int] | None = None,
    ) -> dict[str, Any]:
        """Newest first: up to ``limit`` records older than ``before`` (a cursor of
        ``started_at`` and the order of writing), or every record newer than ``after``
        (the live tail, at most ``limit``); the matching total on a first page."""
        ...

    async def facets(self, since: float) -> dict[str, list[str]]:
        """The models and keys seen since ``since``, most used first: the filters' choices."""
        ...

    async def record(self, record_id: str) -> dict[str, Any] | None:
        """Everything recorded of the newest request with this id, its timeline decoded
        to (milliseconds since the request started, deltas) marks."""
        ...

    async def close(self) -> None: ...


class SQLiteRecordQueries:
    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None

    # -- overview ----------------------------------------------------------------------

    async def overview(self, window: str, by: str, now: float | None = None) -> dict[str, Any]:
        """Per bucket of ``window`` and per group (``model`` or ``key``): requests per
        minute, error rate, TTFT p50 and p95, output tokens per second of generation,
        cost; and the same over the whole window, per group and for everything."""
        span, step = WINDOWS[window]
        group = _GROUP[by]
        now = time.time() if now is None else now
        count = span // step
        start = (math.floor(now / step) + 1 - count) * step
        return await asyncio.to_thread(
            self._run, lambda db: _overview(db, start, step, count, group, window, by)
        )

    # -- the list ----------------------------------------------------------------------

    async def page(
        self,
        filters: Filters,
        limit: int,
        before: tuple[float, int] | None = None,
        after: tuple[float, int] | None = None,
    ) -> dict[str, Any]:
        """Newest first: up to ``limit`` records older than ``before`` (a cursor of
        ``started_at`` and row id), or every record newer than ``after`` (the live
        tail, at most ``limit``); the matching total on a first page."""

        def read(db: sqlite3.Connection) -> dict[str, Any]:
            where, args = filters.where()
            total = None
            if after is not None:
                where += " AND (started_at, rowid) > (?, ?)"
                args = [*args, *after]
            elif before is not None:
                where += " AND (started_at, rowid) < (?, ?)"
                args = [*args, *before]
            else:
                total = db.execute(f"SELECT COUNT(*) FROM requests WHERE {where}", args).fetchone()[
                    0
                ]
            query = (
                f"SELECT rowid, {', '.join(_LIST_COLUMNS)} FROM requests WHERE {where}"
                " ORDER BY started_at DESC, rowid DESC LIMIT ?"
            )
            rows = []
            for row in db.execute(query, [*args, limit + 1]):
                item = dict(zip(_LIST_COLUMNS, row[1:], strict=True))
                item["cursor"] = [row[2], row[0]]
                item["stream"] = bool(item["stream"])
                rows.append(item)
            more = len(rows) > limit
            return {"rows": rows[:limit], "more": more, "total": total}

        return await asyncio.to_thread(self._run, read)

    async def facets(self, since: float) -> dict[str, list[str]]:
        """The models and keys seen since ``since``, most used first: the filters' choices."""

        def read(db: sqlite3.Connection) -> dict[str, list[str]]:
            out: dict[str, list[str]] = {}
            for name, column in (("models", "model"), ("keys", "key_id")):
                rows = db.execute(
                    f"SELECT {column}, COUNT(*) AS n FROM requests WHERE started_at >= ?"
                    f" AND {column} IS NOT NULL GROUP BY {column} ORDER BY n DESC LIMIT 200",
                    (since,),
                )
                out[name] = [row[0] for row in rows]
            return out

        return await asyncio.to_thread(self._run, read)

    async def record(self, record_id: str) -> dict[str, Any] | None:
        """Everything recorded of the newest request with this id, its timeline decoded
        to (milliseconds since the request started, deltas) marks."""

        def read(db: sqlite3.Connection) -> dict[str, Any] | None:
            row = db.execute(
                f"SELECT {', '.join(_RECORD_COLUMNS)} FROM requests WHERE id = ?"
                " ORDER BY started_at DESC, rowid DESC LIMIT 1",
                (record_id,),
            ).fetchone()
            if row is None:
                return None
            item = dict(zip(_RECORD_COLUMNS, row, strict=True))
            raw = item.pop("timeline")
            item["stream"] = bool(item["stream"])
            item["timeline"] = [list(mark) for mark in timeline.decode(raw)]
            item["timeline_bytes"] = len(raw) if raw else 0
            return item

        return await asyncio.to_thread(self._run, read)

    # -- the connection ------------------------------------------------------------------

    async def close(self) -> None:
        await asyncio.to_thread(self._close)

    def _close(self) -> None:
        with self._lock:
            db, self._db = self._db, None
            if db is not None:
                with contextlib.suppress(sqlite3.Error):
                    db.close()

    def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            if self._db is None:
                if self.path != ":memory:":
                    parent = os.path.dirname(self.path)
                    if parent:
                        os.makedirs(parent, exist_ok=True)
                db = sqlite3.connect(
                    self.path, timeout=5.0, isolation_level=None, check_same_thread=False
                )
                try:
                    migrate(db)
                except BaseException:
                    db.close()
                    raise
                self._db = db
            try:
                return fn(self._db)
            except sqlite3.OperationalError:
                db, self._db = self._db, None
                with contextlib.suppress(sqlite3.Error):
                    db.close()
                raise


#: TTFT to two significant digits: the histogram bin each record is counted in.
_BIN = (
    "CASE WHEN ttft_ms IS NULL THEN NULL"
    " WHEN ttft_ms < 100 THEN CAST(ttft_ms AS INTEGER)"
    " WHEN ttft_ms < 1000 THEN CAST(ttft_ms / 10 AS INTEGER) * 10"
    " WHEN ttft_ms < 10000 THEN CAST(ttft_ms / 100 AS INTEGER) * 100"
    " WHEN ttft_ms < 100000 THEN CAST(ttft_ms / 1000 AS INTEGER) * 1000"
    " ELSE CAST(ttft_ms / 10000 AS INTEGER) * 10000 END"
)
_SPEED = "output_tokens > 0 AND duration_ms > ttft_ms"


def _middle(low: int) -> float:
    """The middle of the bin that starts at ``low`` (see ``_BIN``)."""
    return low + (1 if low < 100 else 10 ** (len(str(low)) - 2)) / 2 if low else 0.5


def _quantiles(histogram: dict[int, int]) -> tuple[float | None, float | None]:
    """p50 and p95 (nearest rank) of a TTFT histogram, to the middle of their bins."""
    n = sum(histogram.values())
    if not n:
        return None, None
    ranks = [int((n - 1) * q) + 1 for q in (0.5, 0.95)]
    found: list[float | None] = [None, None]
    seen = 0
    for low in sorted(histogram):
        seen += histogram[low]
        for i, rank in enumerate(ranks):
            if found[i] is None and seen >= rank:
                found[i] = _middle(low)
    return found[0], found[1]


class _Cell:
    """What a bucket, a group or the window adds up to."""

    __slots__ = ("cost", "costed", "errors", "histogram", "ms", "output", "requests", "tokens")

    def __init__(self) -> None:
        self.requests = self.errors = self.output = self.costed = self.tokens = 0
        self.cost = self.ms = 0.0  # ms: milliseconds of generation that made ``tokens``
        self.histogram: dict[int, int] = {}

    def add(self, other: _Cell) -> None:
        self.requests += other.requests
        self.errors += other.errors
        self.cost += other.cost
        self.tokens += other.tokens
        self.ms += other.ms
        self.output += other.output
        self.costed += other.costed
        histogram = self.histogram
        for low, n in other.histogram.items():
            histogram[low] = histogram.get(low, 0) + n

    def summary(self, group: str, quantiles: bool = True) -> dict[str, Any]:
        p50, p95 = _quantiles(self.histogram) if quantiles else (None, None)
        return {
            "group": group,
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": _rate(self.errors, self.requests),
            "ttft_p50": p50,
            "ttft_p95": p95,
            "tokens_per_s": _rate(self.tokens, self.ms / 1000),
            "output_tokens": self.output,
            "cost_usd": self.cost if self.costed else None,
        }


def _overview(
    db: sqlite3.Connection, start: float, step: int, count: int, group: str, window: str, by: str
) -> dict[str, Any]:
    """One pass over the window's index range, grouped by bucket, group and TTFT bin;
    everything else is added up from those rows (a few per bucket and group)."""
    probes = ", ".join("?" * len(PROBES))
    rows = db.execute(
        f"""
        SELECT CAST((started_at - ?) / ? AS INTEGER) AS b, {group} AS g, {_BIN} AS h,
               COUNT(*), SUM({_ERRORS}), SUM(cost_usd),
               SUM(CASE WHEN {_SPEED} THEN output_tokens END),
               SUM(CASE WHEN {_SPEED} THEN duration_ms - ttft_ms END),
               SUM(output_tokens), COUNT(cost_usd)
        FROM requests
        WHERE started_at >= ? AND started_at < ? AND route NOT IN ({probes})
        GROUP BY b, g, h
        """,
        [start, step, start, start + step * count, *PROBES],
    ).fetchall()
    # Keep the busiest groups; the rest are added up as "other".
    volume: dict[str, int] = {}
    for _, g, _, n, *_ in rows:
        volume[g] = volume.get(g, 0) + n
    ranked = sorted(volume, key=lambda g: (-volume[g], g))
    kept = set(ranked[:MAX_GROUPS])
    names = ranked[:MAX_GROUPS] + (["other"] if len(ranked) > MAX_GROUPS else [])
    # The rows, into one cell per bucket and group; then those cells, into the totals
    # per bucket, per group and over the window.
    cells: dict[tuple[int, str], _Cell] = {}
    for b, g, low, n, errors, cost, tokens, ms, output, costed in rows:
        key = (b, g if g in kept else "other")
        cell = cells.get(key)
        if cell is None:
            cell = cells[key] = _Cell()
        cell.requests += n
        cell.errors += errors or 0
        cell.cost += cost or 0.0
        cell.tokens += tokens or 0
        cell.ms += ms or 0.0
        cell.output += output or 0
        cell.costed += costed
        if low is not None:
            cell.histogram[low] = n
    groups = {name: _Cell() for name in names}
    everything = _Cell()
    for (b, name), cell in list(cells.items()):
        groups[name].add(cell)
        bucket = cells.get((b, "*"))
        if bucket is None:
            bucket = cells[(b, "*")] = _Cell()
        bucket.add(cell)
        everything.add(cell)
    minutes = step / 60

    def series(name: str) -> dict[str, list[float | None]]:
        # A percentile of several groups together is not made of theirs: none for "other".
        out: dict[str, list[float | None]] = {
            key: []
            for key in (
                "requests_per_min",
                "error_rate",
                "ttft_p50",
                "ttft_p95",
                "tokens_per_s",
                "cost_usd",
            )
        }
        for b in range(count):
            cell = cells.get((b, name))
            if cell is None:
                for key, values in out.items():
                    values.append(0 if key == "requests_per_min" else None)
                continue
            summary = cell.summary(name, quantiles=name != "other")
            out["requests_per_min"].append(cell.requests / minutes)
            for key in ("error_rate", "ttft_p50", "ttft_p95", "tokens_per_s", "cost_usd"):
                out[key].append(summary[key])
        return out

    return {
        "window": window,
        "by": by,
        "step": step,
        "times": [start + step * b for b in range(count)],
        "groups": names,
        "series": {name: series(name) for name in ["*", *names]},
        "totals": [groups[name].summary(name, quantiles=name != "other") for name in names],
        "all": everything.summary("*"),
    }
