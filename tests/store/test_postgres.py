"""The PostgreSQL stores against a real PostgreSQL (tests/postgres.py): the schema and its
migrations, batched record writes, an outage held in memory and a spill file and
written afterwards, and a password that never shows."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time
from dataclasses import fields
from pathlib import Path

import asyncpg
import pytest

from sluice.store import Record, StoreError
from sluice.store.database import open_database
from sluice.store.postgres import Postgres, is_postgres, redact
from sluice.store.postgres_keys import PostgresKeyStore
from sluice.store.postgres_migrations import MIGRATIONS
from sluice.store.postgres_records import PostgresRecordStore
from sluice.store.spill import Spill
from tests.postgres import PASSWORD, PostgresServer, query


def rec(i: int, **kw: object) -> Record:
    record = Record(id=f"req-{i:06d}", started_at=1_700_000_000.0 + i, route="/v1/chat/completions")
    for name, value in kw.items():
        setattr(record, name, value)
    return record


async def wait_until(condition: object, within: float = 20.0) -> None:
    assert callable(condition)
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def count(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval("SELECT COUNT(*) FROM requests"))
    finally:
        await conn.close()


def test_the_schema_has_a_column_per_record_field(postgres_url: str) -> None:
    async def main() -> None:
        database = Postgres(postgres_url)
        try:
            await database.pool()
        finally:
            await database.close()

    asyncio.run(main())
    columns = [
        row[0]
        for row in query(
            postgres_url,
            "SELECT column_name FROM information_schema.columns"
            " WHERE table_name = 'requests' ORDER BY ordinal_position",
        )
    ]
    # A new Record field needs a PostgreSQL migration too (store/postgres_migrations.py).
    assert columns == ["n", *(f.name for f in fields(Record))]
    tables = {row[0] for row in query(postgres_url, "SELECT tablename FROM pg_tables")}
    assert {"requests", "keys", "responses", "console_sessions", "_migrations"} <= tables


def test_instances_starting_together_apply_each_migration_once(postgres_url: str) -> None:
    async def main() -> list[list[str]]:
        databases = [Postgres(postgres_url) for _ in range(4)]
        try:
            await asyncio.gather(*(database.pool() for database in databases))
            return [database.applied for database in databases]
        finally:
            for database in databases:
                await database.close()

    applied = asyncio.run(main())
    names = [name for name, _ in MIGRATIONS]
    assert sorted(applied, key=len) == [[], [], [], names]
    assert [row[0] for row in query(postgres_url, "SELECT name FROM _migrations")] == names


def test_sluice_db_migrate_for_both_backends(database: str) -> None:
    def migrate() -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
        return subprocess.run(
            [sys.executable, "-m", "sluice", "db", "migrate", "--db", database],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )

    first, again = migrate(), migrate()
    assert first.returncode == 0, first.stderr
    assert again.returncode == 0, again.stderr
    assert first.stdout.startswith("applied m001_")
    assert again.stdout == ""
    assert "up to date" in again.stderr and "0 applied now" in again.stderr
    for done in (first, again):
        assert PASSWORD not in done.stdout + done.stderr


def test_records_round_trip_and_unstorable_values_are_cleaned(postgres_url: str) -> None:
    full = Record(
        id="abc",
        started_at=1_700_000_000.123456,
        route="/v1/messages",
        method="POST",
        api="anthropic_messages",
        model="claude",
        stream=False,
        outcome="error",
        status=502,
        ttft_ms=12.5,
        input_tokens=10,
        output_tokens=20,
        chunks=7,
        error="upstream_error: boom",
        key_id="key_1",
        cost_usd=0.25,
        cache="miss",
        attempts=2,
        timeline=bytearray(b"\x01\x02\x03"),
    )
    # PostgreSQL refuses NUL in text; the driver refuses lone surrogates and integers
    # past 64 bits: each is stored cleaned, and the rest of the batch is not held up.
    odd = rec(1, error="nul \x00 and \ud800", output_tokens=2**70, prompt="fine")
    plain = rec(2)

    async def main() -> list[Record]:
        store = PostgresRecordStore(Postgres(postgres_url), flush_interval=60)
        await store.start()
        for record in (full, odd, plain):
            store.add(record)
        await store.close()
        await store.database.close()
        reader = PostgresRecordStore(Postgres(postgres_url))
        await reader.start()
        try:
            return await reader.recent(10)
        finally:
            await reader.close()
            await reader.database.close()

    got = asyncio.run(main())
    assert [r.id for r in got] == ["req-000002", "req-000001", "abc"]
    assert got[2] == Record(**{**{f.name: getattr(full, f.name) for f in fields(Record)}})
    assert got[1].error == "nul \ufffd and ?" and got[1].output_tokens is None
    assert got[1].prompt == "fine"


def test_a_full_batch_is_written_without_waiting_for_the_interval(postgres_url: str) -> None:
    async def main() -> None:
        store = PostgresRecordStore(Postgres(postgres_url), batch_size=10, flush_interval=60)
        await store.start()
        for i in range(10):
            store.add(rec(i))
        deadline = time.monotonic() + 10
        while await count(postgres_url) < 10:
            assert time.monotonic() < deadline, "the batch was not written"
            await asyncio.sleep(0.02)
        await store.close()
        await store.database.close()

    asyncio.run(main())


def test_an_outage_is_held_in_memory_then_spilled_and_written_when_the_database_is_back(
    postgres_server: PostgresServer, postgres_url: str, tmp_path: Path
) -> None:
    spill = tmp_path / "spill"

    async def main() -> None:
        store = PostgresRecordStore(
            Postgres(postgres_url),
            batch_size=10,
            flush_interval=0.05,
            max_pending=40,
            spill_dir=str(spill),
        )
        await store.start()
        for i in range(10):
            store.add(rec(i))
        await store.flush()
        assert await count(postgres_url) == 10 and store.held_back == 0

        await asyncio.to_thread(postgres_server.stop)
        for i in range(10, 210):
            store.add(rec(i))
            if i % 10 == 0:
                await asyncio.sleep(0.01)  # the writer tries, fails, backs off
        await wait_until(lambda: store.failing and store.spilled > 0)
        assert store.pending <= 80  # memory stays bounded: the rest is in the spill file
        assert store.held_back == 200 and store.dropped == 0
        lines = sum(p.read_bytes().count(b"\n") for p in spill.glob("records-*.jsonl"))
        assert lines == store.spilled

        await asyncio.to_thread(postgres_server.start)
        await wait_until(lambda: store.held_back == 0)
        await store.close()
        await store.database.close()

    asyncio.run(main())
    ids = [row[0] for row in query(postgres_url, "SELECT id FROM requests")]
    assert len(ids) == 210 and len(set(ids)) == 210
    assert not list(spill.glob("records-*.jsonl")), "a written spill file is removed"


def test_records_spilled_by_a_store_that_closed_are_written_by_the_next(
    postgres_server: PostgresServer,
    postgres_url: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    spill = str(tmp_path / "spill")

    async def first() -> None:
        store = PostgresRecordStore(Postgres(postgres_url), spill_dir=spill)
        await store.start()
        await asyncio.to_thread(postgres_server.stop)
        for i in range(25):
            store.add(rec(i))
        await store.close()  # cannot write: everything goes to the spill file
        await store.database.close()
        assert store.dropped == 0

    async def second() -> None:
        store = PostgresRecordStore(Postgres(postgres_url), spill_dir=spill, flush_interval=0.05)
        await store.start()
        assert store.held_back == 25
        await wait_until(lambda: store.held_back == 0)
        await store.close()
        await store.database.close()

    caplog.set_level(logging.WARNING, "sluice.store")
    asyncio.run(first())
    assert sum(1 for name in os.listdir(spill) if name.endswith(".jsonl")) == 1
    postgres_server.start()
    asyncio.run(second())
    assert len(query(postgres_url, "SELECT id FROM requests")) == 25
    assert PASSWORD not in caplog.text


def test_a_spill_file_half_written_back_resumes_where_it_stopped(tmp_path: Path) -> None:
    writer = Spill(str(tmp_path))
    writer.append([rec(i) for i in range(10)])
    chunk = writer.read(4)
    assert chunk is not None and [r.id for r in chunk.records] == [rec(i).id for i in range(4)]
    writer.written(chunk)
    writer.close()  # the process ends with 6 records not yet written

    taker = Spill(str(tmp_path))
    assert taker.take_over() == 6
    chunk = taker.read(100)
    assert chunk is not None and [r.id for r in chunk.records] == [rec(i).id for i in range(4, 10)]
    taker.written(chunk)
    assert taker.count == 0 and taker.read(100) is None
    assert os.listdir(tmp_path) == []
    taker.close()


def test_a_live_process_spill_file_is_not_taken(tmp_path: Path) -> None:
    writer = Spill(str(tmp_path))
    writer.append([rec(1)])
    other = Spill(str(tmp_path))
    assert other.take_over() == 0
    writer.close()
    assert other.take_over() == 1
    other.close()


def test_keys_seen_before_keep_their_answer_while_the_database_is_down(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    async def main() -> None:
        database = Postgres(postgres_url)
        keys = PostgresKeyStore(database, cache_ttl=0.05)
        secret, key = await keys.create("k")
        assert (await keys.lookup(secret)) == key
        await asyncio.to_thread(postgres_server.stop)
        await asyncio.sleep(0.1)  # past the cache's time
        assert (await keys.lookup(secret)) == key
        assert await keys.any_keys()
        with pytest.raises(StoreError) as failed:
            await keys.spend(key.id)
        assert PASSWORD not in str(failed.value)
        await asyncio.to_thread(postgres_server.start)
        await keys.revoke(key.id)
        await asyncio.sleep(0.1)
        revoked = await keys.lookup(secret)
        assert revoked is not None and revoked.revoked
        await database.close()

    asyncio.run(main())


def test_the_password_never_shows(postgres_server: PostgresServer) -> None:
    url = postgres_server.url("nowhere")
    assert PASSWORD not in redact(url) and redact(url).startswith("postgresql://sluice:***@")
    assert redact("postgresql://u@h/db?password=s3cret&sslmode=require") == (
        "postgresql://u@h/db?password=***&sslmode=require"
    )
    assert is_postgres(url) and is_postgres("postgres://h/db") and not is_postgres("sluice.db")

    async def main() -> str:
        database = open_database(url)  # no such database
        try:
            await database.keys.count()
        except StoreError as exc:
            return str(exc)
        finally:
            await database.close()
        raise AssertionError("expected StoreError")

    message = asyncio.run(main())
    assert "nowhere" in message and PASSWORD not in message
