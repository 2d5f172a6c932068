"""Routing: load balancing, retries, fallbacks and the circuit breaker.

The parts on their own first (the balancer with a seeded generator, the breaker over
the real state backends), then real gateway processes in front of two test upstreams
(two processes: two deployments), with the openai SDK as the client. Which upstream
served a request is read from the upstreams' own logs and from the gateway's records.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from sluice import config
from sluice.config import ConfigError, Deployment, Routing, Settings
from sluice.policies.balance import Balancer
from sluice.policies.breaker import Breaker
from sluice.state import open_state
from tests.cluster import RedisServer
from tests.conftest import StartGateway
from tests.gateway import RunningGateway, free_port
from tests.policies.keys import create_key, wait_records
from tests.upstream.fixture import Upstream, start_upstream
from tests.upstream.scenarios import expected_text

KEY_ENV = {"TEST_UPSTREAM_KEY": "sk-test"}
MESSAGES: list[Any] = [{"role": "user", "content": "Tell me a story"}]
#: A weight that makes a deployment the first choice in all but one case in a million.
FIRST = 1_000_000

# -- the models section ----------------------------------------------------------


def _parse(text: str) -> Settings:
    return config.parse(text, {"KEY_A": "a", "KEY_B": "b"}, origin="sluice.yaml")


def _error(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        _parse(text)
    return str(info.value)


def test_a_model_with_several_deployments_and_fallbacks() -> None:
    settings = _parse(
        """\
routing: {strategy: least-busy, retries: 1, backoff: {base: 0.1, max: 2}, cooldown: 10}
timeouts: {first_token: 50}
models:
  gpt:
    deployments:
      - {base_url: "http://a/v1", api_key_env: KEY_A, weight: 3}
      - {base_url: "http://b/v1", api_key_env: KEY_B, model: gpt-b, timeouts: {idle: 5}}
    timeouts: {first_token: 20}
    strategy: weighted
    fallbacks: [small]
  small: {provider: simulator, retries: 0, context_window_fallbacks: [gpt]}
