"""Two gateway processes on one PostgreSQL act as one: keys made by the CLI work on both
and a revocation reaches both within the key cache's time; budgets are shared; a
Responses conversation started on one continues on the other; ``sluice requests`` shows
the records of both. With PostgreSQL stopped mid-run requests are still served,
``/readyz`` says degraded, and every record is written once it is back."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from sluice.app import SHARED_RECORDS_RESEED
from tests.conftest import StartGateway, upstream_config
from tests.gateway import RunningGateway
from tests.policies.keys import KEY_ENV, MESSAGES, sluice
from tests.postgres import PASSWORD, PostgresServer, query

CACHE_TTL = 0.5
#: $0.10 a token: the test upstream's "normal" answer to MESSAGES costs $1.40.
PRICED = {"normal": {"input": 100_000, "output": 100_000}}


def config(upstream: Any, url: str, spill: Path, **extra: Any) -> dict[str, Any]:
    record = {"url": url, "flush_interval": 0.05, "spill_dir": str(spill)}
    record.update(extra.pop("record", {}))
    return upstream_config(upstream.url, record=record, auth={"cache_ttl": CACHE_TTL}, **extra)


def pair(
    start_gateway: StartGateway, upstream: Any, url: str, tmp_path: Path, **extra: Any
) -> list[RunningGateway]:
    return [
        start_gateway(config(upstream, url, tmp_path / f"spill{i}", **extra), env=KEY_ENV)
        for i in range(2)
    ]


def create_key(*options: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    done = sluice("keys", "create", "--json", *options, env=env)
    assert done.returncode == 0, done.stderr
    assert PASSWORD not in done.stdout + done.stderr
    created: dict[str, Any] = json.loads(done.stdout)
    return created


def chat(gateway: RunningGateway, key: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    body = {"model": "normal", "messages": MESSAGES}
    return httpx.post(f"{gateway.api}/chat/completions", json=body, headers=headers, timeout=20)


def within(seconds: float, condition: Callable[[], bool]) -> float:
    """How long ``condition`` took to hold (polled); fails past ``seconds``."""
    t0 = time.monotonic()
    while not condition():
        assert time.monotonic() - t0 < seconds, "timed out"
        time.sleep(0.05)
    return time.monotonic() - t0


def recorded(url: str) -> list[tuple[Any, ...]]:
    """(id, key_id, cost_usd) of every record but the harness's readiness probes."""
    return query(url, "SELECT id, key_id, cost_usd FROM requests WHERE route <> '/readyz'")


def test_keys_revocations_and_records_are_shared(
    start_gateway: StartGateway, upstream: Any, postgres_url: str, tmp_path: Path
) -> None:
    first = create_key("--name", "first", "--db", postgres_url)
    gateways = pair(start_gateway, upstream, postgres_url, tmp_path)
    ids = []
    for gateway in gateways:
        answer = chat(gateway, first["key"])
        assert answer.status_code == 200, answer.text
        ids.append(answer.headers["x-request-id"])

    # A key made through the environment variable, once both gateways run: each sees it
    # once its "no such key" answer is past the cache's time.
    assert chat(gateways[1], "sk-sluice-" + "x" * 43).status_code == 401
    second = create_key("--name", "second", env={"SLUICE_DATABASE_URL": postgres_url})
    for gateway in gateways:
        within(CACHE_TTL + 2, lambda g=gateway: chat(g, second["key"]).status_code == 200)

    revoked = sluice("keys", "revoke", first["id"], "--db", postgres_url)
    assert revoked.returncode == 0 and f"revoked key {first['id']}" in revoked.stdout
    for gateway in gateways:
        took = within(CACHE_TTL + 2, lambda g=gateway: chat(g, first["key"]).status_code == 401)
        assert took <= CACHE_TTL + 1
        refused = chat(gateway, first["key"]).json()["error"]
        assert refused["code"] == "key_revoked"

    listed = sluice("keys", "list", "--db", postgres_url)
    assert listed.returncode == 0 and "revoked" in listed.stdout and "second" in listed.stdout
    shown = sluice("requests", "--db", postgres_url, "--last", "100")
    assert shown.returncode == 0, shown.stderr
    for request_id in ids:  # one from each instance
        assert request_id[-8:] in shown.stdout
    for text in [shown.stdout, shown.stderr, listed.stdout, *(g.log() for g in gateways)]:
        assert PASSWORD not in text


