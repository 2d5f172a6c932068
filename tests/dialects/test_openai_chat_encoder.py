"""The chat completions stream encoder against the ``openai`` SDK's own reading of it.

Random canonical event sequences (text with and without logprobs, reasoning, refusals,
tool calls in several pieces, several choices written side by side, usage, every
finish reason, an in-band error or a raised one, events wrapped in another format's
``Verbatim``, all cut into random batches) are encoded by ``StreamEncoder``, served
from a real HTTP server on loopback and read by ``client.chat.completions.create(
stream=True)``; its chunks are also accumulated by the SDK's ``ChatCompletionStreamState``
(the machinery behind ``client.chat.completions.stream``). What the SDK ends up with
must be what the events said: the text, reasoning and refusal of each choice, its tool
calls (ids, names, assembled arguments, OpenAI indices from 0), finish reasons and
usage; a failure raises, and no stream that failed ends with ``[DONE]``.
"""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai.lib.streaming.chat import ChatCompletionStreamState

from sluice.dialects.openai_chat import CompletionEncoder, StreamEncoder
from sluice.errors import UpstreamError
from sluice.events import (
    Batch,
    ChatRequest,
    Finish,
    FinishReason,
    Message,
    PartEnd,
    ReasoningDelta,
    RefusalDelta,
    Start,
    StreamError,
    StreamEvent,
    TextDelta,
    TextPart,
    ToolCallDelta,
    Usage,
    Verbatim,
)

RESPONSE_ID = "chatcmpl-gateway1"


class _Replay(http.server.BaseHTTPRequestHandler):
    """Answers every POST with the server's ``writes``, one HTTP chunk each."""

    protocol_version = "HTTP/1.1"
    server: _ReplayServer

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", "0")))
        self.send_response(200)
        self.send_header("content-type", "text/event-stream; charset=utf-8")
        self.send_header("transfer-encoding", "chunked")
        self.send_header("connection", "close")
        self.end_headers()
        self.close_connection = True
        for data in self.server.writes:
            if data:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.write(b"0\r\n\r\n")

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _ReplayServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    # A busy machine can be slow to accept: a short backlog refused connections.
    request_queue_size = 128
    writes: list[bytes] = []

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that raised on an error chunk hangs up before the last one


@pytest.fixture(scope="module")
def replay() -> Iterator[_ReplayServer]:
    server = _ReplayServer(("127.0.0.1", 0), _Replay)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@dataclass
class Choice:
    """What one choice's events said."""

    text: str = ""
    reasoning: str = ""
    refusal: str = ""
    #: (id, name, arguments), in the order the calls started.
    calls: list[tuple[str, str, str]] = field(default_factory=list)
    #: The tokens of the text that came with logprobs.
    tokens: list[str] = field(default_factory=list)
    finish: str | None = None


@dataclass
class Case:
    batches: list[Batch]
    choices: list[Choice]
    ending: str  # finish, in-band, raised
    include_usage: bool
    usage: Usage | None
    start: Start


TEXT = st.text(min_size=1, max_size=6)
ARGUMENTS = st.dictionaries(
    st.text(max_size=4), st.one_of(st.integers(), TEXT, st.none()), max_size=3
)
REASONS: list[tuple[FinishReason, str | None]] = [
    ("stop", "stop"),
    ("length", "length"),
    ("tool_calls", "tool_calls"),
    ("content_filter", "content_filter"),
    ("other", "pause_turn"),
    ("other", None),
]


def _pieces(draw: st.DrawFn, text: str) -> list[str]:
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(text) - 1)), max_size=4)))
    return [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True) if text[a:b]]


