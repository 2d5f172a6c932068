"""The simulator through the real gateway, used as clients use OpenAI: the official SDK
with tools, structured outputs, n, logprobs and reasoning; what it costs; /v1/models."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema
import openai
import pydantic
import pytest

from tests.conftest import StartGateway
from tests.gateway import RunningGateway, run_gateway
from tests.providers.test_schema_values import WEATHER

SIM = {"provider": "simulator", "ttft": 0, "tokens_per_second": 0, "max_tokens": 600}
CONFIG = {"default_model": "gpt-4o-mini", "models": {"*": SIM}, "keepalive_interval": 5}


class GetWeather(pydantic.BaseModel):
    """The weather in a city."""

    location: str
    unit: str | None
    days: int = pydantic.Field(ge=1, le=14)


class GetTime(pydantic.BaseModel):
    """The time in a timezone."""

    timezone: str


class Step(pydantic.BaseModel):
    explanation: str
    output: str


class Solution(pydantic.BaseModel):
    steps: list[Step]
    final_answer: str
    confidence: float = pydantic.Field(ge=0, le=1)


TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {"name": "get_weather", "description": "Weather", "parameters": WEATHER},
    },
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "parameters": {
                "type": "object",
                "properties": {"timezone": {"type": "string"}},
                "required": ["timezone"],
            },
        },
    },
]
PARAMETERS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
ASK: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    with run_gateway(tmp_path_factory.mktemp("sim"), CONFIG) as running:
        yield running


@pytest.fixture
def client(gateway: RunningGateway) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gateway.api, api_key="unused", max_retries=0, timeout=20) as c:
        yield c


def assemble(chunks: list[Any]) -> dict[int, dict[str, Any]]:
    """Streamed choices put together by index, as LangChain and the SDK do."""
    choices: dict[int, dict[str, Any]] = {}
    for chunk in chunks:
        for c in chunk.choices:
            choice = choices.setdefault(
                c.index, {"content": "", "tool_calls": {}, "finish": None, "logprobs": []}
            )
            choice["content"] += c.delta.content or ""
            for call in c.delta.tool_calls or ():
                slot = choice["tool_calls"].setdefault(
                    call.index, {"id": None, "name": "", "arguments": ""}
                )
                slot["id"] = call.id or slot["id"]
                slot["name"] += call.function.name or ""
                slot["arguments"] += call.function.arguments or ""
            if c.logprobs and c.logprobs.content:
                choice["logprobs"].extend(c.logprobs.content)
            choice["finish"] = c.finish_reason or choice["finish"]
    return choices


# -- tools -------------------------------------------------------------------------


def test_required_tools_give_parsed_calls(client: openai.OpenAI) -> None:
    completion = client.chat.completions.parse(
        model="gpt-4o-mini",
        messages=ASK,
        tools=[openai.pydantic_function_tool(GetWeather), openai.pydantic_function_tool(GetTime)],
        tool_choice="required",
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    calls = choice.message.tool_calls or []
    assert [c.function.name for c in calls] == ["GetWeather", "GetTime"]
    assert isinstance(calls[0].function.parsed_arguments, GetWeather)
    assert isinstance(calls[1].function.parsed_arguments, GetTime)
    assert all(c.id.startswith("call_") for c in calls)


def test_tool_calls_stream_and_validate(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=ASK,
            tools=TOOLS,
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
            stream=True,
        )
    )
    (choice,) = assemble(chunks).values()
    assert choice["finish"] == "tool_calls" and choice["content"] == ""
    (call,) = choice["tool_calls"].values()
    assert call["name"] == "get_weather" and call["id"].startswith("call_")
    jsonschema.validate(json.loads(call["arguments"]), WEATHER)
    assert len([c for c in chunks if c.choices and c.choices[0].delta.tool_calls]) > 4


def test_a_tool_loop_ends(client: openai.OpenAI) -> None:
    """A tool loop as LangChain runs it: call, run the tool, send the result back,
    until the model answers in text."""
    # With "auto", a message that names no tool gets text.
    answer = client.chat.completions.create(
        model="gpt-4o-mini", messages=ASK, tools=TOOLS, tool_choice="auto"
    )
    assert answer.choices[0].message.tool_calls is None
    messages: list[Any] = [{"role": "user", "content": "Use get_weather for Paris, please."}]
    for _ in range(3):
        completion = client.chat.completions.create(
            model="gpt-4o-mini", messages=messages, tools=TOOLS, tool_choice="auto"
        )
        message = completion.choices[0].message
        if not message.tool_calls:
            break
        messages.append(message.model_dump(exclude_none=True))
        for call in message.tool_calls:
            arguments = json.loads(call.function.arguments)
            jsonschema.validate(arguments, PARAMETERS[call.function.name])
            result = {"temperature_c": 21, "asked": arguments}
            messages.append(
                {"role": "tool", "tool_call_id": call.id, "content": json.dumps(result)}
            )
    assert completion.choices[0].finish_reason == "stop"
    assert [m["role"] for m in messages] == ["user", "assistant", "tool"]
    assert message.content is not None
    assert message.content.startswith('get_weather returned {"temperature_c": 21')


# -- structured outputs ------------------------------------------------------------


def test_parse_a_pydantic_response_format(client: openai.OpenAI) -> None:
    completion = client.chat.completions.parse(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Solve 8x + 7 = -23"}],
        response_format=Solution,
    )
    assert completion.choices[0].finish_reason == "stop"
    parsed = completion.choices[0].message.parsed
    assert isinstance(parsed, Solution) and parsed.steps


def test_stream_a_pydantic_response_format(client: openai.OpenAI) -> None:
    with client.chat.completions.stream(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Solve 8x + 7 = -23"}],
        response_format=Solution,
    ) as stream:
        deltas = [e for e in stream if e.type == "content.delta"]
        final = stream.get_final_completion()
    assert len(deltas) > 5
    assert isinstance(final.choices[0].message.parsed, Solution)


def test_json_schema_and_json_object(client: openai.OpenAI) -> None:
    fmt: Any = {"type": "json_schema", "json_schema": {"name": "weather", "schema": WEATHER}}
    for stream in (False, True):
        kwargs: Any = {"model": "x", "messages": ASK, "response_format": fmt}
        if stream:
            text = assemble(list(client.chat.completions.create(stream=True, **kwargs)))[0][
                "content"
            ]
        else:
            text = client.chat.completions.create(**kwargs).choices[0].message.content
        jsonschema.validate(json.loads(text), WEATHER)
    answer = client.chat.completions.create(
        model="x", messages=ASK, response_format={"type": "json_object"}
    )
    assert isinstance(json.loads(answer.choices[0].message.content or ""), dict)


# -- n, logprobs, reasoning ----------------------------------------------------------


def test_two_choices_streamed_and_not(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model="gpt-4o-mini", messages=ASK, n=2, seed=3)
    texts = [c.message.content for c in completion.choices]
    assert [c.index for c in completion.choices] == [0, 1]
    assert all(texts) and texts[0] != texts[1]
    assert [c.finish_reason for c in completion.choices] == ["stop", "stop"]
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=ASK,
            n=2,
            seed=3,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    streamed = assemble(chunks)
    assert [streamed[i]["content"] for i in (0, 1)] == texts
    assert [streamed[i]["finish"] for i in (0, 1)] == ["stop", "stop"]
    usage = chunks[-1].usage
    assert usage is not None and completion.usage is not None
    assert usage.completion_tokens == completion.usage.completion_tokens


def test_logprobs_streamed_and_not(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="gpt-4o-mini", messages=ASK, logprobs=True, top_logprobs=2
    )
    choice = completion.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content
    assert "".join(t.token for t in choice.logprobs.content) == choice.message.content
    for token in choice.logprobs.content:
        assert token.logprob <= 0 and len(token.top_logprobs) == 2
        assert token.top_logprobs[0].token == token.token
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o-mini", messages=ASK, logprobs=True, top_logprobs=2, stream=True
        )
    )
    streamed = assemble(chunks)[0]
    assert [t.token for t in streamed["logprobs"]] == [t.token for t in choice.logprobs.content]
    assert all(len(t.top_logprobs) == 2 for t in streamed["logprobs"])


def test_reasoning_effort(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="o4-mini", messages=ASK, reasoning_effort="low"
    )
    message = completion.choices[0].message
    assert message.content and (message.model_extra or {}).get("reasoning_content")
    usage = completion.usage
    assert usage is not None and usage.completion_tokens_details is not None
    reasoning = usage.completion_tokens_details.reasoning_tokens or 0
    assert 0 < reasoning < usage.completion_tokens


# -- cost ------------------------------------------------------------------------------


def test_simulated_answers_cost_nothing(start_gateway: StartGateway) -> None:
    """gpt-4o has a list price, but no upstream was paid: the record says 0, not unknown.
    A price configured for the name still applies (to try budgets offline)."""
    config = {**CONFIG, "pricing": {"priced": {"input": 1_000_000, "output": 1_000_000}}}
    gateway = start_gateway(config)
    with openai.OpenAI(base_url=gateway.api, api_key="unused", max_retries=0) as client:
        client.chat.completions.create(model="gpt-4o", messages=ASK)
        list(client.chat.completions.create(model="gpt-4o", messages=ASK, stream=True, n=2))
        client.chat.completions.create(model="priced", messages=ASK)
    records = gateway.wait_records(3)
    by_model: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        by_model.setdefault(record["model"], []).append(record)
    assert [r["cost_usd"] for r in by_model["gpt-4o"]] == [0.0, 0.0]
    assert all(r["output_tokens"] > 0 for r in by_model["gpt-4o"])
    (priced,) = by_model["priced"]
    assert priced["cost_usd"] == priced["input_tokens"] + priced["output_tokens"]


# -- /v1/models ------------------------------------------------------------------------


def models(gateway: RunningGateway) -> list[dict[str, Any]]:
    response = httpx.get(f"{gateway.api}/models", timeout=10)
    assert response.status_code == 200
    return list(response.json()["data"])


def retrieve(gateway: RunningGateway, name: str) -> httpx.Response:
    return httpx.get(f"{gateway.api}/models/{name}", timeout=10)


def test_models_without_a_catch_all(start_gateway: StartGateway) -> None:
    config = {"models": {"story": SIM, "tale": {**SIM, "seed": 2}, "meta-llama/Llama-3": SIM}}
    gateway = start_gateway(config)
    # In the config's order (the test writes its YAML with sorted keys).
    assert [m["id"] for m in models(gateway)] == ["meta-llama/Llama-3", "story", "tale"]
    assert {m["owned_by"] for m in models(gateway)} == {"sluice-simulator"}
    assert retrieve(gateway, "tale").json()["id"] == "tale"
    # A name with a slash is one name, as the SDK sends it.
    with openai.OpenAI(base_url=gateway.api, api_key="unused", max_retries=0) as client:
        assert client.models.retrieve("meta-llama/Llama-3").id == "meta-llama/Llama-3"
    assert retrieve(gateway, "meta-llama/Llama-4").json()["error"]["code"] == "model_not_found"
    # What is not listed is not served: the same 404 for the model and for a request.
    missing = retrieve(gateway, "gpt-4o")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "model_not_found"
    with (
        openai.OpenAI(base_url=gateway.api, api_key="unused", max_retries=0) as client,
        pytest.raises(openai.NotFoundError) as info,
    ):
        client.chat.completions.create(model="gpt-4o", messages=ASK)
    assert info.value.code == "model_not_found"


def test_models_with_the_embedded_default(start_gateway: StartGateway) -> None:
    """No config and no key: the simulator serves every name. The list shows the
    default model; any other name is served, so it is found."""
    gateway = start_gateway(env={"SLUICE_DEFAULT_MODEL": "gpt-4.1-mini"})
    assert [(m["id"], m["owned_by"]) for m in models(gateway)] == [
        ("gpt-4.1-mini", "sluice-simulator")
    ]
    found = retrieve(gateway, "any-model-at-all")
    assert found.status_code == 200
    assert found.json() == {
        "id": "any-model-at-all",
        "object": "model",
        "created": 0,
        "owned_by": "sluice-simulator",
    }
    with openai.OpenAI(base_url=gateway.api, api_key="unused", max_retries=0) as client:
        answer = client.chat.completions.create(model="any-model-at-all", messages=ASK)
    assert answer.model == "any-model-at-all" and answer.choices[0].message.content


def test_models_with_names_and_a_catch_all(start_gateway: StartGateway) -> None:
    gateway = start_gateway({**CONFIG, "models": {"story": SIM, "*": SIM}})
    assert [m["id"] for m in models(gateway)] == ["gpt-4o-mini", "story"]
