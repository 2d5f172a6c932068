"""SIGTERM drains the gateway: /readyz fails at once, new requests get 503 in their API's
shape, streams in flight run on for ``shutdown_grace``; those still running then end with
their API's in-band error and a record with outcome ``shutdown``; records are written and
the process exits. Real processes: ``sluice serve``, the test upstream, HTTP clients."""

from __future__ import annotations

import contextlib
import json
import signal
import sqlite3
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import httpx
import openai
import pytest

from sluice import config
from tests.conftest import StartGateway, upstream_config
from tests.faults.apis import API, APIS, BY_NAME
from tests.gateway import RunningGateway
from tests.upstream.scenarios import expected_text

KEY_ENV = {"TEST_UPSTREAM_KEY": "sk-test"}
LONG = "paced:n=2000,interval=0.05"  # 100 s: outlasts any grace here
SHORT = "paced:n=30,interval=0.05"  # 1.5 s: ends within the grace


class Reader(threading.Thread):
    """One streamed answer read in the background: its bytes and when the last came."""

    def __init__(self, gateway: RunningGateway, api: API, model: str) -> None:
        super().__init__(daemon=True)
        self.api, self.model = api, model
        self.url = f"{gateway.url}{api.path}"
        self.raw = b""
        self.status = 0
        self.last_at = 0.0
        self.started = threading.Event()

    def run(self) -> None:
        with (
            httpx.Client(timeout=30) as client,
            client.stream("POST", self.url, json=self.api.body(self.model)) as response,
        ):
            self.status = response.status_code
            for piece in response.iter_raw():
                self.raw += piece
                self.last_at = time.monotonic()
                if self.api.text(self.raw):
                    self.started.set()
        self.started.set()


def _get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _post(url: str, body: dict[str, Any]) -> tuple[int, Any, str]:
    with httpx.Client(timeout=10) as client:
        response = client.post(url, json=body)
    return response.status_code, response.json(), response.headers.get("connection", "")


def test_sigterm_drains_then_stops_streams_in_their_apis_error(
    start_gateway: StartGateway, upstream: Any
) -> None:
    config = upstream_config(upstream.url, routing={"retries": 0}, shutdown_grace=60)
    # The environment beats the file: 2 s of grace.
    gateway = start_gateway(config, env={**KEY_ENV, "SLUICE_SHUTDOWN_GRACE": "2"})
    long = [Reader(gateway, api, LONG) for api in APIS]
    short = Reader(gateway, BY_NAME["chat"], SHORT)
    for reader in (*long, short):
        reader.start()
    for reader in (*long, short):
        assert reader.started.wait(10), reader.api.name
    gateway.process.send_signal(signal.SIGTERM)
    signalled = time.monotonic()

    # Draining: not ready, and no new request is taken, in each API's error shape.
    deadline = time.monotonic() + 1.5
    while (ready := _get(f"{gateway.url}/readyz"))[0] == 200 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert ready == (503, {"status": "draining"})
    assert _get(f"{gateway.url}/healthz")[0] == 200
    status, body, connection = _post(f"{gateway.api}/chat/completions", BY_NAME["chat"].body(SHORT))
    assert status == 503 and body["error"]["code"] == "shutting_down"
    assert connection == "close"
    status, body, _ = _post(f"{gateway.url}/v1/messages", BY_NAME["messages"].body(SHORT))
    assert status == 529
    assert body["type"] == "error" and body["error"]["type"] == "overloaded_error"
    assert "shutting down" in body["error"]["message"]

    for reader in (*long, short):
        reader.join(20)
        assert not reader.is_alive(), reader.api.name
    # The short stream finished within the grace, cleanly.
    assert BY_NAME["chat"].ending(short.raw) == "clean"
    assert BY_NAME["chat"].text(short.raw) == expected_text(SHORT)
    for reader in long:
        assert reader.status == 200
        # It ran on through the grace, then ended with its API's error, never cleanly.
        assert reader.last_at - signalled > 1.0, reader.api.name
        assert reader.api.ending(reader.raw) == "error", (reader.api.name, reader.raw[-300:])
        assert "shut down" in reader.api.error_message(reader.raw)

    gateway.process.wait(timeout=15)
    rows = gateway.records()
    outcomes = sorted((r["route"], r["outcome"], r["status"]) for r in rows)
    stopped = [r for r in rows if r["outcome"] == "shutdown"]
    assert sorted(r["route"] for r in stopped) == sorted(api.path for api in APIS), outcomes
    assert all(r["error_type"] == "ShuttingDown" and r["chunks"] > 0 for r in stopped)
    refused = [r for r in rows if r["outcome"] == "rejected"]
    assert sorted(r["status"] for r in refused) == [503, 529], outcomes
    assert [r["outcome"] for r in rows if r["model"] == SHORT and r["status"] == 200] == ["ok"]


def test_sigterm_with_nothing_in_flight_exits_at_once(start_gateway: StartGateway) -> None:
    gateway = start_gateway({"models": {"*": {"provider": "simulator"}}})
    started = time.monotonic()
    gateway.process.send_signal(signal.SIGTERM)
    gateway.process.wait(timeout=10)
    # Not the 30 s default grace: nothing was in flight.
    assert time.monotonic() - started < 8


