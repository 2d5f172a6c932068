"""Records that could not be written yet, in a local file: JSON lines, one record a line.

A record store that holds more records than it may keep in memory while its database is
down appends the oldest to a file of this process's own in the spill directory, and
writes them to the database when it is back, oldest first. Each file is locked
(``flock``) by the process that writes it for as long as it lives; a file that nobody
holds was left by a process that ended before it could write it, and is taken over and
written by the next process that looks (every process on the directory looks now and
then). What has been written of a file is kept beside it (``NAME.done``, a byte
offset), so a process stopped in the middle of writing one back writes none of it twice.

Every method blocks (file I/O): the store calls them in a worker thread. They are
serialised by a lock of their own.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import logging
import os
import secrets
import socket
import threading
from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import Any

import orjson

from sluice.store import Record

__all__ = ["Spill", "SpillChunk", "decode", "encode"]

log = logging.getLogger("sluice.store")

_FIELDS = {f.name for f in fields(Record)}
_READ = 1 << 20  # bytes read at a time


def _plain(value: object) -> object:
    if isinstance(value, str):
        return value.encode("utf-8", "replace").decode("utf-8")
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**63:
        return None
    return value


def encode(record: Record) -> bytes:
    """One JSON line (``timeline`` as base64)."""
    data: dict[str, Any] = {name: getattr(record, name) for name in _FIELDS}
    raw = data["timeline"]
    data["timeline"] = None if raw is None else base64.b64encode(raw).decode()
    try:
        return orjson.dumps(data) + b"\n"
    except orjson.JSONEncodeError:  # lone surrogates, integers past 64 bits
        return orjson.dumps({k: _plain(v) for k, v in data.items()}) + b"\n"


def decode(line: bytes) -> Record:
    data = orjson.loads(line)
    data = {k: v for k, v in data.items() if k in _FIELDS}
    if data.get("timeline") is not None:
        data["timeline"] = base64.b64decode(data["timeline"])
    return Record(**data)


@dataclass(slots=True)
class _File:
    path: str
    fd: int
    offset: int  # bytes already written to the database
    own: bool  # this process appends to it; otherwise taken over from one that ended


@dataclass(frozen=True, slots=True)
class SpillChunk:
    """Records read back from a spill file; ``Spill.written(chunk)`` once they are stored."""

    file: _File
    records: list[Record]
    end: int  # the offset just past them
    lines: int  # lines read, unreadable ones included


class Spill:
    """See the module docstring."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self._lock = threading.Lock()
        self._own: _File | None = None
        self._taken: list[_File] = []
        #: Records in the files this process holds that are not yet in the database.
        self.count = 0

    # -- writing ---------------------------------------------------------------------

    def append(self, records: Iterable[Record]) -> int:
        """Append records to this process's file; how many. Raises ``OSError``."""
        data = b"".join(encode(record) for record in records)
        n = data.count(b"\n")
        if not n:
            return 0
        with self._lock:
            own = self._own or self._create()
            os.write(own.fd, data)
            self.count += n
        return n

    def _create(self) -> _File:
        os.makedirs(self.directory, exist_ok=True)
        name = f"records-{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}.jsonl"
        path = os.path.join(self.directory, name)
        # Locked before it gets a name that others look for: never taken for abandoned.
        temporary = os.path.join(self.directory, f".{name}.new")
        fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(temporary, path)
        except BaseException:
            os.close(fd)
            raise
        self._own = _File(path, fd, 0, own=True)
        log.warning("request log: the database is behind; spilling records to %s", path)
        return self._own

    # -- reading back ----------------------------------------------------------------

    def take_over(self) -> int:
        """Take the files of processes that ended; how many records they hold."""
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return 0
        found = 0
        with self._lock:
            held = {f.path for f in self._taken}
            if self._own is not None:
                held.add(self._own.path)
            for name in sorted(names):
                path = os.path.join(self.directory, name)
                if not (name.startswith("records-") and name.endswith(".jsonl")) or path in held:
                    continue
                taken = self._try_take(path)
                if taken is not None:
                    n = _lines_after(taken.fd, taken.offset)
                    self._taken.append(taken)
                    self.count += n
                    found += n
                    log.warning("request log: writing back %d records left in %s", n, path)
        return found

    def _try_take(self, path: str) -> _File | None:
        try:
            fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)  # its process is alive and writing it
            return None
        if os.fstat(fd).st_nlink == 0:  # written back and removed by another meanwhile
            os.close(fd)
            return None
        return _File(path, fd, _done(path), own=False)

    def read(self, limit: int) -> SpillChunk | None:
        """Up to ``limit`` records not yet written, taken-over files first; None if none."""
        with self._lock:
            files = [*self._taken, *([self._own] if self._own is not None else [])]
            for file in files:
                records, end, lines = _read(file, limit)
                if lines:
                    return SpillChunk(file, records, end, lines)
                if not file.own:  # empty: written back already
                    self._finish(file)
            self.count = 0  # nothing left to read, whatever was counted
        return None

    def written(self, chunk: SpillChunk) -> None:
        """The chunk's records are in the database: never read them again."""
        with self._lock:
            file = chunk.file
            file.offset = chunk.end
            self.count = max(0, self.count - chunk.lines)
            size = os.fstat(file.fd).st_size
            if file.offset < size:
                _keep_done(file.path, file.offset)
            elif file.own:
                os.ftruncate(file.fd, 0)  # nothing appended since: start the file again
                file.offset = 0
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(file.path + ".done")
            else:
                self._finish(file)

    def _finish(self, file: _File) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(file.path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(file.path + ".done")
        os.close(file.fd)
        self._taken.remove(file)

    def close(self) -> None:
        """Release the files: what is left in them is taken over by the next process."""
        with self._lock:
            for file in [*self._taken, *([self._own] if self._own is not None else [])]:
                if file.own and file.offset >= os.fstat(file.fd).st_size:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(file.path)
                os.close(file.fd)
            self._taken.clear()
            self._own = None


def _done(path: str) -> int:
    try:
        with open(path + ".done", "rb") as f:
            return int(f.read().strip() or 0)
    except (FileNotFoundError, ValueError):
        return 0


def _keep_done(path: str, offset: int) -> None:
    temporary = path + ".done.new"
    with open(temporary, "wb") as f:
        f.write(str(offset).encode())
    os.replace(temporary, path + ".done")


def _lines_after(fd: int, offset: int) -> int:
    n = 0
    while True:
        data = os.pread(fd, _READ, offset)
        if not data:
            return n
        n += data.count(b"\n")
        offset += len(data)


def _read(file: _File, limit: int) -> tuple[list[Record], int, int]:
    """Whole lines from the file's offset, at most ``limit``: the records, the offset
    after them and how many lines that was."""
    records: list[Record] = []
    offset = file.offset
    n = 0
    while n < limit:
        data = os.pread(file.fd, _READ, offset)
        end = data.rfind(b"\n")
        if end < 0:
            break  # nothing, or a line still being written
        lines = data[: end + 1].split(b"\n")[:-1]
        for line in lines:
            offset += len(line) + 1
            n += 1
            try:
                records.append(decode(line))
            except (ValueError, TypeError) as exc:  # a line torn by a crash: skip it
                log.error("request log: skipped an unreadable line in %s (%s)", file.path, exc)
            if n >= limit:
                break
    return records, offset, n
