"""Backends failing under load, with real processes: Redis killed, paused (SIGSTOP) and
brought back while streams are in flight; the SQLite record database locked by another
process, or its file size limit reached (``RLIMIT_FSIZE`` set on the gateway's process,
what a full disk gives a writer). Streams in flight finish, new requests are served (or
refused as ``limits.fail`` says), the gateway recovers without a restart, and no record
is lost."""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.cluster import RedisServer, run_redis
from tests.conftest import StartGateway, upstream_config
from tests.faults.apis import BY_NAME
from tests.gateway import RunningGateway
from tests.upstream.scenarios import expected_text

KEY_ENV = {"TEST_UPSTREAM_KEY": "sk-test"}
CHAT = BY_NAME["chat"]
STREAM = "paced:n=80,interval=0.05"  # 4 s


class Reader(threading.Thread):
    """A chat stream read in the background."""

    def __init__(self, gateway: RunningGateway, model: str, **fields: Any) -> None:
        super().__init__(daemon=True)
        self.url = f"{gateway.api}/chat/completions"
        self.body = {**CHAT.body(model), **fields}
        self.raw = b""
        self.status = 0
        self.started = threading.Event()

    def run(self) -> None:
        with (
            httpx.Client(timeout=30) as client,
            client.stream("POST", self.url, json=self.body) as response,
        ):
            self.status = response.status_code
            for piece in response.iter_raw():
                self.raw += piece
                if b"w1" in self.raw or b"word1" in self.raw:
                    self.started.set()
        self.started.set()


def post(gateway: RunningGateway, model: str) -> httpx.Response:
    with httpx.Client(timeout=30) as client:
        return client.post(f"{gateway.api}/chat/completions", json=CHAT.body(model, stream=False))


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    with run_redis(tmp_path / "redis") as server:
        yield server


def _pause(server: RedisServer) -> None:
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGSTOP)


def _resume(server: RedisServer) -> None:
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGCONT)


def _kill(server: RedisServer) -> None:
    assert server.process is not None
    server.process.kill()
    server.process.wait(timeout=5)


@pytest.mark.parametrize("fail", ["open", "closed"])
@pytest.mark.parametrize("fault", ["killed", "paused"])
def test_redis_lost_mid_stream(
    start_gateway: StartGateway, upstream: Any, redis: RedisServer, fault: str, fail: str
) -> None:
    config = upstream_config(
        upstream.url,
        redis_url=redis.url,
        routing={"retries": 0},
        limits={"fail": fail, "models": {"*": {"rpm": 10_000}}},
    )
    gateway = start_gateway(config, env=KEY_ENV)
    # One plain stream, one the cache records (temperature 0: written to Redis Streams).
    readers = [Reader(gateway, STREAM), Reader(gateway, STREAM, temperature=0)]
    for reader in readers:
        reader.start()
    for reader in readers:
        assert reader.started.wait(10)
    (_kill if fault == "killed" else _pause)(redis)
    back = False
    try:
        during = post(gateway, "normal:n=2")
        # Back while the streams still flow: restarted (empty) or resumed.
        (redis.start if fault == "killed" else partial(_resume, redis))()
        back = True
        assert all(reader.is_alive() for reader in readers)
        for reader in readers:
            reader.join(20)
            assert not reader.is_alive()
        # The streams in flight never depended on Redis: they end as the upstream did.
        for reader in readers:
            assert reader.status == 200 and CHAT.ending(reader.raw) == "clean"
            assert CHAT.text(reader.raw) == expected_text(STREAM)
        if fail == "open":
            assert during.status_code == 200, during.text
        else:
            assert during.status_code == 503
            assert during.json()["error"]["code"] == "service_unavailable"
    finally:
        if not back:
            (redis.start if fault == "killed" else partial(_resume, redis))()
    # Back without a restart of the gateway: requests probe Redis again after a short
    # back-off, and limits count in Redis again.
    deadline = time.monotonic() + 20
    sent = 3  # the two streams and the request during the outage
    while True:
        after = post(gateway, "normal:n=2")
        sent += 1
        if after.status_code == 200 and "redis available again" in gateway.log():
            break
        assert time.monotonic() < deadline, (after.status_code, gateway.log()[-2000:])
        time.sleep(0.2)
    with redis.client() as client:
        assert any(b"sluice-requests" in key for key in client.keys("*")), client.keys("*")
    # Every request recorded, the ones during the outage too.
    assert len(gateway.wait_records(sent)) == sent


