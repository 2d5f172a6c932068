"""The UI message stream dialect on its own: UI messages → canonical requests, and
canonical events → chunks, each stream checked by the AI SDK's ``uiMessageChunkSchema``
(tests/ui, run by Node)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from sluice.dialects.ui_request import decode_ui_chat
from sluice.dialects.ui_stream import STOPPED, StreamEncoder
from sluice.errors import RequestError, UpstreamTimeout
from sluice.events import (
    Annotations,
    Batch,
    Finish,
    ImagePart,
    Message,
    OpaquePart,
    PartEnd,
    ReasoningDelta,
    ReasoningPart,
    RedactedReasoning,
    RedactedReasoningPart,
    RefusalDelta,
    Start,
    StreamError,
    TextDelta,
    TextPart,
    ToolCallDelta,
    ToolCallPart,
    ToolResultPart,
    Usage,
    Verbatim,
)
from tests import ui_sdk

USER = {"id": "u1", "role": "user", "parts": [{"type": "text", "text": "Hi"}]}


def decode(messages: list[Any], **body: Any) -> Any:
    return decode_ui_chat(orjson.dumps({"id": "c", "messages": messages, **body}), "default")


def encode(batches: list[Batch], message_id: str = "msg-1") -> bytes:
    encoder = StreamEncoder(message_id, "m")
    return b"".join(encoder.encode(batch) for batch in batches) + encoder.end()


def chunks(raw: bytes) -> list[dict[str, Any]]:
    """The chunks, after the SDK's schema accepted every one of them."""
    checked = ui_sdk.validate(raw)
    assert checked["problems"] == [], checked["problems"]
    result: list[dict[str, Any]] = checked["chunks"]
    return result


# -- requests ---------------------------------------------------------------------------


def test_model_and_settings_from_the_body() -> None:
    decoded = decode([USER], model="gpt", system="Be brief.", topP=0.5, projectId="x")
    request = decoded.request
    assert (request.model, request.source, request.top_p) == ("gpt", "ui_stream", 0.5)
    assert request.system == [TextPart("Be brief.")]
    assert request.extra == {}  # the application's fields are not the model's
    assert decoded.chat_id == "c" and decoded.trigger == "submit-message"
    assert decoded.continues is None
    assert decode([USER]).request.model == "default"


def test_user_files() -> None:
    parts = [
        {"type": "text", "text": "What is this?"},
        {"type": "file", "mediaType": "image/png", "url": "data:image/png;base64,AA=="},
        {"type": "file", "mediaType": "application/pdf", "url": "https://x/a.pdf", "filename": "a"},
        {"type": "data-weather", "data": {}},
    ]
    [message] = decode([{"id": "u", "role": "user", "parts": parts}]).request.messages
    assert message.parts == [
        TextPart("What is this?"),
        ImagePart("data:image/png;base64,AA=="),
        OpaquePart(
            "ui_stream",
            {
                "type": "file",
                "mediaType": "application/pdf",
                "url": "https://x/a.pdf",
                "filename": "a",
            },
        ),
    ]


def test_assistant_steps_tool_results_and_reasoning() -> None:
    assistant = {
        "id": "a1",
        "role": "assistant",
        "parts": [
            {"type": "step-start"},
            {
                "type": "reasoning",
                "text": "think",
                "providerMetadata": {"anthropic": {"signature": "sig"}},
            },
            {
                "type": "reasoning",
                "text": "",
                "providerMetadata": {"anthropic": {"redactedData": "x"}},
            },
            {
                "type": "tool-weather",
                "toolCallId": "t1",
                "state": "output-available",
                "input": {"city": "Paris"},
                "output": "sunny",
            },
            {
                "type": "dynamic-tool",
                "toolName": "search",
                "toolCallId": "t2",
                "state": "output-error",
                "input": None,
                "rawInput": "{bad",
                "errorText": "boom",
            },
            {
                "type": "tool-weather",
                "toolCallId": "t3",
                "state": "output-denied",
                "input": {},
                "approval": {"id": "ap", "approved": False},
            },
            {"type": "tool-weather", "toolCallId": "t4", "state": "input-streaming"},
            {"type": "source-url", "sourceId": "s", "url": "https://x"},
            {"type": "step-start"},
            {"type": "text", "text": "It is sunny."},
        ],
    }
    decoded = decode([USER, assistant])
    assert decoded.continues == "a1"
    assert decoded.request.messages[1:] == [
        Message(
            "assistant",
            [
                ReasoningPart("think", "sig"),
                RedactedReasoningPart("x"),
                ToolCallPart("t1", "weather", '{"city":"Paris"}'),
                ToolCallPart("t2", "search", '"{bad"'),
                ToolCallPart("t3", "weather", "{}"),
            ],
        ),
        Message(
            "tool",
            [
                ToolResultPart("t1", [TextPart("sunny")]),
                ToolResultPart("t2", [TextPart("boom")], is_error=True),
                ToolResultPart("t3", [TextPart("Tool call execution denied.")], is_error=True),
            ],
        ),
        Message("assistant", [TextPart("It is sunny.")]),
    ]


