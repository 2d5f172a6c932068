"""The console's reads of the request records in PostgreSQL: the same answers as
store/queries.py, with exact percentiles (``percentile_cont``) instead of histograms.

The overview is one grouped pass over the window's index range: ``GROUPING SETS``
gives each bucket and group, each bucket, each group and the whole window in the same
scan, so every percentile is computed over the records it describes. Groups past the
busiest ``MAX_GROUPS`` are added up as "other", which has no percentile (one cannot be
made of theirs).
"""

from __future__ import annotations

import math
import re
import time
from typing import Any

import asyncpg

from sluice.store import timeline
from sluice.store.postgres import Connection, Postgres
from sluice.store.queries import (
    _LIST_COLUMNS,
    _RECORD_COLUMNS,
    MAX_GROUPS,
    PROBES,
    WINDOWS,
    Filters,
    _rate,
)

__all__ = ["PostgresRecordQueries"]

_GROUP = {"model": "COALESCE(model, '')", "key": "COALESCE(key_id, '')"}
_SPEED = "output_tokens > 0 AND duration_ms > ttft_ms"
_SERIES = ("requests_per_min", "error_rate", "ttft_p50", "ttft_p95", "tokens_per_s", "cost_usd")


def numbered(sql: str, start: int = 1) -> str:
    """``?`` placeholders as PostgreSQL's ``$1``, ``$2``, ..."""
    counter = iter(range(start, 10_000))
    return re.sub(r"\?", lambda _: f"${next(counter)}", sql)


def _where(filters: Filters) -> tuple[str, list[Any]]:
    clauses, args = filters.clauses()
    return " AND ".join(clauses) or "TRUE", args


class _Cell:
    __slots__ = ("cost", "costed", "errors", "ms", "output", "p50", "p95", "requests", "tokens")

    def __init__(self) -> None:
        self.requests = self.errors = self.output = self.costed = self.tokens = 0
        self.cost = self.ms = 0.0
        self.p50: float | None = None
        self.p95: float | None = None

    @classmethod
    def of(cls, row: asyncpg.Record) -> _Cell:
        cell = cls()
        cell.requests = row["requests"]
        cell.errors = row["errors"] or 0
        cell.cost = row["cost"] or 0.0
        cell.tokens = row["tokens"] or 0
        cell.ms = row["ms"] or 0.0
        cell.output = row["output"] or 0
        cell.costed = row["costed"]
        cell.p50, cell.p95 = row["p50"], row["p95"]
        return cell

    def add(self, other: _Cell) -> None:
        self.requests += other.requests
        self.errors += other.errors
        self.cost += other.cost
        self.tokens += other.tokens
        self.ms += other.ms
        self.output += other.output
        self.costed += other.costed

    def summary(self, group: str) -> dict[str, Any]:
        return {
            "group": group,
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": _rate(self.errors, self.requests),
            "ttft_p50": self.p50,
            "ttft_p95": self.p95,
            "tokens_per_s": _rate(self.tokens, self.ms / 1000),
            "output_tokens": self.output,
            "cost_usd": self.cost if self.costed else None,
        }


