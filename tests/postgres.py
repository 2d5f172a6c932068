"""A real PostgreSQL for the tests: ``initdb`` and ``postgres`` in a temporary directory,
on a free TCP port on 127.0.0.1 and a unix socket in that directory, stopped by its PID.

    with run_postgres() as server:
        url = server.create_database()   # postgresql://sluice:…@127.0.0.1:PORT/db_…
        server.stop(); server.start()     # the same port and data: a restart

PostgreSQL refuses to run as root, so as root (CI) the server runs as ``nobody``,
and its directory lives in /tmp, which that user can reach (pytest's own temporary
directories are private to the user who runs the tests). The binaries are found on
PATH or in Debian's /usr/lib/postgresql/*/bin; scripts/test installs them when missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from tests.gateway import free_port

USER = "sluice"
#: Not a secret: the tests check that it never shows in output or logs.
PASSWORD = "pg-test-pw-" + "x7q2"


def bin_dir() -> Path | None:
    """Where ``initdb`` and ``postgres`` are, or None."""
    found = shutil.which("initdb")
    if found and shutil.which("postgres"):
        return Path(os.path.realpath(found)).parent
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    for candidate in versions:
        if (candidate / "initdb").exists() and (candidate / "postgres").exists():
            return candidate
    return None


def _as_user() -> list[str]:
    """Run as an unprivileged user when we are root: ``setpriv`` execs in place, so the
    process we start is the server itself and its PID is the one to stop."""
    if os.geteuid() != 0:
        return []
    return ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"]


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@dataclass
class PostgresServer:
    root: Path
    bin: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    databases: int = 0

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log_path(self) -> Path:
        return self.root / "postgres.log"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{self.port}/{database}"

    def init(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        pwfile = self.root / "pw"
        pwfile.write_text(PASSWORD + "\n")
        if os.geteuid() == 0:
            shutil.chown(self.root, "nobody", "nogroup")
            shutil.chown(pwfile, "nobody", "nogroup")
        subprocess.run(
            [
                *_as_user(),
                str(self.bin / "initdb"),
                "-D", str(self.data),
                "-U", USER,
                f"--pwfile={pwfile}",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E", "UTF8",
                "--locale=C",
                "--no-sync",
            ],
            check=True,
            capture_output=True,
        )  # fmt: skip
        pwfile.unlink()

    def start(self) -> None:
        assert not self.running, "already running"
        cmd = [
            *_as_user(),
            str(self.bin / "postgres"),
            "-D", str(self.data),
            "-p", str(self.port),
            "-k", str(self.root),
            "-c", "listen_addresses=127.0.0.1",
            # A test database: speed over durability.
            "-c", "fsync=off",
            "-c", "synchronous_commit=off",
            "-c", "full_page_writes=off",
            "-c", "max_connections=200",
        ]  # fmt: skip
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while not self._ready():
            if self.process.poll() is not None:
                raise RuntimeError(f"postgres exited at start:\n{self.log()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"postgres did not become ready:\n{self.log()}")
            time.sleep(0.05)

    def _ready(self) -> bool:
        if not _accepts(self.port):
            return False
        done = subprocess.run(
            [str(self.bin / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-U", USER],
            capture_output=True,
        )
        return done.returncode == 0

    def stop(self) -> None:
        """Fast shutdown (SIGINT): clients are disconnected, the data is kept."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run ``sql`` through the unix socket as the superuser; the output, unaligned."""
        done = subprocess.run(
            [
                str(self.bin / "psql"),
                "-h", str(self.root),
                "-p", str(self.port),
                "-U", USER,
                "-d", database,
                "-At",
                "-v", "ON_ERROR_STOP=1",
                "-c", sql,
            ],
            capture_output=True,
            text=True,
            check=True,
        )  # fmt: skip
        return done.stdout.strip()

    def create_database(self) -> str:
        """A new empty database; its URL."""
        self.databases += 1
        name = f"db_{self.databases}_{secrets.token_hex(3)}"
        self.psql(f"CREATE DATABASE {name}")
        return self.url(name)


@contextlib.contextmanager
def run_postgres() -> Iterator[PostgresServer]:
    found = bin_dir()
    if found is None:
        raise RuntimeError(
            "PostgreSQL is not installed (initdb, postgres): scripts/test installs Debian's"
            " postgresql package"
        )
    root = Path(tempfile.mkdtemp(prefix="sluice-pg-"))
    server = PostgresServer(root, found)
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


def query(url: str, sql: str, *args: object) -> list[tuple[Any, ...]]:
    """Rows of one query on ``url``, read on a connection of its own (from sync code)."""

    async def run() -> list[tuple[Any, ...]]:
        conn = await asyncpg.connect(url)
        try:
            return [tuple(row) for row in await conn.fetch(sql, *args)]
        finally:
            await conn.close()

    return asyncio.run(run())
