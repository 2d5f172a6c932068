"""Streaming lifecycle: disconnects, keep-alives, failures before and after the first byte."""

from __future__ import annotations

import json
import socket
import time
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import StartGateway, upstream_config
from tests.gateway import RunningGateway, free_port
from tests.upstream.scenarios import expected_text

KEY_ENV = {"TEST_UPSTREAM_KEY": "sk-test"}
MESSAGES: list[Any] = [{"role": "user", "content": "Tell me a story"}]


@pytest.fixture
def gateway(start_gateway: StartGateway, upstream: Any) -> RunningGateway:
    # One attempt per request: these tests are about the relay, and retries (see
    # tests/policies/test_route.py) outlast the short keep-alive interval, after which
    # an error can only be in-band.
    return start_gateway(upstream_config(upstream.url, routing={"retries": 0}), env=KEY_ENV)


def _open_stream(gateway: RunningGateway, model: str) -> socket.socket:
    body = json.dumps({"model": model, "messages": MESSAGES, "stream": True}).encode()
    sock = socket.create_connection(("127.0.0.1", int(gateway.url.rsplit(":", 1)[1])), timeout=10)
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    return sock


def _upstream_connection_closed(upstream: Any, scenario: str, timeout: float = 5.0) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = upstream.log()
        ids = {r["connection"] for r in log["requests"] if r["scenario"].startswith(scenario)}
        closed = [c["closed_at"] for c in log["connections"] if c["id"] in ids and c["closed_at"]]
        if closed:
            return float(max(closed))
        time.sleep(0.02)
    raise AssertionError("the upstream connection was never closed")


@pytest.mark.parametrize(
    ("model", "read_first"),
    [("paced:n=1000,interval=0.05", True), ("slow_first_body:delay=30", False)],
    ids=["mid-stream", "waiting-for-first-token"],
)
def test_client_disconnect_cancels_the_upstream(
    gateway: RunningGateway, upstream: Any, model: str, read_first: bool
) -> None:
    upstream.reset()
    sock = _open_stream(gateway, model)
    if read_first:
        received = b""
        while received.count(b"data: ") < 3:
            received += sock.recv(65536)
    else:
        time.sleep(0.5)
    closed_by_client = time.time()
    sock.close()
    closed_upstream = _upstream_connection_closed(upstream, model.split(":")[0])
    assert closed_upstream - closed_by_client < 0.1
    rows = gateway.wait_records(1)
    assert rows[-1]["outcome"] == "client_disconnected"
    if read_first:
        assert rows[-1]["chunks"] >= 2
        assert rows[-1]["usage_source"] == "estimated"


