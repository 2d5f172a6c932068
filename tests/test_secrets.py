"""No secret the gateway holds or is sent shows anywhere it writes: a gateway with known
secrets (an upstream key, the master key, a client key) serves successes and failures
of every kind — wrong and missing keys, a locked-out address, an upstream that quotes
the key it refused, upstream errors before and after the first byte — and then its
log (stdout and stderr, at debug level), its record database (every file of it, as
bytes), ``/metrics`` and every response body are searched for each secret."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import StartGateway, upstream_config
from tests.policies.keys import create_key, wait_records

UPSTREAM_KEY = "sk-upstream-" + secrets.token_hex(16)
MASTER_KEY = "sk-master-" + secrets.token_hex(16)
#: A key a client sends that the gateway does not know (maybe a real key elsewhere).
WRONG_KEY = "sk-sluice-" + secrets.token_hex(21)
WRONG_OTHER = "sk-proj-" + secrets.token_hex(16)


def chat(model: str, stream: bool = False) -> dict[str, Any]:
    return {"model": model, "stream": stream, "messages": [{"role": "user", "content": "hi"}]}


def test_no_secret_in_logs_records_metrics_or_bodies(
    tmp_path: Path, start_gateway: StartGateway, upstream: Any
) -> None:
    db = tmp_path / "records.db"
    client_key = create_key(db, "web")["key"]
    config = upstream_config(
        upstream.url,
        record={"path": str(db), "flush_interval": 0.05, "store_content": True},
        auth={"max_failures": 3, "cache_ttl": 0.2},
        log_level="debug",
        routing={"retries": 1, "backoff": {"base": 0.01, "max": 0.02}},
    )
    gateway = start_gateway(
        config, env={"TEST_UPSTREAM_KEY": UPSTREAM_KEY, "SLUICE_MASTER_KEY": MASTER_KEY}
    )
    bodies: list[bytes] = []
    statuses: list[int] = []

    def send(
        path: str,
        body: dict[str, Any] | None,
        key: str | None,
        header: str = "authorization",
        address: str = "127.0.0.1",
    ) -> None:
        headers = {"anthropic-version": "2023-06-01"}
        if key is not None:
            headers[header] = f"Bearer {key}" if header == "authorization" else key
        transport = httpx.HTTPTransport(local_address=address)
        with httpx.Client(transport=transport, timeout=30) as http:
            method = "POST" if body is not None else "GET"
            with http.stream(method, f"{gateway.url}{path}", json=body, headers=headers) as r:
                bodies.append(r.read())
                bodies.append(str(r.headers).encode())
                statuses.append(r.status_code)

    # Successes, as each kind of key, over three APIs, streamed and not.
    for key in (MASTER_KEY, client_key):
        send("/v1/chat/completions", chat("normal", stream=True), key)
        send("/v1/chat/completions", chat("normal"), key)
        send("/v1/messages", {**chat("normal"), "max_tokens": 5}, key, "x-api-key")
        send("/v1/responses", {"model": "normal", "input": "hi", "stream": True}, key)
    # The upstream refuses its key and quotes it; fails before or after the first byte.
    for model in (
        "echo_key",
        "echo_key:status=403",
        "echo_key:inband=1",
        "error_status:status=401",
        "error_status:status=500",
        "error_status:status=429",
        "context_length",
        "midstream_error",
        "drop",
        "bad_json",
    ):
        send("/v1/chat/completions", chat(model, stream=True), client_key)
        send("/v1/messages", {**chat(model), "max_tokens": 5}, MASTER_KEY, "x-api-key")
    send("/metrics", None, MASTER_KEY)
    metrics = bodies[-2]
    # Refused keys, then the address locked out, the right key too.
    send("/v1/chat/completions", chat("normal"), None, address="127.0.0.2")
    send("/v1/chat/completions", chat("normal"), WRONG_KEY, address="127.0.0.2")
    send("/v1/messages", chat("normal"), WRONG_OTHER, "x-api-key", address="127.0.0.2")
    send("/v1/chat/completions", chat("normal"), WRONG_KEY, address="127.0.0.2")
    send("/v1/chat/completions", chat("normal"), MASTER_KEY, address="127.0.0.2")
    send("/v1/models", None, client_key + "x")

    assert statuses[:8] == [200] * 8
    assert 502 in statuses and 401 in statuses and 429 in statuses
    assert statuses[-3:-1] == [429, 429]
    assert b"sluice_requests_total" in metrics
    rows = wait_records(db, len(statuses))
    assert len(rows) >= len(statuses)
    echoed = [r for r in rows if r["model"] and r["model"].startswith("echo_key")]
    assert echoed and all("[the upstream key]" in (r["error"] or "") for r in echoed)
    gateway.stop()

    places = {
        "log": gateway.log_path.read_bytes(),
        "metrics": metrics,
        "bodies": b"\n".join(bodies),
    }
    for file in tmp_path.rglob("*"):
        if file.is_file() and file.name.startswith(db.name):
            places[str(file)] = file.read_bytes()
    assert b"Incorrect API key" in places["bodies"]  # the upstream did quote it
    for name, secret in (
        ("upstream key", UPSTREAM_KEY),
        ("master key", MASTER_KEY),
        ("client key", client_key),
        ("wrong key", WRONG_KEY),
        ("another wrong key", WRONG_OTHER),
    ):
        for place, data in places.items():
            assert secret.encode() not in data, f"the {name} is in {place}"