@pytest.mark.parametrize("api", ["chat", "messages"])
def test_waiting_for_the_first_token_at_the_deadline_is_an_http_error(
    start_gateway: StartGateway, upstream: Any, api: str
) -> None:
    """No byte went out yet (keep-alives off): the answer is the API's 503, not a stream."""
    config = upstream_config(upstream.url, routing={"retries": 0}, keepalive_interval=0)
    gateway = start_gateway(config, env={**KEY_ENV, "SLUICE_SHUTDOWN_GRACE": "0.5"})
    result: dict[str, Any] = {}

    def ask() -> None:
        body = BY_NAME[api].body("slow_first:delay=30")
        with httpx.Client(timeout=30) as client:
            response = client.post(f"{gateway.url}{BY_NAME[api].path}", json=body)
        result.update(status=response.status_code, body=response.json())

    upstream.reset()
    thread = threading.Thread(target=ask, daemon=True)
    thread.start()
    upstream.wait_log(lambda log: any(r["scenario"] == "slow_first" for r in log["requests"]))
    gateway.process.send_signal(signal.SIGTERM)
    thread.join(15)
    if api == "chat":
        assert result["status"] == 503 and result["body"]["error"]["code"] == "shutting_down"
    else:
        assert result["status"] == 529 and result["body"]["error"]["type"] == "overloaded_error"
    gateway.process.wait(timeout=15)
    assert [r["outcome"] for r in gateway.records()] == ["shutdown"]


def test_sigterm_drains_every_worker(start_gateway: StartGateway, upstream: Any) -> None:
    """``--workers 2``: the supervisor passes SIGTERM on, and each worker drains."""
    config = upstream_config(upstream.url, routing={"retries": 0})
    env = {**KEY_ENV, "SLUICE_SHUTDOWN_GRACE": "1"}
    gateway = start_gateway(config, env=env, args=("--workers", "2"))
    readers = [Reader(gateway, BY_NAME["chat"], LONG) for _ in range(4)]
    for reader in readers:
        reader.start()
    for reader in readers:
        assert reader.started.wait(10)
    gateway.process.send_signal(signal.SIGTERM)
    for reader in readers:
        reader.join(20)
        assert BY_NAME["chat"].ending(reader.raw) == "error"
    gateway.process.wait(timeout=20)
    assert [r["outcome"] for r in gateway.records()] == ["shutdown"] * 4


def test_shutdown_grace_is_checked() -> None:
    assert config.parse("", {}).shutdown_grace == 30
    assert config.parse("shutdown_grace: 5", {}).shutdown_grace == 5
    with pytest.raises(config.ConfigError, match="shutdown_grace"):
        config.parse("shutdown_grace: -1", {})
    assert config.load(env={"SLUICE_SHUTDOWN_GRACE": "0.5"}).shutdown_grace == 0.5
    for bad in ("soon", "-3", "inf"):
        with pytest.raises(config.ConfigError, match="SLUICE_SHUTDOWN_GRACE"):
            config.load(env={"SLUICE_SHUTDOWN_GRACE": bad})


@pytest.mark.parametrize("signals", [("SIGTERM", "SIGTERM"), ("SIGINT",)], ids="-".join)
def test_ctrl_c_or_a_second_sigterm_stops_the_streams_at_once(
    start_gateway: StartGateway, upstream: Any, signals: tuple[str, ...]
) -> None:
    """Not after the grace (60 s here): at once, and still with the API's error."""
    config = upstream_config(upstream.url, routing={"retries": 0})
    gateway = start_gateway(config, env={**KEY_ENV, "SLUICE_SHUTDOWN_GRACE": "60"})
    reader = Reader(gateway, BY_NAME["messages"], LONG)
    reader.start()
    assert reader.started.wait(10)
    for name in signals:
        gateway.process.send_signal(getattr(signal, name))
        time.sleep(0.3)
    reader.join(15)
    assert not reader.is_alive()
    assert BY_NAME["messages"].ending(reader.raw) == "error"
    gateway.process.wait(timeout=15)
    assert [r["outcome"] for r in gateway.records()] == ["shutdown"]


def test_background_responses_run_on_through_the_grace(
    start_gateway: StartGateway, upstream: Any
) -> None:
    """A background response has no client to wait for: the drain waits for it all the
    same; one that ends within the grace completes, one that does not fails."""
    config = upstream_config(upstream.url, routing={"retries": 0})
    gateway = start_gateway(config, env={**KEY_ENV, "SLUICE_SHUTDOWN_GRACE": "3"})
    client = openai.OpenAI(base_url=gateway.api, api_key="x", max_retries=0, timeout=20)
    short = client.responses.create(model=SHORT, input="hi", background=True)  # 1.5 s
    long = client.responses.create(model=LONG, input="hi", background=True)
    time.sleep(0.3)
    gateway.process.send_signal(signal.SIGTERM)
    gateway.process.wait(timeout=20)
    with contextlib.closing(sqlite3.connect(gateway.db_path)) as db:
        statuses = dict(db.execute("SELECT id, status FROM responses").fetchall())
    assert statuses == {short.id: "completed", long.id: "failed"}
    outcomes = sorted(r["outcome"] for r in gateway.records() if r["route"] == "/v1/responses")
    assert outcomes == ["ok", "shutdown"]
