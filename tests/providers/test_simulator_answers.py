"""The simulator's answers to tools, n, response formats, logprobs and reasoning."""

from __future__ import annotations

import asyncio
import json
import math
import os
import subprocess
import sys
from typing import Any

import jsonschema
import pytest

from sluice.config import Deployment, SimulatorSettings
from sluice.errors import RequestError
from sluice.events import (
    ChatRequest,
    Finish,
    Message,
    PartEnd,
    Reasoning,
    ReasoningDelta,
    ResponseFormat,
    Start,
    StreamEvent,
    TextDelta,
    TextPart,
    Tool,
    ToolCallDelta,
    ToolCallPart,
    ToolChoice,
    ToolResultPart,
    Usage,
)
from sluice.providers.simulator import SimulatorProvider
from tests.providers.test_schema_values import SCHEMAS, WEATHER

TIME = {
    "type": "object",
    "properties": {"timezone": {"type": "string"}},
    "required": ["timezone"],
    "additionalProperties": False,
}
TOOLS = [
    Tool("get_weather", "The weather in a city", WEATHER),
    Tool("get_time", "The time in a timezone", TIME),
]
SCHEMA_OF = {t.name: t.parameters for t in TOOLS}


def user(text: str) -> Message:
    return Message("user", [TextPart(text)])


def request(prompt: str = "Tell me a story", **fields: Any) -> ChatRequest:
    return ChatRequest(model="gpt-4o-mini", messages=[user(prompt)], **fields)


def run(req: ChatRequest, **settings: Any) -> list[StreamEvent]:
    settings = {"ttft": 0.0, "tokens_per_second": 0.0, **settings}
    deployment = Deployment(
        name="sim", provider="simulator", simulator=SimulatorSettings(**settings)
    )

    async def main() -> list[StreamEvent]:
        stream = SimulatorProvider(deployment).stream(req)
        return [event async for batch in stream for event in batch]

    events = asyncio.run(main())
    check_order(events)
    return events


def check_order(events: list[StreamEvent]) -> None:
    """The stream's conventions: Start first, parts numbered from 0 in order within each
    choice, each part ended before the next starts and before its choice's Finish, one
    Finish per choice, one Usage last."""
    assert isinstance(events[0], Start) and isinstance(events[-1], Usage)
    assert not any(isinstance(e, Start | Usage) for e in events[1:-1])
    open_part: dict[int, int | None] = {}
    next_part: dict[int, int] = {}
    finished: set[int] = set()
    for event in events[1:-1]:
        if isinstance(event, PartEnd):
            assert open_part.get(event.choice) == event.index
            open_part[event.choice] = None
        elif isinstance(event, Finish):
            assert open_part.get(event.choice) is None and event.choice not in finished
            finished.add(event.choice)
        else:
            assert isinstance(event, TextDelta | ReasoningDelta | ToolCallDelta)
            assert event.choice not in finished
            if open_part.get(event.choice) != event.index:
                assert open_part.get(event.choice) is None, "a part started before the last ended"
                assert event.index == next_part.get(event.choice, 0)
                open_part[event.choice] = event.index
                next_part[event.choice] = event.index + 1
    assert finished == set(range(len(finished)))


def finishes(events: list[StreamEvent]) -> dict[int, str]:
    return {e.choice: e.reason for e in events if isinstance(e, Finish)}


def usage(events: list[StreamEvent]) -> Usage:
    last = events[-1]
    assert isinstance(last, Usage)
    return last


def text(events: list[StreamEvent], choice: int = 0) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta) and e.choice == choice)


def calls(events: list[StreamEvent], choice: int = 0) -> list[dict[str, Any]]:
    """The tool calls of a choice, assembled as a client does."""
    found: dict[int, dict[str, Any]] = {}
    for e in events:
        if isinstance(e, ToolCallDelta) and e.choice == choice:
            call = found.setdefault(e.index, {"id": None, "name": "", "arguments": ""})
            if e.id is not None:
                call["id"] = e.id
            call["name"] += e.name or ""
            call["arguments"] += e.arguments
    return [found[i] for i in sorted(found)]


def check_calls(events: list[StreamEvent], choice: int = 0) -> list[dict[str, Any]]:
    made = calls(events, choice)
    for call in made:
        assert call["id"].startswith("call_")
        jsonschema.validate(json.loads(call["arguments"]), SCHEMA_OF[call["name"]])
    assert len({c["id"] for c in made}) == len(made)
    return made


# -- tools -----------------------------------------------------------------------


def test_required_calls_two_tools_in_parallel() -> None:
    events = run(request("What is the weather?", tools=TOOLS, tool_choice=ToolChoice("required")))
    made = check_calls(events)
    assert [c["name"] for c in made] == ["get_weather", "get_time"]
    assert finishes(events) == {0: "tool_calls"}
    assert not text(events)
    deltas = [e for e in events if isinstance(e, ToolCallDelta)]
    # The head (id and name) once per call, then the arguments in several small pieces.
    assert [d.index for d in deltas if d.id] == [0, 1]
    assert len([d for d in deltas if d.index == 0]) > 4
    assert usage(events).output_tokens == len(deltas)


