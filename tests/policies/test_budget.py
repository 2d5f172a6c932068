"""Cost on every record, spend per key, and budgets, against the memory and Redis backends."""

from __future__ import annotations

import concurrent.futures
import json
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from sluice import config
from sluice.pricing import DEFAULT_PRICES, Price, PriceTable
from tests.cluster import RedisServer
from tests.conftest import StartGateway
from tests.gateway import RunningGateway
from tests.policies.keys import (
    KEY_ENV,
    MESSAGES,
    create_key,
    gateway_config,
    list_keys,
    wait_records,
)

#: $0.10 a token. The test upstream's "normal" answer to MESSAGES is 4 prompt tokens
#: (words) and 10 completion tokens (chunks): $1.40 a request.
PRICED = {"normal": {"input": 100_000, "output": 100_000}}
PER_REQUEST = 1.4
#: Requests that set no max_tokens hold 10 output tokens: 4 + 10 tokens, $1.40, what
#: they cost.
ESTIMATE = {"output_estimate": 10}


def ask(gateway: RunningGateway, key: str, model: str = "normal", stream: bool = True) -> str:
    with openai.OpenAI(base_url=gateway.api, api_key=key, max_retries=0, timeout=20) as sdk:
        if not stream:
            answer = sdk.chat.completions.create(model=model, messages=MESSAGES)
            return answer.choices[0].message.content or ""
        chunks = sdk.chat.completions.create(model=model, messages=MESSAGES, stream=True)
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def refused(gateway: RunningGateway, key: str) -> openai.RateLimitError:
    with pytest.raises(openai.RateLimitError) as caught:
        ask(gateway, key)
    return caught.value


def test_requests_succeed_until_the_budget_is_spent_then_are_refused(
    tmp_path: Path, start_gateway: StartGateway, upstream: Any, backend: dict[str, Any]
) -> None:
    db = tmp_path / "sluice.db"
    small = create_key(db, "small", "--budget-usd", "3")
    free = create_key(db, "unlimited")
    config = gateway_config(upstream.url, db, pricing=PRICED, limits=ESTIMATE, **backend)
    gateway = start_gateway(config, env=KEY_ENV)

    # $0 → 1.40 → 2.80: the third is refused, as 2.80 + its estimate 1.40 passes $3.
    for _ in range(2):
        assert ask(gateway, small["key"])
    error = refused(gateway, small["key"])
    assert error.status_code == 429
    assert error.code == "insufficient_quota"
    assert error.type == "insufficient_quota"
    assert error.response.headers["x-should-retry"] == "false"
    assert (
        f"the API key {small['id']} (small) has spent $2.8000 of its $3.00 budget,"
        " $0.0000 is held by its requests in flight, and this request may cost up to $1.4000"
    ) in error.message
    assert ask(gateway, free["key"])  # other keys are not affected

    rows = wait_records(db, 4)
    mine = [r for r in rows if r["key_id"] == small["id"]]
    assert [(r["outcome"], r["status"]) for r in mine] == [("ok", 200)] * 2 + [("rejected", 429)]
    assert [r["cost_usd"] for r in mine[:2]] == [pytest.approx(PER_REQUEST)] * 2
    assert mine[2]["cost_usd"] is None
    assert "exceeded your current quota" in mine[2]["error"]
    spend = {row["id"]: row["spend_usd"] for row in list_keys(db)}
    assert spend == {small["id"]: pytest.approx(2 * PER_REQUEST), free["id"]: pytest.approx(1.4)}


