"""Rate limits, each against the memory and a real Redis backend: the policy on its own
(per key, where the key is given), the gateway through the openai SDK, and three
gateways behind nginx sharing one Redis, with Redis stopped and restarted mid-test."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from sluice.config import LimitSettings, ModelLimits
from sluice.errors import RateLimited, ServiceUnavailable
from sluice.events import ChatRequest, Message, TextDelta, TextPart, Usage
from sluice.policies import Call, Handler
from sluice.policies.cache import FREE
from sluice.policies.ratelimit import RateLimits, duration, estimate_tokens
from sluice.providers import Batch
from sluice.state import SharedState, open_state
from sluice.state.redis import RedisState
from sluice.store import Record, VirtualKey
from tests.cluster import Cluster, cluster
from tests.conftest import StartGateway, upstream_config
from tests.gateway import free_port

KEY_ENV = {"TEST_UPSTREAM_KEY": "sk-test"}
MESSAGES: list[Any] = [{"role": "user", "content": "Tell me a story"}]
HEADERS = ("limit", "remaining", "reset")

# -- the policy on its own ---------------------------------------------------------


def _upstream(usage: tuple[int, int]) -> Handler:
    """The innermost handler's seam: a few batches, then the usage."""

    async def handler(request: ChatRequest, call: Call) -> AsyncGenerator[Batch, None]:
        yield [TextDelta("Once")]
        yield [TextDelta(" upon"), Usage(*usage)]

    return handler


async def _serve(handler: Handler, call: Call, request: ChatRequest) -> None:
    """Drain a stream as the relay does, putting the usage on the record."""
    async for batch in handler(request, call):
        for event in batch:
            if isinstance(event, Usage):
                call.record.input_tokens = event.input_tokens
                call.record.output_tokens = event.output_tokens


def _call(key: VirtualKey | None = None, route: str = "/v1/chat/completions") -> Call:
    return Call(record=Record(id="r", started_at=time.time(), route=route), key=key)


def _request(model: str = "m", max_tokens: int | None = 10) -> ChatRequest:
    return ChatRequest(
        model=model, messages=[Message("user", [TextPart("hi")])], max_tokens=max_tokens
    )


class Policy:
    """A rate-limit policy over a real state, and requests through it."""

    def __init__(self, state: SharedState, settings: LimitSettings, usage: tuple[int, int]):
        self.handler = RateLimits(settings, state)(_upstream(usage))

    async def send(
        self, key: VirtualKey | None = None, model: str = "m", max_tokens: int | None = 10
    ) -> dict[str, str]:
        """The response headers of an admitted request; raises a refusal."""
        call = _call(key)
        await _serve(self.handler, call, _request(model, max_tokens))
        return {k.decode(): v.decode() for k, v in call.response_headers}


def _run(backend: dict[str, Any], test: Any, **policy: Any) -> None:
    async def main() -> None:
        state = open_state(backend.get("redis_url"))
        await state.start()
        try:
            await test(Policy(state, **policy))
        finally:
            await state.close()

    asyncio.run(main())


KEY = VirtualKey(id="k1", name="ci", rpm=2, tpm=1000)
OTHER = VirtualKey(id="k2", name="other", rpm=2)


def test_per_key_requests_per_minute(backend: dict[str, Any]) -> None:
    async def test(policy: Policy) -> None:
        first = await policy.send(KEY)
        assert first["x-ratelimit-limit-requests"] == "2"
        assert first["x-ratelimit-remaining-requests"] == "1"
        assert first["x-ratelimit-limit-tokens"] == "1000"
        assert first["x-ratelimit-remaining-tokens"] == str(1000 - 11)  # 2 chars/4 → 1, + 10
        assert (await policy.send(KEY))["x-ratelimit-remaining-requests"] == "0"
        with pytest.raises(RateLimited) as caught:
            await policy.send(KEY)
        error = caught.value
        assert error.status == 429
        assert "key 'ci'" in error.message and "requests per min (RPM): Limit 2" in error.message
        assert 1 <= int(error.headers["Retry-After"]) <= 60
        assert error.headers["x-ratelimit-remaining-requests"] == "0"
        # Another key has its own counter; the master key has none; no key, no limit.
        assert (await policy.send(OTHER))["x-ratelimit-remaining-requests"] == "1"
        master = VirtualKey(id="root", name="master", rpm=1, master=True)
        for _ in range(3):
            assert await policy.send(master) == {}
        assert await policy.send(None) == {}

    _run(backend, test, settings=LimitSettings(), usage=(1, 5))


