"""The console's reads, on SQLite and on PostgreSQL: what the overview adds up, how the
list pages, and that on 100,000 records each read is answered from an index (how fast
that is, against 1,000 records, is measured by ``python -m bench.console_queries``)."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from sluice.store import Record, timeline
from sluice.store.database import DatabaseOptions, open_database
from sluice.store.queries import Filters, RecordQueries

NOW = 1_800_000_000.0  # a whole hour: buckets start on the minute
#: SQLite's percentiles are the middle of a bin two significant digits wide;
#: PostgreSQL's are exact (percentile_cont).
BIN = 0.05

Write = Callable[[list[Record]], Awaitable[None]]


@asynccontextmanager
async def opened(database: str) -> AsyncIterator[tuple[RecordQueries, Write]]:
    """The console's reads of ``database``, and a way to write records to it."""
    spill = tempfile.mkdtemp(prefix="sluice-spill-")
    db = open_database(database, DatabaseOptions(spill_dir=spill, max_pending=200_000))
    await db.records.start()

    async def write(records: list[Record]) -> None:
        for record in records:
            db.records.add(record)
        await db.records.flush()

    try:
        yield db.queries, write
    finally:
        await db.close()
        shutil.rmtree(spill, ignore_errors=True)


def rec(i: int, at: float, **kw: Any) -> Record:
    record = Record(id=f"r{i}", started_at=at, route="/v1/chat/completions", api="openai_chat")
    for name, value in kw.items():
        setattr(record, name, value)
    return record


def test_the_overview_adds_up_per_minute_per_model_and_over_the_window(database: str) -> None:
    records = [
        # minute -2: two of model a (one an error), one of b
        rec(1, NOW - 110, model="a", ttft_ms=100, duration_ms=1100, output_tokens=50, cost_usd=0.5),
        rec(2, NOW - 100, model="a", outcome="error", status=502, cost_usd=None),
        rec(3, NOW - 90, model="b", ttft_ms=300, duration_ms=2300, output_tokens=40, cost_usd=1.0),
        # minute -1: one of a
        rec(4, NOW - 30, model="a", ttft_ms=200, duration_ms=700, output_tokens=25, cost_usd=0.25),
        # a probe, and one outside the window: neither counts
        rec(5, NOW - 20, route="/healthz"),
        rec(6, NOW - 7200, model="a", ttft_ms=5),
    ]

    async def main() -> dict[str, Any]:
        async with opened(database) as (queries, write):
            await write(records)
            return await queries.overview("hour", "model", now=NOW - 1)

    data = asyncio.run(main())
    assert data["step"] == 60 and len(data["times"]) == 60
    assert data["groups"] == ["a", "b"]
    everything = data["all"]
    assert everything["requests"] == 4 and everything["errors"] == 1
    assert everything["error_rate"] == 0.25
    assert everything["ttft_p50"] == pytest.approx(200, rel=BIN)
    assert everything["output_tokens"] == 115
    assert abs(everything["tokens_per_s"] - 115 / 3.5) < 1e-9  # tokens ÷ generation time
    assert everything["cost_usd"] == 1.75
    a = data["series"]["a"]
    assert a["requests_per_min"][-2:] == [2, 1]
    assert a["error_rate"][-2:] == [0.5, 0]
    assert a["ttft_p50"][-2:] == [pytest.approx(100, rel=BIN), pytest.approx(200, rel=BIN)]
    assert a["requests_per_min"][0] == 0 and a["ttft_p50"][0] is None
    totals = {t["group"]: t for t in data["totals"]}
    assert totals["b"]["requests"] == 1 and totals["b"]["tokens_per_s"] == 20


def test_the_overview_keeps_the_busiest_groups_and_adds_up_the_rest(database: str) -> None:
    records = [
        rec(i, NOW - 60, model=f"m{i % 9}", key_id=f"k{i % 2}", ttft_ms=i) for i in range(90)
    ]

    async def main() -> tuple[dict[str, Any], dict[str, Any]]:
        async with opened(database) as (queries, write):
            await write(records)
            by_model = await queries.overview("day", "model", now=NOW)
            return by_model, await queries.overview("week", "key", now=NOW)

    by_model, by_key = asyncio.run(main())
    assert len(by_model["groups"]) == 7 and by_model["groups"][-1] == "other"
    assert sum(t["requests"] for t in by_model["totals"]) == 90
    assert by_key["groups"] == ["k0", "k1"]