def test_keepalive_comments_while_waiting_for_the_first_token(
    start_gateway: StartGateway, upstream: Any
) -> None:
    gateway = start_gateway(upstream_config(upstream.url, keepalive_interval=0.2), env=KEY_ENV)
    body = {"model": "slow_first_body:delay=1", "messages": MESSAGES, "stream": True}
    with (
        httpx.Client(timeout=20) as client,
        client.stream("POST", f"{gateway.api}/chat/completions", json=body) as response,
    ):
        raw = b"".join(response.iter_raw())
    head, _, _rest = raw.partition(b"data: ")
    assert head.count(b": keep-alive\n\n") >= 2
    assert raw.endswith(b"data: [DONE]\n\n")
    # The SDK reads through the comments.
    stream = openai.OpenAI(base_url=gateway.api, api_key="x", max_retries=0).chat.completions
    chunks = list(stream.create(model="slow_first_body:delay=0.5", messages=MESSAGES, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected_text(
        "slow_first_body:delay=0.5"
    )


@pytest.mark.parametrize(
    ("status", "error_class", "client_status"),
    [
        (500, openai.InternalServerError, 502),
        (503, openai.InternalServerError, 503),
        (429, openai.RateLimitError, 429),
        (400, openai.BadRequestError, 400),
        (401, openai.InternalServerError, 502),
    ],
)
def test_upstream_error_status_before_the_first_byte(
    gateway: RunningGateway, status: int, error_class: type[Exception], client_status: int
) -> None:
    client = openai.OpenAI(base_url=gateway.api, api_key="x", max_retries=0)
    with pytest.raises(error_class) as caught:
        list(
            client.chat.completions.create(
                model=f"error_status:status={status}", messages=MESSAGES, stream=True
            )
        )
    error: Any = caught.value
    assert error.status_code == client_status
    assert error.body["message"]
    if status == 429:
        assert error.response.headers.get("retry-after")
    rows = gateway.wait_records(1)
    assert rows[-1]["status"] == client_status
    assert rows[-1]["outcome"] in ("error", "rejected")


@pytest.mark.parametrize("model", ["midstream_error:after=3", "drop:after=3"])
def test_failure_after_the_first_byte_is_in_band(gateway: RunningGateway, model: str) -> None:
    body = {"model": model, "messages": MESSAGES, "stream": True}
    with (
        httpx.Client(timeout=20) as client,
        client.stream("POST", f"{gateway.api}/chat/completions", json=body) as response,
    ):
        assert response.status_code == 200
        raw = b"".join(response.iter_raw())
    events = [line[6:] for line in raw.decode().split("\n") if line.startswith("data: ")]
    assert "[DONE]" not in events  # never fake a clean end
    last = json.loads(events[-1])
    assert last["error"]["message"]
    sdk = openai.OpenAI(base_url=gateway.api, api_key="x", max_retries=0)
    with pytest.raises(openai.APIError):
        list(sdk.chat.completions.create(model=model, messages=MESSAGES, stream=True))
    rows = gateway.wait_records(2)
    assert {r["outcome"] for r in rows} == {"error"}
    assert all(r["error"] for r in rows)


@pytest.mark.parametrize("scenario", ["multibyte", "separators", "large", "comments", "burst"])
def test_content_arrives_unchanged(gateway: RunningGateway, scenario: str) -> None:
    client = openai.OpenAI(base_url=gateway.api, api_key="x", max_retries=0)
    chunks = list(client.chat.completions.create(model=scenario, messages=MESSAGES, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected_text(scenario)
    # The seed endpoint carries the same bytes as plain text.
    with httpx.Client(timeout=20) as http:
        response = http.get(f"{gateway.url}/", params={"model": scenario})
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert response.content.decode("utf-8") == expected_text(scenario)


def test_seed_endpoint_streams_plain_text(gateway: RunningGateway) -> None:
    pieces: list[bytes] = []
    with (
        httpx.Client(timeout=20) as client,
        client.stream("GET", f"{gateway.url}/", params={"model": "paced:n=6,interval=0.05"}) as r,
    ):
        assert r.status_code == 200
        assert r.headers["cache-control"] == "no-cache"
        assert r.headers["x-accel-buffering"] == "no"
        assert r.headers["x-content-type-options"] == "nosniff"
        pieces.extend(r.iter_raw())
    assert len(pieces) >= 3  # it grew while the model was writing
    assert b"".join(pieces).decode() == expected_text("paced:n=6,interval=0.05")


def test_seed_endpoint_late_failure_is_a_final_line(gateway: RunningGateway) -> None:
    with httpx.Client(timeout=20) as client:
        response = client.get(f"{gateway.url}/", params={"model": "drop:after=2"})
    assert response.status_code == 200
    assert response.text.rstrip().splitlines()[-1].startswith("[error:")


def test_timeouts(start_gateway: StartGateway, upstream: Any) -> None:
    config = upstream_config(
        upstream.url, timeouts={"first_token": 0.3, "idle": 0.3}, keepalive_interval=10
    )
    gateway = start_gateway(config, env=KEY_ENV)
    client = openai.OpenAI(base_url=gateway.api, api_key="x", max_retries=0)
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="slow_first:delay=3", messages=MESSAGES, stream=True)
    assert caught.value.status_code == 504
    with pytest.raises(openai.APIError, match="timed out"):
        list(client.chat.completions.create(model="stall:after=2", messages=MESSAGES, stream=True))


def test_unreachable_upstream_is_503(start_gateway: StartGateway) -> None:
    closed = f"http://127.0.0.1:{free_port()}/v1"
    gateway = start_gateway(upstream_config(closed), env=KEY_ENV)
    client = openai.OpenAI(base_url=gateway.api, api_key="x", max_retries=0)
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="normal", messages=MESSAGES)
    assert caught.value.status_code == 503
    rows = gateway.wait_records(1)
    assert rows[-1]["outcome"] == "error" and rows[-1]["status"] == 503


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_slow_client_does_not_grow_memory(gateway: RunningGateway) -> None:
    """Backpressure: a client that stops reading holds the upstream, not the gateway's RAM."""
    pid = gateway.process.pid
    before = _rss_kib(pid)
    sock = _open_stream(gateway, "large:n=200,size=262144")  # ~50 MB if nothing pushed back
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.recv(1024)
    time.sleep(2)
    grown = _rss_kib(pid) - before
    sock.close()
    assert grown < 16 * 1024, f"gateway RSS grew by {grown} KiB"
