"""Virtual keys in PostgreSQL (table ``keys``): the same store as SQLite's, shared by
every instance on the database. Lookups are cached as store/keys.py says."""

from __future__ import annotations

import time
from collections.abc import Sequence

from sluice.store import VirtualKey
from sluice.store.keys import (
    KEY_COLUMNS,
    CachedKeys,
    KeyRow,
    hash_key,
    make_key,
    models_json,
    shown,
    to_key,
)
from sluice.store.postgres import Connection, Postgres

__all__ = ["PostgresKeyStore"]


class PostgresKeyStore(CachedKeys):
    def __init__(self, database: Postgres, cache_ttl: float = 2.0) -> None:
        super().__init__(cache_ttl)
        self.database = database
        self.where = database.where

    async def create(
        self,
        name: str,
        *,
        models: Sequence[str] = (),
        rpm: int | None = None,
        tpm: int | None = None,
        budget_usd: float | None = None,
        expires_at: float | None = None,
        admin: bool = False,
    ) -> tuple[str, VirtualKey]:
        secret, key = make_key(
            name,
            models=models,
            rpm=rpm,
            tpm=tpm,
            budget_usd=budget_usd,
            expires_at=expires_at,
            admin=admin,
        )

        async def insert(conn: Connection) -> None:
            await conn.execute(
                "INSERT INTO keys (id, name, hash, prefix, models, rpm, tpm, budget_usd,"
                " expires_at, created_at, admin) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9,"
                " $10, $11)",
                key.id,
                key.name,
                hash_key(secret),
                shown(secret),
                models_json(key.models),
                key.rpm,
                key.tpm,
                key.budget_usd,
                key.expires_at,
                key.created_at,
                key.admin,
            )

        await self.database.run(insert)
        return secret, key

    async def rows(self) -> list[KeyRow]:
        async def read(conn: Connection) -> list[KeyRow]:
            rows = await conn.fetch(
                f"SELECT {KEY_COLUMNS}, prefix, (SELECT SUM(cost_usd) FROM requests r"
                " WHERE r.key_id = k.id) FROM keys k ORDER BY created_at, id"
            )
            return [
                KeyRow(to_key(tuple(row)[:-2]), row[-2], row[7], float(row[-1] or 0.0))
                for row in rows
            ]

        return await self.database.run(read)

    async def get(self, key_id: str) -> VirtualKey | None:
        row = await self.database.run(
            lambda conn: conn.fetchrow(f"SELECT {KEY_COLUMNS} FROM keys WHERE id = $1", key_id)
        )
        return None if row is None else to_key(tuple(row))

    async def set_limits(
        self,
        key_id: str,
        *,
        models: Sequence[str] = (),
        rpm: int | None = None,
        tpm: int | None = None,
        budget_usd: float | None = None,
    ) -> VirtualKey | None:
        await self.database.run(
            lambda conn: conn.execute(
                "UPDATE keys SET models = $1, rpm = $2, tpm = $3, budget_usd = $4 WHERE id = $5",
                models_json(models),
                rpm,
                tpm,
                budget_usd,
                key_id,
            )
        )
        return await self.get(key_id)

    async def revoke(self, key_id: str) -> VirtualKey | None:
        await self.database.run(
            lambda conn: conn.execute(
                "UPDATE keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
                time.time(),
                key_id,
            )
        )
        return await self.get(key_id)

    async def count(self) -> int:
        found = await self.database.run(lambda conn: conn.fetchval("SELECT COUNT(*) FROM keys"))
        return int(found)

    async def spend(self, key_id: str) -> float:
        found = await self.database.run(
            lambda conn: conn.fetchval(
                "SELECT SUM(cost_usd) FROM requests WHERE key_id = $1", key_id
            )
        )
        return float(found or 0.0)

    async def by_hash(self, digest: str) -> VirtualKey | None:
        row = await self.database.run(
            lambda conn: conn.fetchrow(f"SELECT {KEY_COLUMNS} FROM keys WHERE hash = $1", digest)
        )
        return None if row is None else to_key(tuple(row))

    async def close(self) -> None:
        return None  # the pool is the database's, closed with it