"""
    )
    gpt = settings.routes["gpt"]
    a, b = gpt.deployments
    assert (a.weight, b.weight, a.index, b.index) == (3, 1, 0, 1)
    assert a.key != b.key
    assert (a.timeouts.first_token, b.timeouts.first_token, b.timeouts.idle) == (20, 20, 5)
    assert (gpt.strategy, gpt.retries, gpt.fallbacks) == ("weighted", 1, ("small",))
    assert gpt.context_window_fallbacks == ("small",)  # the fallbacks, unless said
    small = settings.routes["small"]
    assert (small.strategy, small.retries, small.fallbacks) == ("least-busy", 0, ())
    assert small.context_window_fallbacks == ("gpt",)
    assert settings.models["gpt"] is a  # the first deployment, for what reads one
    assert settings.routing == Routing("least-busy", 1, 0.1, 2, 3, 10)


def test_settings_without_routes_route_to_their_models() -> None:
    deployment = Deployment(name="*", provider="simulator")
    settings = Settings(models={"*": deployment})
    route = settings.route("anything")
    assert route is not None and route.deployments == (deployment,)
    assert Settings(models={"a": deployment}).route("b") is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "models:\n  m:\n    deployments:\n      - {base_url: 'http://a/v1'}\n"
            "      - {base_url: 'http://b/v1', weight: 0}\n",
            "line 5: models.m.deployments.1.weight: expected a number above 0, got 0",
        ),
        (
            "models:\n  m:\n    deployments:\n      - {base_url: 'http://a/v1', rpm: 3}\n",
            "line 4: models.m.deployments.0: unknown key(s) 'rpm'",
        ),
        ("models:\n  m:\n    deployments: []\n", "line 3: models.m.deployments: expected a non"),
        (
            "models:\n  m:\n    provider: openai\n    deployments: [{}]\n",
            "line 3: models.m: unknown key(s) 'provider'",
        ),
        (
            "models:\n  m:\n    provider: simulator\n    strategy: fastest\n",
            "line 4: models.m.strategy: expected one of weighted, least-busy, got 'fastest'",
        ),
        (
            "models:\n  m:\n    provider: simulator\n    fallbacks: [n]\n",
            "line 4: models.m.fallbacks: falls back to 'n', which is not a configured model",
        ),
        (
            "models:\n  m:\n    provider: simulator\n    fallbacks: m\n",
            "line 4: models.m.fallbacks: expected a list of model names, got 'm'",
        ),
        (
            "models:\n  m:\n    provider: simulator\n    fallbacks: [m]\n",
            "line 4: models.m.fallbacks: 'm' cannot fall back to itself",
        ),
        (
            "models:\n  m:\n    provider: simulator\n    retries: 11\n",
            "line 4: models.m.retries: expected an integer from 0 to 10, got 11",
        ),
        ("routing:\n  cooldown: -1\n", "line 2: routing.cooldown: expected a non-negative number"),
        ("routing:\n  backoff: {min: 1}\n", "line 2: routing.backoff: unknown key(s) 'min'"),
    ],
)
def test_bad_routing_config_names_the_key_and_line(text: str, expected: str) -> None:
    assert expected in _error(text)


# -- the balancer and the breaker on their own -------------------------------------


def _deployments(*weights: float) -> list[Deployment]:
    return [
        Deployment(name="m", provider="openai", weight=w, index=i) for i, w in enumerate(weights)
    ]


def test_weighted_choice_follows_the_weights() -> None:
    balancer = Balancer(random.Random(7))
    a, b = _deployments(3, 1)
    picks = [balancer.choose([a, b], "weighted").index for _ in range(4000)]
    assert 2800 < picks.count(0) < 3200  # 3000 expected


def test_least_busy_takes_the_deployment_with_fewest_in_flight() -> None:
    balancer = Balancer(random.Random(7))
    a, b, c = _deployments(1, 1, 1)
    balancer.started(a)
    balancer.started(b)
    assert all(balancer.choose([a, b, c], "least-busy") is c for _ in range(50))
    balancer.started(c)
    balancer.started(c)
    balancer.finished(a)
    assert all(balancer.choose([a, b, c], "least-busy") is a for _ in range(50))
    assert (balancer.in_flight(a), balancer.in_flight(b), balancer.in_flight(c)) == (0, 1, 2)


@pytest.mark.parametrize("kind", ["memory", "redis"])
def test_breaker_opens_after_consecutive_failures_and_half_opens(
    kind: str, request: pytest.FixtureRequest
) -> None:
    url = None
    if kind == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        if not server.running:
            server.start()
        server.flush()
        url = server.url

    async def scenario() -> None:
        state = open_state(url)
        await state.start()
        try:
            routing = Routing(allowed_fails=3, cooldown=0.3)
            breaker, other = Breaker(routing, state), Breaker(routing, state)
            (d,) = _deployments(1)
            assert not await breaker.failed(d, "boom")
            breaker.succeeded(d)  # a success resets the count
            assert not await breaker.failed(d, "boom")
            assert not await breaker.failed(d, "boom")
            assert not await breaker.cooling(d)
            assert await breaker.failed(d, "boom")  # the third in a row
            assert await breaker.cooling(d)
            # Another instance knows of it through the shared state.
            assert await other.cooling(d)
            await asyncio.sleep(0.4)
            assert not await breaker.cooling(d)  # half-open: it may be tried again
            assert await breaker.failed(d, "boom")  # one failure opens it again
            assert await breaker.cooling(d)
            await asyncio.sleep(0.4)
            breaker.succeeded(d)  # a success closes it
            assert not await breaker.failed(d, "boom")
        finally:
            await state.close()

    asyncio.run(scenario())


def test_breaker_keeps_its_cooldowns_when_the_shared_state_is_down() -> None:
    async def scenario() -> None:
        # A Redis that is not there: every call raises StateUnavailable.
        state = open_state(f"redis://127.0.0.1:{free_port()}/0")
        await state.start()
        try:
            breaker = Breaker(Routing(allowed_fails=1, cooldown=30), state)
            (d,) = _deployments(1)
            assert not await breaker.cooling(d)
            assert await breaker.failed(d, "boom")
            assert await breaker.cooling(d)
        finally:
            await state.close()

    asyncio.run(scenario())


# -- through the gateway ------------------------------------------------------------


@pytest.fixture(scope="module")
def ups() -> Iterator[tuple[Upstream, Upstream]]:
    """Two test upstreams: two deployments that can be told apart."""
    with start_upstream() as a, start_upstream() as b:
        yield a, b


@pytest.fixture
def a_b(ups: tuple[Upstream, Upstream]) -> tuple[Upstream, Upstream]:
    for up in ups:
        up.reset()
    return ups


def deployment(up: Upstream | str, model: str, **extra: Any) -> dict[str, Any]:
    base_url = up if isinstance(up, str) else up.url
    spec = {"provider": "openai", "base_url": base_url, "api_key_env": "TEST_UPSTREAM_KEY"}
    return {**spec, "model": model, **extra}


def gateway_config(models: dict[str, Any], **routing: Any) -> dict[str, Any]:
    return {"models": models, "routing": routing, "keepalive_interval": 15}


def calls(up: Upstream) -> int:
    return sum(r["path"] == "/v1/chat/completions" for r in up.log()["requests"])


def host(up: Upstream) -> str:
    return up.base.split("://", 1)[1]


def sdk(gateway: RunningGateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.api, api_key="unused", max_retries=0, timeout=30)


def ask(gateway: RunningGateway, model: str = "m") -> str:
    stream = sdk(gateway).chat.completions.create(model=model, messages=MESSAGES, stream=True)
    return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)


def test_weighted_split_follows_the_weights(
    start_gateway: StartGateway, a_b: tuple[Upstream, Upstream]
) -> None:
    a, b = a_b
    models = {"m": {"deployments": [deployment(a, "normal", weight=3), deployment(b, "normal")]}}
    gateway = start_gateway(gateway_config(models), env=KEY_ENV)
    client = sdk(gateway)
    for _ in range(200):
        client.chat.completions.create(model="m", messages=MESSAGES)
    assert calls(a) + calls(b) == 200
    assert 120 <= calls(a) <= 180  # 150 expected; the bounds are 5 standard deviations
    rows = gateway.wait_records(200)
    assert sum(host(a) in r["upstream"] for r in rows) == calls(a)
    assert {r["attempts"] for r in rows} == {1}


def test_least_busy_prefers_the_idle_deployment(
    start_gateway: StartGateway, a_b: tuple[Upstream, Upstream]
) -> None:
    a, b = a_b
    long = "paced:n=200,interval=0.05"
    models = {
        "m": {
            # Equally busy, the weight decides: a first. Then b, being idle, whatever
            # its weight.
            "deployments": [deployment(a, long, weight=FIRST), deployment(b, long)],
            "strategy": "least-busy",
        }
    }
    gateway = start_gateway(gateway_config(models), env=KEY_ENV)
    client = sdk(gateway)
    for _ in range(3):
        first = client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
        next(iter(first))
        second = client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
        next(iter(second))
        assert (calls(a), calls(b)) == (1, 1)
        first.close()
        second.close()
        # Once both have ended, both are idle again.
        a.wait_log(lambda log: all(c["closed_at"] for c in log["connections"]))
        b.wait_log(lambda log: all(c["closed_at"] for c in log["connections"]))
        a.reset()
        b.reset()
        time.sleep(0.2)  # the gateway noticed the closes too


@pytest.mark.parametrize(
    "failure", ["error_status:status=429,retry_after=0.1", "error_status:status=500", "refused"]
)
def test_a_failed_attempt_is_retried_on_the_other_deployment(
    start_gateway: StartGateway, a_b: tuple[Upstream, Upstream], failure: str
) -> None:
    a, b = a_b
    failing = (
        deployment(f"http://127.0.0.1:{free_port()}/v1", "normal", weight=FIRST)
        if failure == "refused"
        else deployment(a, failure, weight=FIRST)
    )
    models = {"m": {"deployments": [failing, deployment(b, "normal")]}}
    gateway = start_gateway(gateway_config(models, retries=2), env=KEY_ENV)
    assert ask(gateway) == expected_text("normal")
    assert calls(a) == (0 if failure == "refused" else 1)
    assert calls(b) == 1
    (row,) = gateway.wait_records(1)
    assert row["attempts"] == 2
    assert host(b) in row["upstream"]
    assert row["outcome"] == "ok"


def test_the_same_deployment_is_retried_with_backoff(
    start_gateway: StartGateway, a_b: tuple[Upstream, Upstream]
) -> None:
    a, _ = a_b
    models = {"m": deployment(a, "error_status:status=503")}
    gateway = start_gateway(
        gateway_config(models, retries=2, backoff={"base": 0.05, "max": 0.2}), env=KEY_ENV
    )
    with pytest.raises(openai.InternalServerError) as caught:
        ask(gateway)
    assert caught.value.status_code == 503
    assert calls(a) == 3
    (row,) = gateway.wait_records(1)
    assert (row["attempts"], row["status"], row["outcome"]) == (3, 503, "error")


def test_a_client_error_is_not_retried(
    start_gateway: StartGateway, a_b: tuple[Upstream, Upstream]
) -> None:
    a, b = a_b
    models = {
        "m": {
            "deployments": [
                deployment(a, "error_status:status=400", weight=FIRST),
                deployment(b, "normal"),
            ]
        }
    }
    gateway = start_gateway(gateway_config(models, retries=2), env=KEY_ENV)
    with pytest.raises(openai.BadRequestError):
        ask(gateway)
    assert (calls(a), calls(b)) == (1, 0)
    assert gateway.wait_records(1)[0]["attempts"] == 1


def test_no_retry_after_the_first_byte(
    start_gateway: StartGateway, a_b: tuple[Upstream, Upstream]
) -> None:
    a, b = a_b
    models = {
        "m": {
            "deployments": [deployment(a, "drop:after=3", weight=FIRST), deployment(b, "normal")],
            "fallbacks": ["backup"],
        },
        "backup": deployment(b, "normal"),
    }
    gateway = start_gateway(gateway_config(models, retries=2), env=KEY_ENV)
    text: list[str] = []
    stream = sdk(gateway).chat.completions.create(model="m", messages=MESSAGES, stream=True)
    with pytest.raises(openai.APIError):
        for chunk in stream:
            text.append(chunk.choices[0].delta.content or "" if chunk.choices else "")
    # What came before the failure, once, and nothing from anywhere else.
    assert "".join(text) == expected_text("drop:after=3")
    assert (calls(a), calls(b)) == (1, 0)
    (row,) = gateway.wait_records(1)
    assert (row["attempts"], row["outcome"]) == (1, "error")
    assert host(a) in row["upstream"]


def test_fallback_to_another_model_when_every_attempt_failed(
    start_gateway: StartGateway, a_b: tuple[Upstream, Upstream]
) -> None:
    a, b = a_b
    models = {
        "m": {**deployment(a, "error_status:status=500"), "retries": 1, "fallbacks": ["backup"]},
        "backup": deployment(b, "normal"),
    }
    gateway = start_gateway(
        gateway_config(models, backoff={"base": 0.01, "max": 0.05}), env=KEY_ENV
    )
    assert ask(gateway) == expected_text("normal")
    assert (calls(a), calls(b)) == (2, 1)
    (row,) = gateway.wait_records(1)
    assert (row["model"], row["attempts"], row["outcome"]) == ("m", 3, "ok")
    assert host(b) in row["upstream"] and "normal" in row["upstream"]


def test_fallback_on_a_first_token_timeout(
    start_gateway: StartGateway, a_b: tuple[Upstream, Upstream]
) -> None:
    a, b = a_b
    slow = deployment(a, "slow_first:delay=5", timeouts={"first_token": 0.3})
    models = {"m": {**slow, "fallbacks": ["backup"]}, "backup": deployment(b, "normal")}
    # A timed-out deployment is not tried again for the same request, retries or not.
    gateway = start_gateway(gateway_config(models, retries=2), env=KEY_ENV)
    assert ask(gateway) == expected_text("normal")
    assert (calls(a), calls(b)) == (1, 1)
    (row,) = gateway.wait_records(1)
    assert (row["attempts"], row["outcome"]) == (2, "ok")
    assert host(b) in row["upstream"]


def test_fallback_on_a_context_window_error(
    start_gateway: StartGateway, a_b: tuple[Upstream, Upstream]
) -> None:
    a, b = a_b
    models = {
        "m": {
            **deployment(a, "context_length"),
            "fallbacks": ["other"],
            "context_window_fallbacks": ["big"],
        },
        "big": deployment(b, "normal"),
        "other": deployment(b, "normal:n=2"),
        "alone": deployment(a, "context_length"),
    }
    gateway = start_gateway(gateway_config(models, retries=2), env=KEY_ENV)
    # Straight to the larger window: retrying the same one would not help.
    assert ask(gateway) == expected_text("normal")
    assert (calls(a), calls(b)) == (1, 1)
    # Without a fallback the client sees OpenAI's own error.
    with pytest.raises(openai.BadRequestError) as caught:
        ask(gateway, "alone")
    error: Any = caught.value
    assert error.code == "context_length_exceeded"
    rows = gateway.wait_records(2)
    assert [r["attempts"] for r in rows] == [2, 1]
    assert rows[1]["status"] == 400


def test_a_key_falls_back_only_to_models_it_may_use(
    tmp_path: Path, start_gateway: StartGateway, a_b: tuple[Upstream, Upstream]
) -> None:
    """A key allowed ``m`` and ``n`` but not their fallbacks gets their errors, not
    another model's answer; a key allowed the fallbacks falls back as usual."""
    a, b = a_b
    db = tmp_path / "keys.db"
    only_m = create_key(db, "only-m-n", "--models", "m,n")
    both = create_key(db, "both", "--models", "m,backup,big")
    models = {
        "m": {
            **deployment(a, "error_status:status=500"),
            "fallbacks": ["backup"],
            "context_window_fallbacks": ["big"],
        },
        "n": {**deployment(a, "context_length"), "context_window_fallbacks": ["big"]},
        "backup": deployment(b, "normal"),
        "big": deployment(b, "normal"),
    }
    config = {
        **gateway_config(models, retries=1, allowed_fails=0, backoff={"base": 0.01, "max": 0.05}),
        "record": {"path": str(db), "flush_interval": 0.05},
    }
    gateway = start_gateway(config, env=KEY_ENV)

    def ask_as(key: str, model: str) -> str:
        with openai.OpenAI(base_url=gateway.api, api_key=key, max_retries=0, timeout=30) as sdk:
            stream = sdk.chat.completions.create(model=model, messages=MESSAGES, stream=True)
            return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    with pytest.raises(openai.InternalServerError):
        ask_as(only_m["key"], "m")
    assert (calls(a), calls(b)) == (2, 0)
    assert ask_as(both["key"], "m") == expected_text("normal")
    assert (calls(a), calls(b)) == (4, 1)
    # Nor a context-window fallback: the client sees the upstream's own error.
    with pytest.raises(openai.BadRequestError) as caught:
        ask_as(only_m["key"], "n")
    assert caught.value.code == "context_length_exceeded"
    assert calls(b) == 1
    rows = wait_records(db, 3)
    assert [(r["key_id"], r["fallbacks"]) for r in rows] == [
        (only_m["id"], 0),
        (both["id"], 1),
        (only_m["id"], 0),
    ]
    assert host(b) not in (rows[0]["upstream"] or "")


