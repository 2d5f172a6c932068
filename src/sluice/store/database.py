"""The record database, chosen in one place: a ``postgresql://`` (or ``postgres://``) URL
opens PostgreSQL, shared by many instances; anything else is the path of a SQLite file,
the embedded default. Either way the same stores come out, behind the same protocols:
records, keys, stored responses, console sign-ins and the console's reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from dataclasses import dataclass, field

from sluice.store import RecordStore, StoreError
from sluice.store.keys import KeyStore, SQLiteKeyStore
from sluice.store.postgres import Postgres, is_postgres, redact
from sluice.store.queries import RecordQueries, SQLiteRecordQueries
from sluice.store.responses import ResponseStore, SQLiteResponseStore
from sluice.store.sessions import SessionStore, SQLiteSessionStore

__all__ = ["Database", "DatabaseOptions", "describe", "migrate", "open_database"]


@dataclass(frozen=True, slots=True)
class DatabaseOptions:
    batch_size: int = 256
    flush_interval: float = 0.5
    key_cache_ttl: float = 2.0
    #: Records kept in memory while the database cannot be written (PostgreSQL: then
    #: spilled to ``spill_dir``; SQLite: then the oldest are dropped). None: the default.
    max_pending: int | None = None
    spill_dir: str = "sluice-spill"


@dataclass(slots=True)
class Database:
    #: Names the database in messages: a path, or a URL without its password.
    where: str
    #: Whether other instances may share it (PostgreSQL): spend is then re-read often.
    shared: bool
    records: RecordStore
    keys: KeyStore
    responses: ResponseStore
    sessions: SessionStore
    queries: RecordQueries
    postgres: Postgres | None = field(default=None)

    async def close(self) -> None:
        """Close every store (the record store writes what it holds first), then the pool."""
        await self.records.close()
        await self.responses.close()
        await self.keys.close()
        await self.sessions.close()
        await self.queries.close()
        if self.postgres is not None:
            await self.postgres.close()


def describe(location: str) -> str:
    """The location as messages show it: never a password."""
    return redact(location) if is_postgres(location) else location


def open_database(location: str, options: DatabaseOptions | None = None) -> Database:
    """The stores on ``location``. Nothing connects yet: each store opens on first use
    (the record store on ``start``), so a database that is down does not stop a start."""
    options = options or DatabaseOptions()
    if is_postgres(location):
        from sluice.store.postgres_keys import PostgresKeyStore
        from sluice.store.postgres_queries import PostgresRecordQueries
        from sluice.store.postgres_records import MAX_PENDING, PostgresRecordStore
        from sluice.store.postgres_responses import PostgresResponseStore
        from sluice.store.postgres_sessions import PostgresSessionStore

        database = Postgres(location)
        return Database(
            where=database.where,
            shared=True,
            records=PostgresRecordStore(
                database,
                batch_size=options.batch_size,
                flush_interval=options.flush_interval,
                max_pending=options.max_pending or MAX_PENDING,
                spill_dir=options.spill_dir,
            ),
            keys=PostgresKeyStore(database, cache_ttl=options.key_cache_ttl),
            responses=PostgresResponseStore(database),
            sessions=PostgresSessionStore(database),
            queries=PostgresRecordQueries(database),
            postgres=database,
        )
    from sluice.store.sqlite import MAX_PENDING as SQLITE_MAX_PENDING
    from sluice.store.sqlite import SQLiteRecordStore

    return Database(
        where=location,
        shared=False,
        records=SQLiteRecordStore(
            location,
            batch_size=options.batch_size,
            flush_interval=options.flush_interval,
            max_pending=options.max_pending or SQLITE_MAX_PENDING,
            spill_dir=options.spill_dir,
        ),
        keys=SQLiteKeyStore(location, cache_ttl=options.key_cache_ttl),
        responses=SQLiteResponseStore(location),
        sessions=SQLiteSessionStore(location),
        queries=SQLiteRecordQueries(location),
    )


async def migrate(location: str) -> tuple[list[str], list[str]]:
    """Apply the pending migrations: (the names applied now, every name applied).
    Raises ``StoreError``."""
    if is_postgres(location):
        from sluice.store import postgres_migrations

        database = Postgres(location)
        try:
            await database.pool()
            now = list(database.applied)
            every = await database.run(postgres_migrations.applied)
        finally:
            with contextlib.suppress(StoreError):
                await database.close()
        return now, every
    return await asyncio.to_thread(_migrate_sqlite, location)


def _migrate_sqlite(path: str) -> tuple[list[str], list[str]]:
    from sluice.store import migrations

    try:
        if path != ":memory:":
            parent = os.path.dirname(path)
            if parent:
                os.makedirs(parent, exist_ok=True)
        db = sqlite3.connect(path, timeout=5.0, isolation_level=None)
        try:
            db.execute(
                "CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at REAL)"
            )
            before = set(migrations.applied(db))
            migrations.migrate(db)
            every = migrations.applied(db)
        finally:
            db.close()
    except (sqlite3.Error, OSError) as exc:
        raise StoreError(
            f"cannot migrate the database {path}: {type(exc).__name__}: {exc}"
        ) from exc
    return [name for name in every if name not in before], every
