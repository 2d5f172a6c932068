"""Stored responses of the OpenAI Responses API in PostgreSQL (table ``responses``):
a conversation started on one instance continues on any other on the database. A
database that cannot be used raises ``ServiceUnavailable``, as with SQLite."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from sluice.errors import ServiceUnavailable
from sluice.store import StoreError
from sluice.store.postgres import Connection, Postgres
from sluice.store.responses import SELECT, StoredResponse, from_row, to_row

__all__ = ["PostgresResponseStore"]

T = TypeVar("T")

_COLUMNS = (
    "id, created_at, model, status, key_id, previous_response_id, instructions,"
    " input_items, output, usage, error, body"
)
_UPDATE = ", ".join(f"{c} = EXCLUDED.{c}" for c in _COLUMNS.replace(" ", "").split(",")[1:])


class PostgresResponseStore:
    def __init__(self, database: Postgres) -> None:
        self.database = database

    async def start(self) -> None:
        return None  # the pool opens on first use

    async def close(self) -> None:
        return None  # the pool is the database's, closed with it

    async def put(self, stored: StoredResponse) -> None:
        row = to_row(stored)
        await self._call(
            lambda conn: conn.execute(
                f"INSERT INTO responses ({_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8,"
                f" $9, $10, $11, $12) ON CONFLICT (id) DO UPDATE SET {_UPDATE}",
                *row,
            )
        )

    async def get(self, response_id: str) -> StoredResponse | None:
        found = await self.chain(response_id, 1)
        return found[0] if found else None

    async def chain(self, response_id: str, limit: int) -> list[StoredResponse]:
        # One round trip: the chain walked by a recursive query, at most ``limit`` deep
        # (which also ends a cycle).
        query = f"""
            WITH RECURSIVE chain (id, previous, depth) AS (
                SELECT id, previous_response_id, 1 FROM responses WHERE id = $1
                UNION ALL
                SELECT r.id, r.previous_response_id, c.depth + 1
                FROM chain c JOIN responses r ON r.id = c.previous
                WHERE c.depth < $2
            )
            {SELECT} JOIN chain USING (id) ORDER BY chain.depth
        """
        if limit <= 0:
            return []
        rows = await self._call(lambda conn: conn.fetch(query, response_id, limit))
        return [from_row(tuple(row)) for row in rows]

    async def delete(self, response_id: str) -> bool:
        status = await self._call(
            lambda conn: conn.execute("DELETE FROM responses WHERE id = $1", response_id)
        )
        return status != "DELETE 0"

    async def _call(self, fn: Callable[[Connection], Awaitable[T]]) -> T:
        try:
            return await self.database.run(fn)
        except StoreError as exc:
            raise ServiceUnavailable(f"the response store cannot be used now ({exc})") from exc