def test_per_key_tokens_corrected_from_the_real_usage(backend: dict[str, Any]) -> None:
    key = VirtualKey(id="k3", name="tokens", tpm=100)

    async def test(policy: Policy) -> None:
        # Estimated 11, used 1 + 150: the overrun counts, past the limit.
        headers = await policy.send(key)
        assert headers["x-ratelimit-remaining-tokens"] == "89"
        with pytest.raises(RateLimited) as caught:
            await policy.send(key)
        assert "tokens per min (TPM): Limit 100" in caught.value.message
        assert caught.value.headers["x-ratelimit-remaining-tokens"] == "0"
        assert "x-ratelimit-limit-requests" not in caught.value.headers

    _run(backend, test, settings=LimitSettings(), usage=(1, 150))


def test_an_estimate_above_the_limit_is_capped(backend: dict[str, Any]) -> None:
    key = VirtualKey(id="k4", name="big", tpm=50)

    async def test(policy: Policy) -> None:
        headers = await policy.send(key, max_tokens=4000)
        assert headers["x-ratelimit-remaining-tokens"] == "0"
        with pytest.raises(RateLimited):
            await policy.send(key, max_tokens=1)

    _run(backend, test, settings=LimitSettings(), usage=(1, 1))


def test_key_and_model_limits_together(backend: dict[str, Any]) -> None:
    settings = LimitSettings(models={"m": ModelLimits(rpm=3)})
    key = VirtualKey(id="k5", name="both", rpm=5)

    async def test(policy: Policy) -> None:
        # The headers show the tighter limit.
        first = await policy.send(key)
        assert (first["x-ratelimit-limit-requests"], first["x-ratelimit-remaining-requests"]) == (
            "3",
            "2",
        )
        await policy.send(key)
        await policy.send(None)  # no key: the model's limit still counts it
        with pytest.raises(RateLimited) as caught:
            await policy.send(key)
        assert "model 'm'" in caught.value.message
        # The refusal charged nothing: the key has used 2 of its 5, so 2 remain after this.
        other = await policy.send(key, model="unlimited")
        assert other["x-ratelimit-limit-requests"] == "5"
        assert other["x-ratelimit-remaining-requests"] == "2"

    _run(backend, test, settings=settings, usage=(1, 1))