def test_requests_in_flight_hold_their_estimate_so_none_overshoots(
    tmp_path: Path, start_gateway: StartGateway, upstream: Any, backend: dict[str, Any]
) -> None:
    db = tmp_path / "sluice.db"
    key = create_key(db, "small", "--budget-usd", "3")
    model = "paced:n=10,interval=0.1"  # ten tokens over a second: all five in flight at once
    pricing = {model: PRICED["normal"]}
    config = gateway_config(upstream.url, db, pricing=pricing, limits=ESTIMATE, **backend)
    gateway = start_gateway(config, env=KEY_ENV)

    def one(_: int) -> int:
        try:
            return 200 if ask(gateway, key["key"], model) else 0
        except openai.RateLimitError as error:
            assert error.code == "insufficient_quota"
            assert "held by its requests in flight" in error.message
            return error.status_code

    with concurrent.futures.ThreadPoolExecutor(5) as pool:
        statuses = sorted(pool.map(one, range(5)))
    # Each holds $1.40 while it runs: two fit in $3, the other three are refused at once.
    assert statuses == [200, 200, 429, 429, 429]
    rows = wait_records(db, 5)
    assert sum(r["cost_usd"] or 0 for r in rows) == pytest.approx(2 * PER_REQUEST)
    (row,) = list_keys(db)
    assert row["spend_usd"] == pytest.approx(2 * PER_REQUEST) and row["spend_usd"] <= 3
    # The holds went with their requests: the spend alone decides now (2.80 + 1.40 > 3).
    with pytest.raises(openai.RateLimitError) as caught:
        ask(gateway, key["key"], model)
    assert "$0.0000 is held by its requests in flight" in caught.value.message


def test_spend_survives_a_restart(
    tmp_path: Path,
    start_gateway: StartGateway,
    upstream: Any,
    backend: dict[str, Any],
    request: pytest.FixtureRequest,
) -> None:
    db = tmp_path / "sluice.db"
    key = create_key(db, "small", "--budget-usd", "3")
    config = gateway_config(upstream.url, db, pricing=PRICED, limits=ESTIMATE, **backend)
    first = start_gateway(config, env=KEY_ENV)
    assert ask(first, key["key"])
    first.stop()

    second = start_gateway(config, env=KEY_ENV)
    assert ask(second, key["key"])  # 1.40 + 1.40 < 3: admitted
    refused(second, key["key"])  # 2.80 + 1.40 > 3
    second.stop()

    if backend:
        # Redis kept the running spend so far; without it, it comes from the records.
        server: RedisServer = request.getfixturevalue("redis_server")
        server.flush()
    third = start_gateway(config, env=KEY_ENV)
    assert refused(third, key["key"]).code == "insufficient_quota"


