"""Run the gateway for real: ``python -m sluice serve`` in its own process on loopback."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RunningGateway:
    url: str
    db_path: Path
    log_path: Path
    process: subprocess.Popen[bytes]

    @property
    def api(self) -> str:
        return f"{self.url}/v1"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def records(self) -> list[dict[str, Any]]:
        """The gateway's records, less the readiness probes this harness sent."""
        if not self.db_path.exists():
            return []
        with contextlib.closing(sqlite3.connect(self.db_path)) as db:
            db.row_factory = sqlite3.Row
            try:
                rows = db.execute(
                    "SELECT * FROM requests WHERE route != '/readyz' ORDER BY started_at"
                ).fetchall()
            except sqlite3.OperationalError:
                return []
        return [dict(row) for row in rows]

    def wait_records(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Records are written in batches off the hot path: wait for them."""
        deadline = time.monotonic() + timeout
        while True:
            rows = self.records()
            if len(rows) >= count or time.monotonic() > deadline:
                return rows
            time.sleep(0.05)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        return int(self.process.returncode)


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=1) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@contextlib.contextmanager
def run_gateway(
    workdir: Path,
    config: Mapping[str, Any] | str | None = None,
    env: Mapping[str, str] | None = None,
    args: tuple[str, ...] = (),
) -> Iterator[RunningGateway]:
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    db_path = workdir / "records.db"
    cmd = [sys.executable, "-m", "sluice", "serve", "--port", str(port), *args]
    if config is not None:
        text = config if isinstance(config, str) else yaml.safe_dump(dict(config))
        if isinstance(config, Mapping):
            data = dict(config)
            data.setdefault("record", {"path": str(db_path), "flush_interval": 0.05})
            text = yaml.safe_dump(data)
        path = workdir / "sluice.yaml"
        path.write_text(text)
        cmd += ["--config", str(path)]
    full_env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OPENAI_", "ANTHROPIC_", "SLUICE_", "OTEL_", "PROMETHEUS_"))
        # Upstreams are on loopback: a proxy of the machine's is never on the way.
        and k.lower() not in ("http_proxy", "https_proxy", "no_proxy", "all_proxy")
    }
    full_env["SLUICE_DB"] = str(db_path)
    # Streams a test leaves open get 5 s after SIGTERM at teardown, not the 30 s default.
    full_env["SLUICE_SHUTDOWN_GRACE"] = "5"
    full_env.update(env or {})
    log_path = workdir / "gateway.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(cmd, cwd=workdir, env=full_env, stdout=log, stderr=log)
    gateway = RunningGateway(f"http://127.0.0.1:{port}", db_path, log_path, process)
    try:
        deadline = time.monotonic() + 20
        while not _ready(gateway.url):
            if process.poll() is not None:
                raise RuntimeError(f"the gateway exited at start:\n{gateway.log()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the gateway did not become ready:\n{gateway.log()}")
            time.sleep(0.05)
        yield gateway
    finally:
        gateway.stop()


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())
