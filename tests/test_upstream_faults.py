"""Upstream faults, each against real processes: ``sluice serve`` in front of an upstream
that fails on purpose (``tests/faults/upstream.py``), read through every client API.

Before the first byte a fault is an HTTP error in the client's API shape; after it, the
API's in-band error (never a clean end); every one is recorded. Resets at each phase,
stalls against each timer, an oversized SSE line, bytes that are not HTTP, invalid UTF-8,
gzip although identity was asked for, chunk extensions and trailers, and a kept-alive
connection the upstream closed while it was pooled."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.faults.apis import API, APIS, BY_NAME
from tests.faults.fixture import FaultUpstream, start_fault_upstream
from tests.faults.upstream import text
from tests.gateway import RunningGateway, run_gateway

#: What an error status becomes in Anthropic's API (its SDKs retry 529).
ANTHROPIC = {503: 529}


@pytest.fixture(scope="module")
def faults(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultUpstream]:
    with start_fault_upstream(tmp_path_factory.mktemp("faults")) as upstream:
        yield upstream


@pytest.fixture(scope="module")
def gateway(
    faults: FaultUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningGateway]:
    base = {"provider": "openai", "base_url": faults.url, "api_key_env": "UP_KEY"}
    config = {
        "models": {
            "*": {**base, "timeouts": {"connect": 0.5, "first_token": 1, "idle": 1}},
            "stall-connect": {
                **base,
                "base_url": f"http://127.0.0.1:{faults.blackhole}/v1",
                "model": "ok",
                "timeouts": {"connect": 0.5},
            },
            "reset-connect": {
                **base,
                "base_url": f"http://127.0.0.1:{faults.resetter}/v1",
                "model": "ok",
            },
            "total": {**base, "model": "ok:n=100,interval=0.05", "timeouts": {"total": 1}},
            **{
                f"anthropic-{fault}": {**base, "provider": "anthropic", "base_url": faults.base}
                | {"model": fault}
                for fault in ("ok", "bad_utf8", "huge_line", "gzip")
            },
        },
        # One attempt, no cooling down: each test's fault is its own.
        "routing": {"retries": 0, "allowed_fails": 0},
        "keepalive_interval": 0,
    }
    directory = tmp_path_factory.mktemp("gateway")
    with run_gateway(directory, config, {"UP_KEY": "sk-up"}) as running:
        yield running


def ask(gateway: RunningGateway, api: API, model: str) -> tuple[int, bytes]:
    with (
        httpx.Client(timeout=30) as client,
        client.stream("POST", f"{gateway.url}{api.path}", json=api.body(model)) as response,
    ):
        return response.status_code, b"".join(response.iter_raw())


def error_of(api: API, status: int, raw: bytes) -> str:
    """The message of an HTTP error, checked to be in the API's shape."""
    body = json.loads(raw)
    if api.name == "messages":
        assert body["type"] == "error" and body["error"]["type"], body
        return str(body["error"]["message"])
    assert body["error"]["type"] == "upstream_error", body
    return str(body["error"]["message"])


def last_record(gateway: RunningGateway, model: str, route: str) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while True:
        rows = [r for r in gateway.records() if r["model"] == model and r["route"] == route]
        if rows or time.monotonic() > deadline:
            assert rows, f"no record of {model} on {route}"
            return rows[-1]
        time.sleep(0.05)


BEFORE_THE_FIRST_BYTE = [
    ("reset-connect", 503, ("reset", "closed")),
    ("reset:phase=headers", 503, ("reset", "closed")),
    ("reset:phase=first_chunk", 502, ("broke",)),
    ("not_http", 502, ("invalid HTTP",)),
    ("stall-connect", 504, ("timed out connecting",)),
    ("stall:phase=headers", 504, ("waiting for the first token",)),
    ("stall:phase=first_chunk", 504, ("waiting for the first token",)),
]


@pytest.mark.parametrize("api", APIS, ids=lambda a: a.name)
@pytest.mark.parametrize(("model", "status", "words"), BEFORE_THE_FIRST_BYTE)
def test_before_the_first_byte_an_error_in_the_apis_shape(
    gateway: RunningGateway, api: API, model: str, status: int, words: tuple[str, ...]
) -> None:
    got, raw = ask(gateway, api, model)
    expected = ANTHROPIC.get(status, status) if api.name == "messages" else status
    assert got == expected, raw
    message = error_of(api, got, raw)
    assert any(word in message for word in words), message
    record = last_record(gateway, model, api.path)
    assert record["outcome"] == "error" and record["status"] == expected
    assert record["error"] == message


AFTER_THE_FIRST_BYTE = [
    ("reset:phase=mid", "broke mid-stream"),
    ("stall:phase=mid", "waiting for the next chunk"),
    ("total", "longer than the total time limit"),
    ("huge_line", "longer than 4194304 bytes"),
    ("bad_utf8", "Invalid UTF-8"),
]


