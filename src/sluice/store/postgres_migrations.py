"""The PostgreSQL schema, as an append-only list of named migrations.

Never edit or reorder a migration that has shipped: add a new one at the end, and
mirror a change of the SQLite schema (store/migrations.py) here. ``migrate`` runs the
pending ones under a session-level advisory lock, so instances starting together apply
each migration once; each migration commits with its name in ``_migrations``.
"""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING

import asyncpg

if TYPE_CHECKING:
    from sluice.store.postgres import Connection

__all__ = ["LOCK_ID", "MIGRATIONS", "applied", "migrate"]

#: ``pg_advisory_lock`` key taken while migrating: any fixed 64-bit number of our own.
LOCK_ID = 0x51_75_1C_E0_00_00_00_01

MIGRATIONS: list[tuple[str, tuple[str, ...]]] = [
    (
        "m001_schema",
        (
            # One column per Record field, and ``n``: the order rows were written in,
            # the console's cursor (SQLite's rowid). ``id`` is deliberately not unique:
            # it may come from a client header, and two requests sharing an id are
            # still two requests to record.
            """
            CREATE TABLE requests (
                n BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                id TEXT NOT NULL,
                started_at DOUBLE PRECISION NOT NULL,
                route TEXT NOT NULL,
                method TEXT NOT NULL,
                api TEXT NOT NULL,
                model TEXT,
                upstream TEXT,
                stream BOOLEAN NOT NULL,
                client TEXT,
                ended_at DOUBLE PRECISION,
                outcome TEXT NOT NULL,
                status BIGINT NOT NULL,
                ttft_ms DOUBLE PRECISION,
                duration_ms DOUBLE PRECISION,
                input_tokens BIGINT,
                output_tokens BIGINT,
                usage_source TEXT,
                chunks BIGINT NOT NULL,
                error TEXT,
                prompt TEXT,
                response TEXT,
                key_id TEXT,
                cost_usd DOUBLE PRECISION,
                cache TEXT,
                attempts BIGINT NOT NULL DEFAULT 0,
                timeline BYTEA
            )
            """,
            # The console pages records newest first, filtered by model, key or
            # outcome: the time after the filter column reads a page in order.
            "CREATE INDEX requests_started_at ON requests (started_at)",
            "CREATE INDEX requests_id ON requests (id)",
            "CREATE INDEX requests_model ON requests (model, started_at)",
            "CREATE INDEX requests_key_id ON requests (key_id, started_at)",
            "CREATE INDEX requests_outcome ON requests (outcome, started_at)",
            # Virtual keys: only a hash of each key, and a short prefix for listings;
            # ``models`` is a JSON list (NULL: every model).
            """
            CREATE TABLE keys (
                id TEXT PRIMARY KEY,
                name TEXT NOT NULL,
                hash TEXT NOT NULL UNIQUE,
                prefix TEXT NOT NULL,
                models TEXT,
                rpm BIGINT,
                tpm BIGINT,
                budget_usd DOUBLE PRECISION,
                expires_at DOUBLE PRECISION,
                created_at DOUBLE PRECISION NOT NULL,
                revoked_at DOUBLE PRECISION,
                admin BOOLEAN NOT NULL DEFAULT FALSE
            )
            """,
            # Stored responses of the OpenAI Responses API; the JSON columns are text,
            # kept byte for byte as written.
            """
            CREATE TABLE responses (
                id TEXT PRIMARY KEY,
                created_at DOUBLE PRECISION NOT NULL,
                model TEXT NOT NULL,
                status TEXT NOT NULL,
                key_id TEXT,
                previous_response_id TEXT,
                instructions TEXT,
                input_items TEXT NOT NULL,
                output TEXT NOT NULL,
                usage TEXT,
                error TEXT,
                body TEXT NOT NULL
            )
            """,
            "CREATE INDEX responses_created_at ON responses (created_at)",
            # Console sign-ins: only a hash of the cookie's token.
            """
            CREATE TABLE console_sessions (
                hash TEXT PRIMARY KEY,
                who TEXT NOT NULL,
                master_digest TEXT,
                csrf TEXT NOT NULL,
                created_at DOUBLE PRECISION NOT NULL,
                expires_at DOUBLE PRECISION NOT NULL
            )
            """,
            "CREATE INDEX console_sessions_expires_at ON console_sessions (expires_at)",
        ),
    ),
    (
        # What the answer was, how a failure is classed and how often routing fell back
        # (SQLite's m009): what metrics, traces and ``sluice stats`` read.
        "m002_outcome_columns",
        (
            "ALTER TABLE requests ADD COLUMN operation TEXT",
            "ALTER TABLE requests ADD COLUMN provider TEXT",
            "ALTER TABLE requests ADD COLUMN response_model TEXT",
            "ALTER TABLE requests ADD COLUMN response_id TEXT",
            "ALTER TABLE requests ADD COLUMN finish_reasons TEXT",
            "ALTER TABLE requests ADD COLUMN error_type TEXT",
            "ALTER TABLE requests ADD COLUMN fallbacks INTEGER NOT NULL DEFAULT 0",
        ),
    ),
    (
        # How many times a client resumed a generation's stream (SQLite's m010).
        "m003_resumes",
        ("ALTER TABLE requests ADD COLUMN resumes INTEGER NOT NULL DEFAULT 0",),
    ),
]


async def applied(conn: Connection) -> list[str]:
    exists = await conn.fetchval("SELECT to_regclass('_migrations') IS NOT NULL")
    if not exists:
        return []
    rows = await conn.fetch("SELECT name FROM _migrations ORDER BY applied_at, name")
    return [row[0] for row in rows]


async def migrate(conn: Connection) -> list[str]:
    """Bring the database up to date; the names applied now (usually none)."""
    await conn.execute("SELECT pg_advisory_lock($1)", LOCK_ID)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS _migrations"
            " (name TEXT PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)"
        )
        done = set(await applied(conn))
        names: list[str] = []
        for name, statements in MIGRATIONS:
            if name in done:
                continue
            async with conn.transaction():
                for statement in statements:
                    await conn.execute(statement)
                await conn.execute(
                    "INSERT INTO _migrations (name, applied_at) VALUES ($1, $2)", name, time.time()
                )
            names.append(name)
        return names
    finally:
        # A connection that broke meanwhile has released the lock with its session.
        with contextlib.suppress(asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
            await conn.execute("SELECT pg_advisory_unlock($1)", LOCK_ID)
