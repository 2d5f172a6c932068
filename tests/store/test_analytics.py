"""The summaries of ``sluice stats`` and the record filters, on their own."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from sluice.store import Record
from sluice.store.analytics import RecordQuery, percentile, summarise
from sluice.store.sqlite import SQLiteRecordStore


def test_nearest_rank_percentiles() -> None:
    assert percentile([], 0.5) is None
    assert percentile([7.0], 0.95) == 7.0
    values = [float(v) for v in range(1, 101)]
    assert (percentile(values, 0.5), percentile(values, 0.95)) == (50.0, 95.0)
    assert percentile([1.0, 2.0, 3.0], 0.95) == 3.0  # few values: the slowest, not a blend


def test_summaries_count_errors_tokens_and_known_costs() -> None:
    rows = [
        ("a", "ok", 100.0, 10, 20, 0.5),
        ("a", "error", None, None, None, None),
        ("a", "rejected", None, None, None, None),
        ("a", "client_disconnected", 300.0, 5, 2, 0.25),
        ("b", "ok", 50.0, 1, 1, None),
        (None, "ok", 10.0, 1, 1, None),
    ]
    found = summarise(rows)
    assert [s.name for s in found] == ["a", None, "b"]  # most requests first, then by name
    a, none, b = found
    assert (a.name, a.requests, a.errors) == ("a", 4, 2)
    assert (a.ttft_p50_ms, a.ttft_p95_ms) == (100.0, 300.0)
    assert (a.input_tokens, a.output_tokens, a.cost_usd) == (15, 22, pytest.approx(0.75))
    assert (b.name, b.cost_usd) == ("b", None)  # no price known: no cost, not $0
    assert none.name is None


def test_a_query_filters_stored_and_pending_records(tmp_path: Path) -> None:
    def record(i: int, model: str, key: str | None, outcome: str = "ok") -> Record:
        return Record(
            id=f"r{i}",
            started_at=1000.0 + i,
            route="/v1/chat/completions",
            model=model,
            key_id=key,
            outcome=outcome,  # type: ignore[arg-type]
        )

    async def run() -> None:
        store = SQLiteRecordStore(str(tmp_path / "r.db"))
        await store.start()
        try:
            for i, (model, key) in enumerate([("a", "k1"), ("b", "k1"), ("a", "k2")]):
                store.add(record(i, model, key))
            await store.flush()
            store.add(record(3, "a", "k1", "error"))  # still waiting to be written
            found = await store.recent(10, RecordQuery(model="a", key_id="k1"))
            assert [r.id for r in found] == ["r3", "r0"]
            found = await store.recent(10, RecordQuery(outcome="error"))
            assert [r.id for r in found] == ["r3"]
            assert [r.id for r in await store.recent(10, RecordQuery(since=1001.5))] == ["r3", "r2"]
            assert [s.name for s in await store.summary("key_id")] == ["k1", "k2"]
        finally:
            await store.close()

    asyncio.run(run())
