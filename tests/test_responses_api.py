"""The OpenAI Responses API through the official SDK, against the simulator and the
OpenAI-compatible test upstream: streams, JSON, responses.stream(), function tools,
reasoning, stored responses and conversations, failures before and after the first byte."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests import openapi
from tests.conftest import StartGateway, upstream_config
from tests.gateway import RunningGateway, run_gateway
from tests.policies.keys import create_key, gateway_config
from tests.upstream.scenarios import (
    TOOL_ARGUMENTS,
    TOOL_CALL_ID,
    TOOL_NAME,
    expected_reasoning,
    expected_text,
)

KEY_ENV = {"TEST_UPSTREAM_KEY": "sk-upstream-secret"}
SIMULATOR: dict[str, Any] = {
    "default_model": "story",
    "models": {"*": {"provider": "simulator", "ttft": 0.01, "tokens_per_second": 0}},
}
TOOLS: list[Any] = [
    {
        "type": "function",
        "name": TOOL_NAME,
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
        "strict": True,
    }
]


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    with run_gateway(tmp_path_factory.mktemp("simulated"), SIMULATOR) as gateway:
        yield gateway


@pytest.fixture(scope="module")
def relayed(tmp_path_factory: pytest.TempPathFactory, upstream: Any) -> Iterator[RunningGateway]:
    """Every model name goes to the test upstream; a stalled stream fails after 1 s."""
    config = upstream_config(upstream.url, timeouts={"idle": 1.0})
    with run_gateway(tmp_path_factory.mktemp("relayed"), config, KEY_ENV) as gateway:
        yield gateway


@pytest.fixture(params=["simulator", "upstream"])
def served(request: pytest.FixtureRequest) -> tuple[RunningGateway, str, str | None]:
    """A gateway, a model name and the text it answers with (None: the simulator's)."""
    if request.param == "simulator":
        return request.getfixturevalue("simulated"), "story", None
    return request.getfixturevalue("relayed"), "normal", expected_text("normal")


def sdk(gateway: RunningGateway, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.api, api_key=key, max_retries=0, timeout=20)


def text_of(events: list[Any]) -> str:
    return "".join(e.delta for e in events if e.type == "response.output_text.delta")


def post(gateway: RunningGateway, body: dict[str, Any], key: str = "unused") -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"}
    return httpx.post(f"{gateway.api}/responses", json=body, headers=headers, timeout=20)


def assert_openai_error(response: httpx.Response, status: int, param: str | None) -> str:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param
    return str(error["message"])


# -- streams and JSON, on both upstreams -----------------------------------------------


def test_streamed_events_come_in_the_specs_order(
    served: tuple[RunningGateway, str, str | None],
) -> None:
    gateway, model, expected = served
    events = list(sdk(gateway).responses.create(model=model, input="Tell me a story", stream=True))
    assert [e.sequence_number for e in events] == list(range(len(events)))
    types = [e.type for e in events]
    deltas = types.count("response.output_text.delta")
    assert deltas > 0
    assert types == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * deltas,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    created, completed = events[0].response, events[-1].response
    assert created.status == "in_progress" and created.output == []
    assert created.id == completed.id and created.id.startswith("resp_")
    assert completed.status == "completed"
    assert completed.model == model
    text = text_of(events)
    assert completed.output_text == text == events[-4].text
    if expected is not None:
        assert text == expected
    message = completed.output[0]
    assert message.type == "message" and message.id.startswith("msg_")
    assert message.status == "completed"
    usage = completed.usage
    assert usage is not None and usage.output_tokens > 0 and usage.input_tokens > 0
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens


def test_a_json_response(served: tuple[RunningGateway, str, str | None]) -> None:
    gateway, model, expected = served
    response = sdk(gateway).responses.create(
        model=model, input="Tell me a story", instructions="Be brief.", metadata={"k": "v"}
    )
    assert response.object == "response" and response.status == "completed"
    assert response.instructions == "Be brief."
    assert response.metadata == {"k": "v"}
    assert response.store is True
    assert response.output_text
    if expected is not None:
        assert response.output_text == expected
    openapi.validator("Response").validate(response.model_dump(exclude_unset=True))


def test_responses_stream_and_the_stored_response(
    served: tuple[RunningGateway, str, str | None],
) -> None:
    gateway, model, _ = served
    client = sdk(gateway)
    with client.responses.stream(model=model, input="Tell me a story") as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert final.output_text == "".join(deltas)
    stored = client.responses.retrieve(final.id)
    for name in ("id", "created_at", "model", "status", "output_text", "usage", "instructions"):
        assert getattr(stored, name) == getattr(final, name)
    items = client.responses.input_items.list(final.id)
    assert [(i.type, i.role, i.content[0].text) for i in items.data] == [  # type: ignore[union-attr]
        ("message", "user", "Tell me a story")
    ]


# -- the wire, tools, reasoning, endings -------------------------------------------------


@pytest.mark.parametrize(
    ("model", "options"),
    [
        ("normal", {}),
        ("tool_call", {"tools": TOOLS}),
        ("reasoning", {}),
        ("reasoning", {"reasoning": {"summary": "detailed"}}),
        ("normal:finish=length", {}),
        ("midstream_error", {}),
    ],
)
def test_wire_format(relayed: RunningGateway, model: str, options: dict[str, Any]) -> None:
    """Every event as OpenAI's description has it, named by its ``event:`` line."""
    body = {"model": model, "input": "Tell me a story", "stream": True, **options}
    with (
        httpx.Client(timeout=20) as client,
        client.stream("POST", f"{relayed.api}/responses", json=body) as response,
    ):
        raw = b"".join(response.iter_raw())
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["x-accel-buffering"] == "no"
    validator = openapi.validator("ResponseStreamEvent")
    blocks = [b for b in raw.split(b"\n\n") if b]
    for block in blocks:
        name, data = block.decode().split("\n")
        event = json.loads(data.removeprefix("data: "))
        assert name == f"event: {event['type']}"
        validator.validate(event)
    assert raw.endswith(b"\n\n")


def test_function_tools_round_trip(relayed: RunningGateway, upstream: Any) -> None:
    client = sdk(relayed)
    events = list(
        client.responses.create(
            model="tool_call", input="Weather in Paris?", tools=TOOLS, stream=True
        )
    )
    types = [e.type for e in events]
    pieces = types.count("response.function_call_arguments.delta")
    assert types == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        *["response.function_call_arguments.delta"] * pieces,
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    first = events[-1].response
    call = first.output[0]
    assert call.type == "function_call" and call.id.startswith("fc_")
    assert (call.call_id, call.name, call.arguments) == (TOOL_CALL_ID, TOOL_NAME, TOOL_ARGUMENTS)
    sent = upstream.log()["requests"][-1]["body"]
    function = {k: v for k, v in TOOLS[0].items() if k != "type"}
    assert sent["tools"] == [{"type": "function", "function": function}]

    answer = client.responses.create(
        model="normal",
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "21 C"}],
        tools=TOOLS,
    )
    assert answer.output_text == expected_text("normal")
    assert answer.previous_response_id == first.id
    sent = upstream.log()["requests"][-1]["body"]
    assert sent["messages"] == [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": TOOL_CALL_ID,
                    "type": "function",
                    "function": {"name": TOOL_NAME, "arguments": TOOL_ARGUMENTS},
                }
            ],
        },
        {"role": "tool", "tool_call_id": TOOL_CALL_ID, "content": "21 C"},
    ]
    items = client.responses.input_items.list(answer.id).data
    assert [(i.type, i.call_id) for i in items] == [  # type: ignore[union-attr]
        ("function_call_output", TOOL_CALL_ID)
    ]


