from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import sqlite3
import time
from dataclasses import fields
from pathlib import Path

import pytest

from sluice.store import Record
from sluice.store.migrations import MIGRATIONS, applied, migrate
from sluice.store.render import render_table
from sluice.store.sqlite import SQLiteRecordStore


def rec(i: int, **kw: object) -> Record:
    record = Record(id=f"req-{i:06d}", started_at=1_700_000_000.0 + i, route="/v1/chat/completions")
    for name, value in kw.items():
        setattr(record, name, value)
    return record


def rows(path: Path) -> list[tuple[str, ...]]:
    db = sqlite3.connect(path)
    try:
        return list(db.execute("SELECT id FROM requests ORDER BY rowid"))
    finally:
        db.close()


def store_errors(caplog: pytest.LogCaptureFixture, text: str) -> int:
    return sum(1 for r in caplog.records if r.name == "sluice.store" and text in r.getMessage())


async def wait_until(condition: object, within: float = 5.0) -> None:
    assert callable(condition)
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def test_schema_has_a_column_per_record_field(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "dir" / "requests.db"  # parents are created

    async def main() -> None:
        store = SQLiteRecordStore(str(path))
        await store.start()
        await store.close()

    asyncio.run(main())
    db = sqlite3.connect(path)
    try:
        columns = [row[1] for row in db.execute("PRAGMA table_info(requests)")]
        indexes = {row[1] for row in db.execute("PRAGMA index_list(requests)")}
        mode = db.execute("PRAGMA journal_mode").fetchone()[0]
    finally:
        db.close()
    assert columns == [f.name for f in fields(Record)]
    assert {"requests_started_at", "requests_model", "requests_outcome"} <= indexes
    assert mode == "wal"


def test_migrations_are_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "requests.db"

    async def session(i: int) -> None:
        store = SQLiteRecordStore(str(path))
        await store.start()
        store.add(rec(i))
        await store.close()

    asyncio.run(session(1))
    asyncio.run(session(2))
    db = sqlite3.connect(path, isolation_level=None)
    try:
        migrate(db)
        migrate(db)
        assert applied(db) == [name for name, _ in MIGRATIONS]
    finally:
        db.close()
    assert rows(path) == [("req-000001",), ("req-000002",)]


def test_a_full_batch_is_written_without_waiting_for_the_interval(tmp_path: Path) -> None:
    path = tmp_path / "requests.db"

    async def main() -> None:
        store = SQLiteRecordStore(str(path), batch_size=10, flush_interval=60)
        await store.start()
        for i in range(9):
            store.add(rec(i))
        await asyncio.sleep(0.2)
        assert store.pending == 9
        assert rows(path) == []
        store.add(rec(9))
        await wait_until(lambda: len(rows(path)) == 10)
        assert store.pending == 0
        await store.close()

    asyncio.run(main())


def test_a_partial_batch_is_written_after_the_interval(tmp_path: Path) -> None:
    path = tmp_path / "requests.db"

    async def main() -> None:
        store = SQLiteRecordStore(str(path), batch_size=100, flush_interval=0.05)
        await store.start()
        for i in range(3):
            store.add(rec(i))
        await wait_until(lambda: len(rows(path)) == 3)
        await store.close()

    asyncio.run(main())


def test_close_loses_nothing(tmp_path: Path) -> None:
    path = tmp_path / "requests.db"
    n = 10_000

    async def write() -> None:
        store = SQLiteRecordStore(str(path), flush_interval=60)
        await store.start()
        for i in range(n):
            store.add(rec(i))
        await store.close()

    async def read() -> list[Record]:
        store = SQLiteRecordStore(str(path))
        try:
            return await store.recent(n + 1)
        finally:
            await store.close()

    asyncio.run(write())
    assert len(rows(path)) == n
    records = asyncio.run(read())
    assert [r.id for r in records] == [f"req-{i:06d}" for i in reversed(range(n))]


def test_records_round_trip(tmp_path: Path) -> None:
    full = Record(
        id="abc",
        started_at=1_700_000_000.123456,
        route="/v1/messages",
        method="POST",
        api="anthropic_messages",
        model="claude",
        upstream="anthropic:claude@api.anthropic.com",
        stream=False,
        client="127.0.0.1",
        ended_at=1_700_000_001.5,
        outcome="error",
        status=502,
        ttft_ms=12.5,
        duration_ms=1377.0,
        input_tokens=10,
        output_tokens=20,
        usage_source="reported",
        chunks=7,
        error="upstream_error: boom",
        prompt="hi",
        response="hello",
    )
    sparse = Record(id="def", started_at=1_700_000_002.0, route="/")

    async def main() -> list[Record]:
        store = SQLiteRecordStore(str(tmp_path / "r.db"))
        store.add(full)
        store.add(sparse)
        await store.close()
        store = SQLiteRecordStore(str(tmp_path / "r.db"))
        try:
            return await store.recent(10)
        finally:
            await store.close()

    assert asyncio.run(main()) == [sparse, full]


def test_recent_is_newest_first_and_includes_unflushed() -> None:
    async def main() -> None:
        store = SQLiteRecordStore(":memory:", flush_interval=60)
        await store.start()
        for i in (3, 1, 4):
            store.add(rec(i))
        await store.flush()
        for i in (5, 9, 2, 6):
            store.add(rec(i))
        assert store.pending == 4
        assert [r.id for r in await store.recent(3)] == ["req-000009", "req-000006", "req-000005"]
        assert [r.id[-1] for r in await store.recent(100)] == list("9654321")
        assert await store.recent(0) == []
        await store.close()

    asyncio.run(main())


def test_memory_store_keeps_its_data_across_rounds() -> None:
    async def main() -> None:
        store = SQLiteRecordStore(":memory:", batch_size=2, flush_interval=0.01)
        await store.start()
        for i in range(5):
            store.add(rec(i))
            await asyncio.sleep(0.02)
        assert len(await store.recent(10)) == 5
        await store.close()

    asyncio.run(main())


def test_failing_store_never_raises_and_recovers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "data"
    blocker.write_text("a regular file where the directory should be")
    path = blocker / "requests.db"

    async def main() -> None:
        store = SQLiteRecordStore(str(path), batch_size=10, flush_interval=0.01)
        await store.start()  # logs, does not raise
        for i in range(100):
            store.add(rec(i))
        await asyncio.sleep(0.1)  # several failing rounds of the writer
        await store.flush()
        assert store.failing
        assert store.pending == 100
        assert store.dropped == 0
        assert store_errors(caplog, "cannot write") == 1  # once per episode

        blocker.unlink()  # the disk is fixed
        await store.flush()
        assert not store.failing
        assert store.pending == 0
        store.add(rec(100))
        await store.close()

    with caplog.at_level(logging.WARNING, logger="sluice.store"):
        asyncio.run(main())
    assert len(rows(path)) == 101
    assert store_errors(caplog, "writing again") == 1
    # No record contents in the logs.
    assert not any("req-0000" in r.getMessage() for r in caplog.records)


def test_a_removed_database_directory_is_recreated(tmp_path: Path) -> None:
    directory = tmp_path / "db"
    path = directory / "requests.db"

    async def main() -> None:
        store = SQLiteRecordStore(str(path), flush_interval=60)
        await store.start()
        store.add(rec(1))
        await store.flush()
        assert rows(path) == [("req-000001",)]
        shutil.rmtree(directory)
        store.add(rec(2))
        await store.flush()
        assert not store.failing
        await store.close()

    asyncio.run(main())
    # The first record went with the directory; the second is in a new file, not lost
    # into the unlinked one.
    assert rows(path) == [("req-000002",)]


def test_buffer_is_bounded_and_drops_the_oldest(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "data"
    blocker.write_text("")
    path = blocker / "requests.db"

    async def main() -> None:
        store = SQLiteRecordStore(str(path), batch_size=4, max_pending=10, flush_interval=60)
        await store.start()
        for i in range(25):
            store.add(rec(i))
        await store.flush()
        assert store.pending == 10
        assert store.dropped == 15
        assert store_errors(caplog, "dropping") == 1
        # While failing, recent() still shows what is waiting.
        assert [r.id for r in await store.recent(2)] == ["req-000024", "req-000023"]
        blocker.unlink()
        await store.close()

    with caplog.at_level(logging.WARNING, logger="sluice.store"):
        asyncio.run(main())
    assert rows(path) == [(f"req-{i:06d}",) for i in range(15, 25)]
    assert store_errors(caplog, "stopped dropping") == 1


def test_a_bad_record_is_cleaned_and_does_not_block_the_batch(tmp_path: Path) -> None:
    path = tmp_path / "requests.db"

    async def main() -> list[Record]:
        store = SQLiteRecordStore(str(path))
        store.add(rec(1))
        store.add(rec(2, prompt="lone \ud800 surrogate", output_tokens=2**70))
        store.add(rec(3))
        await store.flush()
        assert store.pending == 0
        assert store.dropped == 0
        try:
            return await store.recent(10)
        finally:
            await store.close()

    records = asyncio.run(main())
    assert [r.id for r in records] == ["req-000003", "req-000002", "req-000001"]
    assert records[1].prompt == "lone ? surrogate"
    assert records[1].output_tokens is None


def test_an_unstorable_record_is_dropped_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "requests.db"

    async def main() -> None:
        store = SQLiteRecordStore(str(path))
        store.add(rec(1))
        store.add(rec(2, route=None))  # violates NOT NULL, whatever we do
        store.add(rec(3))
        await store.flush()
        assert store.pending == 0
        assert store.dropped == 1
        await store.close()

    with caplog.at_level(logging.WARNING, logger="sluice.store"):
        asyncio.run(main())
    assert rows(path) == [("req-000001",), ("req-000003",)]
    assert store_errors(caplog, "'req-000002' that cannot be stored") == 1


def test_cancelling_a_flush_neither_loses_nor_duplicates(tmp_path: Path) -> None:
    path = tmp_path / "requests.db"

    async def main() -> None:
        store = SQLiteRecordStore(str(path), batch_size=500)
        for i in range(5000):
            store.add(rec(i))
        for _ in range(5):
            flush = asyncio.create_task(store.flush())
            await asyncio.sleep(0.002)
            flush.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flush
        await store.close()

    asyncio.run(main())
    ids = [row[0] for row in rows(path)]
    assert sorted(ids) == [f"req-{i:06d}" for i in range(5000)]


def test_add_after_close_is_dropped_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        store = SQLiteRecordStore(":memory:")
        await store.start()
        await store.close()
        store.add(rec(1))
        store.add(rec(2))
        assert store.dropped == 2
        await store.close()  # idempotent

    with caplog.at_level(logging.WARNING, logger="sluice.store"):
        asyncio.run(main())
    assert store_errors(caplog, "closed") == 1


def test_stats() -> None:
    async def main() -> None:
        store = SQLiteRecordStore(":memory:")
        store.add(rec(1, ttft_ms=10.0))
        store.add(rec(2, ttft_ms=30.0))
        store.add(rec(3, outcome="error", status=502))
        store.add(rec(4, outcome="rejected", status=429))
        stats = await store.stats()
        assert stats["count"] == 4
        assert stats["by_outcome"] == {"ok": 2, "error": 1, "rejected": 1}
        assert stats["avg_ttft_ms"] == 20.0
        assert stats["pending"] == 0
        since = await store.stats(since=1_700_000_000.0 + 3)
        assert since["count"] == 2
        assert since["avg_ttft_ms"] is None
        await store.close()

    asyncio.run(main())


def test_render_table() -> None:
    started = 1_700_000_000.0
    records = [
        Record(
            id="chatcmpl-0123456789abcdef",
            started_at=started,
            route="/v1/chat/completions",
            model="gpt-4o-mini",
            outcome="ok",
            status=200,
            ttft_ms=123.4,
            duration_ms=2345.6,
            input_tokens=12,
            output_tokens=345,
            usage_source="reported",
            chunks=40,
            cost_usd=0.000219,
            cache="miss",
            key_id="k_123",
        ),
        Record(
            id="r2",
            started_at=started + 1,
            route="/",
            outcome="error",
            status=502,
            output_tokens=7,
            usage_source="estimated",
            error="upstream failed\nwith a very long message " + "x" * 200,
        ),
    ]
    lines = render_table(records).split("\n")
    assert len(lines) == 3
    header, first, second = lines
    assert header.split() == [
        "time", "id", "route", "model", "outcome", "status",
        "ttft", "ms", "total", "ms", "tokens", "in/out", "chunks",
        "cost", "usd", "cache", "key", "error",
    ]  # fmt: skip
    assert first.split() == [
        time.strftime("%H:%M:%S", time.localtime(started)),
        "89abcdef",
        "/v1/chat/completions",
        "gpt-4o-mini",
        "ok",
        "200",
        "123",
        "2346",
        "12/345",
        "40",
        "0.000219",
        "miss",
        "k_123",
        "-",
    ]
    cells = second.split()
    assert cells[1:9] == ["r2", "/", "-", "error", "502", "-", "-", "~-/7"]
    assert "\n" not in second and second.endswith("…")
    assert len(second.split("upstream failed", 1)[1]) < 60
    # Columns line up: each header starts where its cells start.
    assert first.index("gpt-4o-mini") == header.index("model")
    assert second.index("502") + 3 == header.index("status") + len("status")
    assert render_table([]).split() == header.split()
