"""CreateResponse bodies → the canonical request, and what a chat upstream makes of it."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from sluice.dialects.responses_request import decode_responses
from sluice.errors import RequestError, Unsupported
from sluice.events import (
    ImagePart,
    Message,
    OpaquePart,
    Reasoning,
    ReasoningPart,
    RedactedReasoningPart,
    ResponseFormat,
    TextPart,
    Tool,
    ToolCallPart,
    ToolChoice,
    ToolResultPart,
)
from sluice.providers.openai_chat import build


def decode(**body: Any) -> Any:
    return decode_responses(orjson.dumps({"model": "m", **body}))


def test_a_string_input_is_one_user_message() -> None:
    decoded = decode(input="hi", instructions="Be brief.")
    assert decoded.request.messages == [Message("user", [TextPart("hi")])]
    assert decoded.request.system == [TextPart("Be brief.")]
    assert decoded.items == [
        {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": "hi"}],
            "status": "completed",
        }
    ]
    assert decoded.store is True and decoded.request.stream is False
    assert decoded.request.source == "openai_responses"


def test_items_become_messages_and_what_the_assistant_did_in_a_row_is_one() -> None:
    items: list[Any] = [
        {"role": "developer", "content": "rules"},
        {
            "role": "user",
            "content": [
                {"type": "input_text", "text": "look"},
                {"type": "input_image", "image_url": "https://a.example/x.png", "detail": "low"},
                {"type": "input_image", "file_id": "file_1"},
                {"type": "input_file", "file_id": "file_2"},
            ],
        },
        {
            "type": "reasoning",
            "id": "rs_1",
            "summary": [{"type": "summary_text", "text": "thinking"}],
            "encrypted_content": "sig",
        },
        {"type": "reasoning", "id": "rs_2", "summary": [], "encrypted_content": "opaque"},
        {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "ok"}],
        },
        {"type": "function_call", "call_id": "call_1", "name": "f", "arguments": "{}"},
        {"type": "web_search_call", "id": "ws_1", "status": "completed"},
        {"type": "function_call_output", "call_id": "call_1", "output": "42"},
        {"type": "computer_call_output", "call_id": "c", "output": {}},
        {"role": "user", "content": "thanks"},
    ]
    messages = decode(input=items).request.messages
    assert messages == [
        Message("developer", [TextPart("rules")]),
        Message(
            "user",
            [
                TextPart("look"),
                ImagePart("https://a.example/x.png", "low"),
                OpaquePart("openai_responses", {**items[1]["content"][2], "detail": "auto"}),
                OpaquePart("openai_responses", items[1]["content"][3]),
            ],
        ),
        Message(
            "assistant",
            [
                ReasoningPart("thinking", "sig"),
                RedactedReasoningPart("opaque"),
                TextPart("ok"),
                ToolCallPart("call_1", "f", "{}"),
                OpaquePart("openai_responses", items[6]),
            ],
        ),
        Message("tool", [ToolResultPart("call_1", [TextPart("42")])]),
        Message("tool", [OpaquePart("openai_responses", items[8])]),
        Message("user", [TextPart("thanks")]),
    ]


def test_the_other_fields() -> None:
    decoded = decode(
        input="hi",
        tools=[
            {"type": "function", "name": "f", "parameters": {"type": "object"}, "strict": True},
            {"type": "web_search"},
        ],
        tool_choice={"type": "function", "name": "f"},
        text={"format": {"type": "json_schema", "name": "s", "schema": {"type": "object"}}},
        reasoning={"effort": "high", "summary": "auto"},
        include=["reasoning.encrypted_content", "message.output_text.logprobs"],
        max_output_tokens=64,
        metadata={"k": "v"},
        store=False,
        previous_response_id="resp_1",
        truncation="auto",
        prompt_cache_key="p",
        stream=True,
    )
    request = decoded.request
    assert request.tools == [Tool("f", None, {"type": "object"}, True)]
    assert request.tool_choice == ToolChoice("tool", "f")
    assert request.response_format == ResponseFormat("json_schema", {"type": "object"}, "s")
    assert request.reasoning == Reasoning(effort="high")
    assert request.max_tokens == 64 and request.stream is True
    assert decoded.summaries is True
    assert (decoded.store, decoded.previous_response_id) == (False, "resp_1")
    assert request.extra == {
        "builtin_tools": [{"type": "web_search"}],
        "include": ["message.output_text.logprobs"],
        "metadata": {"k": "v"},
        "truncation": "auto",
        "prompt_cache_key": "p",
    }
    assert decoded.echo["tools"][1] == {"type": "web_search"}


def test_a_chat_upstream_refuses_what_it_cannot_carry_and_drops_what_does_not_matter() -> None:
    plain = decode(input="hi", metadata={"k": "v"}, store=True, truncation="auto").request
    assert build(plain, "m")["messages"] == [{"role": "user", "content": "hi"}]
    with pytest.raises(Unsupported) as builtin:
        build(decode(input="hi", tools=[{"type": "file_search"}]).request, "m")
    assert builtin.value.param == "builtin_tools"
    with pytest.raises(Unsupported) as include:
        build(decode(input="hi", include=["file_search_call.results"]).request, "m")
    assert include.value.param == "include"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": 3}, "input"),
        ({"input": []}, "input"),
        ({"input": [{"type": "item_reference", "id": "x"}]}, "input[0].type"),
        ({"input": [{"role": "user", "content": [{"type": "audio"}]}]}, "input[0].content[0].type"),
        ({"input": [{"type": "function_call", "name": "f"}]}, "input[0].call_id"),
        ({"input": "x", "tool_choice": "required"}, "tool_choice"),
        ({"input": "x", "reasoning": {"summary": "long"}}, "reasoning.summary"),
        (
            {"input": "x", "text": {"format": {"type": "json_schema", "name": "s"}}},
            "text.format.schema",
        ),
        ({"input": "x", "conversation": "conv_1"}, "conversation"),
        ({"input": "x", "store": "yes"}, "store"),
        ({"input": "x", "top_p": 2}, "top_p"),
    ],
)
def test_bad_fields_are_named(body: dict[str, Any], param: str) -> None:
    with pytest.raises(RequestError) as bad:
        decode(**body)
    assert bad.value.param == param