@pytest.mark.parametrize("summary", [None, "auto"])
def test_reasoning(relayed: RunningGateway, upstream: Any, summary: str | None) -> None:
    options: Any = {"effort": "low"} if summary is None else {"effort": "low", "summary": summary}
    events = list(
        sdk(relayed).responses.create(
            model="reasoning", input="Think first", reasoning=options, stream=True
        )
    )
    assert upstream.log()["requests"][-1]["body"]["reasoning_effort"] == "low"
    types = [e.type for e in events]
    if summary is None:
        opened = ["response.content_part.added"]
        step, closing = "response.reasoning_text.delta", ["response.reasoning_text.done"]
        closing.append("response.content_part.done")
    else:
        opened = ["response.reasoning_summary_part.added"]
        step = "response.reasoning_summary_text.delta"
        closing = ["response.reasoning_summary_text.done", "response.reasoning_summary_part.done"]
    steps = types.count(step)
    assert types[2 : 5 + steps + len(closing)] == [
        "response.output_item.added",
        *opened,
        *[step] * steps,
        *closing,
        "response.output_item.done",
    ]
    final = events[-1].response
    assert final.status == "completed"
    reasoning, message = final.output
    assert reasoning.type == "reasoning" and reasoning.id.startswith("rs_")
    parts = reasoning.content if summary is None else reasoning.summary
    assert parts is not None and [p.text for p in parts] == [expected_reasoning("reasoning")]
    assert message.type == "message" and final.output_text == expected_text("reasoning")


