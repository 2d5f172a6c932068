"""LangChain's OpenAI chat model against the simulator through the real gateway: bound
tools and structured output, as LangChain applications use them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from langchain_core import messages
from langchain_openai import ChatOpenAI

from tests.gateway import RunningGateway, run_gateway
from tests.test_simulator_api import CONFIG, GetTime, GetWeather, Solution


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    with run_gateway(tmp_path_factory.mktemp("langchain"), CONFIG) as running:
        yield running


def chat(gateway: RunningGateway, **options: Any) -> ChatOpenAI:
    return ChatOpenAI(
        model="gpt-4o-mini",
        base_url=gateway.api,
        api_key="unused",
        max_retries=0,
        timeout=20,
        **options,
    )


def test_bound_tools(gateway: RunningGateway) -> None:
    llm = chat(gateway).bind_tools([GetWeather, GetTime], tool_choice="any")
    message = llm.invoke("What is the weather in Paris?")
    assert [c["name"] for c in message.tool_calls] == ["GetWeather", "GetTime"]
    GetWeather.model_validate(message.tool_calls[0]["args"])
    GetTime.model_validate(message.tool_calls[1]["args"])
    assert message.response_metadata["finish_reason"] == "tool_calls"

    # Streamed, the chunks add up to the same calls.
    total = None
    for chunk in llm.stream("What is the weather in Paris?"):
        total = chunk if total is None else total + chunk
    assert total is not None
    assert total.tool_calls == message.tool_calls

    # The result goes back; the answer is text, and the loop ends.
    call = message.tool_calls[0]
    answer = llm.invoke(
        [
            messages.HumanMessage("What is the weather in Paris?"),
            messages.AIMessage("", tool_calls=[call]),
            messages.ToolMessage('{"temperature_c": 21}', tool_call_id=call["id"]),
        ]
    )
    assert not answer.tool_calls
    assert answer.content.startswith('GetWeather returned {"temperature_c": 21}.')


@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
def test_structured_output(gateway: RunningGateway, method: str) -> None:
    llm = chat(gateway).with_structured_output(Solution, method=method)
    result = llm.invoke("Solve 8x + 7 = -23")
    assert isinstance(result, Solution) and result.steps


def test_json_mode(gateway: RunningGateway) -> None:
    # JSON mode has no schema: the answer is some JSON object.
    llm = chat(gateway).with_structured_output(None, method="json_mode")
    assert isinstance(llm.invoke("Answer in JSON: solve 8x + 7 = -23"), dict)