HOLD_LOCK = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.read()  # until the test closes our stdin
db.execute("ROLLBACK")
"""


def _ready(gateway: RunningGateway) -> dict[str, Any]:
    with httpx.Client(timeout=10) as client:
        response = client.get(f"{gateway.url}/readyz")
    assert response.status_code == 200  # still serving: a load balancer keeps it
    body: dict[str, Any] = response.json()
    return body


def _serve_while_held(gateway: RunningGateway, count: int) -> None:
    """``count`` requests, each answered in full, while records cannot be written."""
    readers = [Reader(gateway, "normal:n=3") for _ in range(count)]
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join(20)
        assert CHAT.ending(reader.raw) == "clean"
        assert CHAT.text(reader.raw) == expected_text("normal:n=3")
    deadline = time.monotonic() + 10
    while _ready(gateway).get("records_held", 0) < count:
        assert time.monotonic() < deadline, _ready(gateway)
        time.sleep(0.1)


def test_a_locked_record_database_holds_records_until_it_is_free(
    start_gateway: StartGateway, upstream: Any
) -> None:
    gateway = start_gateway(upstream_config(upstream.url), env=KEY_ENV)
    assert post(gateway, "normal:n=2").status_code == 200
    assert len(gateway.wait_records(1)) == 1
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(gateway.db_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"locked\n"
        _serve_while_held(gateway, 10)
        assert _ready(gateway)["status"] == "degraded"
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=10)
        if holder.stdout is not None:
            holder.stdout.close()
    rows = gateway.wait_records(11, timeout=30)
    assert len(rows) == 11 and {r["outcome"] for r in rows} == {"ok"}
    deadline = time.monotonic() + 10
    while _ready(gateway)["status"] != "ready":
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_a_full_disk_holds_records_until_there_is_room(
    start_gateway: StartGateway, upstream: Any
) -> None:
    """The gateway may not grow any file past 1 byte (``RLIMIT_FSIZE``, set from outside
    on its process, as a full disk refuses writes): records wait, then are written."""
    gateway = start_gateway(upstream_config(upstream.url), env=KEY_ENV)
    assert post(gateway, "normal:n=2").status_code == 200
    assert len(gateway.wait_records(1)) == 1
    pid = gateway.process.pid
    soft, hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (1, hard))
    try:
        _serve_while_held(gateway, 10)
        assert _ready(gateway)["status"] == "degraded"
        assert len(gateway.records()) == 1
    finally:
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (soft, hard))
    rows = gateway.wait_records(11, timeout=30)
    assert len(rows) == 11 and {r["outcome"] for r in rows} == {"ok"}
    assert gateway.process.poll() is None


def test_records_still_held_at_exit_are_spilled_and_written_by_the_next_start(
    start_gateway: StartGateway, upstream: Any, tmp_path: Path
) -> None:
    """The database stays locked until after the gateway exits: its records wait in the
    spill directory, and the next gateway on that database writes them."""
    db, spill = tmp_path / "records.db", tmp_path / "spill"
    config = upstream_config(
        upstream.url, record={"path": str(db), "flush_interval": 0.05, "spill_dir": str(spill)}
    )
    first = start_gateway(config, env=KEY_ENV)
    assert post(first, "normal:n=2").status_code == 200
    with contextlib.closing(sqlite3.connect(db)) as check:
        deadline = time.monotonic() + 10
        while check.execute("SELECT count(*) FROM requests").fetchone()[0] < 1:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(db)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"locked\n"
        _serve_while_held(first, 5)
        first.stop()
        assert f"records kept in {spill} for the next start" in first.log()
        assert [p.suffix for p in spill.iterdir()] == [".jsonl"]
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=10)
        if holder.stdout is not None:
            holder.stdout.close()
    second = start_gateway(config, env=KEY_ENV)
    with contextlib.closing(sqlite3.connect(db)) as check:
        deadline = time.monotonic() + 10
        # The first gateway's six (its readiness probes aside) and the second's probes.
        query = "SELECT count(*) FROM requests WHERE route = '/v1/chat/completions'"
        while check.execute(query).fetchone()[0] < 6:
            assert time.monotonic() < deadline, second.log()
            time.sleep(0.05)
        assert check.execute(query).fetchone()[0] == 6
    deadline = time.monotonic() + 10
    while list(spill.iterdir()):  # written back: the file is gone
        assert time.monotonic() < deadline
        time.sleep(0.05)