def _breaker_models(a: Upstream, b: Upstream) -> dict[str, Any]:
    failing = deployment(a, "error_status:status=500", weight=FIRST)
    return {"m": {"deployments": [failing, deployment(b, "normal")]}}


def _breaker_config(a: Upstream, b: Upstream, **extra: Any) -> dict[str, Any]:
    routing = {"retries": 1, "allowed_fails": 2, "cooldown": 3, "backoff": {"base": 0.01}}
    return {**gateway_config(_breaker_models(a, b), **routing), **extra}


def test_breaker_skips_a_failing_deployment_until_the_cooldown_passes(
    start_gateway: StartGateway, a_b: tuple[Upstream, Upstream], backend: dict[str, Any]
) -> None:
    a, b = a_b
    gateway = start_gateway(_breaker_config(a, b, **backend), env=KEY_ENV)
    for _ in range(2):  # a fails twice: it cools down
        assert ask(gateway) == expected_text("normal")
    assert calls(a) == 2
    opened = time.monotonic()
    for _ in range(5):  # skipped while it cools down
        assert ask(gateway) == expected_text("normal")
    assert time.monotonic() - opened < 3, "the test machine is too slow for this cooldown"
    assert (calls(a), calls(b)) == (2, 7)
    time.sleep(3.2)
    assert ask(gateway) == expected_text("normal")  # half-open: tried once more, fails
    assert calls(a) == 3
    assert ask(gateway) == expected_text("normal")  # cooling again at once
    assert (calls(a), calls(b)) == (3, 9)
    rows = gateway.wait_records(9)
    assert [r["attempts"] for r in rows] == [2, 2, 1, 1, 1, 1, 1, 2, 1]
    assert all(host(b) in r["upstream"] for r in rows)
    assert "cools down" in gateway.log()