@pytest.mark.parametrize(
    ("messages", "field"),
    [
        ([{"role": "assistant", "parts": [{"type": "mystery"}]}], "messages[0].parts[0].type"),
        (
            [{"role": "user", "parts": [{"type": "file", "url": "x"}]}],
            "messages[0].parts[0].mediaType",
        ),
        ([{"role": "user", "parts": ["text"]}], "messages[0].parts[0]"),
        ([{"role": "user", "id": 3, "parts": []}], "messages[0].id"),
        (
            [
                {
                    "role": "assistant",
                    "parts": [
                        {"type": "dynamic-tool", "toolCallId": "t", "state": "input-available"}
                    ],
                }
            ],
            "messages[0].parts[0].toolName",
        ),
    ],
)
def test_bad_messages_name_the_field(messages: list[Any], field: str) -> None:
    with pytest.raises(RequestError) as caught:
        decode(messages)
    assert caught.value.param == field


def test_tools_and_tool_choice() -> None:
    tools = {"weather": {"description": "d", "inputSchema": {"type": "object"}}}
    request = decode([USER], tools=tools, toolChoice={"type": "tool", "toolName": "weather"})
    assert [(t.name, t.description, t.parameters) for t in request.request.tools] == [
        ("weather", "d", {"type": "object"})
    ]
    assert request.request.tool_choice is not None
    assert request.request.tool_choice.name == "weather"
    with pytest.raises(RequestError) as caught:
        decode([USER], tools=tools, toolChoice={"type": "tool", "toolName": "other"})
    assert caught.value.param == "toolChoice.toolName"
    with pytest.raises(RequestError) as caught:
        decode([USER], tools={"weather": {"inputSchema": []}})
    assert caught.value.param == "tools.weather.inputSchema"


# -- the stream ----------------------------------------------------------------------------


def test_parts_in_order_with_their_ends() -> None:
    raw = encode(
        [
            [Start("openai_chat", "x", "model-a")],
            [ReasoningDelta("th", 0), ReasoningDelta("ink", 0, signature="sig")],
            [TextDelta("Hel", 1), TextDelta("lo", 1)],
            [RefusalDelta(" no", 1)],
            [TextDelta("ignored", 0, choice=1)],
            [PartEnd(1)],
            [RedactedReasoning("enc", 2)],
            [
                Annotations(
                    [{"type": "url_citation", "url_citation": {"url": "https://a", "title": "A"}}]
                )
            ],
            [Usage(10, 4, cached_tokens=3, reasoning_tokens=2), Finish("stop")],
        ]
    )
    sent = chunks(raw)
    assert [c["type"] for c in sent] == [
        "start",
        "start-step",
        "reasoning-start",
        "reasoning-delta",
        "reasoning-delta",
        "reasoning-end",
        "text-start",
        "text-delta",
        "text-delta",
        "text-delta",
        "text-end",
        "reasoning-start",
        "reasoning-end",
        "source-url",
        "finish-step",
        "finish",
    ]
    assert sent[0] == {"type": "start", "messageId": "msg-1"}
    assert sent[5] == {
        "type": "reasoning-end",
        "id": "reasoning-0",
        "providerMetadata": {"anthropic": {"signature": "sig"}},
    }
    assert "".join(c.get("delta", "") for c in sent if c["type"] == "text-delta") == "Hello no"
    assert sent[11]["providerMetadata"] == {"anthropic": {"redactedData": "enc"}}
    assert sent[13] == {
        "type": "source-url",
        "sourceId": "source-1",
        "url": "https://a",
        "title": "A",
    }
    assert sent[-1] == {
        "type": "finish",
        "finishReason": "stop",
        "messageMetadata": {
            "model": "model-a",
            "usage": {
                "inputTokens": 10,
                "inputTokenDetails": {
                    "noCacheTokens": 7,
                    "cacheReadTokens": 3,
                    "cacheWriteTokens": 0,
                },
                "outputTokens": 4,
                "outputTokenDetails": {"textTokens": 2, "reasoningTokens": 2},
                "totalTokens": 14,
            },
        },
    }
    assert raw.endswith(b"data: [DONE]\n\n")