def test_pages_newest_first_with_filters_cursors_and_a_live_tail(database: str) -> None:
    records = [
        rec(i, NOW + i, model="a" if i % 3 else "b", outcome="ok" if i % 5 else "rejected")
        for i in range(100)
    ]

    async def main() -> None:
        async with opened(database) as (queries, write):
            await write(records)
            first = await queries.page(Filters(model="a"), 10)
            assert first["total"] == 66 and first["more"]
            assert [r["id"] for r in first["rows"]][:3] == ["r98", "r97", "r95"]
            cursor = tuple(first["rows"][-1]["cursor"])
            second = await queries.page(Filters(model="a"), 10, before=cursor)
            assert second["rows"][0]["started_at"] < first["rows"][-1]["started_at"]
            assert second["total"] is None
            seen = {r["id"] for r in first["rows"]} | {r["id"] for r in second["rows"]}
            assert len(seen) == 20
            rejected = await queries.page(Filters(outcome="rejected", status=None), 100)
            assert rejected["total"] == 20
            assert {r["outcome"] for r in rejected["rows"]} == {"rejected"}
            assert {r["stream"] for r in rejected["rows"]} == {True}
            newest = tuple(first["rows"][0]["cursor"])
            assert (await queries.page(Filters(model="a"), 10, after=newest))["rows"] == []
            await write([rec(100, NOW + 100, model="a")])
            tail = await queries.page(Filters(model="a"), 10, after=newest)
            assert [r["id"] for r in tail["rows"]] == ["r100"]
            detail = await queries.record("r100")
            assert detail is not None and detail["model"] == "a" and detail["timeline"] == []
            assert await queries.record("nope") is None
            facets = await queries.facets(NOW)
            assert facets["models"] == ["a", "b"]

    asyncio.run(main())


def test_a_record_has_its_timeline_decoded(database: str) -> None:
    marks = timeline.encode([(250, 0), (10, 1), (20, 1)])

    async def main() -> dict[str, Any] | None:
        async with opened(database) as (queries, write):
            await write([rec(1, NOW, model="a", timeline=bytes(marks))])
            return await queries.record("r1")

    detail = asyncio.run(main())
    assert detail is not None
    assert detail["timeline"] == [[250, 0], [260, 1], [280, 1]]
    assert detail["timeline_bytes"] == len(marks)
    assert detail["stream"] is True


def test_a_hundred_thousand_records_are_read_through_indexes(database: str) -> None:
    models = ["gpt-4o-mini", "gpt-4o", "claude", "llama", "story", "o3", "mini", "x"]
    keys = [f"key_{i}" for i in range(20)]
    blob = bytes(timeline.encode([(300, 1)] + [(20, 1)] * 100))
    week = 7 * 86_400
    records = [
        rec(
            i,
            NOW - week + i * week / 100_000,
            model=models[i % 8],
            key_id=keys[i % 20],
            outcome="error" if i % 17 == 0 else "ok",
            ttft_ms=100 + i % 900,
            duration_ms=3000.0,
            output_tokens=100,
            cost_usd=0.001,
            timeline=blob,
        )
        for i in range(100_000)
    ]

    async def main() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any] | None]:
        async with opened(database) as (queries, write):
            await write(records)
            if not database.startswith("postgresql://"):
                explain(database)
            week_view = await queries.overview("week", "model", now=NOW)
            page = await queries.page(Filters(), 50)
            cursor = tuple(page["rows"][-1]["cursor"])
            following = await queries.page(Filters(), 50, before=cursor)
            filtered = await queries.page(Filters(model="o3", outcome="error"), 50)
            assert all(r["model"] == "o3" and r["outcome"] == "error" for r in filtered["rows"])
            assert following["rows"][0]["started_at"] <= page["rows"][-1]["started_at"]
            return week_view, page, await queries.record("r50000")

    week_view, page, detail = asyncio.run(main())
    assert week_view["all"]["requests"] > 99_000  # the week in whole hours
    assert page["total"] == 100_000
    assert detail is not None and detail["model"] == models[50_000 % 8]


def explain(path: str) -> None:
    """SQLite reads a page from an index, in order, without sorting every match."""
    db = sqlite3.connect(path)
    for where in ("model = 'o3'", "key_id = 'key_3'", "outcome = 'error'", "started_at >= 0"):
        plan = " ".join(
            row[3]
            for row in db.execute(
                f"EXPLAIN QUERY PLAN SELECT * FROM requests WHERE {where}"
                " ORDER BY started_at DESC, rowid DESC LIMIT 50"
            )
        )
        assert "USING INDEX" in plan and "TEMP B-TREE" not in plan, plan
    db.close()