def test_budgets_are_shared(
    start_gateway: StartGateway, upstream: Any, postgres_url: str, tmp_path: Path
) -> None:
    small = create_key("--name", "small", "--budget-usd", "3", "--db", postgres_url)
    # Requests hold 4 + 10 tokens while in flight: $1.40, what they cost.
    limits = {"output_estimate": 10}
    one, two = pair(start_gateway, upstream, postgres_url, tmp_path, pricing=PRICED, limits=limits)

    # $0 → 1.40 on one; the other reads that spend from the shared records.
    assert chat(one, small["key"]).status_code == 200
    within(5, lambda: len(recorded(postgres_url)) == 1)
    assert chat(two, small["key"]).status_code == 200  # 1.40 + 1.40 <= 3: admitted
    refused = chat(two, small["key"])  # 2.80 + 1.40 > 3, only if it counted one's 1.40
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "insufficient_quota"
    # The first re-reads the key's spend from the shared records within seconds.
    within(5, lambda: len(recorded(postgres_url)) == 3)
    time.sleep(SHARED_RECORDS_RESEED + 0.5)
    assert chat(one, small["key"]).status_code == 429
    costs = [cost for _, key_id, cost in recorded(postgres_url) if key_id == small["id"] and cost]
    assert costs == [pytest.approx(1.4)] * 2


def test_a_conversation_started_on_one_continues_on_the_other(
    start_gateway: StartGateway, upstream: Any, postgres_url: str, tmp_path: Path
) -> None:
    one, two = pair(start_gateway, upstream, postgres_url, tmp_path)
    with (
        openai.OpenAI(base_url=one.api, api_key="none", max_retries=0) as a,
        openai.OpenAI(base_url=two.api, api_key="none", max_retries=0) as b,
    ):
        first = a.responses.create(model="normal", input="Tell me a story")
        assert first.status == "completed"
        answer = b.responses.create(
            model="normal", input="And then?", previous_response_id=first.id
        )
        assert answer.status == "completed" and answer.previous_response_id == first.id
        assert b.responses.retrieve(first.id).output_text == first.output_text
        items = a.responses.input_items.list(answer.id)
        assert [item.type for item in items.data] == ["message"]
        b.responses.delete(first.id)
        with pytest.raises(openai.NotFoundError):
            a.responses.retrieve(first.id)


def test_postgres_stopped_mid_run_loses_no_record(
    start_gateway: StartGateway,
    upstream: Any,
    postgres_server: PostgresServer,
    postgres_url: str,
    tmp_path: Path,
) -> None:
    key = create_key("--name", "k", "--db", postgres_url)["key"]
    spill = tmp_path / "spill"
    gateway = start_gateway(
        config(upstream, postgres_url, spill, record={"max_pending": 5}), env=KEY_ENV
    )
    for _ in range(3):
        assert chat(gateway, key).status_code == 200
    within(5, lambda: len(recorded(postgres_url)) == 3)

    postgres_server.stop()
    try:
        # Served while the database is down: the key's last answer stands, records wait
        # in memory up to the bound and then in the spill file.
        for _ in range(20):
            answer = chat(gateway, key)
            assert answer.status_code == 200, answer.text
        ready = httpx.get(f"{gateway.url}/readyz", timeout=5)
        assert ready.status_code == 200 and ready.json()["status"] == "degraded"
        assert ready.json()["records_held"] >= 20
        assert list(spill.glob("records-*.jsonl"))
    finally:
        postgres_server.start()

    within(30, lambda: httpx.get(f"{gateway.url}/readyz", timeout=5).json()["status"] == "ready")
    rows = recorded(postgres_url)
    assert len(rows) == 23 and len({row[0] for row in rows}) == 23
    assert PASSWORD not in gateway.log()
