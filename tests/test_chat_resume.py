"""Resumable chat completions through the openai SDK: ``x-sluice-resumable: true`` gets
``x-sluice-generation-id``, a cut stream is resumed after its N-th chunk and the chunks
put together are the uncut answer's; the generation goes on after its client left."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionChunk

from tests.conftest import StartGateway, upstream_config
from tests.gateway import RunningGateway
from tests.upstream.scenarios import expected_text

KEY_ENV = {"TEST_UPSTREAM_KEY": "sk-upstream-secret"}
PACED = "paced:n=30,interval=0.05"
RESUMABLE = {"x-sluice-resumable": "true"}
MESSAGES: list[Any] = [{"role": "user", "content": "Tell me a story"}]


@pytest.fixture
def gateway(
    start_gateway: StartGateway, upstream: Any, backend: dict[str, Any]
) -> Iterator[RunningGateway]:
    config = upstream_config(upstream.url, **backend, generations={"window": 1, "retention": 3})
    yield start_gateway(config, KEY_ENV)


def sdk(gateway: RunningGateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.api, api_key="unused", max_retries=0, timeout=20)


def resume(client: openai.OpenAI, generation_id: str, after: int) -> list[ChatCompletionChunk]:
    stream = client.get(
        f"/chat/completions/{generation_id}/stream",
        cast_to=ChatCompletionChunk,
        options={"params": {"after": after}},
        stream=True,
        stream_cls=openai.Stream[ChatCompletionChunk],
    )
    return list(stream)


def content(chunks: list[ChatCompletionChunk]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_cut_and_resume_gives_the_uncut_answer(gateway: RunningGateway) -> None:
    client = sdk(gateway)
    with client.chat.completions.with_streaming_response.create(
        model=PACED,
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
        extra_headers=RESUMABLE,
    ) as response:
        generation_id = response.headers["x-sluice-generation-id"]
        first: list[ChatCompletionChunk] = []
        for chunk in response.parse():
            first.append(chunk)
            if len(first) == 7:
                break
    rest = resume(client, generation_id, len(first))
    chunks = first + rest
    assert content(chunks) == expected_text(PACED)
    assert len({c.id for c in chunks}) == 1 and len({c.created for c in chunks}) == 1
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 30
    # From the first chunk, the same chunks again.
    again = resume(client, generation_id, 0)
    assert [c.model_dump() for c in again] == [c.model_dump() for c in chunks]
    rows = [r for r in gateway.wait_records(3) if r["route"] == "/v1/chat/completions"]
    assert len(rows) == 1 and rows[0]["output_tokens"] == 30
    # Resumed twice, the second time perhaps after its end (and its record) came.
    deadline = time.monotonic() + 10
    while (resumes := rows[0]["resumes"]) != 2 and time.monotonic() < deadline:
        time.sleep(0.05)
        rows = [r for r in gateway.records() if r["id"] == rows[0]["id"]]
    assert resumes == 2


def test_no_sse_id_field_and_unknown_ids(gateway: RunningGateway) -> None:
    with httpx.Client(timeout=20) as http:
        body = {"model": "normal", "messages": MESSAGES, "stream": True}
        answer = http.post(f"{gateway.api}/chat/completions", json=body, headers=RESUMABLE)
        assert answer.status_code == 200
        assert all(not line.startswith("id:") for line in answer.text.splitlines())
        unknown = http.get(f"{gateway.api}/chat/completions/gen_nope/stream")
        assert unknown.status_code == 404
        assert unknown.json()["error"]["code"] == "generation_not_found"
        generation_id = answer.headers["x-sluice-generation-id"]
        for after in ("x", "-1", "1.5"):
            bad = http.get(f"{gateway.api}/chat/completions/{generation_id}/stream?after={after}")
            assert bad.status_code == 400, after
            assert bad.json()["error"]["param"] == "after"
        # Past generations.retention (3 s): evicted, and said so.
        time.sleep(3.5)
        evicted = http.get(f"{gateway.api}/chat/completions/{generation_id}/stream")
        assert evicted.status_code == 404
        assert evicted.json()["error"]["code"] == "generation_evicted"
        assert "no longer kept" in evicted.json()["error"]["message"]
        plain = http.post(
            f"{gateway.api}/chat/completions",
            json={**body, "stream": False},
            headers=RESUMABLE,
        )
        assert plain.status_code == 400 and plain.json()["error"]["param"] == "stream"


def test_an_answer_nobody_reads_stops_after_the_window(
    gateway: RunningGateway, upstream: Any
) -> None:
    upstream.reset()
    model = "paced:n=1000,interval=0.05"
    with sdk(gateway).chat.completions.with_streaming_response.create(
        model=model, messages=MESSAGES, stream=True, extra_headers=RESUMABLE
    ) as response:
        for n, _ in enumerate(response.parse()):
            if n == 3:
                break  # the client leaves; nobody resumes
    # generations.window is 1 s: the upstream is stopped, not left to write 1,000 chunks.
    connection = upstream.connection_for(model, timeout=10)
    assert connection is not None and connection["closed_at"] is not None
    rows = [r for r in gateway.wait_records(1) if r["route"] == "/v1/chat/completions"]
    assert rows[0]["outcome"] == "cancelled" and "generations.window" in rows[0]["error"]
