"""Coalescing through the real gateway: identical requests in flight share one upstream
generation, on one instance (memory and Redis) and over three instances behind nginx;
clients leaving, every client leaving, and a leading instance dying."""

from __future__ import annotations

import concurrent.futures
import contextlib
import time
from pathlib import Path
from typing import Any

from tests.cluster import RedisServer, cluster
from tests.conftest import StartGateway, upstream_config
from tests.policies.cache_client import (
    KEY_ENV,
    Reply,
    body,
    open_stream,
    post,
    prompt,
    read_events,
    upstream_calls,
)
from tests.upstream.scenarios import expected_text


def _stream(model: str, text: str, **extra: Any) -> dict[str, Any]:
    return body(
        model, text, stream=True, stream_options={"include_usage": True}, temperature=0, **extra
    )


def _together(apis: list[str], payload: dict[str, Any]) -> list[Reply]:
    """The same request to each of ``apis`` at once."""
    with concurrent.futures.ThreadPoolExecutor(len(apis)) as pool:
        return list(pool.map(lambda api: post(api, payload), apis))


def _connection_closed(log: dict[str, Any], text: str) -> bool:
    ids = {r["connection"] for r in log["requests"] if text in str(r["body"])}
    return any(c["id"] in ids and c["closed_at"] for c in log["connections"])


def test_identical_requests_in_flight_share_one_generation(
    start_gateway: StartGateway, upstream: Any, backend: dict[str, Any]
) -> None:
    gateway = start_gateway(upstream_config(upstream.url, **backend), env=KEY_ENV)
    text, model = prompt(), "paced:n=30,interval=0.05"
    replies = _together([gateway.api] * 5, _stream(model, text))
    assert upstream_calls(upstream, text) == 1
    for reply in replies:
        assert reply.status == 200
        assert reply.text == expected_text(model)  # the whole stream, from the start
        assert reply.usage is not None and reply.usage["completion_tokens"] == 30
        assert reply.events[-1] == "[DONE]"
    assert sorted(r.cache or "" for r in replies) == ["coalesced"] * 4 + ["miss"]
    rows = gateway.wait_records(5)
    assert sorted(r["cache"] for r in rows) == ["coalesced"] * 4 + ["miss"]
    assert {r["outcome"] for r in rows} == {"ok"}
    # A stream and a non-stream request share it too; the next one is a hit.
    again = post(gateway.api, body(model, text, temperature=0))
    assert (again.cache, again.text) == ("hit", expected_text(model))


def test_a_client_leaving_does_not_cut_the_others(
    start_gateway: StartGateway, upstream: Any, backend: dict[str, Any]
) -> None:
    gateway = start_gateway(upstream_config(upstream.url, **backend), env=KEY_ENV)
    text, model = prompt(), "paced:n=30,interval=0.04"
    payload = _stream(model, text)
    leader = open_stream(gateway.url, payload)
    read_events(leader, 3)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        followers = [pool.submit(post, gateway.api, payload) for _ in range(2)]
        time.sleep(0.3)
        leader.close()  # the client whose request started the generation
        replies = [f.result(timeout=30) for f in followers]
    for reply in replies:
        assert (reply.cache, reply.text) == ("coalesced", expected_text(model))
    assert upstream_calls(upstream, text) == 1
    rows = gateway.wait_records(3)
    assert sorted((r["cache"], r["outcome"]) for r in rows) == [
        ("coalesced", "ok"),
        ("coalesced", "ok"),
        ("miss", "client_disconnected"),
    ]
    # The generation finished for the others, so it was stored.
    assert post(gateway.api, payload).cache == "hit"


def test_when_every_client_left_the_upstream_request_is_cancelled(
    start_gateway: StartGateway, upstream: Any, backend: dict[str, Any]
) -> None:
    gateway = start_gateway(upstream_config(upstream.url, **backend), env=KEY_ENV)
    text = prompt()
    payload = _stream("paced:n=1000,interval=0.05", text)
    clients = [open_stream(gateway.url, payload) for _ in range(2)]
    for client in clients:
        read_events(client, 3)
    clients[0].close()
    time.sleep(0.3)
    assert not _connection_closed(upstream.log(), text)  # one client still reads
    clients[1].close()
    assert _connection_closed(upstream.wait_log(lambda log: _connection_closed(log, text)), text)
    rows = gateway.wait_records(2)
    assert [r["outcome"] for r in rows] == ["client_disconnected"] * 2
    assert upstream_calls(upstream, text) == 1


def test_an_abandoned_generation_may_finish_and_be_stored(
    start_gateway: StartGateway, upstream: Any, backend: dict[str, Any]
) -> None:
    config = upstream_config(upstream.url, **backend, cache={"finish_abandoned": True})
    gateway = start_gateway(config, env=KEY_ENV)
    text, model = prompt(), "paced:n=10,interval=0.03"
    payload = _stream(model, text)
    client = open_stream(gateway.url, payload)
    read_events(client, 2)
    client.close()
    upstream.wait_log(lambda log: _connection_closed(log, text))
    deadline = time.monotonic() + 10
    reply = post(gateway.api, payload)
    while reply.cache != "hit" and time.monotonic() < deadline:
        time.sleep(0.1)  # stored right after the end: the upstream may close first
        reply = post(gateway.api, payload)
    assert (reply.cache, reply.text) == ("hit", expected_text(model))
    assert upstream_calls(upstream, text) == 1


# -- many instances ----------------------------------------------------------------


