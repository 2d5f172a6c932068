"""The SQLite schema, as an append-only list of named migrations.

Never edit or reorder a migration that has shipped: add a new one at the end. The
``_migrations`` table records which names have run, so ``migrate`` is idempotent and
safe to call on every open, from several processes at once.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable

Migration = Callable[[sqlite3.Connection], None]

MIGRATIONS: list[tuple[str, Migration]] = []


def migration(fn: Migration) -> Migration:
    name = fn.__name__
    if any(existing == name for existing, _ in MIGRATIONS):
        raise ValueError(f"duplicate migration name: {name}")
    MIGRATIONS.append((name, fn))
    return fn


def migrate(db: sqlite3.Connection) -> None:
    """Bring ``db`` up to date. ``db`` must be in autocommit mode (isolation_level=None)."""
    # WAL lets readers (the CLI, the dashboard) run while the gateway writes. It is a
    # property of the file, so setting it once persists; ":memory:" answers "memory".
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at REAL)")
    if _pending(db):
        # IMMEDIATE takes the write lock before we re-read what has run, so two processes
        # opening a fresh file at once cannot both apply the same migration.
        db.execute("BEGIN IMMEDIATE")
        try:
            for name, fn in _pending(db):
                fn(db)
                db.execute(
                    "INSERT INTO _migrations (name, applied_at) VALUES (?, ?)", (name, time.time())
                )
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")


def applied(db: sqlite3.Connection) -> list[str]:
    return [row[0] for row in db.execute("SELECT name FROM _migrations ORDER BY rowid")]


def _pending(db: sqlite3.Connection) -> list[tuple[str, Migration]]:
    done = set(applied(db))
    return [(name, fn) for name, fn in MIGRATIONS if name not in done]


@migration
def m001_requests(db: sqlite3.Connection) -> None:
    # One column per Record field. ``id`` is deliberately not unique: it may come from a
    # client header, and two requests sharing an id are still two requests to record.
    db.execute(
        """
        CREATE TABLE requests (
            id TEXT NOT NULL,
            started_at REAL NOT NULL,
            route TEXT NOT NULL,
            method TEXT NOT NULL,
            api TEXT NOT NULL,
            model TEXT,
            upstream TEXT,
            stream INTEGER NOT NULL,
            client TEXT,
            ended_at REAL,
            outcome TEXT NOT NULL,
            status INTEGER NOT NULL,
            ttft_ms REAL,
            duration_ms REAL,
            input_tokens INTEGER,
            output_tokens INTEGER,
            usage_source TEXT,
            chunks INTEGER NOT NULL,
            error TEXT,
            prompt TEXT,
            response TEXT
        )
        """
    )
    db.execute("CREATE INDEX requests_started_at ON requests (started_at)")
    db.execute("CREATE INDEX requests_model ON requests (model)")
    db.execute("CREATE INDEX requests_outcome ON requests (outcome)")
    db.execute("CREATE INDEX requests_id ON requests (id)")


@migration
def m002_policy_columns(db: sqlite3.Connection) -> None:
    # Who asked (the virtual key), what it cost, how the cache answered, and how many
    # upstream attempts routing made.
    db.execute("ALTER TABLE requests ADD COLUMN key_id TEXT")
    db.execute("ALTER TABLE requests ADD COLUMN cost_usd REAL")
    db.execute("ALTER TABLE requests ADD COLUMN cache TEXT")
    db.execute("ALTER TABLE requests ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0")
    db.execute("CREATE INDEX requests_key_id ON requests (key_id)")


@migration
def m003_keys(db: sqlite3.Connection) -> None:
    # Virtual keys. Only a hash of each key is kept, and a short prefix to tell keys
    # apart in listings; ``models`` is a JSON list (NULL: every model).
    db.execute(
        """
        CREATE TABLE keys (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            hash TEXT NOT NULL UNIQUE,
            prefix TEXT NOT NULL,
            models TEXT,
            rpm INTEGER,
            tpm INTEGER,
            budget_usd REAL,
            expires_at REAL,
            created_at REAL NOT NULL,
            revoked_at REAL
        )
        """
    )


@migration
def m004_responses(db: sqlite3.Connection) -> None:
    # Stored responses of the OpenAI Responses API (store: true), so that any instance on
    # this database can retrieve one or continue its conversation. ``previous_response_id``
    # links a response to the one it continues; the JSON columns hold the input items as
    # given, the output items, usage and error, and ``body`` the Response object's other
    # fields (tools, tool_choice, sampling, metadata, ...).
    db.execute(
        """
        CREATE TABLE responses (
            id TEXT PRIMARY KEY,
            created_at REAL NOT NULL,
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
        """
    )
    db.execute("CREATE INDEX responses_created_at ON responses (created_at)")


@migration
def m005_key_admin(db: sqlite3.Connection) -> None:
    # An admin key may sign in to the console, as the master key does.
    db.execute("ALTER TABLE keys ADD COLUMN admin INTEGER NOT NULL DEFAULT 0")


@migration
def m006_request_timeline(db: sqlite3.Connection) -> None:
    # When each batch of a stream arrived (store/timeline.py): a few KB at most.
    db.execute("ALTER TABLE requests ADD COLUMN timeline BLOB")


@migration
def m007_console_indexes(db: sqlite3.Connection) -> None:
    # The console pages records newest first, filtered by model, key or outcome: with
    # the time after the filter column, a page is read from the index in order instead
    # of sorting every match. Rebuilt under the same names, so the writer maintains as
    # many indexes as before (each record written costs the same).
    for name, column in (
        ("requests_model", "model"),
        ("requests_key_id", "key_id"),
        ("requests_outcome", "outcome"),
    ):
        db.execute(f"DROP INDEX IF EXISTS {name}")
        db.execute(f"CREATE INDEX {name} ON requests ({column}, started_at)")


@migration
def m008_console_sessions(db: sqlite3.Connection) -> None:
    # Console sign-ins. Only a hash of the session cookie is kept; ``who`` is the key id
    # (``master`` for the master key, with ``master_digest`` naming which master key, so
    # that changing it ends those sessions), ``csrf`` the token every change must carry.
    db.execute(
        """
        CREATE TABLE console_sessions (
            hash TEXT PRIMARY KEY,
            who TEXT NOT NULL,
            master_digest TEXT,
            csrf TEXT NOT NULL,
            created_at REAL NOT NULL,
            expires_at REAL NOT NULL
        )
        """
    )
    db.execute("CREATE INDEX console_sessions_expires_at ON console_sessions (expires_at)")


@migration
def m009_outcome_columns(db: sqlite3.Connection) -> None:
    # What the answer was (operation, provider, response model and id, finish reasons),
    # how a failure is classed, and how often routing fell back: what metrics, traces
    # and ``sluice stats`` read.
    for column in (
        "operation TEXT",
        "provider TEXT",
        "response_model TEXT",
        "response_id TEXT",
        "finish_reasons TEXT",
        "error_type TEXT",
        "fallbacks INTEGER NOT NULL DEFAULT 0",
    ):
        db.execute(f"ALTER TABLE requests ADD COLUMN {column}")


@migration
def m010_resumes(db: sqlite3.Connection) -> None:
    # How many times a client resumed a generation's stream (background responses,
    # resumable chat, the UI stream's resume).
    db.execute("ALTER TABLE requests ADD COLUMN resumes INTEGER NOT NULL DEFAULT 0")
