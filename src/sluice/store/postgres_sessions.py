"""Console sign-ins in PostgreSQL (table ``console_sessions``), shared by every
instance on the database: a sign-out anywhere ends the session everywhere."""

from __future__ import annotations

import time

from sluice.store.postgres import Connection, Postgres
from sluice.store.sessions import Session, hash_token, live, new_session

__all__ = ["PostgresSessionStore"]


class PostgresSessionStore:
    def __init__(self, database: Postgres) -> None:
        self.database = database

    async def create(self, who: str, master: str | None, ttl: float) -> tuple[str, Session]:
        token, session = new_session(who, ttl)

        async def insert(conn: Connection) -> None:
            now = time.time()
            async with conn.transaction():
                await conn.execute("DELETE FROM console_sessions WHERE expires_at <= $1", now)
                await conn.execute(
                    "INSERT INTO console_sessions (hash, who, master_digest, csrf, created_at,"
                    " expires_at) VALUES ($1, $2, $3, $4, $5, $6)",
                    hash_token(token),
                    who,
                    master,
                    session.csrf,
                    now,
                    session.expires_at,
                )

        await self.database.run(insert)
        return token, session

    async def get(self, token: str, master: str | None) -> Session | None:
        row = await self.database.run(
            lambda conn: conn.fetchrow(
                "SELECT s.who, s.csrf, s.master_digest, s.expires_at, k.admin"
                " FROM console_sessions s LEFT JOIN keys k ON k.id = s.who"
                " AND k.revoked_at IS NULL AND (k.expires_at IS NULL OR k.expires_at > $1)"
                " WHERE s.hash = $2 AND s.expires_at > $1",
                time.time(),
                hash_token(token),
            )
        )
        return live(None if row is None else (row[0], row[1], row[2], row[3], row[4]), master)

    async def delete(self, token: str) -> None:
        await self.database.run(
            lambda conn: conn.execute(
                "DELETE FROM console_sessions WHERE hash = $1", hash_token(token)
            )
        )

    async def close(self) -> None:
        return None  # the pool is the database's, closed with it
