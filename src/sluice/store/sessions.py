"""Console sign-ins, in the record database (table ``console_sessions``): the
``SessionStore`` protocol and the SQLite store (PostgreSQL: store/postgres_sessions.py).

The cookie holds a random token; only its SHA-256 is stored, with who signed in, the
CSRF token every change must carry, and when the session ends. Every instance and
worker on the database sees the same sessions, and a sign-out anywhere ends one
everywhere. A session of a key lasts only while that key is an admin key, neither
revoked nor expired; one of the master key, only while the master key is the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from sluice.store.migrations import migrate

__all__ = ["SQLiteSessionStore", "Session", "SessionStore", "hash_token", "live"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Session:
    #: The key id (``master`` for the master key, ``open`` on a gateway without keys).
    who: str
    csrf: str
    expires_at: float


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def new_session(who: str, ttl: float) -> tuple[str, Session]:
    return secrets.token_urlsafe(32), Session(who, secrets.token_urlsafe(32), time.time() + ttl)


def live(
    row: tuple[str, str, str | None, float, object] | None, master: str | None
) -> Session | None:
    """The session of a row (who, csrf, master digest, expires at, whether its key is a
    live admin key), or None if it no longer stands."""
    if row is None:
        return None
    who, csrf, digest, expires_at, admin = row
    if who == "master":
        if master is None or digest is None or not secrets.compare_digest(digest, master):
            return None
    elif who != "open" and not admin:
        return None
    return Session(who, csrf, expires_at)


class SessionStore(Protocol):
    async def create(self, who: str, master: str | None, ttl: float) -> tuple[str, Session]:
        """A new session: the cookie's token (never stored) and the session."""
        ...

    async def get(self, token: str, master: str | None) -> Session | None:
        """The live session of ``token``, or None: unknown, expired, signed out, or its
        key no longer an admin key (revoked, expired, or another master key)."""
        ...

    async def delete(self, token: str) -> None: ...

    async def close(self) -> None: ...


class SQLiteSessionStore:
    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None

    async def create(self, who: str, master: str | None, ttl: float) -> tuple[str, Session]:
        """A new session: the cookie's token (never stored) and the session."""
        token, session = new_session(who, ttl)

        def insert(db: sqlite3.Connection) -> None:
            now = time.time()
            db.execute("DELETE FROM console_sessions WHERE expires_at <= ?", (now,))
            db.execute(
                "INSERT INTO console_sessions (hash, who, master_digest, csrf, created_at,"
                " expires_at) VALUES (?, ?, ?, ?, ?, ?)",
                (hash_token(token), who, master, session.csrf, now, session.expires_at),
            )

        await asyncio.to_thread(self._run, insert)
        return token, session

    async def get(self, token: str, master: str | None) -> Session | None:
        """The live session of ``token``, or None: unknown, expired, signed out, or its
        key no longer an admin key (revoked, expired, or another master key)."""

        def read(db: sqlite3.Connection) -> tuple[str, str, str | None, float, int | None] | None:
            row = db.execute(
                "SELECT s.who, s.csrf, s.master_digest, s.expires_at, k.admin"
                " FROM console_sessions s LEFT JOIN keys k ON k.id = s.who"
                " AND k.revoked_at IS NULL AND (k.expires_at IS NULL OR k.expires_at > ?)"
                " WHERE s.hash = ? AND s.expires_at > ?",
                (time.time(), hash_token(token), time.time()),
            ).fetchone()
            return None if row is None else (row[0], row[1], row[2], row[3], row[4])

        return live(await asyncio.to_thread(self._run, read), master)

    async def delete(self, token: str) -> None:
        await asyncio.to_thread(
            self._run,
            lambda db: db.execute(
                "DELETE FROM console_sessions WHERE hash = ?", (hash_token(token),)
            ),
        )

    async def close(self) -> None:
        await asyncio.to_thread(self._close)

    def _close(self) -> None:
        with self._lock:
            db, self._db = self._db, None
            if db is not None:
                with contextlib.suppress(sqlite3.Error):
                    db.close()

    def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            if self._db is None:
                if self.path != ":memory:":
                    parent = os.path.dirname(self.path)
                    if parent:
                        os.makedirs(parent, exist_ok=True)
                db = sqlite3.connect(
                    self.path, timeout=5.0, isolation_level=None, check_same_thread=False
                )
                try:
                    migrate(db)
                except BaseException:
                    db.close()
                    raise
                self._db = db
            try:
                return fn(self._db)
            except sqlite3.OperationalError:
                db, self._db = self._db, None
                with contextlib.suppress(sqlite3.Error):
                    db.close()
                raise
