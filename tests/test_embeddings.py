"""``POST /v1/embeddings`` with the real ``openai`` SDK: passed to an OpenAI-compatible
upstream through the same keys, limits, budgets, cache and records as a generation,
and answered by the simulator when no upstream is configured."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import StartGateway, upstream_config
from tests.gateway import RunningGateway
from tests.policies.keys import create_key, gateway_config

KEY_ENV = {"TEST_UPSTREAM_KEY": "sk-upstream-secret"}


def sdk(gateway: RunningGateway, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.api, api_key=key, max_retries=0, timeout=20)


def _embedding_requests(upstream: Any) -> list[dict[str, Any]]:
    return [r for r in upstream.log()["requests"] if r.get("path") == "/v1/embeddings"]


def test_embeddings_pass_to_the_upstream_and_are_recorded(
    start_gateway: StartGateway, upstream: Any
) -> None:
    upstream.reset()
    gateway = start_gateway(upstream_config(upstream.url), env=KEY_ENV)
    client = sdk(gateway)
    one = client.embeddings.create(model="text-embedding-3-small", input="hello world")
    assert len(one.data) == 1 and len(one.data[0].embedding) == 4
    assert one.model == "text-embedding-3-small-v1"  # the upstream's name, as for chat
    assert one.usage.prompt_tokens == 2
    many = client.embeddings.create(
        model="text-embedding-3-small", input=["a b c d", "é" * 8, "x"], encoding_format="float"
    )
    assert [d.index for d in many.data] == [0, 1, 2]
    tokens = client.embeddings.create(model="text-embedding-3-small", input=[[1, 2, 3], [4]])
    assert len(tokens.data) == 2
    sent = _embedding_requests(upstream)
    # The upstream saw what the client sent.
    assert [r["body"]["input"] for r in sent] == [
        "hello world",
        ["a b c d", "é" * 8, "x"],
        [[1, 2, 3], [4]],
    ]
    assert sent[0]["body"]["model"] == "text-embedding-3-small"
    assert sent[0]["headers"].get("authorization") == "Bearer sk-upstream-secret"
    rows = [r for r in gateway.wait_records(3) if r["route"] == "/v1/embeddings"]
    assert len(rows) == 3
    first = rows[0]
    assert first["api"] == "openai_embeddings"
    assert first["status"] == 200 and first["outcome"] == "ok"
    assert first["input_tokens"] == 2 and first["output_tokens"] == 0
    assert first["usage_source"] == "reported"
    assert first["cost_usd"] == pytest.approx(2 * 0.02 / 1_000_000)


def test_the_same_input_is_embedded_once(start_gateway: StartGateway, upstream: Any) -> None:
    upstream.reset()
    gateway = start_gateway(upstream_config(upstream.url), env=KEY_ENV)
    body = {"model": "text-embedding-3-small", "input": ["cache me"], "encoding_format": "float"}
    first = httpx.post(f"{gateway.api}/embeddings", json=body, timeout=10)
    second = httpx.post(f"{gateway.api}/embeddings", json=body, timeout=10)
    assert first.status_code == second.status_code == 200
    assert [first.headers["x-sluice-cache"], second.headers["x-sluice-cache"]] == ["miss", "hit"]
    assert first.json()["data"] == second.json()["data"]
    assert len(_embedding_requests(upstream)) == 1


def test_bad_input_and_upstream_failures_are_openai_errors(
    start_gateway: StartGateway, upstream: Any
) -> None:
    gateway = start_gateway(upstream_config(upstream.url), env=KEY_ENV)
    url = f"{gateway.api}/embeddings"
    for body, param in [
        ({"model": "m"}, "input"),
        ({"model": "m", "input": []}, "input"),
        ({"model": "m", "input": ["ok", ""]}, "input[1]"),
        ({"model": "m", "input": [[1, -2]]}, "input[0]"),
        ({"model": "m", "input": "x", "encoding_format": "hex"}, "encoding_format"),
        ({"model": "m", "input": "x", "dimensions": 0}, "dimensions"),
        ({"input": "x"}, "model"),
    ]:
        answer = httpx.post(url, json=body, timeout=10)
        assert answer.status_code == 400, body
        assert answer.json()["error"]["param"] == param
        assert answer.json()["error"]["type"] == "invalid_request_error"
    client = sdk(gateway)
    with pytest.raises(openai.APIStatusError) as failed:
        client.embeddings.create(model="fail", input="x")
    assert failed.value.status_code == 502
    with pytest.raises(openai.APIStatusError) as broken:
        client.embeddings.create(model="bad_json", input="x")
    assert broken.value.status_code == 502
    assert "do not decode" in broken.value.message


def test_keys_limits_and_budgets_hold_for_embeddings(
    start_gateway: StartGateway, upstream: Any, tmp_path: Path
) -> None:
    db = tmp_path / "sluice.db"
    allowed = create_key(db, "embedder", "--models", "text-embedding-3-small", "--rpm", "2")
    gateway = start_gateway(gateway_config(upstream.url, db), env=KEY_ENV)
    client = sdk(gateway, allowed["key"])
    with pytest.raises(openai.AuthenticationError):
        sdk(gateway, "sk-sluice-wrong").embeddings.create(model="text-embedding-3-small", input="x")
    with pytest.raises(openai.PermissionDeniedError):
        client.embeddings.create(model="text-embedding-3-large", input="x")
    client.embeddings.create(model="text-embedding-3-small", input="one")
    client.embeddings.create(model="text-embedding-3-small", input="two")
    with pytest.raises(openai.RateLimitError):
        client.embeddings.create(model="text-embedding-3-small", input="three")


def test_the_simulator_embeds_offline(start_gateway: StartGateway) -> None:
    gateway = start_gateway({"models": {"*": {"provider": "simulator"}}})
    client = sdk(gateway)
    # The SDK asks for base64 by default and decodes it.
    first = client.embeddings.create(model="any-embedder", input=["the cat sat", "the cat sat"])
    a, b = (d.embedding for d in first.data)
    assert a == b and len(a) == 256
    assert math.isclose(sum(v * v for v in a), 1.0, rel_tol=1e-5)
    near = client.embeddings.create(model="m", input=["the cat sat down"]).data[0].embedding
    far = client.embeddings.create(model="m", input=["quantum ledger"]).data[0].embedding
    cosine = [sum(x * y for x, y in zip(a, v, strict=True)) for v in (near, far)]
    assert cosine[0] > cosine[1]
    small = client.embeddings.create(model="m", input="x", dimensions=8, encoding_format="float")
    assert len(small.data[0].embedding) == 8
    rows = [r for r in gateway.wait_records(4) if r["route"] == "/v1/embeddings"]
    assert all(r["status"] == 200 for r in rows)
