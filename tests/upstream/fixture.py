"""Start the test upstream in its own process: ``with start_upstream() as upstream: ...``.

Standard library only, so gateway tests and benchmarks can use it anywhere.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
READY_PREFIX = "listening on "

#: Loopback only: never through a proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))

LogPredicate = Callable[[dict[str, Any]], bool]


@dataclass
class Upstream:
    """A running test upstream."""

    base: str  #: ``http://127.0.0.1:PORT``
    port: int
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        """The OpenAI base URL: ``http://127.0.0.1:PORT/v1``."""
        return f"{self.base}/v1"

    def _call(self, method: str, path: str) -> Any:
        data = b"" if method == "POST" else None
        request = urllib.request.Request(f"{self.base}{path}", method=method, data=data)
        with _OPENER.open(request, timeout=10) as response:
            return json.loads(response.read())

    def log(self) -> dict[str, Any]:
        """``{"requests": [...], "connections": [...]}`` since the last reset."""
        result: dict[str, Any] = self._call("GET", "/_log")
        return result

    def reset(self) -> None:
        self._call("POST", "/_reset")

    def wait_log(
        self, predicate: LogPredicate, timeout: float = 5.0, interval: float = 0.01
    ) -> dict[str, Any]:
        """Poll the log until ``predicate(log)`` holds; the last log is returned either way."""
        deadline = time.monotonic() + timeout
        while True:
            log = self.log()
            if predicate(log) or time.monotonic() > deadline:
                return log
            time.sleep(interval)

    def connection_for(
        self, model: str, closed: bool = True, timeout: float = 5.0
    ) -> dict[str, Any] | None:
        """The logged connection that served a request whose body ``model`` is ``model``.

        With ``closed`` (the default) it waits until that connection is closed, so
        ``closed_at`` and ``closed_by`` are set; None if that did not happen in time.
        """

        def find(log: dict[str, Any]) -> dict[str, Any] | None:
            ids = {
                r["connection"]
                for r in log["requests"]
                if isinstance(r["body"], dict) and r["body"].get("model") == model
            }
            found = [c for c in log["connections"] if c["id"] in ids]
            found = [c for c in found if c["closed_at"] is not None] if closed else found
            return found[0] if found else None

        return find(self.wait_log(lambda log: find(log) is not None, timeout=timeout))


def read_ready_line(process: subprocess.Popen[bytes], timeout: float) -> str:
    assert process.stdout is not None
    fd = process.stdout.fileno()
    buffer = b""
    deadline = time.monotonic() + timeout
    while b"\n" not in buffer:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise RuntimeError(f"the test upstream did not start within {timeout} s")
        readable, _, _ = select.select([fd], [], [], remaining)
        if readable:
            data = os.read(fd, 4096)
            if not data:
                code = process.wait(timeout=5)
                raise RuntimeError(f"the test upstream exited at start (status {code})")
            buffer += data
    return buffer.split(b"\n", 1)[0].decode()


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """End a server this test run started (SIGTERM to its PID, then SIGKILL)."""
    if process.poll() is None:
        process.terminate()  # SIGTERM to this PID only
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
    if process.stdout is not None:
        process.stdout.close()


@contextlib.contextmanager
def start_upstream(
    host: str = "127.0.0.1", timeout: float = 10.0, args: tuple[str, ...] = ()
) -> Iterator[Upstream]:
    """Run ``python -m tests.upstream.server`` on a free port until the block exits
    (``args``: more of its options, ``--certfile``/``--keyfile`` for HTTPS)."""
    command = [sys.executable, "-m", "tests.upstream.server", "--host", host, "--port", "0"]
    command += args
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        line = read_ready_line(process, timeout)
        if not line.startswith(READY_PREFIX):
            raise RuntimeError(f"unexpected first line from the test upstream: {line!r}")
        base = line.removeprefix(READY_PREFIX).strip()
        yield Upstream(base=base, port=int(base.rsplit(":", 1)[1]), process=process)
    finally:
        stop_process(process)