def test_instances_behind_nginx_share_the_cache_and_generations(
    tmp_path: Path, upstream: Any
) -> None:
    with cluster(tmp_path, upstream_config(upstream.url), instances=3, env=KEY_ENV) as c:
        # Written through one instance, a hit on the others and through nginx.
        text, model = prompt(), "normal:n=8"
        payload = _stream(model, text)
        assert post(c.gateways[0].api, payload).cache == "miss"
        for api in (c.gateways[1].api, c.gateways[2].api, c.api, c.api):
            reply = post(api, payload)
            assert (reply.cache, reply.text) == ("hit", expected_text(model))
            assert reply.usage is not None and reply.usage["completion_tokens"] == 8
        assert upstream_calls(upstream, text) == 1
        # Identical requests in flight at once on every instance: one upstream call.
        text, model = prompt(), "paced:n=30,interval=0.05"
        apis = [g.api for g in c.gateways] * 2 + [c.api] * 3
        replies = _together(apis, _stream(model, text))
        assert upstream_calls(upstream, text) == 1
        for reply in replies:
            assert (reply.status, reply.text) == (200, expected_text(model))
            assert reply.usage is not None and reply.usage["completion_tokens"] == 30
        assert sorted(r.cache or "" for r in replies) == ["coalesced"] * 8 + ["miss"]
        rows = c.wait_records(14)[5:]
        assert sorted(r["cache"] for r in rows) == ["coalesced"] * 8 + ["miss"]
        assert {r["instance"] for r in rows if r["cache"] == "coalesced"} == {0, 1, 2}


def test_a_client_leaving_the_leading_instance_does_not_cut_one_elsewhere(
    tmp_path: Path, upstream: Any
) -> None:
    with cluster(tmp_path, upstream_config(upstream.url), instances=2, env=KEY_ENV) as c:
        text, model = prompt(), "paced:n=30,interval=0.04"
        payload = _stream(model, text)
        leader = open_stream(c.gateways[0].url, payload)
        read_events(leader, 3)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            follower = pool.submit(post, c.gateways[1].api, payload)
            time.sleep(0.4)
            leader.close()
            reply = follower.result(timeout=30)
        assert (reply.cache, reply.text) == ("coalesced", expected_text(model))
        assert upstream_calls(upstream, text) == 1


def test_a_follower_takes_over_when_the_leading_instance_dies(
    tmp_path: Path, upstream: Any
) -> None:
    config = upstream_config(upstream.url, cache={"lease": 1})
    with cluster(tmp_path, config, instances=2, env=KEY_ENV) as c:
        text, model = prompt(), "slow_first:n=5,delay=2"
        payload = _stream(model, text)
        leader = open_stream(c.gateways[0].url, payload)
        upstream.wait_log(lambda log: upstream_calls(upstream, text) == 1)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            follower = pool.submit(post, c.gateways[1].api, payload)
            time.sleep(0.5)
            c.gateways[0].process.kill()  # no goodbye: its lock lapses after the lease
            reply = follower.result(timeout=30)
        leader.close()
        assert (reply.status, reply.text) == (200, expected_text(model))
        assert upstream_calls(upstream, text) == 2
        rows = c.gateways[1].wait_records(1)
        assert rows[-1]["cache"] == "miss"  # it led the second generation itself


def test_a_leader_never_renews_a_lease_another_instance_took_over(
    start_gateway: StartGateway, upstream: Any, redis_server: RedisServer
) -> None:
    if not redis_server.running:
        redis_server.start()
    redis_server.flush()
    config = upstream_config(upstream.url, redis_url=redis_server.url, cache={"lease": 0.6})
    gateway = start_gateway(config, env=KEY_ENV)
    text, model = prompt(), "paced:n=30,interval=0.05"
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        leading = pool.submit(post, gateway.api, _stream(model, text))
        upstream.wait_log(lambda log: upstream_calls(upstream, text) == 1)
        with contextlib.closing(redis_server.client()) as client:
            [lock] = client.keys("cache:lead:*")
            # As if this leader had been paused past its lease and another instance had
            # taken the lock over to lead a generation of its own.
            client.set(lock, b"another-instance", px=10_000)
            time.sleep(0.6)  # the leader tries to renew every 0.2 s
            assert client.get(lock) == b"another-instance"
            reply = leading.result(timeout=30)
            assert client.get(lock) == b"another-instance"  # nor released it at the end
    # The leader's own client still got its whole answer.
    assert (reply.status, reply.cache, reply.text) == (200, "miss", expected_text(model))
    assert "lost its coalescing lease" in gateway.log()


def test_without_coalescing_identical_requests_each_call_upstream(
    start_gateway: StartGateway, upstream: Any, backend: dict[str, Any]
) -> None:
    config = upstream_config(upstream.url, **backend, cache={"coalesce": False})
    gateway = start_gateway(config, env=KEY_ENV)
    text, model = prompt(), "paced:n=10,interval=0.05"
    replies = _together([gateway.api] * 2, _stream(model, text))
    assert [r.cache for r in replies] == ["miss", "miss"]
    assert all(r.text == expected_text(model) for r in replies)
    assert upstream_calls(upstream, text) == 2
    deadline = time.monotonic() + 5
    while (reply := post(gateway.api, _stream(model, text))).cache != "hit":
        assert time.monotonic() < deadline  # kept in the background right after the end
        time.sleep(0.05)
    assert reply.text == expected_text(model)