def test_an_answer_cut_short_is_incomplete(relayed: RunningGateway) -> None:
    events = list(
        sdk(relayed).responses.create(model="normal:finish=length", input="Go on", stream=True)
    )
    assert events[-1].type == "response.incomplete"
    response = events[-1].response
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.output_text == expected_text("normal")


# (``bad_json`` is left out: the chat wire drops the whole read that holds the bad
# event, so whether any byte went out before it, and the failure is in-band, is a race.)
@pytest.mark.parametrize("model", ["midstream_error", "drop", "drop:rst=1", "stall"])
def test_a_failure_after_the_first_byte_is_an_error_event(
    relayed: RunningGateway, model: str
) -> None:
    client = sdk(relayed)
    events = list(client.responses.create(model=model, input="Tell me a story", stream=True))
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert [e.type for e in events[-2:]] == ["error", "response.failed"]
    assert events[-2].message
    failed = events[-1].response
    assert failed.status == "failed"
    assert failed.error is not None and failed.error.code == "server_error"
    assert text_of(events) == expected_text(model)
    assert failed.output[0].status == "incomplete"
    stored = client.responses.retrieve(failed.id)
    assert stored.status == "failed" and stored.error is not None
    # responses.stream() says so too.
    with client.responses.stream(model=model, input="Tell me a story") as stream:
        types = [e.type for e in stream]
        assert types[-1] == "response.failed"
        with pytest.raises(RuntimeError, match=r"response\.completed"):
            stream.get_final_response()


def test_errors_before_the_stream_are_openai_shaped(relayed: RunningGateway) -> None:
    def fails(body: dict[str, Any], status: int, param: str | None) -> str:
        return assert_openai_error(post(relayed, body), status, param)

    base: dict[str, Any] = {"model": "normal", "input": "hi"}
    assert "store" in fails({**base, "background": True, "store": False}, 400, "background")
    fails({**base, "background": "yes"}, 400, "background")
    fails({**base, "temperature": 3}, 400, "temperature")
    fails({**base, "max_output_tokens": 4}, 400, "max_output_tokens")
    fails({"input": "hi"}, 400, "model")
    fails({"model": "normal"}, 400, "input")
    fails({**base, "input": [{"type": "nonsense"}]}, 400, "input[0].type")
    fails({**base, "input": [{"role": "robot", "content": "x"}]}, 400, "input[0].role")
    fails({**base, "tools": [{"type": "function"}]}, 400, "tools[0].name")
    fails(
        {**base, "tools": TOOLS, "tool_choice": {"type": "function", "name": "x"}},
        400,
        "tool_choice",
    )
    fails({**base, "text": {"format": {"type": "xml"}}}, 400, "text.format.type")
    fails({**base, "metadata": {"k": 1}}, 400, "metadata")
    fails({**base, "previous_response_id": "resp_unknown"}, 404, "previous_response_id")
    builtin = fails({**base, "tools": [{"type": "web_search"}]}, 400, "tools")
    assert "web_search" in builtin
    assert "'include'" in fails({**base, "include": ["file_search_call.results"]}, 400, "include")
    assert_openai_error(post(relayed, {**base, "model": "context_length"}), 400, "messages")
    # The SDK raises the matching exceptions.
    with pytest.raises(openai.BadRequestError) as bad:
        sdk(relayed).responses.create(
            model="normal", input="hi", stream=True, background=True, store=False
        )
    assert bad.value.param == "background"


