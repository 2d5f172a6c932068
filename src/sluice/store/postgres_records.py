"""The PostgreSQL record store: the request log that many instances share.

``add`` runs on the request path, so it only appends to an in-memory buffer. A background
task writes the buffer in batches (``COPY``, one round trip per batch) on a connection
of the pool, each write bounded by a timeout, so the relay never waits on the database.

While the database is down or too slow, records stay in the buffer and the writer backs
off and retries. Past ``max_pending`` records the oldest are appended to a local spill
file (store/spill.py) instead, so memory stays bounded; they are written from there,
oldest first, once the database is back, and a file left by a process that ended is
written by the next one. Nothing is lost unless the spill directory cannot be written
either: then, past twice the bound, the oldest records are dropped and counted.
``held_back`` says how many records wait (the gateway's ``/readyz`` says ``degraded``).
Failures are logged once per episode, without record contents, on ``sluice.store``.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import math
import operator
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import asyncpg

from sluice.store import Record, StoreError
from sluice.store.postgres import FAULTS, Connection, Postgres
from sluice.store.spill import Spill

__all__ = ["MAX_PENDING", "PostgresRecordStore"]

log = logging.getLogger("sluice.store")

MAX_PENDING = 10_000  # records kept in memory while the database is down; then spilled
_CHUNK = 2048  # most records written in one COPY
_SPILL_CHUNKS = 8  # chunks of a spill file written back per round
_MAX_BACKOFF = 10.0
_SCAN_INTERVAL = 60.0  # seconds between looks for spill files that processes left

COLUMNS = tuple(f.name for f in fields(Record))
_SELECT = f"SELECT {', '.join(COLUMNS)} FROM requests"
_row: Callable[[Record], tuple[Any, ...]] = operator.attrgetter(*COLUMNS)

# What a record can do wrong (a value PostgreSQL or the driver refuses); anything else
# that fails a write is the database's fault, and the records wait for it.
_BAD_RECORD = (
    asyncpg.DataError,
    asyncpg.IntegrityConstraintViolationError,
    asyncpg.exceptions._base.DataError,
    ValueError,  # UnicodeEncodeError among them
    OverflowError,
    TypeError,
)


@dataclass(slots=True)
class _Written:
    settled: int  # leading records of the batch written (or dropped as unwritable)
    bad: int  # of those, dropped because no form of them could be written
    error: BaseException | None  # the database failed; records after ``settled`` remain


class PostgresRecordStore:
    """Records in PostgreSQL. See the module docstring."""

    def __init__(
        self,
        database: Postgres,
        *,
        batch_size: int = 256,
        flush_interval: float = 0.5,
        max_pending: int = MAX_PENDING,
        spill_dir: str = "sluice-spill",
        write_timeout: float = 10.0,
    ) -> None:
        if batch_size < 1 or max_pending < 1:
            raise ValueError("batch_size and max_pending must be at least 1")
        if flush_interval <= 0:
            raise ValueError("flush_interval must be positive")
        self.database = database
        self.path = database.where  # names the database in messages
        self._batch_size = batch_size
        self._chunk = max(batch_size, _CHUNK)
        self._flush_interval = flush_interval
        self._max_pending = max_pending
        self._write_timeout = write_timeout
        self._pending: deque[Record] = deque()
        self._spill = Spill(spill_dir)
        self._spill_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._spill_wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._drain_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._started = False
        self._closed = False
        self._dropped = 0
        self._episode_drops = 0
        self._failing = False
        self._spill_failing = False
        self._next_scan = 0.0

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def spilled(self) -> int:
        return self._spill.count

    @property
    def dropped(self) -> int:
        return self._dropped

    @property
    def failing(self) -> bool:
        return self._failing

    @property
    def held_back(self) -> int:
        return (len(self._pending) if self._failing else 0) + self._spill.count

    # -- the request path -----------------------------------------------------------------

    def add(self, record: Record) -> None:
        if self._closed:
            self._drop(1, "the store is closed")
            return
        pending = self._pending
        pending.append(record)
        n = len(pending)
        if n > self._max_pending:
            self._spill_wake.set()
            if self._spill_failing and n > 2 * self._max_pending:  # nowhere to put them
                pending.popleft()
                self._drop(1, f"more than {2 * self._max_pending} records are waiting")
        if n >= self._batch_size:
            self._wake.set()

    async def resumed(self, record_id: str, resumes: int) -> bool:
        for record in self._pending:
            if record.id == record_id:
                record.resumes = max(record.resumes, resumes)
                return True

        async def update(conn: Connection) -> str:
            return str(
                await conn.execute(
                    "UPDATE requests SET resumes = GREATEST(resumes, $1) WHERE id = $2",
                    resumes,
                    record_id,
                    timeout=self._write_timeout,
                )
            )

        try:
            status = await self.database.run(update)
        except StoreError as exc:
            log.warning("request log: a resume was not counted (%s)", exc)
            return False
        return status != "UPDATE 0"

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the writer. A database that cannot be reached yet is logged, not raised:
        the gateway serves anyway and the writer keeps trying."""
        if self._closed:
            raise RuntimeError("store is closed")
        if self._started:
            return
        self._started = True
        self._next_scan = time.monotonic() + _SCAN_INTERVAL
        try:
            await asyncio.to_thread(self._spill.take_over)
        except OSError as exc:
            log.error("request log: cannot read the spill directory (%s)", exc)
        try:
            await self.database.pool()
        except StoreError as exc:
            self._write_failed(exc)
        self._tasks = [
            asyncio.create_task(self._run(), name="sluice.store.postgres"),
            asyncio.create_task(self._spiller(), name="sluice.store.spill"),
        ]

    async def flush(self) -> None:
        """Write everything pending now. Never raises; see ``failing`` and ``held_back``."""
        await self._drain()

    async def close(self) -> None:
        """Stop the writer and write everything pending; what cannot be written now is
        spilled, for the next process on this spill directory to write."""
        if self._closed:
            return
        self._closed = True
        tasks, self._tasks = self._tasks, []
        self._stop.set()
        self._wake.set()
        self._spill_wake.set()
        if tasks:
            await asyncio.wait(tasks)
        if not self._failing:
            await self._drain()
        if self._pending:
            await self._spill_oldest(len(self._pending))
        if self._pending:
            log.error("request log: closing with %d records unwritten", len(self._pending))
        if self._spill.count:
            log.warning(
                "request log: %d records wait in %s for the next start",
                self._spill.count,
                self._spill.directory,
            )
        await asyncio.to_thread(self._spill.close)

    # -- reads ----------------------------------------------------------------------------

    async def recent(self, limit: int) -> list[Record]:
        """The newest ``limit`` records by start time, newest first, including records not
        yet written (in memory). Raises ``StoreError`` unless writes are failing too."""
        if self._closed:
            raise RuntimeError("store is closed")
        if limit <= 0:
            return []
        await self.flush()

        async def read(conn: Connection) -> list[Record]:
            rows = await conn.fetch(f"{_SELECT} ORDER BY started_at DESC, n DESC LIMIT $1", limit)
            return [Record(*row) for row in rows]

        try:
            stored = await self.database.run(read)
        except StoreError:
            if not self._failing:
                raise
            stored = []
        if not self._pending:
            return stored
        waiting = reversed(self._pending)
        return heapq.nlargest(limit, itertools.chain(waiting, stored), key=_started_at)

    # -- the writer -----------------------------------------------------------------------

    async def _run(self) -> None:
        backoff = self._flush_interval
        while not self._stop.is_set():
            if not (self._spill.count and not self._failing):
                wait_for = self._stop if self._failing else self._wake
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(backoff if self._failing else self._flush_interval):
                        await wait_for.wait()
            if self._stop.is_set():
                return
            self._wake.clear()
            try:
                await self._drain()
            except Exception:  # a bug, not a database failure: keep the writer alive
                log.exception("request log %s: writer error", self.path)
                self._failing = True
            if self._failing:
                backoff = min(backoff * 2, max(self._flush_interval, _MAX_BACKOFF))
            else:
                backoff = self._flush_interval
                await asyncio.sleep(0)

    async def _drain(self) -> None:
        async with self._drain_lock:
            left = len(self._pending)
            while left > 0 and self._pending:
                n = min(left, self._chunk, len(self._pending))
                batch = [self._pending.popleft() for _ in range(n)]
                left -= n
                result = await _settled(self._write(batch))
                self._dropped += result.bad
                if result.error is None:
                    self._write_ok()
                    continue
                self._pending.extendleft(reversed(batch[result.settled :]))
                self._write_failed(result.error)
                if len(self._pending) > self._max_pending:
                    self._spill_wake.set()
                return
            now = time.monotonic()
            if now >= self._next_scan:
                self._next_scan = now + _SCAN_INTERVAL
                try:
                    async with self._spill_lock:
                        await asyncio.to_thread(self._spill.take_over)
                except OSError as exc:
                    log.error("request log: cannot read the spill directory (%s)", exc)
            if self._spill.count:
                await self._write_back()

    async def _write_back(self) -> None:
        """Write a few chunks of the spill files to the database, oldest first."""
        for _ in range(_SPILL_CHUNKS):
            async with self._spill_lock:
                chunk = await asyncio.to_thread(self._spill.read, self._chunk)
            if chunk is None:
                return
            result = await _settled(self._write(chunk.records))
            if result.error is not None:
                # Nothing of a chunk is marked written unless all of it is: the part
                # that got in is written again (a rare duplicate, never a loss).
                self._write_failed(result.error)
                return
            self._dropped += result.bad
            async with self._spill_lock:
                await asyncio.to_thread(self._spill.written, chunk)
            self._write_ok()

    async def _spiller(self) -> None:
        while not self._stop.is_set():
            await self._spill_wake.wait()
            self._spill_wake.clear()
            excess = len(self._pending) - self._max_pending // 2
            if len(self._pending) > self._max_pending and excess > 0:
                await self._spill_oldest(excess)

    async def _spill_oldest(self, n: int) -> None:
        async with self._spill_lock:
            n = min(n, len(self._pending))
            batch = [self._pending.popleft() for _ in range(n)]
            try:
                await _settled(asyncio.to_thread(self._spill.append, batch))
            except OSError as exc:
                self._pending.extendleft(reversed(batch))
                if not self._spill_failing:
                    self._spill_failing = True
                    log.error(
                        "request log: cannot spill records to %s (%s); keeping them in memory",
                        self._spill.directory,
                        exc,
                    )
                return
            if self._spill_failing:
                self._spill_failing = False
                log.warning("request log: spilling records to %s again", self._spill.directory)

    async def _write(self, batch: list[Record]) -> _Written:
        try:
            pool = await self.database.pool()
        except StoreError as exc:
            return _Written(0, 0, exc)
        settled = bad = 0
        try:
            async with pool.acquire(timeout=self._write_timeout) as conn:
                try:
                    await self._copy(conn, [_row(r) for r in batch])
                    return _Written(len(batch), 0, None)
                except _BAD_RECORD:
                    pass  # perhaps one record is bad: find it below and write the rest
                for record in batch:
                    try:
                        await self._write_one(conn, record)
                    except _BAD_RECORD as exc:
                        bad += 1
                        log.error(
                            "request log: dropped record %r that cannot be stored (%s)",
                            record.id,
                            type(exc).__name__,
                        )
                    settled += 1
                return _Written(settled, bad, None)
        except FAULTS as exc:
            return _Written(settled, bad, self.database.error(exc, "write to"))

    async def _write_one(self, conn: Connection, record: Record) -> None:
        row = _row(record)
        try:
            await self._copy(conn, [row])
        except _BAD_RECORD:
            # NUL characters, lone surrogates, integers past 64 bits, values of the wrong
            # type: store a cleaned copy rather than lose the record.
            await self._copy(conn, [tuple(clean(v) for clean, v in zip(_CLEAN, row, strict=True))])

    async def _copy(self, conn: Connection, rows: list[tuple[Any, ...]]) -> None:
        await conn.copy_records_to_table(
            "requests", records=rows, columns=COLUMNS, timeout=self._write_timeout
        )

    def _write_ok(self) -> None:
        if self._failing:
            self._failing = False
            log.warning("request log %s: writing again", self.path)
        if self._episode_drops and len(self._pending) < self._max_pending:
            log.warning("request log: stopped dropping records (%d dropped)", self._episode_drops)
            self._episode_drops = 0

    def _write_failed(self, exc: BaseException) -> None:
        if not self._failing:
            self._failing = True
            log.error(
                "request log: cannot write (%s); keeping %d records and retrying",
                exc,
                len(self._pending),
            )

    def _drop(self, n: int, why: str) -> None:
        self._dropped += n
        if not self._episode_drops:
            log.error("request log %s: dropping the oldest records: %s", self.path, why)
        self._episode_drops += n


async def _settled(aw: Any) -> Any:
    """Await ``aw`` in a task of its own, to its end even if cancelled meanwhile: a write
    that has started must be accounted for, or its batch is lost or written twice."""
    future = asyncio.ensure_future(aw)
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


def _started_at(record: Record) -> float:
    return record.started_at


def _text(value: object) -> str | None:
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value)
    return text.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")


def _integer(value: object) -> int | None:
    if isinstance(value, float) and math.isfinite(value):
        value = int(value)
    if isinstance(value, int) and -(2**63) <= value < 2**63:
        return int(value)
    return None


def _real(value: object) -> float | None:
    try:
        return float(value) if isinstance(value, int | float) else None
    except OverflowError:
        return None


def _blob(value: object) -> bytes | None:
    return bytes(value) if isinstance(value, bytes | bytearray | memoryview) else None


def _cleaner(annotation: Any) -> Callable[[object], object]:
    kind = str(annotation)
    if "bytes" in kind:
        return _blob
    if kind == "bool":
        return bool
    if "float" in kind:
        return _real
    if "int" in kind:
        return _integer
    return _text


_CLEAN = tuple(_cleaner(f.type) for f in fields(Record))
