"""Virtual keys in the SQLite database that holds the records (table ``keys``).

A key is ``sk-sluice-`` and 32 random bytes (URL-safe base64). Only its SHA-256 is
stored, with a short prefix to tell keys apart in listings: keys are long random
tokens, so a plain hash is as strong as a slow one here, and lookups stay cheap.

Two faces. The command line uses the blocking methods (``create``, ``rows``,
``revoke``). The gateway uses the async ones (``lookup``, ``any_keys``, ``spend``),
which run SQLite in a worker thread and cache answers for ``cache_ttl`` seconds: a key
revoked by any process sharing the database is refused everywhere within
``cache_ttl`` (plus the time of one lookup).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from sluice.store import VirtualKey
from sluice.store.migrations import migrate

__all__ = ["KEY_PREFIX", "KeyRow", "KeyStore", "hash_key", "new_key", "shown"]

KEY_PREFIX = "sk-sluice-"
#: Characters of a key kept for display: the fixed prefix and 4 random characters.
_SHOWN = len(KEY_PREFIX) + 4
_MAX_CACHED = 10_000

_KEY_COLUMNS = "id, name, models, rpm, tpm, budget_usd, expires_at, revoked_at, created_at, admin"

T = TypeVar("T")


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def shown(key: str) -> str:
    """The part of a key that listings show: the fixed prefix and 4 random characters."""
    return key[:_SHOWN]


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True, slots=True)
class KeyRow:
    """A key as listings show it: never the key itself."""

    key: VirtualKey
    prefix: str
    revoked_at: float | None
    spend_usd: float

    def as_dict(self) -> dict[str, Any]:
        k = self.key
        return {
            "id": k.id,
            "name": k.name,
            "prefix": self.prefix,
            "models": list(k.models),
            "rpm": k.rpm,
            "tpm": k.tpm,
            "budget_usd": k.budget_usd,
            "spend_usd": self.spend_usd,
            "expires_at": k.expires_at,
            "created_at": k.created_at,
            "revoked": k.revoked,
            "revoked_at": self.revoked_at,
            "admin": k.admin,
        }


def _key(row: Sequence[Any]) -> VirtualKey:
    id_, name, models, rpm, tpm, budget, expires_at, revoked_at, created_at, admin = row
    return VirtualKey(
        id=id_,
        name=name,
        models=tuple(json.loads(models)) if models else (),
        rpm=rpm,
        tpm=tpm,
        budget_usd=budget,
        expires_at=expires_at,
        revoked=revoked_at is not None,
        created_at=created_at,
        admin=bool(admin),
    )


class KeyStore:
    def __init__(self, path: str, cache_ttl: float = 2.0) -> None:
        self.path = path
        self.cache_ttl = cache_ttl
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        # Touched only on the event loop: hash → (monotonic deadline, key or None).
        self._cache: dict[str, tuple[float, VirtualKey | None]] = {}
        self._inflight: dict[str, asyncio.Task[VirtualKey | None]] = {}
        self._any: tuple[float, bool] = (0.0, False)

    # -- the command line (blocking) ----------------------------------------------------

    def create(
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
        """A new key: the secret (shown once, never stored) and what is stored of it."""
        secret = new_key()
        key = VirtualKey(
            id="key_" + secrets.token_hex(6),
            name=name,
            models=tuple(models),
            rpm=rpm,
            tpm=tpm,
            budget_usd=budget_usd,
            expires_at=expires_at,
            created_at=time.time(),
            admin=admin,
        )
        row = (
            key.id,
            key.name,
            hash_key(secret),
            shown(secret),
            json.dumps(list(key.models)) if key.models else None,
            key.rpm,
            key.tpm,
            key.budget_usd,
            key.expires_at,
            key.created_at,
            int(key.admin),
        )
        self._run(
            lambda db: db.execute(
                "INSERT INTO keys (id, name, hash, prefix, models, rpm, tpm, budget_usd,"
                " expires_at, created_at, admin) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                row,
            )
        )
        return secret, key

    def rows(self) -> list[KeyRow]:
        def read(db: sqlite3.Connection) -> list[KeyRow]:
            spend = dict(
                db.execute(
                    "SELECT key_id, SUM(cost_usd) FROM requests"
                    " WHERE key_id IS NOT NULL GROUP BY key_id"
                ).fetchall()
            )
            query = f"SELECT {_KEY_COLUMNS}, prefix FROM keys ORDER BY created_at, id"
            return [
                KeyRow(_key(row[:-1]), row[-1], row[7], float(spend.get(row[0]) or 0.0))
                for row in db.execute(query)
            ]

        return self._run(read)

    def get(self, key_id: str) -> VirtualKey | None:
        row = self._run(
            lambda db: db.execute(
                f"SELECT {_KEY_COLUMNS} FROM keys WHERE id = ?", (key_id,)
            ).fetchone()
        )
        return None if row is None else _key(row)

    def set_limits(
        self,
        key_id: str,
        *,
        models: Sequence[str] = (),
        rpm: int | None = None,
        tpm: int | None = None,
        budget_usd: float | None = None,
    ) -> VirtualKey | None:
        """Replace the key's models and limits; None if there is no such key. Gateways
        see the change within ``cache_ttl``, as they see a revocation."""
        self._run(
            lambda db: db.execute(
                "UPDATE keys SET models = ?, rpm = ?, tpm = ?, budget_usd = ? WHERE id = ?",
                (json.dumps(list(models)) if models else None, rpm, tpm, budget_usd, key_id),
            )
        )
        return self.get(key_id)

    def revoke(self, key_id: str) -> VirtualKey | None:
        """Revoke the key; None if there is no such key. Revoking twice keeps the first time."""
        self._run(
            lambda db: db.execute(
                "UPDATE keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                (time.time(), key_id),
            )
        )
        return self.get(key_id)

    def count(self) -> int:
        """How many keys exist (revoked ones too). Does not create the database."""
        if self.path != ":memory:" and not os.path.exists(self.path):
            return 0
        return int(self._run(lambda db: db.execute("SELECT COUNT(*) FROM keys").fetchone()[0]))

    def spend_sync(self, key_id: str) -> float:
        row = self._run(
            lambda db: db.execute(
                "SELECT SUM(cost_usd) FROM requests WHERE key_id = ?", (key_id,)
            ).fetchone()
        )
        return float(row[0] or 0.0)

    def close(self) -> None:
        with self._lock:
            db, self._db = self._db, None
            if db is not None:
                with contextlib.suppress(sqlite3.Error):
                    db.close()

    # -- the gateway (async, cached) ----------------------------------------------------

    async def lookup(self, secret: str) -> VirtualKey | None:
        """The key with this secret, revoked and expired ones included; None if unknown."""
        digest = hash_key(secret)
        cached = self._cache.get(digest)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        # One read per key at a time, in a task of its own, so that a caller cancelled
        # meanwhile (its client left) does not fail the others waiting for it.
        task = self._inflight.get(digest)
        if task is None:
            task = asyncio.create_task(self._load(digest))
            self._inflight[digest] = task
            task.add_done_callback(lambda done: self._settled(digest, done))
        return await asyncio.shield(task)

    async def any_keys(self) -> bool:
        """Whether any key exists. Keys are never deleted, so True is kept for good."""
        deadline, found = self._any
        if found or deadline > time.monotonic():
            return found
        found = await asyncio.to_thread(self.count) > 0
        self._any = (time.monotonic() + self.cache_ttl, found)
        return found

    async def spend(self, key_id: str) -> float:
        """The key's spend according to the records written so far."""
        return await asyncio.to_thread(self.spend_sync, key_id)

    async def _load(self, digest: str) -> VirtualKey | None:
        key = await asyncio.to_thread(self._by_hash, digest)
        now = time.monotonic()
        if len(self._cache) >= _MAX_CACHED:
            self._prune(now)
        self._cache[digest] = (now + self.cache_ttl, key)
        return key

    def _settled(self, digest: str, task: asyncio.Task[VirtualKey | None]) -> None:
        self._inflight.pop(digest, None)
        if not task.cancelled():
            task.exception()  # retrieved: the callers that still wait re-raise it

    def _prune(self, now: float) -> None:
        expired = [digest for digest, (deadline, _) in self._cache.items() if deadline <= now]
        for digest in expired:
            del self._cache[digest]
        # Still full (a flood of distinct keys): drop the oldest half.
        if len(self._cache) >= _MAX_CACHED:
            for digest in list(self._cache)[: _MAX_CACHED // 2]:
                del self._cache[digest]

    def _by_hash(self, digest: str) -> VirtualKey | None:
        row = self._run(
            lambda db: db.execute(
                f"SELECT {_KEY_COLUMNS} FROM keys WHERE hash = ?", (digest,)
            ).fetchone()
        )
        return None if row is None else _key(row)

    # -- the connection ------------------------------------------------------------------

    def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            if self._db is None:
                self._db = self._connect()
            try:
                return fn(self._db)
            except sqlite3.OperationalError:
                # The file may have been replaced or the disk remounted: reopen next time.
                db, self._db = self._db, None
                with contextlib.suppress(sqlite3.Error):
                    db.close()
                raise

    def _connect(self) -> sqlite3.Connection:
        if self.path != ":memory:":
            parent = os.path.dirname(self.path)
            if parent:
                os.makedirs(parent, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=5.0, isolation_level=None, check_same_thread=False)
        try:
            migrate(db)
        except BaseException:
            db.close()
            raise
        return db
