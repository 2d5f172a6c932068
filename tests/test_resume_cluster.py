"""Resume on every instance: two gateways sharing a real Redis behind a real nginx.

A generation begun on one instance is resumed, cancelled or stopped on the other; a
reader following a generation whose instance was killed gets an error within the
lease, and the response is then ``failed``; evicted events are a 404."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionChunk

from tests import api_clients, ui_sdk
from tests.api_clients import text_of
from tests.cluster import Cluster, cluster
from tests.conftest import upstream_config
from tests.gateway import RunningGateway
from tests.postgres import query
from tests.upstream.scenarios import expected_text

KEY_ENV = {"TEST_UPSTREAM_KEY": "sk-upstream-secret"}
LEASE = 1.5
PACED = "paced:n=40,interval=0.05"
USER = {"id": "u1", "role": "user", "parts": [{"type": "text", "text": "Tell me a story"}]}


@pytest.fixture
def two(tmp_path: Path, upstream: Any, postgres_url: str) -> Iterator[Cluster]:
    """Stored responses and records in one PostgreSQL, generations in one Redis."""
    config = upstream_config(
        upstream.url,
        generations={"lease": LEASE, "retention": 3, "window": 2},
        record={"url": postgres_url, "flush_interval": 0.05, "spill_dir": str(tmp_path)},
    )
    with cluster(tmp_path, config, instances=2, env=KEY_ENV) as c:
        yield c


def generation_records(url: str, route: str, count: int) -> list[dict[str, Any]]:
    """The records of ``route`` in the shared PostgreSQL, once there are ``count``."""
    deadline = time.monotonic() + 10
    while True:
        rows = query(url, "SELECT id, resumes, outcome FROM requests WHERE route = $1", route)
        if len(rows) >= count or time.monotonic() > deadline:
            return [{"id": r[0], "resumes": r[1], "outcome": r[2]} for r in rows]
        time.sleep(0.05)


def sdk(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=30)


def poll(client: openai.OpenAI, response_id: str, timeout: float = 20) -> Any:
    return api_clients.poll(client, response_id, timeout)


def sse_events(text: str) -> list[dict[str, Any]]:
    return [
        json.loads(line[len("data: ") :])
        for line in text.splitlines()
        if line.startswith("data: ") and line != "data: [DONE]"
    ]


def test_responses_begun_on_one_resumed_on_the_other(two: Cluster, postgres_url: str) -> None:
    one, other = two.gateways
    first: list[Any] = []
    with sdk(one.url).responses.create(
        model=PACED, input="Tell me a story", background=True, stream=True
    ) as stream:
        for event in stream:
            first.append(event)
            if len(first) == 6:
                break
    response_id = first[0].response.id
    cut = first[-1].sequence_number
    rest = list(sdk(other.url).responses.retrieve(response_id, stream=True, starting_after=cut))
    assert rest[0].sequence_number == cut + 1 and rest[-1].type == "response.completed"
    assert text_of(first + rest) == expected_text(PACED)
    # Through nginx, whichever instance answers: polled to its end.
    final = poll(sdk(two.url), response_id)
    assert final.status == "completed" and final.output_text == expected_text(PACED)
    rows = generation_records(postgres_url, "/v1/responses", 1)
    assert len(rows) == 1 and rows[0]["resumes"] == 1 and rows[0]["outcome"] == "ok"


def test_cancel_on_the_other_instance(two: Cluster, upstream: Any) -> None:
    upstream.reset()
    one, other = two.gateways
    model = "paced:n=1000,interval=0.05"
    created = sdk(one.url).responses.create(model=model, input="hi", background=True)
    time.sleep(0.3)
    cancelled = sdk(other.url).responses.cancel(created.id)
    assert cancelled.status == "cancelled"
    connection = upstream.connection_for(model, timeout=5)
    assert connection is not None and connection["closed_at"] is not None
    assert sdk(one.url).responses.cancel(created.id).model_dump() == cancelled.model_dump()


def test_a_killed_writer_fails_its_readers_and_its_response(two: Cluster) -> None:
    one, other = two.gateways
    model = "paced:n=1000,interval=0.05"
    created = sdk(one.url).responses.create(model=model, input="hi", background=True)
    received: list[str] = []
    ended: list[float] = []

    def follow() -> None:
        url = f"{other.url}/v1/responses/{created.id}?stream=true"
        with httpx.Client(timeout=30) as http, http.stream("GET", url) as response:
            for line in response.iter_lines():
                received.append(line)
        ended.append(time.monotonic())

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    deadline = time.monotonic() + 10
    while not any("output_text.delta" in line for line in received):
        assert time.monotonic() < deadline, "the follower got nothing"
        time.sleep(0.02)
    one.process.kill()
    killed = time.monotonic()
    reader.join(LEASE + 10)
    assert not reader.is_alive(), "the follower hangs"
    assert ended[0] - killed < LEASE + 5
    events = sse_events("\n".join(received))
    assert events[-2]["type"] == "error" and events[-1]["type"] == "response.failed"
    failed = sdk(other.url).responses.retrieve(created.id)
    assert failed.status == "failed" and failed.error is not None


def test_a_killed_writer_without_readers_is_failed_when_polled(two: Cluster) -> None:
    one, other = two.gateways
    created = sdk(one.url).responses.create(
        model="paced:n=1000,interval=0.05", input="hi", background=True
    )
    time.sleep(0.3)
    one.process.kill()
    time.sleep(LEASE + 0.5)
    assert sdk(other.url).responses.retrieve(created.id).status == "failed"


def test_evicted_events_are_a_404_on_any_instance(two: Cluster) -> None:
    one, other = two.gateways
    created = sdk(one.url).responses.create(model="normal", input="hi", background=True)
    assert poll(sdk(other.url), created.id).status == "completed"
    time.sleep(3.5)  # past generations.retention
    with httpx.Client(timeout=10) as http:
        for gateway in (one, other):
            evicted = http.get(f"{gateway.url}/v1/responses/{created.id}?stream=true")
            assert evicted.status_code == 404
            assert "no longer kept" in evicted.json()["error"]["message"]


def test_chat_resumed_on_the_other_instance(two: Cluster) -> None:
    one, other = two.gateways
    client = sdk(one.url)
    with client.chat.completions.with_streaming_response.create(
        model=PACED,
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        extra_headers={"x-sluice-resumable": "true"},
    ) as response:
        generation_id = response.headers["x-sluice-generation-id"]
        first = []
        for chunk in response.parse():
            first.append(chunk)
            if len(first) == 5:
                break
    rest = list(
        sdk(other.url).get(
            f"/chat/completions/{generation_id}/stream",
            cast_to=ChatCompletionChunk,
            options={"params": {"after": len(first)}},
            stream=True,
            stream_cls=openai.Stream[ChatCompletionChunk],
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in first + rest if c.choices)
    assert text == expected_text(PACED)


def ui_post(gateway: RunningGateway, chat_id: str, model: str) -> threading.Thread:
    def run() -> None:
        body = {"id": chat_id, "messages": [USER], "model": model}
        with (
            httpx.Client(timeout=30) as http,
            http.stream("POST", f"{gateway.url}/api/chat", json=body) as response,
        ):
            for piece in response.iter_raw():
                if b"text-delta" in piece:
                    break  # the first client leaves mid-answer

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_ui_resume_and_stop_on_the_other_instance(two: Cluster, upstream: Any) -> None:
    one, other = two.gateways
    ui_post(one, "chat-across", PACED).join(10)
    out = ui_sdk.send(f"{other.url}/api/chat", {"resume": True, "chatId": "chat-across"})
    assert out["status"] == 200 and out["problems"] == [] and out["errors"] == []
    assert out["chunks"][0]["type"] == "start" and out["chunks"][-1]["type"] == "finish"
    assert "".join(p.get("text", "") for p in out["message"]["parts"]) == expected_text(PACED)

    upstream.reset()
    model = "paced:n=1000,interval=0.05"
    ui_post(one, "chat-stop", model).join(10)
    with httpx.Client(timeout=10) as http:
        stopped = http.post(f"{other.url}/api/chat/chat-stop/stop").json()
    assert stopped == {"id": "chat-stop", "stopped": True}
    connection = upstream.connection_for(model, timeout=5)
    assert connection is not None and connection["closed_at"] is not None
    after = ui_sdk.send(f"{other.url}/api/chat", {"resume": True, "chatId": "chat-stop"})
    assert after["chunks"][-1]["type"] == "abort"


def test_polling_on_the_other_instance_shows_the_output_so_far(two: Cluster) -> None:
    one, other = two.gateways
    model = "paced:n=100,interval=0.05"
    created = sdk(one.url).responses.create(model=model, input="hi", background=True)
    seen: list[str] = []
    client = sdk(other.url)
    deadline = time.monotonic() + 20
    while (polled := client.responses.retrieve(created.id)).status in ("queued", "in_progress"):
        assert time.monotonic() < deadline
        seen.append(polled.output_text)
        time.sleep(0.1)
    partial = [text for text in seen if text]
    # Stored by its instance about once a second while it ran (5 s), not only at its ends.
    assert len(set(partial)) >= 2, seen
    assert all(expected_text(model).startswith(text) for text in partial)
    assert polled.status == "completed" and polled.output_text == expected_text(model)


def test_a_killed_instance_stops_counting_against_its_key(tmp_path: Path, upstream: Any) -> None:
    """The background responses a key has running count on every instance; those of an
    instance that was killed stop counting within the lease, not a day later."""
    config = upstream_config(upstream.url, generations={"lease": LEASE, "per_key": 1})
    with cluster(tmp_path, config, instances=2, env=KEY_ENV) as c:
        one, other = c.gateways
        model = "paced:n=1000,interval=0.05"
        sdk(one.url).responses.create(model=model, input="hi", background=True)
        with pytest.raises(openai.RateLimitError):
            sdk(other.url).responses.create(model=model, input="hi", background=True)
        one.process.kill()
        time.sleep(LEASE + 0.5)
        created = sdk(other.url).responses.create(model=PACED, input="hi", background=True)
        assert poll(sdk(other.url), created.id).status == "completed"


def test_a_resume_after_the_end_counts_on_the_record(two: Cluster, postgres_url: str) -> None:
    """Resumed on the other instance once it ended: its record, in the shared
    PostgreSQL, counts it."""
    one, other = two.gateways
    created = sdk(one.url).responses.create(model="normal", input="hi", background=True)
    assert poll(sdk(one.url), created.id).status == "completed"
    rows = generation_records(postgres_url, "/v1/responses", 1)
    assert len(rows) == 1 and rows[0]["resumes"] == 0
    events = list(sdk(other.url).responses.retrieve(created.id, stream=True))
    assert events[-1].type == "response.completed"
    deadline = time.monotonic() + 10
    while generation_records(postgres_url, "/v1/responses", 1)[0]["resumes"] != 1:
        assert time.monotonic() < deadline, "the resume was not counted"
        time.sleep(0.05)