@pytest.mark.parametrize("api", APIS, ids=lambda a: a.name)
@pytest.mark.parametrize(("model", "words"), AFTER_THE_FIRST_BYTE)
def test_after_the_first_byte_the_apis_in_band_error(
    gateway: RunningGateway, api: API, model: str, words: str
) -> None:
    status, raw = ask(gateway, api, model)
    assert status == 200
    assert api.ending(raw) == "error", raw[-300:]
    assert words in api.error_message(raw)
    assert api.text(raw).startswith("w0 w1")  # what came before the fault arrived
    record = last_record(gateway, model, api.path)
    assert record["outcome"] == "error" and words in record["error"]


@pytest.mark.parametrize("api", APIS, ids=lambda a: a.name)
@pytest.mark.parametrize("model", ["gzip", "chunk_ext"])
def test_gzip_chunk_extensions_and_trailers_arrive_intact(
    gateway: RunningGateway, faults: FaultUpstream, api: API, model: str
) -> None:
    status, raw = ask(gateway, api, model)
    assert status == 200 and api.ending(raw) == "clean"
    assert api.text(raw) == text(5)
    sent = [r for r in faults.requests() if r["model"] == model]
    assert sent and all(r["headers"]["accept-encoding"] == "identity" for r in sent)


@pytest.mark.parametrize(
    "closing", ["close_idle:after=0.1", "close_idle:after=0.1,rst=1", "drop_reused"]
)
def test_a_pooled_connection_the_upstream_closed_is_replaced_transparently(
    gateway: RunningGateway, faults: FaultUpstream, closing: str
) -> None:
    """The first request leaves its connection in the pool; the upstream then closes it
    (FIN or reset, while idle), or closes it when the next request arrives on it: the
    next request is served on a new connection, and the client never knows."""
    chat = BY_NAME["chat"]
    began = time.time()
    first, raw = ask(gateway, chat, closing)
    assert first == 200 and chat.ending(raw) == "clean"
    time.sleep(0.4)  # the upstream's idle close has happened
    second, raw = ask(gateway, chat, closing if closing == "drop_reused" else "ok")
    assert second == 200 and chat.ending(raw) == "clean", raw
    assert chat.text(raw) == text(2 if closing == "drop_reused" else 5)
    log = faults.requests()
    if closing == "drop_reused":
        # Sent on the pooled connection, dropped, sent again on a new one.
        tries = [r for r in log if r["model"] == closing][-2:]
        assert [r["served"] > 0 for r in tries] == [True, False], log[-6:]
    else:
        assert log[-1]["served"] == 0  # a new connection
    deadline = time.monotonic() + 10
    while len(rows := [r for r in gateway.records() if r["started_at"] >= began]) < 2:
        assert time.monotonic() < deadline, rows
        time.sleep(0.05)
    assert [r["outcome"] for r in rows] == ["ok", "ok"]


@pytest.mark.parametrize("api", APIS, ids=lambda a: a.name)
@pytest.mark.parametrize(
    ("fault", "words"),
    [("bad_utf8", "not a Messages stream event"), ("huge_line", "longer than 4194304 bytes")],
)
def test_an_anthropic_upstreams_content_faults(
    gateway: RunningGateway, api: API, fault: str, words: str
) -> None:
    """The same faults from an Anthropic upstream, passed through to an Anthropic client
    (``messages``) or translated for the others: never passed on as they came."""
    status, raw = ask(gateway, api, f"anthropic-{fault}")
    assert status == 200
    assert api.ending(raw) == "error", raw[-300:]
    assert words in api.error_message(raw)
    assert b"\xff" not in raw
    assert api.text(raw).startswith("w0 w1")


@pytest.mark.parametrize("api", APIS, ids=lambda a: a.name)
@pytest.mark.parametrize("fault", ["ok", "gzip"])
def test_an_anthropic_upstream_compressed_or_not(
    gateway: RunningGateway, faults: FaultUpstream, api: API, fault: str
) -> None:
    status, raw = ask(gateway, api, f"anthropic-{fault}")
    assert status == 200 and api.ending(raw) == "clean", raw[-300:]
    assert api.text(raw) == text(5)


def test_a_body_whose_last_chunk_comes_late_still_leaves_its_connection_reusable(
    gateway: RunningGateway, faults: FaultUpstream
) -> None:
    """Upstreams often send the body's last chunk apart from ``[DONE]``: the connection
    waits for it in the pool's care instead of being closed (a new TLS handshake for
    the next request)."""
    chat = BY_NAME["chat"]
    status, raw = ask(gateway, chat, "late_end")
    assert status == 200 and chat.text(raw) == text(5) and chat.ending(raw) == "clean"
    time.sleep(0.4)  # the last chunk arrived meanwhile
    status, raw = ask(gateway, chat, "ok")
    assert status == 200 and chat.ending(raw) == "clean"
    late, after = [r for r in faults.requests() if r["model"] in ("late_end", "ok")][-2:]
    assert after["connection"] == late["connection"] and after["served"] > late["served"]
