"""The response cache through the real gateway, on the memory and the Redis backend:
hits replayed as streams with their usage, what is cacheable, the request header, the
per-model config, expiry and bounds, failures never stored, and Redis going away."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest

from sluice import config
from sluice.dialects.openai_request import decode_chat
from sluice.errors import RequestError
from sluice.policies.cache import cache_key
from tests.conftest import StartGateway, upstream_config
from tests.gateway import RunningGateway
from tests.policies.cache_client import (
    KEY_ENV,
    body,
    open_stream,
    post,
    prompt,
    read_events,
    upstream_calls,
)
from tests.policies.keys import create_key, gateway_config
from tests.upstream.scenarios import expected_text


def _gateway(start: StartGateway, upstream: Any, backend: dict[str, Any], **extra: Any) -> Any:
    return start(upstream_config(upstream.url, **backend, **extra), env=KEY_ENV)


def _stream(model: str, text: str, **extra: Any) -> dict[str, Any]:
    return body(model, text, stream=True, stream_options={"include_usage": True}, **extra)


def _content_chunks(reply: Any) -> list[str]:
    return [
        c["choices"][0]["delta"]["content"]
        for c in reply.chunks
        if c.get("choices") and c["choices"][0]["delta"].get("content")
    ]


def test_a_deterministic_request_is_a_hit_the_second_time(
    start_gateway: StartGateway, upstream: Any, backend: dict[str, Any]
) -> None:
    gateway = _gateway(start_gateway, upstream, backend)
    text, model = prompt(), "normal:n=12"
    payload = _stream(model, text, temperature=0)
    first = post(gateway.api, payload)
    second = post(gateway.api, payload)
    assert (first.status, second.status) == (200, 200)
    assert (first.cache, second.cache) == ("miss", "hit")
    assert second.text == first.text == expected_text(model)
    assert upstream_calls(upstream, text) == 1
    # Replayed as a stream of many chunks, not one blob, with the original usage.
    assert _content_chunks(second) == _content_chunks(first)
    assert len(_content_chunks(second)) == 12
    assert second.usage == first.usage
    assert second.usage is not None and second.usage["completion_tokens"] == 12
    assert second.events[-1] == "[DONE]"
    assert second.chunks[0]["id"] != first.chunks[0]["id"]  # a response of its own
    # The same entry answers a non-streamed request, here through the openai SDK.
    client = openai.OpenAI(base_url=gateway.api, api_key="unused", max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": text}], temperature=0
    )
    assert raw.headers["x-sluice-cache"] == "hit"
    completion = raw.parse()
    assert completion.choices[0].message.content == expected_text(model)
    assert completion.usage is not None and completion.usage.completion_tokens == 12
    assert upstream_calls(upstream, text) == 1
    rows = gateway.wait_records(3)
    assert [r["cache"] for r in rows] == ["miss", "hit", "hit"]
    assert [r["output_tokens"] for r in rows] == [12, 12, 12]
    assert {r["usage_source"] for r in rows} == {"reported"}
    assert [r["outcome"] for r in rows] == ["ok", "ok", "ok"]


def test_what_is_cacheable_by_default(
    start_gateway: StartGateway, upstream: Any, backend: dict[str, Any]
) -> None:
    gateway = _gateway(start_gateway, upstream, backend)
    # temperature 1 (or none): not deterministic, never cached, no header.
    text = prompt()
    for _ in range(2):
        reply = post(gateway.api, _stream("normal:n=3", text, temperature=1))
        assert reply.cache is None
        assert reply.text == expected_text("normal:n=3")
    assert upstream_calls(upstream, text) == 2
    # A seed makes it deterministic; fields that do not change the answer are not
    # part of the key (stream, stream_options, user).
    text = prompt()
    first = post(gateway.api, _stream("normal:n=3", text, temperature=1, seed=7, user="a"))
    second = post(gateway.api, body("normal:n=3", text, temperature=1, seed=7, user="b"))
    assert (first.cache, second.cache) == ("miss", "hit")
    assert second.text == expected_text("normal:n=3")
    # ... but every sampling field is: another seed or max_tokens is another entry.
    assert post(gateway.api, _stream("normal:n=3", text, temperature=1, seed=8)).cache == "miss"
    other = _stream("normal:n=3", text, temperature=1, seed=7, max_tokens=50)
    assert post(gateway.api, other).cache == "miss"
    assert upstream_calls(upstream, text) == 3
    rows = gateway.wait_records(6)
    assert [r["cache"] for r in rows] == [None, None, "miss", "hit", "miss", "miss"]


def test_the_request_header_turns_the_cache_on_off_or_refreshes_it(
    start_gateway: StartGateway, upstream: Any, backend: dict[str, Any]
) -> None:
    gateway = _gateway(start_gateway, upstream, backend)
    model = "normal:n=4"
    # on: even a non-deterministic request is cached.
    text = prompt()
    on = {"x-sluice-cache": "on"}
    assert post(gateway.api, _stream(model, text, temperature=1), on).cache == "miss"
    assert post(gateway.api, _stream(model, text, temperature=1), on).cache == "hit"
    assert upstream_calls(upstream, text) == 1
    # off: straight upstream; refresh: upstream again, and the entry replaced.
    text = prompt()
    payload = _stream(model, text, temperature=0)
    assert post(gateway.api, payload).cache == "miss"
    off = post(gateway.api, payload, {"x-sluice-cache": "OFF"})
    assert off.cache == "bypass"
    assert off.text == expected_text(model)
    assert upstream_calls(upstream, text) == 2
    assert post(gateway.api, payload, {"x-sluice-cache": "refresh"}).cache == "miss"
    assert upstream_calls(upstream, text) == 3
    assert post(gateway.api, payload).cache == "hit"
    assert upstream_calls(upstream, text) == 3
    # Anything else is a mistake the client hears about.
    bad = post(gateway.api, payload, {"x-sluice-cache": "maybe"})
    assert bad.status == 400
    assert "x-sluice-cache" in bad.body.decode()
    rows = gateway.wait_records(7)
    assert [r["cache"] for r in rows[2:6]] == ["miss", "bypass", "miss", "hit"]
    assert rows[6]["outcome"] == "rejected"


def test_per_model_config_and_expiry(
    start_gateway: StartGateway, upstream: Any, backend: dict[str, Any]
) -> None:
    cache = {"ttl": 1, "models": {"normal:n=3": {"enabled": False}, "normal:n=5": {"ttl": 60}}}
    gateway = _gateway(start_gateway, upstream, backend, cache=cache)
    text = prompt()
    for _ in range(2):  # disabled for this model: not even the header turns it on
        reply = post(
            gateway.api, _stream("normal:n=3", text, temperature=0), {"x-sluice-cache": "on"}
        )
        assert reply.cache is None
    assert upstream_calls(upstream, text) == 2
    short, long = _stream("normal:n=4", text, temperature=0), _stream("normal:n=5", text, seed=1)
    assert [post(gateway.api, p).cache for p in (short, long, short, long)] == [
        "miss",
        "miss",
        "hit",
        "hit",
    ]
    time.sleep(1.3)
    assert post(gateway.api, short).cache == "miss"  # expired after the global 1 s
    assert post(gateway.api, long).cache == "hit"  # the model's own TTL


def test_the_cache_is_bounded(
    start_gateway: StartGateway, upstream: Any, backend: dict[str, Any]
) -> None:
    gateway = _gateway(
        start_gateway, upstream, backend, cache={"max_entries": 2, "max_bytes": 20_000}
    )
    prompts = [prompt() for _ in range(3)]
    payloads = [_stream("normal:n=3", p, temperature=0) for p in prompts]
    assert [post(gateway.api, p).cache for p in payloads] == ["miss"] * 3
    # The least recently used entry made room for the third.
    assert post(gateway.api, payloads[2]).cache == "hit"
    assert post(gateway.api, payloads[1]).cache == "hit"
    assert post(gateway.api, payloads[0]).cache == "miss"
    # An answer larger than the whole byte bound is never kept.
    text = prompt()
    large = _stream("large:n=2,size=16000", text, temperature=0)
    assert [post(gateway.api, large).cache for _ in range(2)] == ["miss", "miss"]
    assert upstream_calls(upstream, text) == 2


@pytest.mark.parametrize(
    "model", ["drop:after=3", "midstream_error:after=3", "normal:finish=error"]
)
def test_a_failed_generation_is_never_stored(
    start_gateway: StartGateway, upstream: Any, backend: dict[str, Any], model: str
) -> None:
    gateway = _gateway(start_gateway, upstream, backend)
    text = prompt()
    for _ in range(2):
        reply = post(gateway.api, _stream(model, text, temperature=0))
        assert reply.cache == "miss"
        assert reply.text == expected_text(model)
        if not model.startswith("normal"):
            assert reply.error is not None
    assert upstream_calls(upstream, text) == 2


def test_a_generation_its_client_left_is_never_stored(
    start_gateway: StartGateway, upstream: Any, backend: dict[str, Any]
) -> None:
    gateway = _gateway(start_gateway, upstream, backend)
    text = prompt()
    payload = _stream("paced:n=40,interval=0.02", text, temperature=0)
    sock = open_stream(gateway.url, payload)
    read_events(sock, 3)
    sock.close()
    assert _closed(upstream.wait_log(lambda log: _closed(log, text)), text)
    again = post(gateway.api, payload)
    assert again.cache == "miss"
    assert again.text == expected_text("paced:n=40")
    assert upstream_calls(upstream, text) == 2
    rows = gateway.wait_records(2)
    assert [(r["outcome"], r["cache"]) for r in rows] == [
        ("client_disconnected", "miss"),
        ("ok", "miss"),
    ]


def _closed(log: dict[str, Any], text: str) -> bool:
    ids = {r["connection"] for r in log["requests"] if text in str(r["body"])}
    return any(c["id"] in ids and c["closed_at"] for c in log["connections"])


def test_a_hit_can_keep_the_original_pace(
    start_gateway: StartGateway, upstream: Any, backend: dict[str, Any]
) -> None:
    gateway = _gateway(start_gateway, upstream, backend, cache={"replay": {"paced": True}})
    payload = _stream("paced:n=6,interval=0.1", prompt(), temperature=0)
    assert post(gateway.api, payload).cache == "miss"
    started = time.monotonic()
    reply = post(gateway.api, payload)
    assert reply.cache == "hit"
    # Never faster than the original: seven gaps of 0.1 s between its events.
    assert time.monotonic() - started >= 0.6
    assert reply.text == expected_text("paced:n=6")


def test_the_cache_is_bypassed_while_redis_is_down(
    start_gateway: StartGateway, upstream: Any, redis_server: Any
) -> None:
    if not redis_server.running:
        redis_server.start()
    gateway: RunningGateway = _gateway(start_gateway, upstream, {"redis_url": redis_server.url})
    text = prompt()
    payload = _stream("normal:n=3", text, temperature=0)
    assert post(gateway.api, payload).cache == "miss"
    redis_server.stop()
    try:
        for _ in range(2):
            reply = post(gateway.api, payload)
            assert reply.status == 200
            assert reply.cache == "bypass"
            assert reply.text == expected_text("normal:n=3")
    finally:
        redis_server.start()
    # Redis came back empty: the cache works again once the gateway noticed.
    deadline = time.monotonic() + 15
    seen = []
    while time.monotonic() < deadline and seen[-2:] != ["miss", "hit"]:
        seen.append(post(gateway.api, payload).cache or "")
        time.sleep(0.2)
    assert seen[-2:] == ["miss", "hit"]
    log = gateway.log()
    assert log.count("redis unavailable") == 1


def test_numbers_json_cannot_hold_still_make_a_key() -> None:
    """``2**64`` and ``1e20`` used to crash the key (orjson holds 64-bit integers)."""

    def key(**options: Any) -> str:
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **options}
        return cache_key(decode_chat(json.dumps(body).encode()))

    keys = {
        key(temperature=0, logit_bias={"1": 1e20}),
        key(temperature=0, logit_bias={"1": 2**64}),
        key(temperature=0, vendor_field=-(2**70)),
        key(temperature=0, vendor_field=1e300),
    }
    assert len(keys) == 4
    with pytest.raises(RequestError) as caught:
        key(seed=2**64)  # read as a float: no integer seed
    assert caught.value.param == "seed"


def test_the_key_ignores_only_what_does_not_change_the_answer() -> None:
    def key(messages: Any = None, model: str = "m", **options: Any) -> str:
        messages = messages or [{"role": "user", "content": "hi"}]
        body = {"model": model, "messages": messages, "temperature": 0, **options}
        return cache_key(decode_chat(orjson.dumps(body)))

    same = [
        key(),
        key(temperature=0.0, top_p=None),  # 0.0 is 0; null is absent
        key(user="someone", metadata={"a": "1"}, store=True, service_tier="auto"),
        key([{"role": "user", "content": [{"type": "text", "text": "hi"}]}]),
    ]
    assert len(set(same)) == 1
    # stream and stream_options live outside the options: a streamed request shares it.
    assert key(stream=True, stream_options={"include_usage": True}) == same[0]
    different = [
        key(model="other"),
        key([{"role": "user", "content": "hi!"}]),
        key([{"role": "system", "content": "hi"}]),
        key(seed=1),
        key(max_tokens=10),
        key(max_completion_tokens=10),
        key(stop=["\n"]),
        key(top_p=0.5),
        key(n=2),
        key(presence_penalty=0.5),
        key(frequency_penalty=0.5),
        key(logit_bias={"42": -100}),
        key(tools=[{"type": "function", "function": {"name": "f"}}]),
        key(tools=[{"type": "function", "function": {"name": "f"}}], tool_choice="required"),
        key(response_format={"type": "json_object"}),
        key(reasoning_effort="high"),
        key(some_future_field=True),  # unknown fields count: they may change the answer
    ]
    assert len({same[0], *different}) == len(different) + 1


def test_cache_config_mistakes_name_their_line() -> None:
    for text, expected in [
        ("cache:\n  ttl: -1\n", "line 2: cache.ttl: expected a non-negative number"),
        ("cache:\n  lease: 0\n", "line 2: cache.lease: expected a number above 0"),
        ("cache:\n  replay:\n    paced: yes please\n", "line 3: cache.replay.paced"),
        ("cache:\n  models:\n    gpt:\n      enabled: 1\n", "line 4: cache.models.gpt.enabled"),
        ("cache:\n  size: 10\n", "line 2: cache: unknown key(s) 'size'"),
        ("cache:\n  scope: team\n", "line 2: cache.scope: expected one of key, global"),
    ]:
        with pytest.raises(config.ConfigError) as caught:
            config.parse(text, {}, origin="sluice.yaml")
        assert expected in str(caught.value)
    cache = config.parse("cache: {models: {a: {enabled: false}, b: {ttl: 5}}}", {}).cache
    assert cache.for_model("a") == (False, 3600.0)
    assert cache.for_model("b") == (True, 5.0)
    assert config.parse("cache: {enabled: false}", {}).cache.for_model("b") == (False, 3600.0)


@pytest.mark.parametrize("scope", [None, "key", "global"])
def test_entries_are_each_keys_own_unless_the_scope_is_global(
    tmp_path: Path,
    start_gateway: StartGateway,
    upstream: Any,
    backend: dict[str, Any],
    scope: str | None,
) -> None:
    db = tmp_path / "sluice.db"
    alice, bob = create_key(db, "alice"), create_key(db, "bob")
    cache = {} if scope is None else {"cache": {"scope": scope}}
    gateway = start_gateway(gateway_config(upstream.url, db, **backend, **cache), env=KEY_ENV)
    text = prompt()
    payload = _stream("normal", text, temperature=0)

    def ask(key: dict[str, Any]) -> str | None:
        reply = post(gateway.api, payload, {"Authorization": f"Bearer {key['key']}"})
        assert (reply.status, reply.text) == (200, expected_text("normal"))
        return reply.cache

    shared = scope == "global"
    assert ask(alice) == "miss"
    assert ask(bob) == ("hit" if shared else "miss")  # bob never sees alice's entry
    assert (ask(alice), ask(bob)) == ("hit", "hit")
    assert upstream_calls(upstream, text) == (1 if shared else 2)


@pytest.mark.parametrize("model", ["tool_call", "reasoning:steps=3,n=2", "multibyte"])
def test_a_hit_replays_tool_calls_reasoning_and_any_text_as_they_came(
    start_gateway: StartGateway, upstream: Any, backend: dict[str, Any], model: str
) -> None:
    gateway = _gateway(start_gateway, upstream, backend)
    payload = _stream(model, prompt(), temperature=0)
    first, second = post(gateway.api, payload), post(gateway.api, payload)
    assert (first.cache, second.cache) == ("miss", "hit")

    def deltas(reply: Any) -> list[Any]:
        return [(c["choices"][0]["delta"], c["choices"][0]["finish_reason"])
                for c in reply.chunks if c.get("choices")]  # fmt: skip

    assert deltas(second) == deltas(first)
    assert second.usage == first.usage