def test_a_client_that_leaves_gets_a_cancelled_response(relayed: RunningGateway) -> None:
    model = "paced:n=200,interval=0.02"
    body = {"model": model, "input": "Tell me a long story", "stream": True}
    response_id, deltas = "", 0
    with (
        httpx.Client(timeout=20) as client,
        client.stream("POST", f"{relayed.api}/responses", json=body) as response,
    ):
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            event = json.loads(line[6:])
            if event["type"] == "response.created":
                response_id = event["response"]["id"]
            deltas += event["type"] == "response.output_text.delta"
            if deltas == 3:
                break
    deadline = time.monotonic() + 10
    while True:
        stored = httpx.get(f"{relayed.api}/responses/{response_id}", timeout=10)
        if stored.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert stored.status_code == 200, stored.text
    found = stored.json()
    assert found["status"] == "cancelled"
    message = found["output"][0]
    assert message["status"] == "incomplete"
    text = message["content"][0]["text"]
    assert expected_text(model).startswith(text) and len(text) < len(expected_text(model))
    assert text.startswith("word0 word1 word2")


# -- stored responses -----------------------------------------------------------------


def test_retrieve_delete_and_input_items(simulated: RunningGateway) -> None:
    client = sdk(simulated)
    given: Any = [
        {"role": "developer", "content": "Answer in one line."},
        {"role": "user", "content": [{"type": "input_text", "text": "Tell me a story"}]},
        {"role": "assistant", "content": "Once upon a time"},
        {"role": "user", "content": "Go on"},
    ]
    created = client.responses.create(model="story", input=given)
    got = client.responses.retrieve(created.id)
    assert got.model_dump() == created.model_dump()

    newest_first = client.responses.input_items.list(created.id)
    assert newest_first.has_more is False
    ids = [i.id for i in newest_first.data]
    assert len(set(ids)) == 4 and newest_first.first_id == ids[0]
    roles = [i.role for i in newest_first.data]  # type: ignore[union-attr]
    assert roles == ["user", "assistant", "user", "developer"]
    oldest_first = client.responses.input_items.list(created.id, order="asc")
    assert [i.id for i in oldest_first.data] == ids[::-1]
    paged = list(client.responses.input_items.list(created.id, order="asc", limit=1))
    assert [i.id for i in paged] == ids[::-1]
    raw = httpx.get(f"{simulated.api}/responses/{created.id}/input_items?limit=3", timeout=10)
    page = raw.json()
    assert page["object"] == "list" and page["has_more"] is True
    assert (page["first_id"], page["last_id"]) == (ids[0], ids[2])
    openapi.validator("ResponseItemList").validate(page)

    assert client.responses.delete(created.id) is None  # the SDK's answer to a deletion
    for path in (created.id, f"{created.id}/input_items"):
        gone = httpx.get(f"{simulated.api}/responses/{path}", timeout=10)
        message = assert_openai_error(gone, 404, None)
        assert created.id in message
    again = httpx.delete(f"{simulated.api}/responses/{created.id}", timeout=10)
    assert_openai_error(again, 404, None)


def test_a_deletion_answers_as_openai(simulated: RunningGateway) -> None:
    created = sdk(simulated).responses.create(model="story", input="hi")
    deleted = httpx.delete(f"{simulated.api}/responses/{created.id}", timeout=10)
    assert deleted.json() == {"id": created.id, "object": "response.deleted", "deleted": True}


def test_store_false_is_not_kept(simulated: RunningGateway) -> None:
    client = sdk(simulated)
    response = client.responses.create(model="story", input="hi", store=False)
    assert response.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)
    with pytest.raises(openai.NotFoundError) as unknown:
        client.responses.create(model="story", input="more", previous_response_id=response.id)
    assert unknown.value.param == "previous_response_id"