@st.composite
def cases(draw: st.DrawFn) -> Case:
    count = draw(st.integers(1, 3))
    lists: list[list[StreamEvent]] = []
    choices: list[Choice] = []
    for c in range(count):
        choice = Choice()
        events: list[StreamEvent] = []
        kinds = draw(
            st.lists(st.sampled_from(["text", "reasoning", "refusal", "tool"]), max_size=4)
        )
        for i, kind in enumerate(kinds):
            pieces = draw(st.lists(TEXT, min_size=1, max_size=4))
            if kind == "text":
                with_logprobs = draw(st.booleans())
                for piece in pieces:
                    logprobs = None
                    if with_logprobs:
                        logprob = {"token": piece, "logprob": -0.5, "bytes": list(piece.encode())}
                        logprobs = [{**logprob, "top_logprobs": []}]
                        choice.tokens.append(piece)
                    events.append(TextDelta(piece, i, c, logprobs))
                choice.text += "".join(pieces)
            elif kind == "reasoning":
                events += [ReasoningDelta(p, i, c) for p in pieces]
                if draw(st.booleans()):
                    events.append(ReasoningDelta("", i, c, signature="sig"))
                choice.reasoning += "".join(pieces)
            elif kind == "refusal":
                events += [RefusalDelta(p, i, c) for p in pieces]
                choice.refusal += "".join(pieces)
            else:
                call_id = f"call_{c}_{i}"
                name = draw(st.sampled_from(["get_weather", "search", "run"]))
                arguments = json.dumps(draw(ARGUMENTS))
                parts = _pieces(draw, arguments)
                events.append(ToolCallDelta(i, call_id, name, parts[0], c))
                events += [ToolCallDelta(i, None, None, p, c) for p in parts[1:]]
                choice.calls.append((call_id, name, arguments))
            if draw(st.booleans()):
                events.append(PartEnd(i, c))
        reason, native = draw(st.sampled_from(REASONS))
        events.append(Finish(reason, native, c))
        choice.finish = reason if reason != "other" else (native or "stop")
        lists.append(events)
        choices.append(choice)
    # The choices' events side by side, each choice's in its own order.
    merged: list[StreamEvent] = []
    at = [0] * count
    while any(at[c] < len(lists[c]) for c in range(count)):
        going = [c for c in range(count) if at[c] < len(lists[c])]
        c = draw(st.sampled_from(going))
        merged.append(lists[c][at[c]])
        at[c] += 1
    usage = None
    if draw(st.booleans()):
        usage = Usage(40, 12, "reported", draw(st.integers(0, 40)), 0, draw(st.integers(0, 12)))
        merged.append(usage)
    ending = draw(st.sampled_from(["finish", "finish", "in-band", "raised"]))
    if ending != "finish":
        merged = merged[: draw(st.integers(0, len(merged)))]
        if ending == "in-band":
            merged.append(StreamError("the upstream fell over", "upstream_error", "upstream_error"))
    # Some events arrive in another format's Verbatim (read, never written as they came).
    wrapped: list[StreamEvent] = []
    for event in merged:
        if draw(st.integers(0, 4)) == 0:
            wrapped.append(Verbatim("anthropic_messages", b"event: x\n\n", 1, None, [event]))
        else:
            wrapped.append(event)
    fmt = draw(st.sampled_from(["openai_chat", "anthropic_messages"]))
    extra = {"system_fingerprint": "fp_up"} if fmt == "openai_chat" else None
    start = Start(
        fmt, "chatcmpl-up" if fmt == "openai_chat" else "msg_up", "up-model", 7, None, extra
    )
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(wrapped))), max_size=6)))
    batches: list[Batch] = [
        wrapped[a:b] for a, b in zip([0, *cuts], [*cuts, len(wrapped)], strict=True)
    ]
    batches = [b for b in batches if b] or [[]]
    batches[0].insert(0, start)
    return Case(batches, choices, ending, draw(st.booleans()), usage, start)


def encode(case: Case) -> list[bytes]:
    """The writes, as the relay makes them: each batch, then the end (or the error)."""
    request = ChatRequest(
        model="asked",
        messages=[Message("user", [TextPart("Hello")])],
        n=len(case.choices),
        include_usage=case.include_usage,
    )
    encoder = StreamEncoder(request, RESPONSE_ID)
    writes = [encoder.encode(batch) for batch in case.batches]
    if case.ending == "raised":
        writes.append(encoder.error(UpstreamError("the upstream connection broke")))
    else:
        writes.append(encoder.end())
    return writes


