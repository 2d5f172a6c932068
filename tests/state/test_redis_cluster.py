"""Redis Cluster: every multi-key script and command keeps its keys in one slot, and the
gateway runs its cache, coalescing, rate limits, budgets and leases on a real
three-node cluster (``redis-server --cluster-enabled yes``)."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from redis.cluster import key_slot

from sluice.journal.redis import RedisJournals
from sluice.policies.budget import _holds_key, _spend_key
from sluice.state.redis import RedisState, cluster_nodes, limits_uri, redacted
from tests.cluster import RedisCluster, run_redis_cluster
from tests.conftest import StartGateway
from tests.policies.cache_client import post, prompt, upstream_calls
from tests.policies.keys import KEY_ENV, create_key, gateway_config, wait_records
from tests.upstream.scenarios import expected_text


def slot(name: str) -> int:
    return int(key_slot(name.encode()))


def test_each_scripts_keys_share_one_slot() -> None:
    # Budgets: the spend and the holds of one key, read and written by one script.
    for key_id in ("k1", "0f3a9c", "a:b"):
        assert slot(_spend_key(key_id)) == slot(_holds_key(key_id))
    assert slot(_spend_key("k1")) != slot(_spend_key("0f3a9c"))  # keys spread over slots

    # The cache: every key its scripts touch (some named inside the script from values
    # it reads) is in the slot of the key each script names, so the node that runs it
    # holds them all.
    async def journal_keys() -> list[str]:
        state = RedisState("redis://127.0.0.1:1/0")  # nothing connects
        journals = RedisJournals(state, max_entries=10, max_bytes=1000)
        prefix = journals.prefix
        names = [journals._key("j1"), journals._key("j2")]
        names += [f"{name}:readers" for name in names]
        names += [f"{prefix}cache:{n}" for n in ("e1", "e2")]
        names += [f"{prefix}cache:{n}" for n in ("lru", "expiry", "sizes", "bytes")]
        await state.close()
        return names

    names = asyncio.run(journal_keys())
    assert {slot(name) for name in names} == {slot(names[0])}


def test_cluster_urls() -> None:
    url = "redis+cluster://user:s3cret@10.0.0.1:7000,10.0.0.2:7001"
    assert cluster_nodes(url) == [("10.0.0.1", 7000), ("10.0.0.2", 7001)]
    assert limits_uri(url) == "async+redis+cluster://user:s3cret@10.0.0.1:7000,10.0.0.2:7001"
    assert "s3cret" not in redacted(url)
    with pytest.raises(ValueError, match="host:port"):
        cluster_nodes("redis+cluster://10.0.0.1")


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    with run_redis_cluster(tmp_path_factory.mktemp("redis-cluster")) as cluster:
        yield cluster


PRICED = {"normal": {"input": 100_000, "output": 100_000}}


def test_the_gateway_on_a_redis_cluster(
    tmp_path: Path, start_gateway: StartGateway, upstream: Any, redis_cluster: RedisCluster
) -> None:
    db = tmp_path / "sluice.db"
    alice = create_key(db, "alice", "--budget-usd", "3")
    bob = create_key(db, "bob", "--rpm", "2", "--tpm", "100000")
    config = gateway_config(
        upstream.url,
        db,
        redis_url=redis_cluster.url,
        pricing=PRICED,
        limits={"output_estimate": 10, "fail": "closed"},
        cache={"lease": 2},
    )
    gateway = start_gateway(config, env=KEY_ENV)

    def sdk(key: dict[str, Any]) -> openai.OpenAI:
        return openai.OpenAI(base_url=gateway.api, api_key=key["key"], max_retries=0)

    # The cache and coalescing: identical requests at once share one generation, then
    # the entry is a hit (its scripts and streams ran on the cluster).
    text, model = prompt(), "paced:n=20,interval=0.05"
    payload = {
        "model": model,
        "messages": [{"role": "user", "content": text}],
        "stream": True,
        "temperature": 0,
    }
    auth = {"Authorization": f"Bearer {bob['key']}"}
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        replies = list(pool.map(lambda _: post(gateway.api, payload, auth), range(2)))
    assert sorted(r.cache or "" for r in replies) == ["coalesced", "miss"]
    assert {r.text for r in replies} == {expected_text(model)}
    assert upstream_calls(upstream, text) == 1

    # Rate limits (limits' own cluster storage): bob's third request in a minute.
    with pytest.raises(openai.RateLimitError) as limited:
        sdk(bob).chat.completions.create(
            model="normal", messages=[{"role": "user", "content": "x"}]
        )
    assert "on requests per min (RPM): Limit 2" in limited.value.message

    # Budgets: spend and holds in one slot; $1.40 a request, two fit in $3.
    messages = [{"role": "user", "content": "Tell me a story"}]
    for _ in range(2):
        assert sdk(alice).chat.completions.create(model="normal", messages=messages)
    with pytest.raises(openai.RateLimitError) as spent:
        sdk(alice).chat.completions.create(model="normal", messages=messages)
    assert spent.value.code == "insufficient_quota"
    assert "has spent $2.8000 of its $3.00 budget" in spent.value.message

    rows = wait_records(db, 6)
    assert [r["status"] for r in rows] == [200, 200, 429, 200, 200, 429]
    gateway.stop()  # it closes its cluster client without a complaint (the log below)
    log = gateway.log()
    for trouble in ("unavailable", "CROSSSLOT", "Traceback", "ERROR"):
        assert trouble not in log, log
    # The keys live on more than one node: a real cluster, not one node doing it all.
    with redis_cluster.client() as client:
        nodes = {client.get_node_from_key(k).name for k in client.keys(target_nodes="all")}
    assert len(nodes) >= 2
