"""Virtual keys in the database that holds the records (table ``keys``): the
``KeyStore`` protocol, the lookup cache every backend shares, and the SQLite store
(PostgreSQL: store/postgres_keys.py).

A key is ``sk-sluice-`` and 32 random bytes (URL-safe base64). Only its SHA-256 is
stored, with a short prefix to tell keys apart in listings: keys are long random
tokens, so a plain hash is as strong as a slow one here, and lookups stay cheap.

The command line and the console manage keys (``create``, ``rows``, ``revoke``, ...).
The gateway looks them up (``lookup``, ``any_keys``, ``spend``), and answers are cached
for ``cache_ttl`` seconds: a key revoked by any process sharing the database is refused
everywhere within ``cache_ttl`` (plus the time of one lookup). While the database cannot
be read, a key seen before keeps its last answer; an unknown one is refused
(``ServiceUnavailable``). Every failure of the database is ``StoreError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from sluice.errors import ServiceUnavailable
from sluice.store import StoreError, VirtualKey
from sluice.store.migrations import migrate

__all__ = [
    "KEY_COLUMNS",
    "KEY_PREFIX",
    "CachedKeys",
    "KeyRow",
    "KeyStore",
    "SQLiteKeyStore",
    "hash_key",
    "make_key",
    "models_json",
    "new_key",
    "shown",
    "to_key",
]

log = logging.getLogger("sluice.store")

KEY_PREFIX = "sk-sluice-"
#: Characters of a key kept for display: the fixed prefix and 4 random characters.
_SHOWN = len(KEY_PREFIX) + 4
_MAX_CACHED = 10_000

KEY_COLUMNS = "id, name, models, rpm, tpm, budget_usd, expires_at, revoked_at, created_at, admin"

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


def make_key(
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
    return secret, key


def models_json(models: Sequence[str]) -> str | None:
    return json.dumps(list(models)) if models else None


def to_key(row: Sequence[Any]) -> VirtualKey:
    """A key from the columns of ``KEY_COLUMNS``."""
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


class KeyStore(Protocol):
    """Where keys live. Every method raises ``StoreError`` when the database cannot be
    used, except ``lookup`` and ``any_keys`` (see the module docstring)."""

    #: Names the database in messages (a path, or a URL without its password).
    where: str
    cache_ttl: float

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
        """A new key: the secret (shown once, never stored) and what is stored of it."""
        ...

    async def rows(self) -> list[KeyRow]: ...

    async def get(self, key_id: str) -> VirtualKey | None: ...

    async def set_limits(
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
        ...

    async def revoke(self, key_id: str) -> VirtualKey | None:
        """Revoke the key; None if there is no such key. Revoking twice keeps the first time."""
        ...

    async def count(self) -> int:
        """How many keys exist (revoked ones too)."""
        ...

    async def spend(self, key_id: str) -> float:
        """The key's spend according to the records written so far."""
        ...

    async def lookup(self, secret: str) -> VirtualKey | None:
        """The key with this secret, revoked and expired ones included; None if unknown."""
        ...

    async def any_keys(self) -> bool:
        """Whether any key exists."""
        ...

    async def close(self) -> None: ...


class CachedKeys:
    """``lookup`` and ``any_keys`` with the cache, over a backend's ``by_hash`` and
    ``count``."""

    def __init__(self, cache_ttl: float) -> None:
        self.cache_ttl = cache_ttl
        # Touched only on the event loop: hash → (monotonic deadline, key or None).
        self._cache: dict[str, tuple[float, VirtualKey | None]] = {}
        self._inflight: dict[str, asyncio.Task[VirtualKey | None]] = {}
        self._any: tuple[float, bool] = (0.0, False)
        self._known_any: bool | None = None
        self._failing = False

    async def by_hash(self, digest: str) -> VirtualKey | None:
        raise NotImplementedError

    async def count(self) -> int:
        raise NotImplementedError

    async def lookup(self, secret: str) -> VirtualKey | None:
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
        """Keys are never deleted, so True is kept for good. While the database cannot
        be read, the last answer stands, and True (keys required) without one."""
        deadline, found = self._any
        if found or deadline > time.monotonic():
            return found
        try:
            found = await self.count() > 0
        except StoreError as exc:
            self._lost(exc)
            if self._known_any is None:
                return True
            # Known to be False (True is kept for good): asked again once per cache time.
            self._any = (time.monotonic() + self.cache_ttl, False)
            return False
        self._back()
        self._known_any = found
        self._any = (time.monotonic() + self.cache_ttl, found)
        return found

    async def _load(self, digest: str) -> VirtualKey | None:
        try:
            key = await self.by_hash(digest)
        except StoreError as exc:
            self._lost(exc)
            stale = self._cache.get(digest)
            if stale is not None:
                # The last answer stands until the database is back, asked again only
                # once per cache time, so that requests do not each wait on it.
                self._cache[digest] = (time.monotonic() + self.cache_ttl, stale[1])
                return stale[1]
            raise ServiceUnavailable("API keys cannot be checked now; try again") from exc
        self._back()
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

    def _lost(self, exc: StoreError) -> None:
        if not self._failing:
            self._failing = True
            log.error("keys: %s; keys seen before keep their last answer", exc)

    def _back(self) -> None:
        if self._failing:
            self._failing = False
            log.warning("keys: reading keys from the database again")