def test_a_disconnected_stream_is_charged_its_estimated_usage(
    tmp_path: Path, start_gateway: StartGateway, upstream: Any, backend: dict[str, Any]
) -> None:
    db = tmp_path / "sluice.db"
    # The first request's estimate, 14 tokens at $1 a million, fits; once its cut stream
    # is charged (8 tokens or more), another does not.
    key = create_key(db, "tiny", "--budget-usd", "0.00002")
    slow = {
        "provider": "openai",
        "base_url": upstream.url,
        "api_key_env": "TEST_UPSTREAM_KEY",
        "model": "paced:n=1000,interval=0.02",
    }
    config = gateway_config(
        upstream.url,
        db,
        models={"slow": slow},
        pricing={"slow": {"input": 1, "output": 1}},
        limits=ESTIMATE,
        **backend,
    )
    gateway = start_gateway(config, env=KEY_ENV)
    body = json.dumps({"model": "slow", "messages": MESSAGES, "stream": True}).encode()
    port = int(gateway.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {key['key']}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        received = b""
        while received.count(b"data: ") < 5:
            received += sock.recv(65536)
    (row,) = wait_records(db, 1)
    assert row["outcome"] == "client_disconnected"
    assert row["usage_source"] == "estimated"
    assert row["output_tokens"] >= 4
    assert row["cost_usd"] == pytest.approx((row["input_tokens"] + row["output_tokens"]) / 1e6)
    # It counted against the budget: the next request is refused.
    with pytest.raises(openai.RateLimitError):
        ask(gateway, key["key"], "slow")


def test_cost_on_every_record(tmp_path: Path, start_gateway: StartGateway, upstream: Any) -> None:
    db = tmp_path / "sluice.db"

    def to(model: str) -> dict[str, Any]:
        return {
            "provider": "openai",
            "base_url": upstream.url,
            "api_key_env": "TEST_UPSTREAM_KEY",
            "model": model,
        }

    models = {
        "gpt-4o-mini": to("normal"),  # the built-in price of the public name
        "alias": to("normal"),  # no price of its own: the upstream model's
        "unpriced": to("paced:n=3,interval=0.001"),
    }
    config = gateway_config(upstream.url, db, models=models, pricing=PRICED)
    gateway = start_gateway(config, env=KEY_ENV)
    for model in models:
        assert ask(gateway, "any", model)
    assert ask(gateway, "any", "alias", stream=False)
    costs = {(r["model"], r["stream"]): r["cost_usd"] for r in wait_records(db, 4)}
    assert costs == {
        ("gpt-4o-mini", 1): pytest.approx((4 * 0.15 + 10 * 0.60) / 1e6),
        ("alias", 1): pytest.approx(PER_REQUEST),
        ("alias", 0): pytest.approx(PER_REQUEST),
        ("unpriced", 1): None,  # unknown, never a silent zero
    }


def test_budget_checks_read_the_records_while_redis_is_down(
    tmp_path: Path, start_gateway: StartGateway, upstream: Any, redis_server: RedisServer
) -> None:
    if not redis_server.running:
        redis_server.start()
    redis_server.flush()
    db = tmp_path / "sluice.db"
    spent = create_key(db, "spent", "--budget-usd", "2")
    fresh = create_key(db, "fresh", "--budget-usd", "100")
    config = gateway_config(
        upstream.url,
        db,
        pricing=PRICED,
        redis_url=redis_server.url,
        limits={"fail": "open", **ESTIMATE},
    )
    gateway = start_gateway(config, env=KEY_ENV)
    assert ask(gateway, spent["key"])
    wait_records(db, 1)
    redis_server.stop()
    try:
        assert refused(gateway, spent["key"]).code == "insufficient_quota"
        assert ask(gateway, fresh["key"])
    finally:
        redis_server.start()
    # Back: the increment lost during the outage is re-read from the records.
    deadline = time.monotonic() + 10
    while True:
        page = httpx.get(f"{gateway.url}/healthz")
        if page.status_code == 200 and redis_server.running:
            break
        assert time.monotonic() < deadline
    assert refused(gateway, spent["key"]).code == "insufficient_quota"
    wait_records(db, 4)
    (row,) = [r for r in list_keys(db) if r["id"] == fresh["id"]]
    assert row["spend_usd"] == pytest.approx(PER_REQUEST)


def test_prices() -> None:
    table = PriceTable(config.parse(PRICING_YAML, {}).pricing)
    assert table.price("gpt-4o-mini") == Price(0.15, 0.60)
    assert table.price("gpt-4o") == Price(1.0, 2.0)  # configured over the default
    assert table.price("local", "gpt-4.1") == Price(0.0, 0.0)  # the public name first
    assert table.price("unknown", "gpt-4.1-nano-2025-04-14") == Price(0.10, 0.40)
    assert table.price("unknown", None) is None
    assert table.cost(Price(2.5, 10.0), 1_000, 500) == pytest.approx(0.0075)
    assert table.cost(None, 1_000, 500) is None
    assert table.cost(Price(2.5, 10.0), None, 500) is None
    assert set(DEFAULT_PRICES) >= {
        "gpt-4o",
        "gpt-4o-mini",
        "gpt-4.1",
        "gpt-4.1-mini",
        "gpt-4.1-nano",
        "o3",
        "o4-mini",
        "gpt-3.5-turbo",
        "claude-sonnet-4-5",
        "claude-haiku-4-5-20251001",
        "claude-opus-4-1",
    }
    assert table.price("claude-sonnet-4-5-20250929") == Price(3.0, 15.0)


PRICING_YAML = """
pricing:
  gpt-4o: {input: 1, output: 2}
  local: {input: 0, output: 0}
"""


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("pricing:\n  m: {input: 1}\n", "line 2: pricing.m.output: missing"),
        ("pricing:\n  m: {input: -1, output: 1}\n", "pricing.m.input: expected a non-negative"),
        ("pricing:\n  m: {input: 1, output: 1, cached: 0.5}\n", "unknown key(s) 'cached'"),
        ("pricing:\n  m: 3\n", "pricing.m: expected a mapping"),
    ],
)
def test_bad_prices_name_the_line(text: str, message: str) -> None:
    with pytest.raises(config.ConfigError) as info:
        config.parse(text, {}, origin="sluice.yaml")
    assert message in str(info.value)