def test_required_with_parallel_calls_off_calls_one() -> None:
    req = request("hi", tools=TOOLS, tool_choice=ToolChoice("required"), parallel_tool_calls=False)
    assert [c["name"] for c in check_calls(run(req))] == ["get_weather"]


def test_the_named_tool_comes_first() -> None:
    req = request("What time is it? Use get time.", tools=TOOLS, tool_choice=ToolChoice("required"))
    assert [c["name"] for c in check_calls(run(req))] == ["get_time", "get_weather"]


def test_tool_choice_by_name() -> None:
    req = request("Tell me a story", tools=TOOLS, tool_choice=ToolChoice("tool", "get_time"))
    events = run(req)
    assert [c["name"] for c in check_calls(events)] == ["get_time"]
    assert finishes(events) == {0: "tool_calls"}


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("Tell me a story", []),
        ("Please call get_weather for Paris", ["get_weather"]),
        ("What does GET-WEATHER say, and get_time?", ["get_weather", "get_time"]),
        ("Use a tool to find out", ["get_weather"]),
        ("Could you call the function for me?", ["get_weather"]),
        ("The weather is nice", []),
    ],
)
def test_auto_calls_only_when_asked(prompt: str, expected: list[str]) -> None:
    for choice in (None, ToolChoice("auto")):
        events = run(request(prompt, tools=TOOLS, tool_choice=choice))
        assert [c["name"] for c in check_calls(events)] == expected
        assert finishes(events) == {0: "tool_calls" if expected else "stop"}
        assert bool(text(events)) == (not expected)


def test_none_never_calls() -> None:
    events = run(request("call get_weather", tools=TOOLS, tool_choice=ToolChoice("none")))
    assert not calls(events) and text(events)


def test_calls_are_deterministic() -> None:
    req = request("hi", tools=TOOLS, tool_choice=ToolChoice("required"))
    assert calls(run(req)) == calls(run(req))
    other = request("hi", tools=TOOLS, tool_choice=ToolChoice("required"), seed=5)
    assert calls(run(other)) != calls(run(req))


def test_a_tool_result_gets_a_text_answer_that_quotes_it() -> None:
    messages = [
        user("What is the weather in Paris?"),
        Message("assistant", [ToolCallPart("call_1", "get_weather", '{"location":"Paris"}')]),
        Message("tool", [ToolResultPart("call_1", [TextPart('{"temperature": 21}')])]),
    ]
    for choice in (None, ToolChoice("required")):
        req = ChatRequest("m", messages, tools=TOOLS, tool_choice=choice)
        events = run(req)
        answer = text(events)
        assert answer.startswith('get_weather returned {"temperature": 21}. ')
        assert answer[-1] in ".!?"
        assert not calls(events) and finishes(events) == {0: "stop"}
    # Another result, another answer.
    messages[2] = Message("tool", [ToolResultPart("call_1", [TextPart("sunny")])])
    assert "get_weather returned sunny." in text(run(ChatRequest("m", messages, tools=TOOLS)))


def test_a_bad_schema_fails_before_the_first_event() -> None:
    broken = Tool("broken", None, {"$ref": "#/$defs/Missing"})
    with pytest.raises(RequestError) as info:
        run(request("hi", tools=[broken], tool_choice=ToolChoice("required")))
    assert info.value.param == "tools[0].function.parameters"
    assert "'#/$defs/Missing' points at nothing" in info.value.message


# -- n ---------------------------------------------------------------------------


def test_n_choices_each_with_its_own_story() -> None:
    plain = run(request(seed=4))
    events = run(request(n=3, seed=4))
    texts = [text(events, c) for c in range(3)]
    assert len(set(texts)) == 3 and all(t[-1] in ".!?" for t in texts)
    # The first choice tells the story a plain request gets.
    assert texts[0] == text(plain)
    assert finishes(events) == {0: "stop", 1: "stop", 2: "stop"}
    deltas = [e for e in events if isinstance(e, TextDelta)]
    assert usage(events).output_tokens == len(deltas)
    # Written side by side, one token of each choice per step.
    assert [d.choice for d in deltas[:6]] == [0, 1, 2, 0, 1, 2]
    assert run(request(n=3, seed=4))[1:-1] == events[1:-1]


def test_max_tokens_cuts_each_choice() -> None:
    events = run(request(n=2, max_tokens=5))
    assert finishes(events) == {0: "length", 1: "length"}
    assert usage(events).output_tokens == 10


def test_n_with_tools() -> None:
    req = request("hi", n=2, tools=TOOLS, tool_choice=ToolChoice("required"))
    events = run(req)
    first, second = check_calls(events, 0), check_calls(events, 1)
    assert first != second
    assert finishes(events) == {0: "tool_calls", 1: "tool_calls"}


# -- response formats ------------------------------------------------------------


def test_json_object() -> None:
    for seed in range(5):
        events = run(
            request("Answer in JSON", response_format=ResponseFormat("json_object"), seed=seed)
        )
        assert isinstance(json.loads(text(events)), dict)
        assert finishes(events) == {0: "stop"}