def test_tool_calls() -> None:
    raw = encode(
        [
            # The name comes after the first arguments: the part waits for it.
            [ToolCallDelta(0, id="call_a", arguments='{"ci')],
            [ToolCallDelta(0, name="weather", arguments='ty": "Paris"}')],
            [ToolCallDelta(1, name="clock")],  # no arguments, no id: {} and an id of ours
            [ToolCallDelta(2, id="call_c", name="broken", arguments="{nope")],
            [Finish("tool_calls")],
        ]
    )
    sent = chunks(raw)
    calls = [c for c in sent if c["type"].startswith("tool-")]
    assert calls == [
        {"type": "tool-input-start", "toolCallId": "call_a", "toolName": "weather"},
        {"type": "tool-input-delta", "toolCallId": "call_a", "inputTextDelta": '{"city": "Paris"}'},
        {
            "type": "tool-input-available",
            "toolCallId": "call_a",
            "toolName": "weather",
            "input": {"city": "Paris"},
        },
        {"type": "tool-input-start", "toolCallId": "call_msg-1_1", "toolName": "clock"},
        {
            "type": "tool-input-available",
            "toolCallId": "call_msg-1_1",
            "toolName": "clock",
            "input": {},
        },
        {"type": "tool-input-start", "toolCallId": "call_c", "toolName": "broken"},
        {"type": "tool-input-delta", "toolCallId": "call_c", "inputTextDelta": "{nope"},
        {
            "type": "tool-input-error",
            "toolCallId": "call_c",
            "toolName": "broken",
            "input": "{nope",
            "errorText": calls[-1]["errorText"],
        },
    ]
    assert sent[-1]["finishReason"] == "tool-calls"


def test_the_same_events_make_the_same_bytes() -> None:
    batches: list[Batch] = [
        [Start("sluice", "x", "m")],
        [TextDelta("a", 0)],
        [ToolCallDelta(1, name="f", arguments="{}")],
        [Finish("tool_calls")],
    ]
    verbatim: list[Batch] = [
        [Verbatim("openai_chat", b"...", 1, events=batch)] for batch in batches
    ]
    assert encode(batches, "msg-7") == encode(batches, "msg-7") == encode(verbatim, "msg-7")


@pytest.mark.parametrize(
    "ending",
    [
        [StreamError("the upstream broke")],
        [Finish("error")],
    ],
)
def test_a_failure_is_an_error_chunk_and_never_a_finish(ending: Batch) -> None:
    encoder = StreamEncoder("msg-1", "m")
    raw = encoder.encode([TextDelta("partial", 0)]) + encoder.encode(ending)
    assert encoder.encode([TextDelta("more", 0)]) == b""
    assert encoder.end() == b"" and encoder.error(UpstreamTimeout("late")) == b""
    sent = chunks(raw)
    assert [c["type"] for c in sent] == ["start", "start-step", "text-start", "text-delta", "error"]
    assert sent[-1]["errorText"]
    assert raw.endswith(b"data: [DONE]\n\n")


def test_an_error_raised_after_the_first_byte() -> None:
    encoder = StreamEncoder("msg-1", "m")
    raw = encoder.encode([TextDelta("partial", 0)]) + encoder.error(UpstreamTimeout("too slow"))
    assert chunks(raw)[-1] == {"type": "error", "errorText": "too slow"}
    assert encoder.end() == b""


def test_a_stop_is_an_abort() -> None:
    encoder = StreamEncoder("msg-1", "m")
    raw = encoder.encode([TextDelta("partial", 0), StreamError("stopped", code=STOPPED)])
    raw += encoder.end()
    sent = chunks(raw)
    assert sent[-1] == {"type": "abort", "reason": "stopped"}
    assert "finish" not in [c["type"] for c in sent]


def test_an_answer_with_nothing_in_it() -> None:
    encoder = StreamEncoder("msg-1", "m")
    # Nothing goes out before the answer's first chunk: until then a failure still
    # gets an HTTP status.
    assert encoder.encode([Start("sluice", "x", "m"), Usage(3, 0)]) == b""
    sent = chunks(encoder.end())
    assert [c["type"] for c in sent] == ["start", "start-step", "finish-step", "finish"]
    assert "finishReason" not in sent[-1]  # no Finish came: nothing to say
    assert sent[-1]["messageMetadata"]["usage"]["inputTokens"] == 3
    assert StreamEncoder("msg-2", "m").end().count(b'"messageMetadata":{"model":"m"}}') == 1