@pytest.mark.parametrize("fail", ["open", "closed"])
def test_unreachable_redis_fails_open_or_closed(
    fail: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    settings = LimitSettings(fail=fail, models={"m": ModelLimits(rpm=1, tpm=10)})

    async def main() -> None:
        state = RedisState(f"redis://127.0.0.1:{free_port()}/0")
        await state.start()
        policy = Policy(state, settings, usage=(1, 1))
        for _ in range(5):
            if fail == "open":
                assert await policy.send() == {}
            else:
                with pytest.raises(ServiceUnavailable) as caught:
                    await policy.send()
                assert caught.value.status == 503
                assert "limits.fail: closed" in caught.value.message
        await state.close()

    asyncio.run(main())
    messages = [r.getMessage() for r in caplog.records]
    assert sum(m.startswith("redis unavailable: ") for m in messages) == 1
    assert sum(m.startswith("rate limits") for m in messages) == 1


def test_estimate_and_reset_format() -> None:
    request = ChatRequest(
        model="m", messages=[Message("user", [TextPart("x" * 400)])], max_tokens=50, n=2
    )
    assert estimate_tokens(request, 256) == 100 + 100
    assert estimate_tokens(_request(max_tokens=None), 256) == 1 + 256
    assert [duration(s) for s in (0.02, 1, 1.5, 59.999, 60, 360, 61.25)] == [
        "20ms",
        "1s",
        "1.5s",
        "59.999s",
        "1m0s",
        "6m0s",
        "1m1.25s",
    ]


# -- one gateway, through the openai SDK ---------------------------------------------


def _config(upstream: Any, **extra: Any) -> dict[str, Any]:
    # Keep-alives start the response (200) while the first event is awaited; a refusal
    # must come before that, so give admission more room than a loaded 2-core machine
    # may take (the default interval is 15 s).
    return upstream_config(upstream.url, keepalive_interval=5.0, **extra)


def _sdk(base: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base, api_key="x", max_retries=0)


def _limits(headers: Any, unit: str) -> tuple[str, str, str]:
    return tuple(headers.get(f"x-ratelimit-{part}-{unit}") for part in HEADERS)  # type: ignore[return-value]


def test_model_requests_per_minute_through_the_sdk(
    start_gateway: StartGateway, upstream: Any, backend: dict[str, Any]
) -> None:
    limits = {"models": {"normal": {"rpm": 3}}}
    gateway = start_gateway(_config(upstream, limits=limits, **backend), env=KEY_ENV)
    client = _sdk(gateway.api)
    for remaining in ("2", "1", "0"):
        raw = client.chat.completions.with_raw_response.create(
            model="normal", messages=MESSAGES, stream=True
        )
        limit, left, reset = _limits(raw.headers, "requests")
        assert (limit, left) == ("3", remaining)
        assert reset.endswith("s")
        assert "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="normal", messages=MESSAGES, stream=True)
    error: Any = caught.value
    assert error.status_code == 429
    assert error.body["code"] == "rate_limit_exceeded"
    assert "Limit 3" in error.body["message"]
    assert 1 <= int(error.response.headers["retry-after"]) <= 60
    assert int(error.response.headers["retry-after-ms"]) > 0
    assert _limits(error.response.headers, "requests")[:2] == ("3", "0")
    # Another model is not limited and says nothing about limits.
    raw = client.chat.completions.with_raw_response.create(model="normal:n=2", messages=MESSAGES)
    assert "x-ratelimit-limit-requests" not in raw.headers
    rows = gateway.wait_records(5)
    assert [r["status"] for r in rows] == [200, 200, 200, 429, 200]
    assert rows[3]["outcome"] == "rejected" and "Rate limit reached" in rows[3]["error"]


def test_tokens_per_minute_from_the_real_usage(
    start_gateway: StartGateway, upstream: Any, backend: dict[str, Any]
) -> None:
    model = "normal:n=150"  # 150 completion tokens, whatever max_tokens says
    limits = {"models": {model: {"tpm": 100}}}
    gateway = start_gateway(_config(upstream, limits=limits, **backend), env=KEY_ENV)
    client = _sdk(gateway.api)
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=MESSAGES, max_tokens=10
    )
    # The one estimate: prompt characters / 4, rounded up (4), plus max_tokens.
    assert _limits(raw.headers, "tokens")[:2] == ("100", str(100 - (4 + 10)))
    assert raw.parse().usage.completion_tokens == 150  # type: ignore[union-attr]
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=10)
    error: Any = caught.value
    assert "tokens per min (TPM): Limit 100" in error.body["message"]
    assert _limits(error.response.headers, "tokens")[:2] == ("100", "0")
    assert int(error.response.headers["retry-after"]) >= 1


def test_cache_hits_take_no_tokens_and_are_served_when_tokens_ran_out(
    start_gateway: StartGateway, upstream: Any, backend: dict[str, Any]
) -> None:
    # Each request below is estimated at 4 prompt tokens + max_tokens 40 = 44; the
    # limit holds two of them (the answers' real usage, 14, is below the estimate).
    limits = {"models": {"normal": {"tpm": 110, "rpm": 100}}}
    gateway = start_gateway(_config(upstream, limits=limits, **backend), env=KEY_ENV)
    client = _sdk(gateway.api)

    def ask(story: str) -> Any:
        messages = [{"role": "user", "content": f"Tell me story {story}"}]
        return client.chat.completions.with_raw_response.create(
            model="normal", messages=messages, max_tokens=40, temperature=0
        )

    first = ask("A")
    assert first.headers["x-sluice-cache"] == "miss"
    assert _limits(first.headers, "tokens")[:2] == ("110", "66")
    for _ in range(4):  # without the refund the second hit would be refused
        hit = ask("A")
        # Just after the miss its entry may still be on its way to Redis: the request
        # then joins the generation instead, as free as a hit.
        assert hit.headers["x-sluice-cache"] in FREE
    assert ask("B").headers["x-sluice-cache"] == "miss"  # the hits left room for it
    with pytest.raises(openai.RateLimitError) as caught:
        ask("C")  # a third generation does not fit
    assert "tokens per min (TPM): Limit 110" in caught.value.body["message"]  # type: ignore[index]
    # Out of tokens, a cached answer is still served: it counts as a request only.
    late = ask("A")
    assert late.headers["x-sluice-cache"] == "hit"
    assert late.parse().choices[0].message.content
    rows = gateway.wait_records(8)
    assert [("hit" if r["cache"] in FREE else r["cache"], r["status"]) for r in rows] == [
        ("miss", 200),
        *[("hit", 200)] * 4,
        ("miss", 200),
        (None, 429),
        ("hit", 200),
    ]
    # Every admitted request counted, hits included (the refusal charged nothing).
    assert _limits(late.headers, "requests")[:2] == ("100", "93")


