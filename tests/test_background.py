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

from tests import api_clients
from tests.api_clients import text_of
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


def poll(client: openai.OpenAI, response_id: str, timeout: float = 15) -> Any:
    return api_clients.poll(client, response_id, timeout)


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
    # One record for the generation, written at its end: resumed twice.
    rows = gateway.wait_records(4)
    generations = [r for r in rows if r["route"] == "/v1/responses"]
    assert len(generations) == 1
    assert generations[0]["outcome"] == "ok" and generations[0]["output_tokens"] == 40
    assert resumes_of(gateway, generations[0]["id"], 2) == 2


def resumes_of(gateway: RunningGateway, record_id: str, expected: int) -> int:
    """The record's ``resumes``, once it says ``expected`` (or as it is after 10 s)."""
    deadline = time.monotonic() + 10
    while True:
        rows = [r for r in gateway.records() if r["id"] == record_id]
        resumes = int(rows[0]["resumes"]) if rows else -1
        if resumes == expected or time.monotonic() > deadline:
            return resumes
        time.sleep(0.05)


def test_resumes_after_the_end_are_counted(gateway: RunningGateway) -> None:
    client = sdk(gateway)
    created = client.responses.create(model="normal", input="hi", background=True)
    assert poll(client, created.id).status == "completed"
    rows = [r for r in gateway.wait_records(2) if r["route"] == "/v1/responses"]
    assert len(rows) == 1 and rows[0]["resumes"] == 0  # written at its end
    for _ in range(2):  # within generations.retention: its events are still kept
        events = list(client.responses.retrieve(created.id, stream=True))
        assert events[-1].type == "response.completed"
    assert resumes_of(gateway, rows[0]["id"], 2) == 2


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


def test_a_background_stream_opens_queued(gateway: RunningGateway) -> None:
    """As OpenAI's: ``response.created`` and ``response.queued`` (status ``queued``) at
    once, ``response.in_progress`` when the upstream starts (here after 2 s)."""
    client = sdk(gateway)
    events: list[Any] = []
    status_when_queued = None
    with client.responses.create(
        model="slow_first:delay=2", input="hi", background=True, stream=True
    ) as stream:
        for event in stream:
            events.append(event)
            if event.type == "response.queued":
                status_when_queued = client.responses.retrieve(event.response.id).status
    kinds = [e.type for e in events]
    assert kinds[:3] == ["response.created", "response.queued", "response.in_progress"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[0].response.status == "queued" and events[1].response.status == "queued"
    assert events[2].response.status == "in_progress"
    assert status_when_queued == "queued"  # sent before the upstream answered
    assert kinds[-1] == "response.completed"
    assert text_of(events) == expected_text("slow_first:delay=2")
    # A resume replays the same opening.
    again = list(client.responses.retrieve(events[0].response.id, stream=True))
    assert [e.type for e in again] == kinds
    assert [
        e.type
        for e in client.responses.retrieve(events[0].response.id, stream=True, starting_after=0)
    ] == kinds[1:]


def watch(client: openai.OpenAI, response_id: str, timeout: float = 20) -> tuple[list[str], Any]:
    """The output text of each poll while the response runs, and the response it ended as."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while True:
        response = client.responses.retrieve(response_id)
        if response.status not in ("queued", "in_progress") or time.monotonic() > deadline:
            return seen, response
        seen.append(response.output_text)
        time.sleep(0.1)


def test_polling_shows_the_output_so_far(gateway: RunningGateway) -> None:
    model = "paced:n=60,interval=0.05"
    client = sdk(gateway)
    created = client.responses.create(model=model, input="hi", background=True)
    seen, final = watch(client, created.id)
    partial = [text for text in seen if text]
    assert len(set(partial)) >= 3, seen  # it grows between polls, not only at the end
    assert all(expected_text(model).startswith(text) for text in partial)
    assert [len(t) for t in seen] == sorted(len(t) for t in seen)
    assert final.status == "completed" and final.output_text == expected_text(model)
