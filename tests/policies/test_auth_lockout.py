"""Failed authentication is limited per client address (``auth.max_failures`` per
minute): then 429 with ``Retry-After`` for every request that needs a key from that
address, a right key included; other addresses are served. Over memory and Redis."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from sluice import config
from tests.conftest import StartGateway, upstream_config

KEY_ENV = {"TEST_UPSTREAM_KEY": "sk-test"}
MASTER = "sk-master-lockout-" + "l" * 30
CHAT = {"model": "normal", "messages": [{"role": "user", "content": "hi"}]}
MESSAGES = {"model": "normal", "max_tokens": 5, "messages": CHAT["messages"]}


def client(address: str) -> httpx.Client:
    """Requests from ``address`` (any of 127.0.0.0/8 reaches the gateway on loopback)."""
    transport = httpx.HTTPTransport(local_address=address)
    return httpx.Client(transport=transport, timeout=20)


def test_failed_keys_lock_the_address_out(
    start_gateway: StartGateway, upstream: Any, backend: dict[str, Any]
) -> None:
    gateway = start_gateway(
        upstream_config(upstream.url, auth={"max_failures": 3}, **backend),
        env={**KEY_ENV, "SLUICE_MASTER_KEY": MASTER},
    )
    url = f"{gateway.api}/chat/completions"
    with client("127.0.0.1") as attacker, client("127.0.0.2") as other:
        wrong = [
            attacker.post(url, json=CHAT, headers={"Authorization": f"Bearer sk-guess-{i}"})
            for i in range(3)
        ]
        assert [r.status_code for r in wrong] == [401, 401, 401]
        missing = attacker.post(url, json=CHAT)
        assert missing.status_code == 429, missing.text
        error = missing.json()["error"]
        assert (error["type"], error["code"]) == ("rate_limit_error", "too_many_failed_attempts")
        assert "127.0.0.1" in error["message"]
        assert 1 <= int(missing.headers["retry-after"]) <= 60
        # The right key from the locked address waits too: guessing stops paying.
        right = attacker.post(url, json=CHAT, headers={"Authorization": f"Bearer {MASTER}"})
        assert right.status_code == 429
        # In the Anthropic API's shape on its routes.
        anthropic = attacker.post(
            f"{gateway.api}/messages", json=MESSAGES, headers={"x-api-key": MASTER}
        )
        assert anthropic.status_code == 429
        assert anthropic.json()["error"]["type"] == "rate_limit_error"
        # Probes need no key, so no lockout.
        assert attacker.get(f"{gateway.url}/healthz").status_code == 200
        # Another address is served.
        served = other.post(url, json=CHAT, headers={"Authorization": f"Bearer {MASTER}"})
        assert served.status_code == 200, served.text
        assert other.post(url, json=CHAT).status_code == 401

    rows = gateway.wait_records(8)
    refused = [(r["client"], r["status"]) for r in rows if r["route"] != "/healthz"]
    assert refused == [("127.0.0.1", 401)] * 3 + [("127.0.0.1", 429)] * 3 + [
        ("127.0.0.2", 200),
        ("127.0.0.2", 401),
    ]


def test_the_setting() -> None:
    assert config.Settings().auth_max_failures == 10
    assert config.parse("auth: {max_failures: 0}\n", {}, origin="x").auth_max_failures == 0
    with pytest.raises(config.ConfigError, match=r"auth\.max_failures"):
        config.parse("auth: {max_failures: -1}\n", {}, origin="x")