def test_public_route_limited_per_client_address(
    start_gateway: StartGateway, upstream: Any, backend: dict[str, Any]
) -> None:
    limits = {"public_rpm": 2}
    gateway = start_gateway(_config(upstream, limits=limits, **backend), env=KEY_ENV)
    with httpx.Client(timeout=20) as client:
        statuses = [client.get(f"{gateway.url}/?prompt=hi") for _ in range(3)]
        # The chat API is not the public route: no per-address limit there.
        chat = client.post(
            f"{gateway.api}/chat/completions", json={"model": "normal", "messages": MESSAGES}
        )
    assert [r.status_code for r in statuses] == [200, 200, 429]
    assert statuses[0].headers["x-ratelimit-remaining-requests"] == "1"
    refused = statuses[2]
    assert refused.text.startswith("error: Rate limit reached for client 127.0.0.1")
    assert int(refused.headers["retry-after"]) >= 1
    assert chat.status_code == 200 and "x-ratelimit-limit-requests" not in chat.headers


# -- three gateways behind nginx, one Redis --------------------------------------------


def _post(c: Cluster, model: str, **extra: Any) -> httpx.Response:
    body = {"model": model, "messages": MESSAGES, "stream": True, **extra}
    with httpx.Client(timeout=30) as client:
        response = client.post(f"{c.api}/chat/completions", json=body)
        response.read()
        return response


def test_requests_per_minute_hold_across_instances(tmp_path: Path, upstream: Any) -> None:
    config = _config(upstream, limits={"models": {"paced": {"rpm": 7}}})
    with cluster(tmp_path, config, instances=3, env=KEY_ENV) as c:
        # 24 clients at once, spread by nginx over the three instances.
        with concurrent.futures.ThreadPoolExecutor(max_workers=12) as pool:
            responses = list(pool.map(lambda _: _post(c, "paced"), range(24)))
        statuses = sorted(r.status_code for r in responses)
        assert statuses == [200] * 7 + [429] * 17
        rows = c.wait_records(24)
        assert len(rows) == 24
        assert {row["instance"] for row in rows} == {0, 1, 2}
        assert sum(row["outcome"] == "ok" for row in rows) == 7


def test_token_limit_across_instances(tmp_path: Path, upstream: Any) -> None:
    model = "normal:n=150"
    config = _config(upstream, limits={"models": {model: {"tpm": 100}}})
    with cluster(tmp_path, config, instances=3, env=KEY_ENV) as c:
        first = _post(c, model, max_tokens=10)
        assert first.status_code == 200
        second = _post(c, model, max_tokens=10)
        assert second.status_code == 429
        assert second.headers["x-ratelimit-remaining-tokens"] == "0"
        rows = c.wait_records(2)
        assert rows[0]["instance"] != rows[1]["instance"]  # round robin: another instance


def _until(predicate: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


@pytest.mark.parametrize("fail", ["open", "closed"])
def test_redis_stopped_and_restarted_mid_test(tmp_path: Path, upstream: Any, fail: str) -> None:
    models = {"normal": {"rpm": 3}, "normal:n=2": {"rpm": 1000}}
    config = _config(upstream, limits={"fail": fail, "models": models})
    with cluster(tmp_path, config, instances=3, env=KEY_ENV) as c:
        assert [_post(c, "normal").status_code for _ in range(4)] == [200, 200, 200, 429]
        c.redis.stop()
        down = [_post(c, "normal") for _ in range(9)]  # three per instance
        if fail == "open":
            assert [r.status_code for r in down] == [200] * 9
        else:
            assert [r.status_code for r in down] == [503] * 9
            body = down[0].json()["error"]
            assert body["code"] == "service_unavailable"
            assert "Redis" in body["message"] and "limits.fail: closed" in body["message"]
            assert down[0].headers["retry-after"] == "1"
        for log in c.logs():
            assert log.count("redis unavailable: ") == 1
            assert log.count("rate limits") == 1
        c.redis.start()  # empty: the counters start again

        # Each instance probes Redis again after its back-off, when a request comes:
        # requests for another limited model bring them back without touching "normal".
        def recovered() -> bool:
            _post(c, "normal:n=2")
            return all("redis available again" in log for log in c.logs())

        _until(recovered)
        statuses = [_post(c, "normal").status_code for _ in range(4)]
        assert statuses == [200, 200, 200, 429]
        for log in c.logs():
            assert log.count("redis unavailable: ") == 1
            assert log.count("redis available again") == 1
