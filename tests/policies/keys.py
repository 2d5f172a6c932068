"""Helpers for the key, auth and budget tests: the real CLI, and the record database."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.conftest import upstream_config

KEY_ENV = {"TEST_UPSTREAM_KEY": "sk-test"}
MESSAGES: list[Any] = [{"role": "user", "content": "Tell me a story"}]


def sluice(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m sluice ARGS`` as a user would, without this shell's settings."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "SLUICE_"))}
    return subprocess.run(
        [sys.executable, "-m", "sluice", *args],
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def create_key(db: Path, name: str, *options: str) -> dict[str, Any]:
    """``sluice keys create --json``: the new key's fields, ``key`` included."""
    done = sluice("keys", "create", "--name", name, "--json", "--db", str(db), *options)
    assert done.returncode == 0, done.stderr
    created: dict[str, Any] = json.loads(done.stdout)
    return created


def list_keys(db: Path) -> list[dict[str, Any]]:
    done = sluice("keys", "list", "--json", "--db", str(db))
    assert done.returncode == 0, done.stderr
    rows: list[dict[str, Any]] = json.loads(done.stdout)
    return rows


def gateway_config(upstream_url: str, db: Path, **extra: Any) -> dict[str, Any]:
    """Every model goes to the test upstream; records and keys in ``db``."""
    extra.setdefault("auth", {"cache_ttl": 0.2})
    return upstream_config(upstream_url, record={"path": str(db), "flush_interval": 0.05}, **extra)


def records(db: Path) -> list[dict[str, Any]]:
    """The records in ``db``, less the harness's readiness probes, oldest first."""
    if not db.exists():
        return []
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.row_factory = sqlite3.Row
        try:
            rows = conn.execute(
                "SELECT * FROM requests WHERE route != '/readyz' ORDER BY started_at"
            ).fetchall()
        except sqlite3.OperationalError:
            return []
    return [dict(row) for row in rows]


def wait_records(db: Path, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    """Records are written in batches off the hot path: wait for ``count`` of them."""
    deadline = time.monotonic() + timeout
    while True:
        rows = records(db)
        if len(rows) >= count or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)
