"""PostgreSQL: one ``asyncpg`` pool for every store on a database (records, keys, stored
responses, console sign-ins and reads), opened on first use and brought up to date by
the migrations (store/postgres_migrations.py) under an advisory lock.

A database that cannot be reached is not an error at start: each use tries again, and
fails with ``StoreError``, the cause kept. The URL's password never leaves this module:
messages name the database by ``redact(url)`` and are scrubbed of the password.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import unquote, urlsplit, urlunsplit

import asyncpg

from sluice.store import StoreError
from sluice.store.postgres_migrations import migrate

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    #: A connection of the pool, as stores use it.
    Connection = PoolConnectionProxy[asyncpg.Record]
else:
    Connection = asyncpg.Connection

__all__ = ["SCHEMES", "Connection", "Postgres", "is_postgres", "redact"]

SCHEMES = ("postgresql", "postgres")

T = TypeVar("T")

#: The database's fault, not the query's: unreachable, restarting, too slow, broken.
FAULTS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)


def is_postgres(location: str) -> bool:
    """Whether a record database location is a PostgreSQL URL (else a SQLite path)."""
    scheme, sep, _ = location.partition("://")
    return bool(sep) and scheme.lower() in SCHEMES


def _password(url: str) -> str | None:
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return None
    if password is None:
        found = re.search(r"(?:^|&)password=([^&]*)", parts.query)
        password = unquote(found.group(1)) if found else None
    return password or None


def redact(url: str) -> str:
    """The URL with its password (in the user part or the query) replaced by ``***``."""
    try:
        parts = urlsplit(url)
        has_password = parts.password is not None
    except ValueError:
        return "postgresql://***"
    netloc = parts.netloc
    if has_password:
        userinfo, _, host = netloc.rpartition("@")
        netloc = f"{userinfo.partition(':')[0]}:***@{host}"
    query = re.sub(r"((?:^|&)password=)[^&]*", r"\1***", parts.query)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


class Postgres:
    """The pool of one database, shared by its stores. See the module docstring."""

    def __init__(
        self,
        url: str,
        *,
        max_size: int = 10,
        connect_timeout: float = 5.0,
        command_timeout: float = 15.0,
    ) -> None:
        if not is_postgres(url):
            raise ValueError("expected a postgresql:// URL")
        self._url = url
        self._password = _password(url)
        self.where = redact(url)
        self.max_size = max_size
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self._pool: asyncpg.Pool | None = None
        self._opening: asyncio.Lock | None = None
        self._closed = False
        #: Migrations this process applied (by name), for ``sluice db migrate``.
        self.applied: list[str] = []

    def error(self, exc: BaseException, doing: str = "use") -> StoreError:
        """``StoreError`` for a failure of the database, without the password."""
        detail = str(exc) or type(exc).__name__
        if self._password:
            detail = detail.replace(self._password, "***")
        return StoreError(
            f"cannot {doing} the database {self.where}: {type(exc).__name__}: {detail}"
        )

    async def pool(self) -> asyncpg.Pool:
        """The pool, opened (and the schema migrated) on first use; ``StoreError`` when
        the database cannot be reached now."""
        if self._pool is not None:
            return self._pool
        if self._closed:
            raise StoreError(f"the database {self.where} is closed")
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self._pool is None:
                self._pool = await self._open()
        return self._pool

    async def _open(self) -> asyncpg.Pool:
        try:
            pool = await asyncpg.create_pool(
                self._url,
                min_size=1,
                max_size=self.max_size,
                timeout=self.connect_timeout,
                command_timeout=self.command_timeout,
                server_settings={"application_name": "sluice"},
            )
        except FAULTS as exc:
            raise self.error(exc, "connect to") from exc
        except ValueError as exc:  # a malformed URL: its text may show the password
            raise self.error(exc, "connect to") from None
        try:
            async with pool.acquire(timeout=self.connect_timeout) as conn:
                self.applied += await migrate(conn)
        except FAULTS as exc:
            pool.terminate()
            raise self.error(exc, "migrate") from exc
        return pool

    async def run(self, fn: Callable[[Connection], Awaitable[T]]) -> T:
        """``fn`` on a connection of the pool; failures of the database as ``StoreError``."""
        pool = await self.pool()
        try:
            async with pool.acquire(timeout=self.connect_timeout) as conn:
                return await fn(conn)
        except FAULTS as exc:
            raise self.error(exc) from exc

    async def close(self) -> None:
        self._closed = True
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            async with asyncio.timeout(5):
                await pool.close()
        except (*FAULTS, TimeoutError):
            pool.terminate()