def test_cooldown_is_shared_by_gateways_through_redis(
    start_gateway: StartGateway, a_b: tuple[Upstream, Upstream], redis_server: RedisServer
) -> None:
    a, b = a_b
    if not redis_server.running:
        redis_server.start()
    redis_server.flush()
    config = _breaker_config(a, b, redis_url=redis_server.url)
    config["routing"]["cooldown"] = 30
    first = start_gateway(config, env=KEY_ENV)
    second = start_gateway(config, env=KEY_ENV)
    for _ in range(2):
        assert ask(first) == expected_text("normal")
    assert calls(a) == 2
    for _ in range(3):  # the other gateway never saw a failure, yet skips a
        assert ask(second) == expected_text("normal")
    assert calls(a) == 2
    assert [r["attempts"] for r in second.wait_records(3)] == [1, 1, 1]


def test_cooldown_holds_in_memory_while_redis_is_down(
    start_gateway: StartGateway, a_b: tuple[Upstream, Upstream], redis_server: RedisServer
) -> None:
    a, b = a_b
    if not redis_server.running:
        redis_server.start()
    config = _breaker_config(a, b, redis_url=redis_server.url)
    config["routing"]["cooldown"] = 30
    gateway = start_gateway(config, env=KEY_ENV)
    redis_server.stop()
    try:
        for _ in range(5):
            assert ask(gateway) == expected_text("normal")
        assert calls(a) == 2  # tripped after two failures, then skipped
    finally:
        redis_server.start()


def test_a_cooling_deployment_is_still_tried_when_nothing_else_can_serve(
    start_gateway: StartGateway, a_b: tuple[Upstream, Upstream]
) -> None:
    a, _ = a_b
    models = {"m": deployment(a, "error_status:status=500")}
    routing = {"retries": 0, "allowed_fails": 1, "cooldown": 30}
    gateway = start_gateway(gateway_config(models, **routing), env=KEY_ENV)
    for _ in range(3):  # the breaker routes around failures; it does not refuse alone
        with pytest.raises(openai.InternalServerError):
            ask(gateway)
    assert calls(a) == 3
    assert [r["status"] for r in gateway.wait_records(3)] == [502, 502, 502]
