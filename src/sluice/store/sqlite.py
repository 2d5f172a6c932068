"""The SQLite record store: the embedded default for the request log.

``add`` runs on the request path, so it only appends to an in-memory buffer. A background
task writes the buffer in batches from a worker thread, through one connection that only
one thread uses at a time. When the database cannot be written (disk full, locked, file or
directory removed), the records stay in the buffer and the next round retries; the buffer
is bounded, and past the bound the oldest records are dropped and counted. Failures are
logged once per episode, without record contents, on the ``sluice.store`` logger.

Records still unwritten when the store closes (the database is locked by another
process, say) go to a spill file (store/spill.py) when a spill directory is given; the
next store to start on that directory writes them back.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import operator
import os
import sqlite3
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from typing import Any, TypedDict, TypeVar

from sluice.store import Record
from sluice.store.analytics import SUMMARY_COLUMNS, Grouping, RecordQuery, Summary, summarise
from sluice.store.migrations import migrate
from sluice.store.spill import Spill

__all__ = ["MAX_PENDING", "SQLiteRecordStore", "StoreStats"]

log = logging.getLogger("sluice.store")

MAX_PENDING = 100_000
_CHUNK = 2048  # most records written in one transaction
_MAX_BACKOFF = 10.0  # seconds between retries while the database keeps failing

_COLUMNS = tuple(f.name for f in fields(Record))
_PLACEHOLDERS = ", ".join("?" * len(_COLUMNS))
_INSERT = f"INSERT INTO requests ({', '.join(_COLUMNS)}) VALUES ({_PLACEHOLDERS})"
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM requests"
_row: Callable[[Record], tuple[Any, ...]] = operator.attrgetter(*_COLUMNS)

# After a record's values are cleaned (see _clean), these can only be the record's fault
# (a NOT NULL field left empty, a string too big), and no retry will store it.
_BAD_RECORD_ERRORS = (sqlite3.IntegrityError, sqlite3.DataError)

T = TypeVar("T")


class StoreStats(TypedDict):
    count: int
    by_outcome: dict[str, int]
    avg_ttft_ms: float | None
    pending: int  # accepted but not yet written
    dropped: int  # lost because the buffer overflowed or the store was closed


@dataclass(slots=True)
class _Written:
    settled: int  # leading records of the batch that are written (or dropped as unwritable)
    bad: int  # of those, dropped because no form of them could be written
    error: Exception | None  # the database failed; records after ``settled`` remain


class SQLiteRecordStore:
    """Records in a SQLite file (``":memory:"`` for tests). See the module docstring."""

    def __init__(
        self,
        path: str,
        *,
        batch_size: int = 256,
        flush_interval: float = 0.5,
        max_pending: int = MAX_PENDING,
        spill_dir: str | None = None,
    ) -> None:
        if batch_size < 1 or max_pending < 1:
            raise ValueError("batch_size and max_pending must be at least 1")
        if flush_interval <= 0:
            raise ValueError("flush_interval must be positive")
        self.path = path
        self._batch_size = batch_size
        # A backlog (after a burst or an outage) is written in bigger transactions: one
        # thread hop and one commit per chunk, not per batch.
        self._chunk = max(batch_size, _CHUNK)
        self._flush_interval = flush_interval
        self._max_pending = max_pending
        self._pending: deque[Record] = deque()
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._drain_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._dropped = 0
        self._episode_drops = 0  # > 0 while records are being dropped
        self._failing = False  # True while writes fail
        self._writing = 0  # records taken from _pending by the write under way
        # Touched only by the worker thread holding _db_lock.
        self._db_lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._file_id: tuple[int, int] | None = None
        #: Where records unwritten at close wait for the next start; None: nowhere.
        self._spill = Spill(spill_dir) if spill_dir else None

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def dropped(self) -> int:
        return self._dropped

    @property
    def failing(self) -> bool:
        return self._failing

    @property
    def held_back(self) -> int:
        """Records waiting because writes fail (``Backlog``): 0 when they go through."""
        return len(self._pending) + self._writing if self._failing else 0

    # -- the request path -----------------------------------------------------------------

    def add(self, record: Record) -> None:
        if self._closed:
            self._drop(1, "the store is closed")
            return
        pending = self._pending
        if len(pending) >= self._max_pending:
            pending.popleft()
            self._drop(1, f"more than {self._max_pending} records are waiting")
        pending.append(record)
        if len(pending) >= self._batch_size:
            self._wake.set()

    async def resumed(self, record_id: str, resumes: int) -> bool:
        for record in self._pending:
            if record.id == record_id:
                record.resumes = max(record.resumes, resumes)
                return True
        try:
            return await _settled(self._locked, self._resumed_sync, record_id, resumes)
        except Exception as exc:
            log.warning("request log %s: a resume was not counted (%s)", self.path, exc)
            return False

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the database and start the writer. A database that cannot be opened yet is
        logged, not raised: the gateway serves anyway and the writer keeps trying."""
        if self._closed:
            raise RuntimeError("store is closed")
        if self._task is not None:
            return
        try:
            await asyncio.to_thread(self._locked, self._connect)
        except Exception as exc:
            self._write_failed(exc)
        if self._spill is not None:
            try:
                await asyncio.to_thread(self._spill.take_over)
            except OSError as exc:
                log.error("request log: cannot read the spill directory (%s)", exc)
        self._task = asyncio.create_task(self._run(), name="sluice.store.sqlite")

    async def flush(self) -> None:
        """Write everything pending now. Never raises; see ``failing`` and ``pending``."""
        await self._drain()

    async def close(self) -> None:
        """Stop the writer, write everything pending and close the database."""
        if self._closed:
            return
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            self._stop.set()
            self._wake.set()
            await asyncio.wait({task})
        await self._drain()
        if self._pending and self._spill is not None:
            try:
                n = await asyncio.to_thread(self._spill.append, list(self._pending))
            except OSError as exc:
                log.error("request log: cannot write the spill file (%s)", exc)
            else:
                self._pending.clear()
                log.warning(
                    "request log %s: %d records kept in %s for the next start",
                    self.path,
                    n,
                    self._spill.directory,
                )
        if self._spill is not None:
            await asyncio.to_thread(self._spill.close)
        if self._pending:
            log.error(
                "request log %s: closing with %d records unwritten", self.path, len(self._pending)
            )
        await asyncio.to_thread(self._locked, self._disconnect)

    async def _write_back(self, spill: Spill) -> None:
        """Records that an earlier process spilled, into the database, oldest first."""
        while True:
            chunk = await asyncio.to_thread(spill.read, self._chunk)
            if chunk is None:
                return
            result = await _settled(self._locked, self._write, chunk.records)
            if result.error is not None:
                self._write_failed(result.error)
                return
            self._dropped += result.bad
            await asyncio.to_thread(spill.written, chunk)

    # -- reads ----------------------------------------------------------------------------

    async def recent(self, limit: int, query: RecordQuery | None = None) -> list[Record]:
        """The newest ``limit`` records by start time (of those ``query`` matches), newest
        first, including records not yet written. While writes are failing (already
        logged), a database that cannot be read either gives way to the buffer alone;
        otherwise read errors (``sqlite3.Error``, ``OSError``) are raised."""
        if self._closed:
            raise RuntimeError("store is closed")
        if limit <= 0:
            return []
        await self.flush()
        try:
            stored = await asyncio.to_thread(self._locked, self._recent_sync, limit, query)
        except (sqlite3.Error, OSError):
            if not self._failing:
                raise
            stored = []
        if not self._pending:
            return stored
        # Writes are failing: merge what the database gave with what is still waiting.
        # Newer arrivals go first so that they win ties on started_at.
        waiting = (r for r in reversed(self._pending) if query is None or query.matches(r))
        return heapq.nlargest(limit, itertools.chain(waiting, stored), key=_started_at)

    async def stats(self, since: float | None = None) -> StoreStats:
        """Counts by outcome and the mean time to first token, for records started at or
        after ``since`` (unix seconds). Read errors (``sqlite3.Error``, ``OSError``) are
        raised."""
        if self._closed:
            raise RuntimeError("store is closed")
        await self.flush()
        rows = await asyncio.to_thread(self._locked, self._stats_sync, since)
        by_outcome = {outcome: count for outcome, count, _, _ in rows}
        ttft_sum = sum(total or 0.0 for _, _, total, _ in rows)
        ttft_count = sum(n for _, _, _, n in rows)
        return StoreStats(
            count=sum(by_outcome.values()),
            by_outcome=by_outcome,
            avg_ttft_ms=ttft_sum / ttft_count if ttft_count else None,
            pending=len(self._pending),
            dropped=self._dropped,
        )

    async def summary(self, by: Grouping, since: float | None = None) -> list[Summary]:
        """Per model (or per key) since ``since``: requests, errors, time to first token
        p50/p95, tokens and cost, of the records that name a model. Read errors are
        raised."""
        if self._closed:
            raise RuntimeError("store is closed")
        await self.flush()
        rows = await asyncio.to_thread(self._locked, self._summary_sync, by, since)
        return summarise(rows)

    # -- the writer -----------------------------------------------------------------------

    async def _run(self) -> None:
        backoff = self._flush_interval
        while not self._stop.is_set():
            # While failing, ignore the batch-size wake-up (it would fire on every add)
            # and back off; only close() cuts the wait short.
            wait_for = self._stop if self._failing else self._wake
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(backoff if self._failing else self._flush_interval):
                    await wait_for.wait()
            if self._stop.is_set():
                return
            self._wake.clear()
            try:
                await self._drain()
                if not self._failing and self._spill is not None and self._spill.count:
                    await self._write_back(self._spill)
            except Exception:  # a bug, not a database failure: keep the writer alive
                log.exception("request log %s: writer error", self.path)
                self._failing = True
            if self._failing:
                backoff = min(backoff * 2, max(self._flush_interval, _MAX_BACKOFF))
            else:
                backoff = self._flush_interval

    async def _drain(self) -> None:
        async with self._drain_lock:
            # Only what is pending now: under a steady stream of adds, flush() must end.
            left = len(self._pending)
            while left > 0 and self._pending:
                n = min(left, self._chunk, len(self._pending))
                batch = [self._pending.popleft() for _ in range(n)]
                left -= n
                self._writing = n
                try:
                    result = await _settled(self._locked, self._write, batch)
                finally:
                    self._writing = 0
                if result.bad:
                    self._dropped += result.bad
                if result.error is None:
                    self._write_ok()
                    continue
                # Put the unwritten records back at the front, in order, then re-apply
                # the bound (records arrived meanwhile): the oldest go first.
                self._pending.extendleft(reversed(batch[result.settled :]))
                overflow = len(self._pending) - self._max_pending
                for _ in range(overflow):
                    self._pending.popleft()
                if overflow > 0:
                    self._drop(overflow, f"more than {self._max_pending} records are waiting")
                self._write_failed(result.error)
                return

    def _write_ok(self) -> None:
        if self._failing:
            self._failing = False
            log.warning("request log %s: writing again", self.path)
        if self._episode_drops and len(self._pending) < self._max_pending:
            log.warning(
                "request log %s: stopped dropping records (%d dropped)",
                self.path,
                self._episode_drops,
            )
            self._episode_drops = 0

    def _write_failed(self, exc: Exception) -> None:
        if not self._failing:
            self._failing = True
            log.error(
                "request log %s: cannot write (%s: %s); keeping %d records and retrying",
                self.path,
                type(exc).__name__,
                exc,
                len(self._pending),
            )

    def _drop(self, n: int, why: str) -> None:
        self._dropped += n
        if not self._episode_drops:
            log.error("request log %s: dropping the oldest records: %s", self.path, why)
        self._episode_drops += n

    # -- the worker thread (always under _db_lock) ----------------------------------------

    def _locked(self, fn: Callable[..., T], *args: Any) -> T:
        with self._db_lock:
            return fn(*args)

    def _write(self, batch: list[Record]) -> _Written:
        try:
            db = self._connect()
        except Exception as exc:
            return _Written(0, 0, exc)
        try:
            with _transaction(db):
                db.executemany(_INSERT, [_row(r) for r in batch])
            return _Written(len(batch), 0, None)
        except sqlite3.OperationalError as exc:  # locked, full, I/O: the database's fault
            self._discard()
            return _Written(0, 0, exc)
        except Exception:
            pass  # perhaps one record is bad: find it below and write the rest
        settled = bad = 0
        for record in batch:
            try:
                self._write_one(db, record)
            except _BAD_RECORD_ERRORS as exc:
                bad += 1
                log.error(
                    "request log %s: dropped record %r that cannot be stored (%s)",
                    self.path,
                    record.id,
                    type(exc).__name__,
                )
            except Exception as exc:
                self._discard()
                return _Written(settled, bad, exc)
            settled += 1
        return _Written(settled, bad, None)

    def _write_one(self, db: sqlite3.Connection, record: Record) -> None:
        row = _row(record)
        try:
            with _transaction(db):
                db.execute(_INSERT, row)
        except sqlite3.OperationalError:
            raise
        except Exception:
            # Lone surrogates, integers past 64 bits, values of the wrong type: store a
            # cleaned copy rather than lose the record or block the ones behind it.
            with _transaction(db):
                db.execute(_INSERT, tuple(_clean(v) for v in row))

    def _resumed_sync(self, record_id: str, resumes: int) -> bool:
        db = self._connect()
        with _transaction(db):
            done = db.execute(
                "UPDATE requests SET resumes = MAX(resumes, ?) WHERE id = ?", (resumes, record_id)
            )
        return done.rowcount > 0

    def _recent_sync(self, limit: int, query: RecordQuery | None) -> list[Record]:
        db = self._connect()
        where, args = query.where() if query is not None else ("", [])
        sql = f"{_SELECT} {where} ORDER BY started_at DESC, rowid DESC LIMIT ?"
        return [_record(row) for row in db.execute(sql, (*args, limit))]

    def _summary_sync(self, by: Grouping, since: float | None) -> list[tuple[Any, ...]]:
        db = self._connect()
        column = {"model": "model", "key_id": "key_id"}[by]  # never text from outside
        where = "WHERE model IS NOT NULL" + (" AND started_at >= ?" if since is not None else "")
        sql = f"SELECT {column}, {', '.join(SUMMARY_COLUMNS)} FROM requests {where}"
        return list(db.execute(sql, () if since is None else (since,)))

    def _stats_sync(self, since: float | None) -> list[tuple[str, int, float | None, int]]:
        db = self._connect()
        where, args = ("WHERE started_at >= ?", (since,)) if since is not None else ("", ())
        query = (
            "SELECT outcome, COUNT(*), SUM(ttft_ms), COUNT(ttft_ms) "
            f"FROM requests {where} GROUP BY outcome"
        )
        return list(db.execute(query, args))

    def _connect(self) -> sqlite3.Connection:
        memory = self.path == ":memory:"
        if self._db is not None:
            if memory or self._file_id == _file_id(self.path):
                return self._db
            # Removed or replaced under us: writes to the old connection would go to an
            # unlinked file and vanish. Start a new file instead.
            log.warning("request log %s: database file was removed or replaced", self.path)
            self._disconnect()
        if not memory:
            parent = os.path.dirname(self.path)
            if parent:
                os.makedirs(parent, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=2.0, isolation_level=None, check_same_thread=False)
        try:
            # NORMAL is safe with WAL: a crash of the process loses nothing committed.
            db.execute("PRAGMA synchronous=NORMAL")
            migrate(db)
        except BaseException:
            db.close()
            raise
        self._db = db
        self._file_id = None if memory else _file_id(self.path)
        return db

    def _discard(self) -> None:
        # Reopen on the next round: the file may have moved, the disk been remounted.
        # An in-memory database would be lost by closing it, so it is kept.
        if self.path != ":memory:":
            self._disconnect()

    def _disconnect(self) -> None:
        db, self._db, self._file_id = self._db, None, None
        if db is not None:
            with contextlib.suppress(sqlite3.Error):
                db.execute("PRAGMA optimize")
            with contextlib.suppress(sqlite3.Error):
                db.close()


async def _settled(fn: Callable[..., T], *args: Any) -> T:
    """Run ``fn(*args)`` in a worker thread and wait for it even if cancelled meanwhile: a write
    that has started must be accounted for, or its batch is lost or written twice."""
    future = asyncio.create_task(asyncio.to_thread(fn, *args))
    cancelled = False
    while not future.done():
        try:
            await asyncio.shield(future)
        except asyncio.CancelledError:
            cancelled = True
    result = future.result()
    if cancelled:
        raise asyncio.CancelledError
    return result


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    # IMMEDIATE takes the write lock up front, so a busy database waits (up to the
    # connection timeout) instead of failing midway through the batch.
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
        raise


def _file_id(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _record(row: tuple[Any, ...]) -> Record:
    record = Record(*row)
    record.stream = bool(record.stream)
    return record


def _started_at(record: Record) -> float:
    return record.started_at


_INT64 = range(-(2**63), 2**63)


def _clean(value: object) -> object:
    """A storable stand-in for a value SQLite refused."""
    if value is None or isinstance(value, float | bytes | bytearray):
        return value
    if isinstance(value, int):
        return value if value in _INT64 else None
    if isinstance(value, str):
        return value.encode("utf-8", "replace").decode("utf-8")
    return str(value)
