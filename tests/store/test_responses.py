"""The response store, on SQLite and on PostgreSQL: put, get, chain, delete, shared by two
stores on one database."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from sluice.errors import ServiceUnavailable
from sluice.store.database import Database, open_database
from sluice.store.responses import SQLiteResponseStore, StoredResponse
from tests.gateway import free_port


def response(n: int, previous: int | None = None, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": f"resp_{n}",
        "object": "response",
        "created_at": 1_700_000_000 + n,
        "status": "completed",
        "background": False,
        "error": None,
        "incomplete_details": None,
        "instructions": None,
        "model": "m",
        "output": [{"id": f"msg_{n}", "type": "message", "role": "assistant", "content": []}],
        "parallel_tool_calls": True,
        "previous_response_id": None if previous is None else f"resp_{previous}",
        "metadata": {"turn": str(n)},
        "tool_choice": "auto",
        "tools": [],
        "usage": {"input_tokens": n, "output_tokens": 1, "total_tokens": n + 1},
    }
    body.update(fields)
    return body


def items(n: int) -> list[dict[str, Any]]:
    text = {"type": "input_text", "text": f"turn {n}"}
    return [{"id": f"in_{n}", "type": "message", "role": "user", "content": [text]}]


def test_put_get_chain_delete(database: str) -> None:
    async def main() -> None:
        db = open_database(database)
        store = db.responses
        await store.start()
        try:
            assert await store.get("resp_1") is None
            for n in range(1, 5):
                previous = n - 1 if n > 1 else None
                await store.put(StoredResponse(response(n, previous), items(n), "key_a"))
            got = await store.get("resp_2")
            assert got is not None
            assert got.response == response(2, 1)
            assert got.input_items == items(2)
            assert got.key_id == "key_a"

            chain = await store.chain("resp_4", 10)
            assert [s.id for s in chain] == ["resp_4", "resp_3", "resp_2", "resp_1"]
            assert [s.id for s in await store.chain("resp_4", 2)] == ["resp_4", "resp_3"]

            failed = response(3, 2, status="failed", error={"code": "server_error", "message": "x"})
            await store.put(StoredResponse(failed, items(3), "key_a"))  # replaced
            stored = await store.get("resp_3")
            assert stored is not None and stored.response == failed

            assert await store.delete("resp_2") is True
            assert await store.delete("resp_2") is False
            # The chain stops where a response is missing: its successor names it.
            chain = await store.chain("resp_4", 10)
            assert [s.id for s in chain] == ["resp_4", "resp_3"]
            assert chain[-1].previous_response_id == "resp_2"
            assert await store.chain("resp_4", 0) == []
        finally:
            await db.close()

    asyncio.run(main())


def test_a_database_in_a_new_directory_is_made(tmp_path: Path) -> None:
    async def main() -> None:
        store = SQLiteResponseStore(str(tmp_path / "sub" / "records.db"))
        try:
            await store.put(StoredResponse(response(1), items(1), None))
        finally:
            await store.close()

    asyncio.run(main())


def test_two_stores_on_one_database_see_each_others_responses(database: str) -> None:
    async def main() -> None:
        dbs: list[Database] = [open_database(database), open_database(database)]
        one, two = dbs[0].responses, dbs[1].responses
        try:
            await one.put(StoredResponse(response(1), items(1), None))
            await two.put(StoredResponse(response(2, 1), items(2), None))
            assert [s.id for s in await one.chain("resp_2", 5)] == ["resp_2", "resp_1"]
            assert await two.delete("resp_1")
            assert await one.get("resp_1") is None
        finally:
            for db in dbs:
                await db.close()

    asyncio.run(main())
    if database.startswith("postgresql://"):
        return
    db = sqlite3.connect(database)
    try:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
    finally:
        db.close()
    assert {"responses", "requests", "keys"} <= tables


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_an_unusable_database_is_service_unavailable(tmp_path: Path, backend: str) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    where = str(blocker / "records.db")
    if backend == "postgresql":  # nothing listens there
        where = f"postgresql://sluice:pw@127.0.0.1:{free_port()}/sluice"

    async def main() -> None:
        db = open_database(where)
        store = db.responses
        try:
            with pytest.raises(ServiceUnavailable) as failed:
                await store.get("resp_1")
            assert failed.value.status == 503
            with pytest.raises(ServiceUnavailable):
                await store.put(StoredResponse(response(1), items(1), None))
        finally:
            await db.close()

    asyncio.run(main())