@pytest.mark.parametrize("name", ["weather", "pydantic strict", "recursive strict", "formats"])
def test_json_schema(name: str) -> None:
    schema = SCHEMAS[name]
    for seed in range(5):
        fmt = ResponseFormat("json_schema", schema, name="answer", strict=True)
        events = run(request(response_format=fmt, seed=seed), max_tokens=2000)
        jsonschema.validate(json.loads(text(events)), schema)
        pieces = [e.text for e in events if isinstance(e, TextDelta)]
        assert len(pieces) > 3 and max(map(len, pieces)) <= 40
        assert finishes(events) == {0: "stop"}


def test_json_cut_short_is_a_length_finish() -> None:
    fmt = ResponseFormat("json_schema", SCHEMAS["pydantic strict"], name="answer")
    events = run(request(response_format=fmt, max_tokens=5))
    assert finishes(events) == {0: "length"}
    assert usage(events).output_tokens == 5


# -- logprobs --------------------------------------------------------------------


def test_logprobs() -> None:
    plain = run(request(seed=2))
    events = run(request(seed=2, extra={"logprobs": True, "top_logprobs": 3}))
    assert text(events) == text(plain)  # the same answer, with its logprobs
    deltas = [e for e in events if isinstance(e, TextDelta)]
    for delta in deltas:
        assert delta.logprobs is not None and len(delta.logprobs) == 1
        entry = delta.logprobs[0]
        assert entry["token"] == delta.text
        assert entry["bytes"] == list(delta.text.encode())
        assert entry["logprob"] <= 0
        top = entry["top_logprobs"]
        assert len(top) == 3 and top[0]["token"] == delta.text
        values = [t["logprob"] for t in top]
        assert values == sorted(values, reverse=True)
        assert sum(math.exp(v) for v in values) <= 1.0001
        assert len({t["token"] for t in top}) == 3
    assert run(request(seed=2, extra={"logprobs": True, "top_logprobs": 3}))[1:] == events[1:]


def test_logprobs_without_top() -> None:
    events = run(request(extra={"logprobs": True}))
    entries = [e.logprobs[0] for e in events if isinstance(e, TextDelta) and e.logprobs]
    assert entries and all(e["top_logprobs"] == [] for e in entries)
    # logprobs=false, or another format's field of the same name: no logprobs.
    for req in (
        request(extra={"logprobs": False, "top_logprobs": 2}),
        request(extra={"logprobs": True}, source="anthropic_messages"),
    ):
        assert all(e.logprobs is None for e in run(req) if isinstance(e, TextDelta))


# -- reasoning -------------------------------------------------------------------


@pytest.mark.parametrize(
    "reasoning", [Reasoning(effort="low"), Reasoning(effort="high"), Reasoning(budget_tokens=1024)]
)
def test_reasoning_comes_first_with_a_signature(reasoning: Reasoning) -> None:
    events = run(request(reasoning=reasoning, seed=1))
    thoughts = [e for e in events if isinstance(e, ReasoningDelta)]
    assert thoughts and all(e.index == 0 for e in thoughts)
    *words, signed = thoughts
    assert all(w.text and w.signature is None for w in words)
    assert signed.text == "" and signed.signature
    assert events.index(signed) < events.index(PartEnd(0))
    deltas = [e for e in events if isinstance(e, TextDelta)]
    assert deltas and all(d.index == 1 for d in deltas)
    assert usage(events).reasoning_tokens == len(words)
    assert usage(events).output_tokens == len(words) + len(deltas)
    assert run(request(reasoning=reasoning, seed=1))[1:] == events[1:]


def test_more_effort_thinks_longer() -> None:
    def thought(effort: str) -> int:
        return usage(run(request(reasoning=Reasoning(effort=effort)))).reasoning_tokens

    assert thought("low") < thought("high")


def test_reasoning_before_tool_calls() -> None:
    req = request(reasoning=Reasoning("medium"), tools=TOOLS, tool_choice=ToolChoice("required"))
    events = run(req)
    assert [c["name"] for c in check_calls(events)] == ["get_weather", "get_time"]
    assert {e.index for e in events if isinstance(e, ToolCallDelta)} == {1, 2}


def test_rich_answers_are_the_same_in_another_process() -> None:
    code = (
        "import asyncio\n"
        "from sluice.config import Deployment, SimulatorSettings\n"
        "from sluice.providers.simulator import SimulatorProvider\n"
        "from tests.providers.test_simulator_answers import TOOLS, calls, request\n"
        "from sluice.events import ToolChoice\n"
        "s = SimulatorSettings(ttft=0, tokens_per_second=0)\n"
        "p = SimulatorProvider(Deployment(name='sim', provider='simulator', simulator=s))\n"
        "r = request('hi', n=2, tools=TOOLS, tool_choice=ToolChoice('required'))\n"
        "async def main():\n"
        "    return [e async for b in p.stream(r) for e in b]\n"
        "events = asyncio.run(main())\n"
        "print(repr([calls(events, 0), calls(events, 1)]), end='')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONHASHSEED": "3"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    events = run(request("hi", n=2, tools=TOOLS, tool_choice=ToolChoice("required")))
    assert out == repr([calls(events, 0), calls(events, 1)])
