"""The Responses stream encoder against the openai SDK's own accumulation of its events.

Random canonical event sequences (text, refusal, reasoning and tool-call parts, split
into random batches, ending every way a stream ends) are encoded, parsed back as the
SDK parses a stream (its event models, validated) and accumulated by the SDK's
``ResponseStreamState``, the machinery behind ``client.responses.stream``. What the SDK
ends up with must be what the events said.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson
import pydantic
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai import omit
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.responses import ResponseStreamEvent

from sluice.dialects.openai_responses import ResponseEncoder, StreamEncoder
from sluice.dialects.responses_stream import ResponseBuilder
from sluice.errors import UpstreamProtocolError
from sluice.events import (
    Annotations,
    Finish,
    PartEnd,
    ReasoningDelta,
    RefusalDelta,
    Start,
    StreamError,
    StreamEvent,
    TextDelta,
    ToolCallDelta,
    Usage,
)

EVENTS: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(ResponseStreamEvent)
RESPONSE_ID = "resp_0123456789abcdef01234567"
ECHO: dict[str, Any] = {"store": True, "metadata": {}, "tools": [], "tool_choice": "auto"}


def parse_sse(data: bytes) -> list[dict[str, Any]]:
    """Events of a Responses stream; each ``event:`` name must be its ``type``."""
    out = []
    for block in data.split(b"\n\n"):
        if not block or block.startswith(b":"):
            continue
        name, _, payload = block.partition(b"\n")
        assert name.startswith(b"event: ") and payload.startswith(b"data: "), block
        event = orjson.loads(payload[6:])
        assert event["type"] == name[7:].decode()
        out.append(event)
    return out


@dataclass
class Expected:
    parts: list[tuple[str, str]] = field(default_factory=list)  # (kind, text)
    calls: list[tuple[str, str, str]] = field(default_factory=list)  # (call_id, name, args)
    status: str = "completed"


def chunks() -> st.SearchStrategy[list[str]]:
    return st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=5)


@st.composite
def streams(draw: st.DrawFn) -> tuple[list[list[StreamEvent]], str, Expected, bool]:
    events: list[StreamEvent] = [Start("openai_chat", "chatcmpl-x", "model-x", 1_700_000_000)]
    expected = Expected()
    kinds = draw(st.lists(st.sampled_from(["text", "refusal", "reasoning", "tool"]), max_size=5))
    for index, kind in enumerate(kinds):
        pieces = draw(chunks())
        if kind == "text":
            events += [TextDelta(p, index) for p in pieces]
            if draw(st.booleans()):
                citation = {"url": "https://a.example", "title": "t", "start_index": 0}
                citation["end_index"] = 1
                events.append(
                    Annotations([{"type": "url_citation", "url_citation": citation}], index)
                )
        elif kind == "refusal":
            events += [RefusalDelta(p, index) for p in pieces]
        elif kind == "reasoning":
            events += [ReasoningDelta(p, index) for p in pieces]
            if draw(st.booleans()):
                events.append(ReasoningDelta("", index, signature="sig"))
        else:
            call_id = draw(st.sampled_from([None, f"call_{index}"]))
            name = f"tool_{index}"
            events.append(ToolCallDelta(index, call_id, name, pieces[0]))
            events += [ToolCallDelta(index, None, None, p) for p in pieces[1:]]
            expected.calls.append((call_id or "", name, "".join(pieces)))
        if kind != "tool":
            expected.parts.append((kind, "".join(pieces)))
        if index < len(kinds) - 1 or draw(st.booleans()):
            events.append(PartEnd(index))
    ending = draw(
        st.sampled_from(
            ["stop", "tool_calls", "length", "content_filter", "error", "in-band", "raise", "none"]
        )
    )
    if ending in ("stop", "tool_calls", "length", "content_filter", "error"):
        events.append(Finish(ending, ending))  # type: ignore[arg-type]
    if draw(st.booleans()):
        events.append(Usage(7, 11, cached_tokens=2, reasoning_tokens=3))
    if ending == "in-band":
        events.append(StreamError("the upstream broke"))
    expected.status = {
        "length": "incomplete",
        "content_filter": "incomplete",
        "error": "failed",
        "in-band": "failed",
        "raise": "failed",
    }.get(ending, "completed")
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(events) - 1)), max_size=6)))
    batches = [events[a:b] for a, b in zip([0, *cuts], [*cuts, len(events)], strict=True)]
    summaries = draw(st.booleans())
    return [b for b in batches if b], ending, expected, summaries


def encode(batches: list[list[StreamEvent]], ending: str, summaries: bool) -> bytes:
    builder = ResponseBuilder(RESPONSE_ID, 1_700_000_123, "asked", ECHO, summaries, True)
    encoder = StreamEncoder(builder)
    data = b"".join(encoder.encode(batch) for batch in batches)
    if ending == "raise":
        return data + encoder.error(UpstreamProtocolError("the upstream closed early"))
    return data + encoder.end()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams())
def test_the_sdk_accumulates_what_the_events_said(
    case: tuple[list[list[StreamEvent]], str, Expected, bool],
) -> None:
    batches, ending, expected, summaries = case
    data = encode(batches, ending, summaries)
    assert data == encode(batches, ending, summaries)  # a function of the events alone
    raw = parse_sse(data)
    assert [e["sequence_number"] for e in raw] == list(range(len(raw)))
    assert [e["type"] for e in raw[:2]] == ["response.created", "response.in_progress"]

    state: ResponseStreamState[Any] = ResponseStreamState(input_tools=omit, text_format=omit)
    seen: list[Any] = []
    for event in raw:
        seen.extend(state.handle_event(EVENTS.validate_python(event)))
    terminal = seen[-1]
    if expected.status == "failed":
        assert [e.type for e in seen[-2:]] == ["error", "response.failed"]
        assert terminal.response.error is not None
    else:
        assert terminal.type == f"response.{expected.status}"
    response = terminal.response
    assert response.id == RESPONSE_ID
    assert response.model == "model-x"  # the model the stream's Start named
    assert response.status == expected.status
    if expected.status == "incomplete":
        reason = "max_output_tokens" if ending == "length" else "content_filter"
        assert response.incomplete_details.reason == reason

    # What the SDK put together from the deltas, item by item.
    texts: dict[str, str] = {}
    for event in seen:
        if event.type in ("response.output_text.delta", "response.function_call_arguments.delta"):
            texts[event.item_id] = event.snapshot
    parts: list[tuple[str, str]] = []
    calls: list[tuple[str, str, str]] = []
    for item in response.output:
        if item.type == "message":
            content = item.content[0]
            if content.type == "output_text":
                assert texts[item.id] == content.text
                parts.append(("text", content.text))
            else:
                parts.append(("refusal", content.refusal))
        elif item.type == "reasoning":
            found = item.summary if summaries else item.content
            assert found is not None
            parts.append(("reasoning", "".join(p.text for p in found)))
        else:
            assert item.type == "function_call"
            assert texts[item.id] == item.arguments
            calls.append((item.call_id, item.name, item.arguments))
    assert parts == expected.parts
    # A call the upstream gave no id gets one of the gateway's.
    given = [
        (c or made, name, args)
        for (c, name, args), (made, _, _) in zip(expected.calls, calls, strict=True)
    ]
    assert given == calls
    assert len({item.id for item in response.output}) == len(response.output)

    if expected.status == "completed":
        final = state._completed_response
        assert final is not None
        assert final.output_text == "".join(t for k, t in expected.parts if k == "text")
    if ending != "raise":
        # The JSON answer to the same events is the stream's last response.
        builder = ResponseBuilder(RESPONSE_ID, 1_700_000_123, "asked", ECHO, summaries, False)
        json_encoder = ResponseEncoder(builder)
        for batch in batches:
            json_encoder.encode(batch)
        assert orjson.loads(json_encoder.end()) == raw[-1]["response"]
