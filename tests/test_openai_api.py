"""The OpenAI-compatible API through the official SDK, against the test upstream."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests import openapi
from tests.conftest import StartGateway, upstream_config
from tests.gateway import RunningGateway
from tests.upstream.scenarios import expected_text

KEY_ENV = {"TEST_UPSTREAM_KEY": "sk-upstream-secret"}
MESSAGES: list[Any] = [{"role": "user", "content": "Tell me a story"}]


@pytest.fixture
def gateway(start_gateway: StartGateway, upstream: Any) -> RunningGateway:
    return start_gateway(upstream_config(upstream.url), env=KEY_ENV)


def sdk(gateway: RunningGateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.api, api_key="unused", max_retries=0, timeout=20)


def test_streaming_with_the_sync_sdk(gateway: RunningGateway, upstream: Any) -> None:
    stream = sdk(gateway).chat.completions.create(model="normal", messages=MESSAGES, stream=True)
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected_text("normal")
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)
    sent = upstream.log()["requests"][-1]
    assert sent["body"]["stream"] is True
    assert sent["body"]["stream_options"] == {"include_usage": True}
    assert sent["headers"]["authorization"] == "Bearer sk-upstream-secret"


def test_streaming_with_the_async_sdk(gateway: RunningGateway) -> None:
    async def main() -> tuple[str, Any]:
        client = openai.AsyncOpenAI(base_url=gateway.api, api_key="unused", max_retries=0)
        async with client:
            stream = await client.chat.completions.create(
                model="paced:n=8,interval=0.01",
                messages=MESSAGES,
                stream=True,
                stream_options={"include_usage": True},
            )
            parts, usage = [], None
            async for chunk in stream:
                if chunk.choices:
                    parts.append(chunk.choices[0].delta.content or "")
                if chunk.usage:
                    usage = chunk.usage
            return "".join(parts), usage

    text, usage = asyncio.run(main())
    assert text == expected_text("paced:n=8,interval=0.01")
    assert usage is not None and usage.completion_tokens == 8


def test_usage_chunk_only_when_asked(gateway: RunningGateway) -> None:
    client = sdk(gateway)
    chunks = list(
        client.chat.completions.create(
            model="normal",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0
    assert all(c.choices for c in chunks[:-1])


def test_non_streaming_sync_and_async(gateway: RunningGateway) -> None:
    completion = sdk(gateway).chat.completions.create(model="normal", messages=MESSAGES)
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.content == expected_text("normal")
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.completion_tokens > 0
    openapi.validator("CreateChatCompletionResponse").validate(
        completion.model_dump(exclude_unset=True)
    )

    async def main() -> str | None:
        async with openai.AsyncOpenAI(base_url=gateway.api, api_key="x", max_retries=0) as c:
            done = await c.chat.completions.create(model="normal", messages=MESSAGES)
            return done.choices[0].message.content

    assert asyncio.run(main()) == expected_text("normal")


def test_models_list(gateway: RunningGateway) -> None:
    models = sdk(gateway).models.list()
    assert [m.id for m in models.data] == ["normal"]


def _raw_stream(gateway: RunningGateway, body: dict[str, Any]) -> tuple[httpx.Response, bytes]:
    with (
        httpx.Client(timeout=20) as client,
        client.stream("POST", f"{gateway.api}/chat/completions", json=body) as response,
    ):
        return response, b"".join(response.iter_raw())


def test_wire_format(gateway: RunningGateway) -> None:
    response, raw = _raw_stream(
        gateway,
        {
            "model": "normal",
            "messages": MESSAGES,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-accel-buffering"] == "no"
    lines = raw.decode().split("\n")
    assert not [line for line in lines if line.startswith(("id:", "retry:", "event:"))]
    assert raw.endswith(b"data: [DONE]\n\n")
    assert raw.count(b"[DONE]") == 1
    chunks = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
    validator = openapi.validator("CreateChatCompletionStreamResponse")
    for chunk in chunks:
        validator.validate(chunk)


def test_requests_are_recorded(gateway: RunningGateway) -> None:
    client = sdk(gateway)
    list(client.chat.completions.create(model="normal", messages=MESSAGES, stream=True))
    client.chat.completions.create(model="normal", messages=MESSAGES)
    rows = gateway.wait_records(2)
    assert [r["outcome"] for r in rows] == ["ok", "ok"]
    for row in rows:
        assert row["route"] == "/v1/chat/completions"
        assert row["model"] == "normal"
        assert row["status"] == 200
        assert row["input_tokens"] > 0 and row["output_tokens"] > 0
        assert row["usage_source"] == "reported"
        assert row["ttft_ms"] is not None and row["duration_ms"] >= row["ttft_ms"]
        assert row["chunks"] > 0
        assert row["prompt"] is None and row["response"] is None
    assert "sk-upstream-secret" not in gateway.log()


def test_content_is_stored_only_when_configured(start_gateway: StartGateway, upstream: Any) -> None:
    gateway = start_gateway(
        upstream_config(upstream.url, record={"store_content": True}), env=KEY_ENV
    )
    sdk(gateway).chat.completions.create(model="normal", messages=MESSAGES)
    row = gateway.wait_records(1)[-1]
    assert json.loads(row["prompt"]) == MESSAGES
    assert row["response"] == expected_text("normal")


def test_a_failing_record_store_never_breaks_a_stream(
    start_gateway: StartGateway, upstream: Any, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    config = upstream_config(upstream.url, record={"path": str(blocker / "records.db")})
    gateway = start_gateway(config, env=KEY_ENV)
    stream = sdk(gateway).chat.completions.create(model="normal", messages=MESSAGES, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream) == expected_text("normal")
    assert gateway.process.poll() is None


def test_a_clean_shutdown_loses_no_record(start_gateway: StartGateway, upstream: Any) -> None:
    gateway = start_gateway(
        upstream_config(upstream.url, record={"flush_interval": 60}), env=KEY_ENV
    )
    client = sdk(gateway)
    for _ in range(25):
        client.chat.completions.create(model="normal", messages=MESSAGES)
    gateway.stop()  # SIGTERM: uvicorn shuts down gracefully, then re-raises the signal
    assert "Application shutdown complete" in gateway.log()
    assert len([r for r in gateway.records() if r["route"] == "/v1/chat/completions"]) == 25


def test_chunks_are_forwarded_unchanged_when_nothing_needs_to_change(
    start_gateway: StartGateway, upstream: Any
) -> None:
    """Same wire format: the upstream's chunks go out as they came, also behind a policy
    that starts the router late, and also for an alias. Every chunk of a stream, and the
    JSON answer to the same request, names the model the upstream said answered and
    carries one id (README: "Which model name clients see")."""
    config = upstream_config(upstream.url, limits={"models": {"normal": {"rpm": 1000}}})
    config["models"]["alias"] = {
        "provider": "openai",
        "base_url": upstream.url,
        "api_key_env": "TEST_UPSTREAM_KEY",
        "model": "normal",
    }
    gateway = start_gateway(config, env=KEY_ENV)
    client = sdk(gateway)
    for model in ("normal", "alias"):
        chunks = list(client.chat.completions.create(model=model, messages=MESSAGES, stream=True))
        assert {c.created for c in chunks} == {1700000000}  # the test upstream's stamp
        assert {c.system_fingerprint for c in chunks} == {"fp_test"}
        assert {c.model for c in chunks} == {"normal"}
        assert len({c.id for c in chunks}) == 1
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == expected_text("normal")
        answer = client.chat.completions.create(model=model, messages=MESSAGES)
        assert answer.model == "normal"
        assert answer.system_fingerprint == "fp_test"