class SQLiteKeyStore(CachedKeys):
    """Keys in the SQLite file that holds the records; blocking calls run in a worker
    thread, on one connection."""

    def __init__(self, path: str, cache_ttl: float = 2.0) -> None:
        super().__init__(cache_ttl)
        self.path = path
        self.where = path
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None

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
        row = (
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
            int(key.admin),
        )
        await self._call(
            lambda db: db.execute(
                "INSERT INTO keys (id, name, hash, prefix, models, rpm, tpm, budget_usd,"
                " expires_at, created_at, admin) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                row,
            )
        )
        return secret, key

    async def rows(self) -> list[KeyRow]:
        def read(db: sqlite3.Connection) -> list[KeyRow]:
            spend = dict(
                db.execute(
                    "SELECT key_id, SUM(cost_usd) FROM requests"
                    " WHERE key_id IS NOT NULL GROUP BY key_id"
                ).fetchall()
            )
            query = f"SELECT {KEY_COLUMNS}, prefix FROM keys ORDER BY created_at, id"
            return [
                KeyRow(to_key(row[:-1]), row[-1], row[7], float(spend.get(row[0]) or 0.0))
                for row in db.execute(query)
            ]

        return await self._call(read)

    async def get(self, key_id: str) -> VirtualKey | None:
        row = await self._call(
            lambda db: db.execute(
                f"SELECT {KEY_COLUMNS} FROM keys WHERE id = ?", (key_id,)
            ).fetchone()
        )
        return None if row is None else to_key(row)

    async def set_limits(
        self,
        key_id: str,
        *,
        models: Sequence[str] = (),
        rpm: int | None = None,
        tpm: int | None = None,
        budget_usd: float | None = None,
    ) -> VirtualKey | None:
        await self._call(
            lambda db: db.execute(
                "UPDATE keys SET models = ?, rpm = ?, tpm = ?, budget_usd = ? WHERE id = ?",
                (models_json(models), rpm, tpm, budget_usd, key_id),
            )
        )
        return await self.get(key_id)

    async def revoke(self, key_id: str) -> VirtualKey | None:
        await self._call(
            lambda db: db.execute(
                "UPDATE keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                (time.time(), key_id),
            )
        )
        return await self.get(key_id)

    async def count(self) -> int:
        """Does not create the database."""
        if self.path != ":memory:" and not await asyncio.to_thread(os.path.exists, self.path):
            return 0
        return int(
            await self._call(lambda db: db.execute("SELECT COUNT(*) FROM keys").fetchone()[0])
        )

    async def spend(self, key_id: str) -> float:
        row = await self._call(
            lambda db: db.execute(
                "SELECT SUM(cost_usd) FROM requests WHERE key_id = ?", (key_id,)
            ).fetchone()
        )
        return float(row[0] or 0.0)

    async def by_hash(self, digest: str) -> VirtualKey | None:
        row = await self._call(
            lambda db: db.execute(
                f"SELECT {KEY_COLUMNS} FROM keys WHERE hash = ?", (digest,)
            ).fetchone()
        )
        return None if row is None else to_key(row)

    async def close(self) -> None:
        await asyncio.to_thread(self._close)

    def _close(self) -> None:
        with self._lock:
            db, self._db = self._db, None
            if db is not None:
                with contextlib.suppress(sqlite3.Error):
                    db.close()

    # -- the connection ------------------------------------------------------------------

    async def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return await asyncio.to_thread(self._run, fn)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(
                f"cannot use the key database {self.path}: {type(exc).__name__}: {exc}"
            ) from exc

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
