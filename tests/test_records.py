"""What a record says about the answer: who gave it, under which model and id, why it
ended, how routing got there, and the class of a failure."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from tests.conftest import StartGateway
from tests.upstream import scenarios as sc

KEY_ENV = {"TEST_UPSTREAM_KEY": "sk-test"}
MESSAGES: list[Any] = [{"role": "user", "content": "Tell me a story"}]


def test_the_answer_routing_and_failures_on_the_record(
    start_gateway: StartGateway, upstream: Any
) -> None:
    base = {"provider": "openai", "base_url": upstream.url, "api_key_env": "TEST_UPSTREAM_KEY"}
    models = {
        "m": {**base, "model": "error_status:status=500", "retries": 1, "fallbacks": ["backup"]},
        "backup": {**base, "model": "normal"},
        "two": {**base, "model": "choices"},
        "broken": {**base, "model": "midstream_error"},
        "missing": {**base, "model": "nope"},
        "story": {"provider": "simulator", "ttft": 0, "tokens_per_second": 0, "max_tokens": 8},
    }
    config = {"models": models, "routing": {"backoff": {"base": 0.01, "max": 0.05}}}
    gateway = start_gateway(config, env=KEY_ENV)
    sdk = openai.OpenAI(base_url=gateway.api, api_key="unused", max_retries=0, timeout=20)
    with sdk:
        for model, n in (("m", 1), ("two", 2), ("story", 1)):
            stream = sdk.chat.completions.create(model=model, messages=MESSAGES, n=n, stream=True)
            assert list(stream)
        with pytest.raises(openai.APIError):
            list(sdk.chat.completions.create(model="broken", messages=MESSAGES, stream=True))
        with pytest.raises(openai.NotFoundError):
            sdk.chat.completions.create(model="missing", messages=MESSAGES)
        sdk.embeddings.create(model="story", input="hello")

    rows = {
        r["model"] + (":e" if r["operation"] == "embeddings" else ""): r
        for r in (gateway.wait_records(6))
    }
    fields = ("operation", "provider", "response_model", "finish_reasons", "error_type")
    fell_back = rows["m"]
    assert [fell_back[f] for f in fields] == ["chat", "openai", "normal", "stop", None]
    assert (fell_back["attempts"], fell_back["fallbacks"]) == (3, 1)
    assert fell_back["response_id"] == sc.completion_id("normal")
    # One finish reason per choice.
    assert rows["two"]["finish_reasons"] == "stop,stop"
    assert rows["story"]["provider"] == "simulator"
    assert rows["story"]["response_model"]
    assert rows["story"]["finish_reasons"] in ("stop", "length")
    assert rows["broken"]["outcome"] == "error"
    assert rows["broken"]["error_type"] == "UpstreamProtocolError"
    assert [rows["missing"][f] for f in ("outcome", "error_type", "response_model")] == [
        "rejected",
        "ModelNotFound",
        None,
    ]
    assert (rows["missing"]["attempts"], rows["missing"]["fallbacks"]) == (1, 0)
    assert rows["story:e"]["operation"] == "embeddings"
