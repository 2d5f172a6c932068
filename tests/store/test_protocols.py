"""Every store behind its protocol, on SQLite and on PostgreSQL: records, keys (and the
spend read from records), console sign-ins; two processes' stores on one database see
each other's writes."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from sluice.store import Backlog, Record
from sluice.store.database import DatabaseOptions, open_database


def rec(i: int, **kw: object) -> Record:
    record = Record(id=f"req-{i:06d}", started_at=1_700_000_000.0 + i, route="/v1/chat/completions")
    for name, value in kw.items():
        setattr(record, name, value)
    return record


def options(
    tmp_path: Path, flush_interval: float = 0.5, key_cache_ttl: float = 2.0
) -> DatabaseOptions:
    return DatabaseOptions(
        flush_interval=flush_interval,
        key_cache_ttl=key_cache_ttl,
        spill_dir=str(tmp_path / "spill"),
    )


def test_records_round_trip_newest_first_with_what_is_not_yet_written(
    database: str, tmp_path: Path
) -> None:
    full = rec(
        0,
        method="POST",
        api="openai_chat",
        model="m",
        upstream="openai:m@host",
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
        key_id="key_1",
        cost_usd=0.5,
        cache="miss",
        attempts=2,
        timeline=b"\x01\x02",
    )

    async def main() -> None:
        db = open_database(database, options(tmp_path, flush_interval=60))
        store = db.records
        await store.start()
        try:
            assert isinstance(store, Backlog) and store.held_back == 0
            for i in (3, 1, 4):
                store.add(rec(i))
            store.add(full)
            await store.flush()
            for i in (5, 9, 2, 6):
                store.add(rec(i))
            recent = await store.recent(3)
            assert [r.id[-1] for r in recent] == ["9", "6", "5"]
            every = await store.recent(100)
            assert [r.id[-1] for r in every] == list("96543210")
            assert every[-1] == full
            assert await store.recent(0) == []
        finally:
            await db.close()
        again = open_database(database, options(tmp_path))
        try:
            assert len(await again.records.recent(100)) == 8  # close wrote the rest
        finally:
            await again.close()

    asyncio.run(main())


def test_keys_create_lookup_limits_revoke_and_spend(database: str, tmp_path: Path) -> None:
    async def main() -> None:
        one = open_database(database, options(tmp_path, key_cache_ttl=0.05))
        two = open_database(database, options(tmp_path, key_cache_ttl=0.05))
        try:
            assert await one.keys.count() == 0 and not await one.keys.any_keys()
            secret, key = await one.keys.create("alice", models=["a", "b"], rpm=5, admin=True)
            assert secret.startswith("sk-sluice-")
            found = await two.keys.lookup(secret)  # the other process sees it
            assert found == key and found.models == ("a", "b") and found.admin
            assert await two.keys.lookup(secret + "x") is None
            assert await two.keys.any_keys() and await two.keys.count() == 1
            assert await one.keys.get(key.id) == key

            changed = await one.keys.set_limits(key.id, models=["c"], tpm=100, budget_usd=2.0)
            assert changed is not None and (changed.models, changed.rpm, changed.tpm) == (
                ("c",),
                None,
                100,
            )
            assert await one.keys.set_limits("key_nope") is None

            await one.records.start()
            one.records.add(rec(1, key_id=key.id, cost_usd=0.25))
            one.records.add(rec(2, key_id=key.id, cost_usd=0.5))
            one.records.add(rec(3, key_id="someone_else", cost_usd=9.0))
            await one.records.flush()
            assert await two.keys.spend(key.id) == 0.75
            assert await two.keys.spend("key_nope") == 0.0
            [row] = await two.keys.rows()
            assert row.spend_usd == 0.75 and row.prefix == secret[:14]
            assert row.as_dict()["budget_usd"] == 2.0 and row.revoked_at is None

            revoked = await one.keys.revoke(key.id)
            assert revoked is not None and revoked.revoked
            first = (await one.keys.rows())[0].revoked_at
            await one.keys.revoke(key.id)
            assert (await one.keys.rows())[0].revoked_at == first  # the first time stays
            await asyncio.sleep(0.1)  # past the other's cache time
            seen = await two.keys.lookup(secret)
            assert seen is not None and seen.revoked
            assert await one.keys.revoke("key_nope") is None
        finally:
            await one.close()
            await two.close()

    asyncio.run(main())


def test_sign_in_sessions(database: str, tmp_path: Path) -> None:
    async def main() -> None:
        one = open_database(database, options(tmp_path))
        two = open_database(database, options(tmp_path))
        try:
            _, admin = await one.keys.create("admin", admin=True)
            _, plain = await one.keys.create("plain")
            token, session = await one.sessions.create(admin.id, None, 60)
            got = await two.sessions.get(token, None)
            assert got == session and got.who == admin.id and got.expires_at > time.time()
            plain_token, _ = await one.sessions.create(plain.id, None, 60)
            assert await two.sessions.get(plain_token, None) is None  # not an admin key

            master_token, _ = await one.sessions.create("master", "digest-1", 60)
            assert await two.sessions.get(master_token, "digest-1") is not None
            assert await two.sessions.get(master_token, "digest-2") is None  # another key

            short, _ = await one.sessions.create(admin.id, None, 0.05)
            await asyncio.sleep(0.1)
            assert await two.sessions.get(short, None) is None  # expired

            await one.keys.revoke(admin.id)
            assert await two.sessions.get(token, None) is None  # its key was revoked
            await two.sessions.delete(master_token)  # signed out everywhere
            assert await one.sessions.get(master_token, "digest-1") is None
        finally:
            await one.close()
            await two.close()

    asyncio.run(main())


def test_a_late_resume_raises_the_record_count(database: str, tmp_path: Path) -> None:
    """``resumed``: in place while the record waits, in the database once written, never
    lowered; False for a record not there."""

    async def main() -> None:
        db = open_database(database, options(tmp_path, flush_interval=60))
        store = db.records
        await store.start()
        try:
            store.add(rec(1, resumes=1))
            assert await store.resumed(rec(1).id, 2)  # still waiting: counted in place
            store.add(rec(2))
            await store.flush()
            assert await store.resumed(rec(2).id, 3)  # written: updated there
            assert await store.resumed(rec(2).id, 1)  # a stale count never lowers it
            assert not await store.resumed("req-unknown", 1)
            counts = {r.id: r.resumes for r in await store.recent(10)}
            assert counts == {rec(1).id: 2, rec(2).id: 3}
        finally:
            await db.close()

    asyncio.run(main())
