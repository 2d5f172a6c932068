"""The ``openai-responses`` provider: chat completions clients served by an upstream
that speaks only the Responses API (the test upstream's ``/v1/responses``)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from sluice.dialects.responses_request import decode_responses
from sluice.events import (
    ChatRequest,
    Finish,
    Message,
    PartEnd,
    ReasoningDelta,
    Start,
    TextDelta,
    TextPart,
    ToolCallDelta,
    Usage,
    expand,
)
from sluice.providers.openai_responses import ResponsesDecoder, build
from tests.conftest import StartGateway
from tests.gateway import RunningGateway
from tests.upstream import responses as rs
from tests.upstream import scenarios as sc
from tests.upstream.scenarios import expected_reasoning, expected_text

KEY_ENV = {"TEST_UPSTREAM_KEY": "sk-upstream-secret"}
MESSAGES: Any = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Tell me a story"},
]


def _config(url: str) -> dict[str, Any]:
    deployment = {
        "provider": "openai-responses",
        "base_url": url,
        "api_key_env": "TEST_UPSTREAM_KEY",
    }
    return {"models": {"*": deployment}, "keepalive_interval": 5}


@pytest.fixture
def gateway(start_gateway: StartGateway, upstream: Any) -> RunningGateway:
    return start_gateway(_config(upstream.url), env=KEY_ENV)


def sdk(gateway: RunningGateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.api, api_key="unused", max_retries=0, timeout=20)


def _sent(upstream: Any) -> list[dict[str, Any]]:
    return [r["body"] for r in upstream.log()["requests"] if r["path"] == "/v1/responses"]


def test_a_responses_stream_decodes_into_canonical_events_in_any_reads() -> None:
    spec = sc.parse_spec("reasoning")
    body = b"".join(rs.sse(e) for e in rs.events(spec, "reasoning", 3))
    whole = ResponsesDecoder().feed(body)
    for size in (1, 7, 64):
        decoder = ResponsesDecoder()
        pieces = [body[i : i + size] for i in range(0, len(body), size)]
        assert expand([e for p in pieces for e in decoder.feed(p)]) == whole
        assert decoder.done
    assert whole[0] == Start("openai_responses", whole[0].id, "reasoning", sc.CREATED)  # type: ignore[union-attr]
    kinds = [type(e) for e in whole]
    assert kinds.count(ReasoningDelta) == 5  # four summary deltas and the encrypted content
    assert whole[-2:] == [Finish("stop", "completed"), Usage(3, 8, "reported", 0, 0, 4)]
    assert PartEnd(0) in whole and PartEnd(1) in whole
    assert "".join(e.text for e in whole if type(e) is TextDelta) == expected_text("reasoning")  # type: ignore[union-attr]


@pytest.mark.parametrize("where", ["done", "added"])
def test_arguments_that_come_whole_in_the_item_are_the_calls(where: str) -> None:
    """A server that streams no argument deltas gives them in the function call item:
    in ``output_item.done`` (or already in ``output_item.added``). They are the call's
    arguments, once."""
    spec = sc.parse_spec("tool_call:calls=2,whole=1")
    events = rs.events(spec, "tool_call", 3)
    if where == "added":
        for event in events:
            if event["type"] == "response.output_item.added":
                done = next(
                    e["item"]
                    for e in events
                    if e["type"] == "response.output_item.done"
                    and e["output_index"] == event["output_index"]
                )
                event["item"] = done
    body = b"".join(rs.sse(e) for e in events)
    for size in (len(body), 5):
        decoder = ResponsesDecoder()
        out = expand(
            [e for i in range(0, len(body), size) for e in decoder.feed(body[i : i + size])]
        )
        calls = [e for e in out if type(e) is ToolCallDelta]
        assert [(c.index, c.id, c.name) for c in calls if c.id] == [
            (n, call.id, call.name) for n, call in enumerate(sc.TOOL_CALLS)
        ]
        for index, call in enumerate(sc.TOOL_CALLS):
            assert "".join(c.arguments for c in calls if c.index == index) == call.arguments
        assert out[-2] == Finish("tool_calls", "completed")


def test_a_responses_clients_text_options_all_reach_a_responses_upstream() -> None:
    """``text.verbosity`` and a format's ``description`` ride apart from the canonical
    format; they complete it instead of replacing it."""
    schema_format = {
        "type": "json_schema",
        "name": "answer",
        "schema": {"type": "object"},
        "strict": True,
        "description": "The answer",
    }
    text = {"format": schema_format, "verbosity": "low"}
    body = {"model": "m", "input": "hi", "text": text, "reasoning": {"effort": "low"}}
    request = decode_responses(json.dumps(body).encode()).request
    sent = build(request, "up")
    assert sent["text"] == text
    assert sent["reasoning"] == {"effort": "low"}


def test_the_request_says_what_the_responses_api_takes() -> None:
    request = ChatRequest(
        model="m",
        system=[TextPart("Be brief.")],
        messages=[Message("user", [TextPart("hi")])],
        max_tokens=20,
        temperature=0,
    )
    body = build(request, "up")
    assert body == {
        "model": "up",
        "input": [
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}
        ],
        "instructions": "Be brief.",
        "temperature": 0,
        "max_output_tokens": 20,
        "stream": True,
        "store": False,
    }


def test_text_reasoning_and_usage_reach_a_chat_client(
    gateway: RunningGateway, upstream: Any
) -> None:
    upstream.reset()
    client = sdk(gateway)
    chunks = list(
        client.chat.completions.create(
            model="reasoning",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    reasoning = "".join(
        getattr(c.choices[0].delta, "reasoning_content", None) or "" for c in chunks if c.choices
    )
    assert text == expected_text("reasoning")
    assert reasoning == expected_reasoning("reasoning")
    assert len({c.id for c in chunks}) == 1 and {c.model for c in chunks} == {"reasoning"}
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == 4
    sent = _sent(upstream)[-1]
    assert sent["store"] is False and sent["stream"] is True
    # A chat client's system message stays a message, in place (Responses takes it).
    assert [(i["role"], i["content"][0]["text"]) for i in sent["input"]] == [
        ("system", "Be brief."),
        ("user", "Tell me a story"),
    ]
    answer = client.chat.completions.create(model="normal", messages=MESSAGES)
    assert answer.choices[0].message.content == expected_text("normal")
    assert answer.usage is not None and answer.usage.prompt_tokens == 6  # words, as sent


def test_function_calls_and_results_round_trip(gateway: RunningGateway, upstream: Any) -> None:
    upstream.reset()
    client = sdk(gateway)
    tools: Any = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
    answer = client.chat.completions.create(model="tool_call", messages=MESSAGES, tools=tools)
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    [call] = choice.message.tool_calls or []
    assert call.id == sc.TOOL_CALL_ID and call.function.name == sc.TOOL_NAME  # type: ignore[union-attr]
    assert json.loads(call.function.arguments)  # type: ignore[union-attr]
    follow: Any = [
        *MESSAGES,
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
    ]
    client.chat.completions.create(model="normal", messages=follow, tools=tools)
    sent = _sent(upstream)[-1]
    kinds = [item["type"] for item in sent["input"]]
    assert kinds == ["message", "message", "function_call", "function_call_output"]
    assert sent["input"][3] == {
        "type": "function_call_output",
        "call_id": call.id,
        "output": "sunny",
    }
    assert sent["tools"][0]["name"] == "get_weather"  # flat, as the Responses API has them


def test_failures_and_limits(gateway: RunningGateway) -> None:
    client = sdk(gateway)
    with pytest.raises(openai.APIError):
        list(
            client.chat.completions.create(model="midstream_error", messages=MESSAGES, stream=True)
        )
    raw = httpx.post(
        f"{gateway.api}/chat/completions",
        json={"model": "drop", "messages": MESSAGES, "stream": True},
        timeout=10,
    )
    assert '"error"' in raw.text and "[DONE]" not in raw.text  # never a fake clean end
    cut = client.chat.completions.create(model="length", messages=MESSAGES)
    assert cut.choices[0].finish_reason == "length"
    for extra, param in [
        ({"n": 2}, "n"),
        ({"stop": ["x"]}, "stop"),
        ({"logprobs": True}, "logprobs"),
    ]:
        refused = httpx.post(
            f"{gateway.api}/chat/completions",
            json={"model": "normal", "messages": MESSAGES, **extra},
            timeout=10,
        )
        assert refused.status_code == 400, extra
        error = refused.json()["error"]
        assert error["param"] == param and error["code"] == "unsupported_parameter"
        assert "Responses upstream" in error["message"]