def test_conversations_continue_on_another_instance(
    tmp_path: Path, start_gateway: StartGateway, upstream: Any
) -> None:
    """Two instances on one database: each turn on the other one, the second right after
    the first one's last event, with the whole conversation reaching the upstream."""
    config = gateway_config(upstream.url, tmp_path / "shared.db")
    one, two = start_gateway(config, env=KEY_ENV), start_gateway(config, env=KEY_ENV)
    first = list(
        sdk(one).responses.create(
            model="normal", input="Tell me a story", instructions="Be kind.", stream=True
        )
    )[-1].response
    second = sdk(two).responses.create(
        model="normal:n=3", input="Shorter", previous_response_id=first.id
    )
    third = list(
        sdk(one).responses.create(
            model="normal:n=2",
            input=[{"role": "user", "content": "Shorter still"}],
            previous_response_id=second.id,
            stream=True,
        )
    )[-1].response
    assert third.previous_response_id == second.id
    sent = upstream.log()["requests"][-1]["body"]
    assert sent["messages"] == [  # instructions are not carried over
        {"role": "user", "content": "Tell me a story"},
        {"role": "assistant", "content": expected_text("normal")},
        {"role": "user", "content": "Shorter"},
        {"role": "assistant", "content": expected_text("normal:n=3")},
        {"role": "user", "content": "Shorter still"},
    ]
    assert sdk(two).responses.retrieve(third.id).output_text == expected_text("normal:n=2")
    # A response deleted on one instance is gone on the other, and so is what follows it.
    sdk(two).responses.delete(second.id)
    with pytest.raises(openai.NotFoundError) as broken:
        sdk(one).responses.create(model="normal", input="And?", previous_response_id=third.id)
    assert second.id in broken.value.message


def test_keys_see_only_their_own_responses(
    tmp_path: Path, start_gateway: StartGateway, upstream: Any
) -> None:
    db = tmp_path / "sluice.db"
    alice, bob = create_key(db, "alice")["key"], create_key(db, "bob")["key"]
    env = {**KEY_ENV, "SLUICE_MASTER_KEY": "sk-master-for-tests"}
    gateway = start_gateway(gateway_config(upstream.url, db), env=env)
    mine = sdk(gateway, alice).responses.create(model="normal", input="hi")
    theirs = sdk(gateway, bob)
    with pytest.raises(openai.NotFoundError):
        theirs.responses.retrieve(mine.id)
    with pytest.raises(openai.NotFoundError):
        theirs.responses.input_items.list(mine.id)
    with pytest.raises(openai.NotFoundError):
        theirs.responses.delete(mine.id)
    with pytest.raises(openai.NotFoundError):
        theirs.responses.create(model="normal", input="x", previous_response_id=mine.id)
    master = sdk(gateway, "sk-master-for-tests")
    assert master.responses.retrieve(mine.id).id == mine.id
    continued = sdk(gateway, alice).responses.create(
        model="normal", input="more", previous_response_id=mine.id
    )
    assert continued.status == "completed"
    sdk(gateway, alice).responses.delete(mine.id)
    with pytest.raises(openai.NotFoundError):
        master.responses.retrieve(mine.id)


def test_records_name_the_api(start_gateway: StartGateway) -> None:
    gateway = start_gateway(SIMULATOR)
    client = sdk(gateway)
    created = client.responses.create(model="story", input="hi", stream=True)
    response_id = list(created)[-1].response.id
    client.responses.retrieve(response_id)
    rows = gateway.wait_records(2)
    assert [(r["route"], r["api"], r["outcome"]) for r in rows] == [
        ("/v1/responses", "openai_responses", "ok"),
        (f"/v1/responses/{response_id}", "openai_responses", "ok"),
    ]
    assert rows[0]["output_tokens"] > 0
    assert response_id == f"resp_{rows[0]['id']}"  # the response is named after its record


def test_keep_alives_while_the_first_token_is_awaited(start_gateway: StartGateway) -> None:
    slow: dict[str, Any] = {"provider": "simulator", "ttft": 0.6, "tokens_per_second": 0}
    gateway = start_gateway({**SIMULATOR, "models": {"*": slow}, "keepalive_interval": 0.1})
    body = {"model": "story", "input": "Tell me a story", "stream": True}
    with (
        httpx.Client(timeout=20) as client,
        client.stream("POST", f"{gateway.api}/responses", json=body) as response,
    ):
        raw = b"".join(response.iter_raw())
    assert raw.startswith(b": keep-alive\n\n")
    events = list(sdk(gateway).responses.create(**body))
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[-1].type == "response.completed"
