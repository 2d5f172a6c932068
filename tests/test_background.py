"""Responses background mode through the official openai SDK, on one gateway with each
shared-state backend: create in the background, cut the stream after N events, resume
with ``starting_after``, cancel, poll; one record per generation with its resumes."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import StartGateway, upstream_config
from tests.gateway import RunningGateway
from tests.upstream.scenarios import expected_text

KEY_ENV = {"TEST_UPSTREAM_KEY": "sk-upstream-secret"}
PACED = "paced:n=40,interval=0.05"
LIMITED = "normal:n=3"


@pytest.fixture
def gateway(
    start_gateway: StartGateway, upstream: Any, backend: dict[str, Any]
) -> Iterator[RunningGateway]:
    config = upstream_config(
        upstream.url,
        **backend,
        generations={"retention": 2, "window": 1},
        limits={"models": {LIMITED: {"rpm": 1}}},
    )
    yield start_gateway(config, KEY_ENV)


def sdk(gateway: RunningGateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.api, api_key="unused", max_retries=0, timeout=20)


def text_of(events: list[Any]) -> str:
    return "".join(e.delta for e in events if e.type == "response.output_text.delta")


def poll(client: openai.OpenAI, response_id: str, timeout: float = 15) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        response = client.responses.retrieve(response_id)
        if response.status not in ("queued", "in_progress") or time.monotonic() > deadline:
            return response
        time.sleep(0.05)


def test_create_cut_resume(gateway: RunningGateway) -> None:
    client = sdk(gateway)
    first: list[Any] = []
    with client.responses.create(
        model=PACED, input="Tell me a story", background=True, stream=True
    ) as stream:
        for event in stream:
            first.append(event)
            if len(first) == 8:
                break  # the connection is cut here; the generation goes on
    response_id = first[0].response.id
    assert first[0].type == "response.created"
    assert first[0].response.background is True
    cut = first[-1].sequence_number
    rest = list(client.responses.retrieve(response_id, stream=True, starting_after=cut))
    assert [e.sequence_number for e in rest] == list(range(cut + 1, cut + 1 + len(rest)))
    assert rest[-1].type == "response.completed"
    assert text_of(first + rest) == expected_text(PACED)
    # Without a cursor: every event from the first.
    whole = list(client.responses.retrieve(response_id, stream=True))
    assert [e.sequence_number for e in whole] == list(range(len(whole)))
    assert text_of(whole) == expected_text(PACED)
    final = poll(client, response_id)
    assert final.status == "completed" and final.background is True
    assert final.output_text == expected_text(PACED)
    # One record for the generation, written at its end: resumed once while it ran.
    rows = gateway.wait_records(4)
    generations = [r for r in rows if r["route"] == "/v1/responses"]
    assert len(generations) == 1
    assert generations[0]["resumes"] == 1 and generations[0]["outcome"] == "ok"
    assert generations[0]["output_tokens"] == 40


def test_background_without_a_stream_then_polling(gateway: RunningGateway) -> None:
    client = sdk(gateway)
    created = client.responses.create(model=PACED, input="hi", background=True)
    assert created.status in ("queued", "in_progress")
    final = poll(client, created.id)
    assert final.status == "completed"
    assert final.output_text == expected_text(PACED)


def test_cancel_stops_the_upstream_and_is_idempotent(
    gateway: RunningGateway, upstream: Any
) -> None:
    upstream.reset()
    model = "paced:n=1000,interval=0.05"
    client = sdk(gateway)
    created = client.responses.create(model=model, input="hi", background=True)
    time.sleep(0.3)
    cancelled = client.responses.cancel(created.id)
    assert cancelled.status == "cancelled"
    # The upstream request was closed, not left to write its 1,000 chunks (50 s).
    connection = upstream.connection_for(model, timeout=5)
    assert connection is not None and connection["closed_at"] is not None
    again = client.responses.cancel(created.id)
    assert again.model_dump() == cancelled.model_dump()
    assert poll(client, created.id).status == "cancelled"
    rows = [r for r in gateway.wait_records(3) if r["route"] == "/v1/responses"]
    assert rows[0]["outcome"] == "cancelled"
    # A resumed stream of a cancelled response ends without a failure.
    events = list(client.responses.retrieve(created.id, stream=True))
    assert events and all(e.type != "error" for e in events)


def test_refused_by_the_gateway_is_a_status(gateway: RunningGateway) -> None:
    client = sdk(gateway)
    client.responses.create(model=LIMITED, input="hi", background=True)
    with pytest.raises(openai.RateLimitError):
        client.responses.create(model=LIMITED, input="hi", background=True)
    rows = [r for r in gateway.wait_records(2) if r["route"] == "/v1/responses"]
    assert sorted(r["status"] for r in rows) == [200, 429]


def test_an_upstream_failure_is_a_failed_response(gateway: RunningGateway) -> None:
    client = sdk(gateway)
    created = client.responses.create(model="no_such_scenario", input="hi", background=True)
    final = poll(client, created.id)
    assert final.status == "failed" and final.error is not None


def test_background_needs_store(gateway: RunningGateway) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        sdk(gateway).responses.create(model=PACED, input="hi", background=True, store=False)
    assert bad.value.param == "background"


def test_unknown_and_evicted(gateway: RunningGateway) -> None:
    client = sdk(gateway)
    with httpx.Client(timeout=10) as http:
        unknown = http.get(f"{gateway.api}/responses/resp_nope?stream=true")
        assert unknown.status_code == 404
        assert "not found" in unknown.json()["error"]["message"]
        done = client.responses.create(model="normal", input="hi", background=True)
        assert poll(client, done.id).status == "completed"
        time.sleep(2.5)  # past generations.retention
        evicted = http.get(f"{gateway.api}/responses/{done.id}?stream=true")
        assert evicted.status_code == 404
        error = evicted.json()["error"]
        assert "no longer kept" in error["message"]
        # The response itself is still there.
        assert http.get(f"{gateway.api}/responses/{done.id}").json()["status"] == "completed"
        bad = http.get(f"{gateway.api}/responses/{done.id}?stream=true&starting_after=x")
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "starting_after"


def test_a_plain_stream_still_cancels_its_upstream(gateway: RunningGateway, upstream: Any) -> None:
    upstream.reset()
    model = "paced:n=1000,interval=0.02"
    with sdk(gateway).responses.create(model=model, input="hi", stream=True) as stream:
        for n, _ in enumerate(stream):
            if n == 5:
                break
    connection = upstream.connection_for(model, timeout=3)
    assert connection is not None and connection["closed_at"] is not None


def test_shutdown_fails_running_background_responses(
    start_gateway: StartGateway, upstream: Any, tmp_path: Any
) -> None:
    gateway = start_gateway(upstream_config(upstream.url), KEY_ENV)
    created = sdk(gateway).responses.create(
        model="paced:n=1000,interval=0.05", input="hi", background=True
    )
    time.sleep(0.3)
    gateway.stop()  # SIGTERM: the gateway shuts down
    with contextlib.closing(sqlite3.connect(gateway.db_path)) as db:
        status, error = db.execute(
            "SELECT status, error FROM responses WHERE id = ?", (created.id,)
        ).fetchone()
        outcome, message = db.execute(
            "SELECT outcome, error FROM requests WHERE route = '/v1/responses'"
        ).fetchone()
    assert status == "failed" and "shut down" in error
    assert outcome == "shutdown" and "shut down" in message


def test_the_sdk_stream_helper_resumes_by_id(gateway: RunningGateway) -> None:
    """``responses.stream(response_id=…)`` asks without a cursor and skips events itself."""
    client = sdk(gateway)
    created = client.responses.create(model=PACED, input="hi", background=True)
    with client.responses.stream(response_id=created.id, starting_after=5) as stream:
        events = list(stream)
        final = stream.get_final_response()
    assert events[0].sequence_number == 6
    assert final.status == "completed" and final.output_text == expected_text(PACED)


def test_bounds_per_key_and_per_generation(start_gateway: StartGateway, upstream: Any) -> None:
    config = upstream_config(upstream.url, generations={"per_key": 1, "max_bytes": 20_000})
    client = sdk(start_gateway(config, KEY_ENV))
    running = client.responses.create(
        model="paced:n=1000,interval=0.05", input="hi", background=True
    )
    with pytest.raises(openai.RateLimitError) as refused:
        client.responses.create(model=PACED, input="hi", background=True)
    assert "generations.per_key" in refused.value.message
    client.responses.cancel(running.id)
    large = client.responses.create(model="normal:n=2000", input="hi", background=True)
    failed = poll(client, large.id)
    assert failed.status == "failed" and failed.error is not None
    assert "generations.max_bytes" in failed.error.message