def read(server: _ReplayServer, writes: list[bytes]) -> tuple[list[Any], Exception | None]:
    server.writes = writes
    port = server.server_address[1]
    chunks: list[Any] = []
    client = openai.OpenAI(
        # Retries only happen before a response: a refused connect on a busy machine.
        base_url=f"http://127.0.0.1:{port}/v1",
        api_key="x",
        max_retries=2,
        timeout=30,
    )
    with client:
        try:
            stream = client.chat.completions.create(
                model="asked", messages=[{"role": "user", "content": "Hello"}], stream=True
            )
            chunks.extend(stream)
        except openai.APIError as exc:
            return chunks, exc
    return chunks, None


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_the_sdk_reads_back_what_the_events_said(replay: _ReplayServer, case: Case) -> None:
    writes = encode(case)
    data = b"".join(writes)
    chunks, error = read(replay, writes)

    # One id and one model for every chunk: the upstream's id only when it speaks this API.
    expected_id = case.start.id if case.start.format == "openai_chat" else RESPONSE_ID
    assert {c.id for c in chunks} <= {expected_id}
    assert {c.model for c in chunks} <= {"up-model"}

    seen: dict[int, Choice] = {}
    indices: dict[int, list[int]] = {}
    calls: dict[tuple[int, int], list[str]] = {}
    usage = None
    for chunk in chunks:
        if chunk.usage is not None:
            assert chunk.choices == []
            usage = chunk.usage
        for choice in chunk.choices:
            got = seen.setdefault(choice.index, Choice())
            delta = choice.delta
            got.text += delta.content or ""
            got.reasoning += (delta.model_extra or {}).get("reasoning_content") or ""
            got.refusal += delta.refusal or ""
            if choice.logprobs is not None:
                got.tokens += [t.token for t in choice.logprobs.content or ()]
            for call in delta.tool_calls or ():
                entry = calls.get((choice.index, call.index))
                if entry is None:
                    # A call starts with its id and name, at the next OpenAI index.
                    assert call.index == len(indices.setdefault(choice.index, []))
                    indices[choice.index].append(call.index)
                    assert call.id and call.function is not None and call.function.name
                    entry = calls[(choice.index, call.index)] = [call.id, call.function.name, ""]
                else:
                    assert call.id is None
                entry[2] += (call.function.arguments or "") if call.function else ""
            if choice.finish_reason is not None:
                assert got.finish is None, "a choice finished twice"
                got.finish = choice.finish_reason
    for (index, _), (call_id, name, arguments) in sorted(calls.items()):
        seen[index].calls.append((call_id, name, arguments))

    if case.ending != "finish":
        assert error is not None, "a failed stream read as a success"
        assert "fell over" in error.message or "connection broke" in error.message
        assert b"[DONE]" not in data  # never a clean end after a failure
        for index, got in seen.items():
            want = case.choices[index]
            assert want.text.startswith(got.text) and want.reasoning.startswith(got.reasoning)
        return
    assert error is None, f"the SDK raised {error!r}"
    assert data.endswith(b"data: [DONE]\n\n")
    assert sorted(seen) == list(range(len(case.choices)))
    for index, want in enumerate(case.choices):
        assert seen[index] == want
    if case.include_usage and case.usage is not None:
        assert usage is not None
        assert (usage.prompt_tokens, usage.completion_tokens) == (40, 12)
        assert usage.prompt_tokens_details is not None
        assert usage.prompt_tokens_details.cached_tokens == case.usage.cached_tokens
        assert usage.completion_tokens_details is not None
        assert usage.completion_tokens_details.reasoning_tokens == case.usage.reasoning_tokens
    else:
        assert usage is None

    # The SDK's accumulator (client.chat.completions.stream) puts the same together.
    state: ChatCompletionStreamState[Any] = ChatCompletionStreamState()
    for chunk in chunks:
        state.handle_chunk(chunk)
    snapshot = state.current_completion_snapshot
    assert [c.index for c in snapshot.choices] == list(range(len(case.choices)))
    for choice, want in zip(snapshot.choices, case.choices, strict=True):
        message = choice.message
        assert (message.content or "") == want.text
        assert (message.refusal or "") == want.refusal
        got_calls = [
            (t.id, t.function.name, t.function.arguments) for t in message.tool_calls or ()
        ]
        assert got_calls == want.calls
        assert choice.finish_reason == want.finish


def test_a_choice_that_speaks_first_is_preceded_by_the_lower_ones() -> None:
    """A replay of an ``n`` stream whose role chunks carried nothing (they are no
    events) may start with choice 1: choice 0 opens first, or the SDK's accumulator
    raises IndexError."""
    request = ChatRequest(model="m", messages=[Message("user", [TextPart("Hi")])], n=3)
    encoder = StreamEncoder(request, RESPONSE_ID)
    data = encoder.encode([Start("sluice", "s", "m"), TextDelta("b", 0, 2), TextDelta("a", 0, 0)])
    chunks = [json.loads(line[6:]) for line in data.split(b"\n\n") if line]
    assert [(c["choices"][0]["index"], c["choices"][0]["delta"]) for c in chunks] == [
        (0, {"role": "assistant"}),
        (1, {"role": "assistant"}),
        (2, {"role": "assistant", "content": "b"}),
        (0, {"content": "a"}),
    ]


def test_the_json_answer_of_a_failed_stream_is_an_error() -> None:
    request = ChatRequest(model="m", messages=[Message("user", [TextPart("Hi")])], stream=False)
    encoder = CompletionEncoder(request, RESPONSE_ID)
    with pytest.raises(UpstreamError, match="fell over"):
        encoder.encode([Start("sluice", "s", "m"), TextDelta("a"), StreamError("fell over")])
