"""Stored responses of the OpenAI Responses API, in the record database (table
``responses``), so that any instance on that database retrieves a response or continues
its conversation: the ``ResponseStore`` protocol and the SQLite store (PostgreSQL:
store/postgres_responses.py).

A response is stored once it ended, before its last event reaches the client: a client
that continues at once, on any instance, finds it. What is stored is the Response
object as the client saw it last, the input items of its request as given, and the key
that made it. Every call runs SQLite in a worker thread; a database that cannot be read
or written raises ``ServiceUnavailable``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import orjson

from sluice.errors import ServiceUnavailable
from sluice.store.migrations import migrate

__all__ = [
    "SELECT",
    "ResponseStore",
    "SQLiteResponseStore",
    "StoredResponse",
    "from_row",
    "to_row",
]

T = TypeVar("T")

#: Response fields that have a column of their own; the others are kept in ``body``.
_COLUMNS = ("id", "created_at", "model", "status", "previous_response_id", "instructions")
_JSON_COLUMNS = ("output", "usage", "error")
SELECT = (
    "SELECT id, created_at, model, status, previous_response_id, instructions, output,"
    " usage, error, body, input_items, key_id FROM responses"
)


@dataclass(slots=True)
class StoredResponse:
    #: The Response object as served (``id``, ``status``, ``output``, ``usage``, ...).
    response: dict[str, Any]
    #: The request's input items, in their listed shape, each with an ``id``.
    input_items: list[dict[str, Any]]
    #: The key that made it (None when authentication was off).
    key_id: str | None = None

    @property
    def id(self) -> str:
        return str(self.response["id"])

    @property
    def previous_response_id(self) -> str | None:
        value = self.response.get("previous_response_id")
        return value if isinstance(value, str) else None


class ResponseStore(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def put(self, stored: StoredResponse) -> None:
        """Store (or replace) a response."""
        ...

    async def get(self, response_id: str) -> StoredResponse | None: ...

    async def chain(self, response_id: str, limit: int) -> list[StoredResponse]:
        """The response and those it continues, newest first, at most ``limit``; it stops
        early where one is missing (then the last has a ``previous_response_id``)."""
        ...

    async def delete(self, response_id: str) -> bool:
        """Whether there was such a response."""
        ...


def _json(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


def to_row(stored: StoredResponse) -> tuple[Any, ...]:
    response = stored.response
    body = {k: v for k, v in response.items() if k not in _COLUMNS and k not in _JSON_COLUMNS}
    return (
        response["id"],
        response["created_at"],
        response["model"],
        response["status"],
        stored.key_id,
        response.get("previous_response_id"),
        _json(response.get("instructions")),
        _json(stored.input_items),
        _json(response.get("output") or []),
        _json(response.get("usage")),
        _json(response.get("error")),
        _json(body),
    )


def from_row(row: tuple[Any, ...]) -> StoredResponse:
    (id_, created_at, model, status, previous, instructions, output, usage, error, body) = row[:10]
    response: dict[str, Any] = {
        "id": id_,
        "object": "response",
        "created_at": int(created_at),
        "status": status,
    }
    response.update(orjson.loads(body))
    response.update(
        model=model,
        previous_response_id=previous,
        instructions=orjson.loads(instructions) if instructions is not None else None,
        output=orjson.loads(output),
        error=orjson.loads(error) if error is not None else None,
    )
    if usage is not None:
        response["usage"] = orjson.loads(usage)
    return StoredResponse(response, orjson.loads(row[10]), row[11])


class SQLiteResponseStore:
    """Responses in the SQLite file that holds the records (``":memory:"`` for tests)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None

    async def start(self) -> None:
        # Opened on first use: a database that cannot be opened yet fails the requests
        # that need it, not the start.
        return None

    async def close(self) -> None:
        await asyncio.to_thread(self._close)

    async def put(self, stored: StoredResponse) -> None:
        row = to_row(stored)

        def write(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT OR REPLACE INTO responses (id, created_at, model, status, key_id,"
                " previous_response_id, instructions, input_items, output, usage, error, body)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                row,
            )

        await self._call(write)

    async def get(self, response_id: str) -> StoredResponse | None:
        found = await self.chain(response_id, 1)
        return found[0] if found else None

    async def chain(self, response_id: str, limit: int) -> list[StoredResponse]:
        def read(db: sqlite3.Connection) -> list[StoredResponse]:
            found: list[StoredResponse] = []
            next_id: str | None = response_id
            seen: set[str] = set()
            while next_id is not None and len(found) < limit and next_id not in seen:
                seen.add(next_id)
                row = db.execute(f"{SELECT} WHERE id = ?", (next_id,)).fetchone()
                if row is None:
                    break
                stored = from_row(row)
                found.append(stored)
                next_id = stored.previous_response_id
            return found

        return await self._call(read)

    async def delete(self, response_id: str) -> bool:
        def remove(db: sqlite3.Connection) -> bool:
            return db.execute("DELETE FROM responses WHERE id = ?", (response_id,)).rowcount > 0

        return await self._call(remove)

    # -- the worker thread ---------------------------------------------------------------

    async def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return await asyncio.to_thread(self._run, fn)
        except (sqlite3.Error, OSError) as exc:
            raise ServiceUnavailable(
                f"the response store cannot be used now ({type(exc).__name__}: {exc})"
            ) from exc

    def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            if self._db is None:
                self._db = self._connect()
            try:
                return fn(self._db)
            except sqlite3.OperationalError:
                # The file may have been replaced or the disk remounted: reopen next time.
                self._close_locked()
                raise

    def _connect(self) -> sqlite3.Connection:
        if self.path != ":memory:":
            parent = os.path.dirname(self.path)
            if parent:
                os.makedirs(parent, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=5.0, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA synchronous=NORMAL")
            migrate(db)
        except BaseException:
            db.close()
            raise
        return db

    def _close(self) -> None:
        with self._lock:
            self._close_locked()

    def _close_locked(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            with contextlib.suppress(sqlite3.Error):
                db.close()