class PostgresRecordQueries:
    def __init__(self, database: Postgres) -> None:
        self.database = database

    async def close(self) -> None:
        return None  # the pool is the database's, closed with it

    async def overview(self, window: str, by: str, now: float | None = None) -> dict[str, Any]:
        span, step = WINDOWS[window]
        group = _GROUP[by]
        now = time.time() if now is None else now
        count = span // step
        start = (math.floor(now / step) + 1 - count) * step
        query = f"""
            SELECT b, g, GROUPING(b, g) AS level, COUNT(*) AS requests,
                   SUM(CASE WHEN outcome IN ('error', 'rejected') THEN 1 ELSE 0 END) AS errors,
                   SUM(cost_usd) AS cost,
                   SUM(CASE WHEN {_SPEED} THEN output_tokens END)::bigint AS tokens,
                   SUM(CASE WHEN {_SPEED} THEN duration_ms - ttft_ms END) AS ms,
                   SUM(output_tokens)::bigint AS output, COUNT(cost_usd) AS costed,
                   percentile_cont(0.5) WITHIN GROUP (ORDER BY ttft_ms) AS p50,
                   percentile_cont(0.95) WITHIN GROUP (ORDER BY ttft_ms) AS p95
            FROM (
                SELECT floor((started_at - $1) / $2)::bigint AS b, {group} AS g, outcome,
                       cost_usd, output_tokens, duration_ms, ttft_ms
                FROM requests
                WHERE started_at >= $1 AND started_at < $3 AND route <> ALL($4::text[])
            ) w
            GROUP BY GROUPING SETS ((b, g), (b), (g), ())
        """
        rows = await self.database.run(
            lambda conn: conn.fetch(query, start, step, start + step * count, list(PROBES))
        )
        cells: dict[tuple[int, str], _Cell] = {}
        buckets: dict[int, _Cell] = {}
        groups: dict[str, _Cell] = {}
        everything = _Cell()
        for row in rows:
            level = row["level"]
            if level == 0:
                cells[(row["b"], row["g"])] = _Cell.of(row)
            elif level == 1:
                buckets[row["b"]] = _Cell.of(row)
            elif level == 2:
                groups[row["g"]] = _Cell.of(row)
            else:
                everything = _Cell.of(row)
        # Keep the busiest groups; the rest are added up as "other".
        ranked = sorted(groups, key=lambda g: (-groups[g].requests, g))
        kept = set(ranked[:MAX_GROUPS])
        names = ranked[:MAX_GROUPS] + (["other"] if len(ranked) > MAX_GROUPS else [])
        if len(ranked) > MAX_GROUPS:
            other = groups["other"] = _Cell()
            for name in ranked[MAX_GROUPS:]:
                other.add(groups[name])
            for (b, g), cell in list(cells.items()):
                if g not in kept:
                    merged = cells.setdefault((b, "other"), _Cell())
                    merged.add(cell)
        for b, cell in buckets.items():
            cells[(b, "*")] = cell
        minutes = step / 60

        def series(name: str) -> dict[str, list[float | None]]:
            out: dict[str, list[float | None]] = {key: [] for key in _SERIES}
            for b in range(count):
                cell = cells.get((b, name))
                if cell is None:
                    for key, values in out.items():
                        values.append(0 if key == "requests_per_min" else None)
                    continue
                summary = cell.summary(name)
                out["requests_per_min"].append(cell.requests / minutes)
                for key in _SERIES[1:]:
                    out[key].append(summary[key])
            return out

        return {
            "window": window,
            "by": by,
            "step": step,
            "times": [start + step * b for b in range(count)],
            "groups": names,
            "series": {name: series(name) for name in ["*", *names]},
            "totals": [groups[name].summary(name) for name in names],
            "all": everything.summary("*"),
        }

    async def page(
        self,
        filters: Filters,
        limit: int,
        before: tuple[float, int] | None = None,
        after: tuple[float, int] | None = None,
    ) -> dict[str, Any]:
        where, args = _where(filters)
        if after is not None:
            where += " AND (started_at, n) > (?, ?)"
            args = [*args, *after]
        elif before is not None:
            where += " AND (started_at, n) < (?, ?)"
            args = [*args, *before]
        query = numbered(
            f"SELECT n, {', '.join(_LIST_COLUMNS)} FROM requests WHERE {where}"
            " ORDER BY started_at DESC, n DESC LIMIT ?"
        )
        counting = numbered(f"SELECT COUNT(*) FROM requests WHERE {where}")
        first = after is None and before is None

        async def read(conn: Connection) -> dict[str, Any]:
            total = await conn.fetchval(counting, *args) if first else None
            rows = []
            for row in await conn.fetch(query, *args, limit + 1):
                item = dict(zip(_LIST_COLUMNS, tuple(row)[1:], strict=True))
                item["cursor"] = [row["started_at"], row["n"]]
                rows.append(item)
            return {"rows": rows[:limit], "more": len(rows) > limit, "total": total}

        return await self.database.run(read)

    async def facets(self, since: float) -> dict[str, list[str]]:
        async def read(conn: Connection) -> dict[str, list[str]]:
            out: dict[str, list[str]] = {}
            for name, column in (("models", "model"), ("keys", "key_id")):
                rows = await conn.fetch(
                    f"SELECT {column}, COUNT(*) AS n FROM requests WHERE started_at >= $1"
                    f" AND {column} IS NOT NULL GROUP BY {column} ORDER BY n DESC LIMIT 200",
                    since,
                )
                out[name] = [row[0] for row in rows]
            return out

        return await self.database.run(read)

    async def record(self, record_id: str) -> dict[str, Any] | None:
        row = await self.database.run(
            lambda conn: conn.fetchrow(
                f"SELECT {', '.join(_RECORD_COLUMNS)} FROM requests WHERE id = $1"
                " ORDER BY started_at DESC, n DESC LIMIT 1",
                record_id,
            )
        )
        if row is None:
            return None
        item = dict(zip(_RECORD_COLUMNS, tuple(row), strict=True))
        raw = item.pop("timeline")
        item["timeline"] = [list(mark) for mark in timeline.decode(raw)]
        item["timeline_bytes"] = len(raw) if raw else 0
        return item
