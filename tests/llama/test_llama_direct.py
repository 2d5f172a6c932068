"""llama.cpp's ``llama-server``, spoken to directly (no gateway), in all its API formats.

These tests pin down what a real third-party upstream sends, so the gateway tests can
compare what the gateway relays with what the upstream streams directly, and so the
gateway's Anthropic and Responses work has a record of what a real server emits.

Observed with the ``llama-server`` that ``scripts/build-llama-server`` builds from the
llama.cpp vendored in the llama-cpp-python 0.3.36 sdist (llama.cpp commit ``0c1e570``,
``llama-server --version``: "0.5.0-dev (build 1, commit 0c1e570)"), on the tiny model of
``make_gguf.py``, one slot, ``temperature=0``.

Every endpoint
    The same prompt gives the same text in all three formats (system + user messages in
    chat and Anthropic form, ``instructions`` + ``input`` in Responses form render to the
    same ChatML prompt), one event per generated token.  Usage counts the end-of-turn
    token, which is never streamed: a generation that stops by itself reports one output
    token more than it streamed deltas; one cut by the token limit, as many.  Any
    ``model`` is accepted and answered as ``tiny``.  Streams have ``content-type:
    text/event-stream`` (no charset), ``x-accel-buffering: no``, no ``cache-control``,
    chunked transfer, ``\\n`` line ends and one ``data:`` line per event; no comment
    pings, no ``id:`` fields.  After the last event the server closes the connection,
    although it announced ``keep-alive: timeout=5, max=100`` and no ``connection:
    close`` (cpp-httplib takes the ``false`` that llama.cpp's stream callback returns
    after its last chunk for a cancelled write): a pooled client that reuses the
    connection races the close and may get "Server disconnected without sending a
    response" (``test_streams_close_the_connection``).  Non-streamed responses keep the
    connection open.

``POST /v1/chat/completions`` with ``"stream": true`` (``OBSERVED_STREAM``)
    No ``event:`` fields.  Compact JSON, keys ``choices, created, id, model,
    system_fingerprint, object`` (the fingerprint is ``b<build>-<commit>``); one ``id`` and
    ``created`` for the stream.  First chunk ``delta: {"role": "assistant", "content":
    null}``; then one ``delta: {"content": ...}`` chunk per token (a SentencePiece model's
    first piece keeps its leading space); then a finish chunk, ``delta: {}`` and
    ``finish_reason`` ``"stop"`` or ``"length"``; then ``data: [DONE]``.  Without
    ``stream_options`` the finish chunk also carries llama.cpp's ``timings`` object and
    there is no usage.  With ``stream_options: {"include_usage": true}`` a usage chunk
    follows the finish chunk: ``choices: []``, ``usage: {completion_tokens, prompt_tokens,
    total_tokens, prompt_tokens_details: {cached_tokens}}`` and ``timings``.
    Non-streaming responses always carry ``usage`` (and ``timings``).

``POST /v1/responses`` with ``"stream": true``
    Every event has ``event: <name>`` equal to its data's ``type``; no
    ``sequence_number``; no ``[DONE]``.  Sequence: ``response.created``,
    ``response.in_progress`` (both ``response: {id, object: "response", status:
    "in_progress"}`` only: no model, no output), ``response.output_item.added`` (a
    ``message`` item, ``content: []``), ``response.content_part.added`` (``output_text``,
    ``text: ""``), one ``response.output_text.delta`` (``item_id``, ``delta``) per token,
    ``response.output_text.done`` (whole ``text``), ``response.content_part.done``,
    ``response.output_item.done`` (``status: "completed"``), ``response.completed``.  No
    ``output_index``/``content_index`` fields.  ``response.completed`` carries the whole
    response with ``usage: {input_tokens, output_tokens, total_tokens,
    input_tokens_details: {cached_tokens}}`` (``input_tokens`` counts cached ones too),
    plus a top-level ``timings``.  A stream cut by ``max_output_tokens`` still ends
    ``status: "completed"``: no ``response.incomplete``, no ``incomplete_details``.

``POST /v1/messages`` (Anthropic) with ``"stream": true``
    Every event has ``event: <name>`` equal to its data's ``type``; no ``ping``, no
    ``[DONE]``.  Sequence: ``message_start`` (``message: {id: "chatcmpl-...", type:
    "message", role: "assistant", content: [], model, stop_reason: null, stop_sequence:
    null, usage: {cache_read_input_tokens, input_tokens, output_tokens: 0}}``, sent once
    the prompt is processed: ``input_tokens`` counts only the prompt tokens not read from
    the cache, so the prompt is ``input_tokens + cache_read_input_tokens``),
    ``content_block_start`` (index 0, ``{"type": "text", "text": ""}``), one
    ``content_block_delta`` (``text_delta``) per token, ``content_block_stop``,
    ``message_delta`` (``delta: {stop_reason: "end_turn" | "max_tokens", stop_sequence:
    null}``, ``usage: {output_tokens}`` only), ``message_stop``.  ``max_tokens`` may be
    left out (not an error).

``POST /v1/embeddings`` (only with ``--embeddings``; the fixture passes it with
``--pooling mean``)
    ``{model, object: "list", usage: {prompt_tokens, total_tokens}, data: [{embedding,
    index, object: "embedding"}]}``, one 64-float vector per input, L2-normalised.
    Without ``--embeddings`` it answers 501 ``not_supported_error``; with it, chat is
    unchanged.

``tools``
    The tiny model's ChatML template does not mention tools, so llama.cpp reports
    ``supports_tools: false`` (``GET /props``) and leaves them out of the prompt: in all
    three formats a request with tools and a ``tool_choice`` that forces a call
    (``"required"``; Anthropic's ``{"type": "any"}``) is accepted and streams exactly
    what it streams without them -- plain text, no tool call, finish ``"stop"`` /
    ``end_turn``.  This model cannot exercise tool calls.
"""

from __future__ import annotations

import json
import math
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from sluice.sse import ServerSentEvent, SSEDecoder
from tests.llama.fixture import LLAMA_MODEL, NO_KEEPALIVE, start_llama_server

MESSAGES: list[ChatCompletionMessageParam] = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Say hi."},
]
OTHER_MESSAGES: list[ChatCompletionMessageParam] = [
    {"role": "system", "content": "You are a storyteller."},
    {"role": "user", "content": "Tell me a story about a cat."},
]
MAX_TOKENS = 64
TIMEOUT_S = 30.0
#: Bounds for every stream read here: no test waits longer or reads more than this.
STREAM_DEADLINE_S = 20.0
MAX_EVENTS = 4 * MAX_TOKENS

#: The same prompt in each format, and the same tool.
CHAT_BODY: dict[str, Any] = {
    "model": LLAMA_MODEL,
    "messages": MESSAGES,
    "temperature": 0,
    "max_tokens": MAX_TOKENS,
}
RESPONSES_BODY: dict[str, Any] = {
    "model": LLAMA_MODEL,
    "instructions": "You are terse.",
    "input": "Say hi.",
    "temperature": 0,
    "max_output_tokens": MAX_TOKENS,
}
MESSAGES_BODY: dict[str, Any] = {
    "model": LLAMA_MODEL,
    "system": "You are terse.",
    "messages": [{"role": "user", "content": "Say hi."}],
    "temperature": 0,
    "max_tokens": MAX_TOKENS,
}
WEATHER_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
}
TOOLS = {
    "chat": {
        "tools": [
            {
                "type": "function",
                "function": {"name": "get_weather", "parameters": WEATHER_SCHEMA},
            }
        ],
        "tool_choice": "required",
    },
    "responses": {
        "tools": [{"type": "function", "name": "get_weather", "parameters": WEATHER_SCHEMA}],
        "tool_choice": "required",
    },
    "messages": {
        "tools": [{"name": "get_weather", "input_schema": WEATHER_SCHEMA}],
        "tool_choice": {"type": "any"},
    },
}

FORMATS = {
    "chat": ("chat/completions", CHAT_BODY),
    "responses": ("responses", RESPONSES_BODY),
    "messages": ("messages", MESSAGES_BODY),
}

#: Verbatim body of a stream from the request in ``test_chat_completions_stream``.
OBSERVED_STREAM = """\
data: {"choices":[{"finish_reason":null,"index":0,"delta":{"role":"assistant","content":null}}],"created":1796623742,"id":"chatcmpl-DLnhOZ7cwqh4s2qFzDpYvMq1L5i0QEWM","model":"tiny","system_fingerprint":"b1-0c1e570","object":"chat.completion.chunk"}

data: {"choices":[{"finish_reason":null,"index":0,"delta":{"content":" str"}}],"created":1796623742,"id":"chatcmpl-DLnhOZ7cwqh4s2qFzDpYvMq1L5i0QEWM","model":"tiny","system_fingerprint":"b1-0c1e570","object":"chat.completion.chunk"}

data: {"choices":[{"finish_reason":null,"index":0,"delta":{"content":"f"}}],"created":1796623742,"id":"chatcmpl-DLnhOZ7cwqh4s2qFzDpYvMq1L5i0QEWM","model":"tiny","system_fingerprint":"b1-0c1e570","object":"chat.completion.chunk"}

data: {"choices":[{"finish_reason":null,"index":0,"delta":{"content":"T"}}],"created":1796623742,"id":"chatcmpl-DLnhOZ7cwqh4s2qFzDpYvMq1L5i0QEWM","model":"tiny","system_fingerprint":"b1-0c1e570","object":"chat.completion.chunk"}

data: {"choices":[{"finish_reason":null,"index":0,"delta":{"content":"F"}}],"created":1796623742,"id":"chatcmpl-DLnhOZ7cwqh4s2qFzDpYvMq1L5i0QEWM","model":"tiny","system_fingerprint":"b1-0c1e570","object":"chat.completion.chunk"}

data: {"choices":[{"finish_reason":null,"index":0,"delta":{"content":" wo"}}],"created":1796623742,"id":"chatcmpl-DLnhOZ7cwqh4s2qFzDpYvMq1L5i0QEWM","model":"tiny","system_fingerprint":"b1-0c1e570","object":"chat.completion.chunk"}

data: {"choices":[{"finish_reason":null,"index":0,"delta":{"content":"y"}}],"created":1796623742,"id":"chatcmpl-DLnhOZ7cwqh4s2qFzDpYvMq1L5i0QEWM","model":"tiny","system_fingerprint":"b1-0c1e570","object":"chat.completion.chunk"}

data: {"choices":[{"finish_reason":null,"index":0,"delta":{"content":"d"}}],"created":1796623742,"id":"chatcmpl-DLnhOZ7cwqh4s2qFzDpYvMq1L5i0QEWM","model":"tiny","system_fingerprint":"b1-0c1e570","object":"chat.completion.chunk"}

data: {"choices":[{"finish_reason":null,"index":0,"delta":{"content":"0"}}],"created":1796623742,"id":"chatcmpl-DLnhOZ7cwqh4s2qFzDpYvMq1L5i0QEWM","model":"tiny","system_fingerprint":"b1-0c1e570","object":"chat.completion.chunk"}

data: {"choices":[{"finish_reason":null,"index":0,"delta":{"content":"d"}}],"created":1796623742,"id":"chatcmpl-DLnhOZ7cwqh4s2qFzDpYvMq1L5i0QEWM","model":"tiny","system_fingerprint":"b1-0c1e570","object":"chat.completion.chunk"}

data: {"choices":[{"finish_reason":null,"index":0,"delta":{"content":"q"}}],"created":1796623742,"id":"chatcmpl-DLnhOZ7cwqh4s2qFzDpYvMq1L5i0QEWM","model":"tiny","system_fingerprint":"b1-0c1e570","object":"chat.completion.chunk"}

data: {"choices":[{"finish_reason":null,"index":0,"delta":{"content":" "}}],"created":1796623742,"id":"chatcmpl-DLnhOZ7cwqh4s2qFzDpYvMq1L5i0QEWM","model":"tiny","system_fingerprint":"b1-0c1e570","object":"chat.completion.chunk"}

data: {"choices":[{"finish_reason":null,"index":0,"delta":{"content":" world"}}],"created":1796623742,"id":"chatcmpl-DLnhOZ7cwqh4s2qFzDpYvMq1L5i0QEWM","model":"tiny","system_fingerprint":"b1-0c1e570","object":"chat.completion.chunk"}

data: {"choices":[{"finish_reason":null,"index":0,"delta":{"content":"p"}}],"created":1796623742,"id":"chatcmpl-DLnhOZ7cwqh4s2qFzDpYvMq1L5i0QEWM","model":"tiny","system_fingerprint":"b1-0c1e570","object":"chat.completion.chunk"}

data: {"choices":[{"finish_reason":null,"index":0,"delta":{"content":"t"}}],"created":1796623742,"id":"chatcmpl-DLnhOZ7cwqh4s2qFzDpYvMq1L5i0QEWM","model":"tiny","system_fingerprint":"b1-0c1e570","object":"chat.completion.chunk"}

data: {"choices":[{"finish_reason":null,"index":0,"delta":{"content":" stre"}}],"created":1796623742,"id":"chatcmpl-DLnhOZ7cwqh4s2qFzDpYvMq1L5i0QEWM","model":"tiny","system_fingerprint":"b1-0c1e570","object":"chat.completion.chunk"}

data: {"choices":[{"finish_reason":null,"index":0,"delta":{"content":" and"}}],"created":1796623742,"id":"chatcmpl-DLnhOZ7cwqh4s2qFzDpYvMq1L5i0QEWM","model":"tiny","system_fingerprint":"b1-0c1e570","object":"chat.completion.chunk"}

data: {"choices":[{"finish_reason":null,"index":0,"delta":{"content":"k"}}],"created":1796623742,"id":"chatcmpl-DLnhOZ7cwqh4s2qFzDpYvMq1L5i0QEWM","model":"tiny","system_fingerprint":"b1-0c1e570","object":"chat.completion.chunk"}

data: {"choices":[{"finish_reason":null,"index":0,"delta":{"content":" he"}}],"created":1796623742,"id":"chatcmpl-DLnhOZ7cwqh4s2qFzDpYvMq1L5i0QEWM","model":"tiny","system_fingerprint":"b1-0c1e570","object":"chat.completion.chunk"}

data: {"choices":[{"finish_reason":null,"index":0,"delta":{"content":"m"}}],"created":1796623742,"id":"chatcmpl-DLnhOZ7cwqh4s2qFzDpYvMq1L5i0QEWM","model":"tiny","system_fingerprint":"b1-0c1e570","object":"chat.completion.chunk"}

data: {"choices":[{"finish_reason":null,"index":0,"delta":{"content":"."}}],"created":1796623742,"id":"chatcmpl-DLnhOZ7cwqh4s2qFzDpYvMq1L5i0QEWM","model":"tiny","system_fingerprint":"b1-0c1e570","object":"chat.completion.chunk"}

data: {"choices":[{"finish_reason":"stop","index":0,"delta":{}}],"created":1796623742,"id":"chatcmpl-DLnhOZ7cwqh4s2qFzDpYvMq1L5i0QEWM","model":"tiny","system_fingerprint":"b1-0c1e570","object":"chat.completion.chunk"}

data: {"choices":[],"created":1796623742,"id":"chatcmpl-DLnhOZ7cwqh4s2qFzDpYvMq1L5i0QEWM","model":"tiny","system_fingerprint":"b1-0c1e570","object":"chat.completion.chunk","usage":{"completion_tokens":21,"prompt_tokens":51,"total_tokens":72,"prompt_tokens_details":{"cached_tokens":0}},"timings":{"cache_n":0,"prompt_n":51,"prompt_ms":9.924,"prompt_per_token_ms":0.19458823529411765,"prompt_per_second":5139.056831922612,"predicted_n":21,"predicted_ms":14.201,"predicted_per_token_ms":0.7100500000000001,"predicted_per_second":1408.3515245405251}}

data: [DONE]

"""  # noqa: E501


@pytest.fixture(scope="module")
def llama_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with start_llama_server(tmp_path_factory.mktemp("llama")) as url:
        yield url


@pytest.fixture
def client(llama_url: str) -> Iterator[openai.OpenAI]:
    http = openai.DefaultHttpxClient(trust_env=False, timeout=TIMEOUT_S, limits=NO_KEEPALIVE)
    with openai.OpenAI(base_url=llama_url, api_key="unused", max_retries=0, http_client=http) as c:
        yield c


class SSEStream:
    """One streamed response, read with plain httpx read by read (never buffered whole)."""

    def __init__(self, headers: httpx.Headers, raw: bytes, events: list[ServerSentEvent]):
        self.headers = headers
        self.raw = raw
        self.events = events

    @property
    def names(self) -> list[str]:
        return [e.event for e in self.events]

    def payloads(self) -> list[Any]:
        return [json.loads(e.data) for e in self.events if e.data != b"[DONE]"]


def read_sse(url: str, body: dict[str, Any]) -> SSEStream:
    """POST ``body`` with ``"stream": true`` and decode the events as they arrive.

    Fails once the stream has run ``STREAM_DEADLINE_S`` or sent ``MAX_EVENTS`` events.
    """
    decoder = SSEDecoder()
    events: list[ServerSentEvent] = []
    raw = bytearray()
    deadline = time.monotonic() + STREAM_DEADLINE_S
    with (
        httpx.Client(trust_env=False, timeout=TIMEOUT_S, limits=NO_KEEPALIVE) as http,
        http.stream("POST", url, json={**body, "stream": True}) as resp,
    ):
        if resp.status_code != 200:
            pytest.fail(f"{url}: HTTP {resp.status_code}: {resp.read()!r}")
        for piece in resp.iter_raw():
            raw += piece
            events += decoder.feed(piece)
            assert len(events) <= MAX_EVENTS, f"more than {MAX_EVENTS} events"
            assert time.monotonic() < deadline, f"stream still open after {STREAM_DEADLINE_S}s"
        headers = resp.headers
    return SSEStream(headers, bytes(raw), events)


def stream_chat(
    client: openai.OpenAI, messages: list[ChatCompletionMessageParam], **kwargs: Any
) -> tuple[str, str | None, list[Any]]:
    """Stream one chat completion with the SDK: (content, finish_reason, chunks)."""
    chunks = []
    content: list[str] = []
    finish: str | None = None
    stream = client.chat.completions.create(
        model=LLAMA_MODEL,
        messages=messages,
        stream=True,
        temperature=0,
        seed=42,
        max_tokens=kwargs.pop("max_tokens", MAX_TOKENS),
        **kwargs,
    )
    with stream:
        for chunk in stream:
            chunks.append(chunk)
            assert len(chunks) <= MAX_EVENTS
            for choice in chunk.choices:
                if choice.delta.content:
                    content.append(choice.delta.content)
                if choice.finish_reason is not None:
                    finish = choice.finish_reason
    return "".join(content), finish, chunks


def stream_shape(text: str) -> list[str]:
    """A chat stream body with ids, timestamps, fingerprints, texts, timings and cache
    counts blanked and content runs collapsed. Keeps the framing and key order."""
    shape: list[str] = []
    for event in text.split("\n\n"):
        if not event.startswith("data: {"):
            shape.append(event)
            continue
        payload = json.loads(event.removeprefix("data: "))
        payload["id"], payload["created"], payload["system_fingerprint"] = "ID", 0, "FP"
        if "timings" in payload:
            payload["timings"] = "TIMINGS"
        if "usage" in payload:  # what the prompt cache holds depends on earlier requests
            payload["usage"]["prompt_tokens_details"]["cached_tokens"] = "CACHED"
        for choice in payload["choices"]:
            if "content" in choice["delta"] and choice["delta"]["content"] is not None:
                choice["delta"]["content"] = "TEXT"
        line = "data: " + json.dumps(payload)
        if not shape or shape[-1] != line:
            shape.append(line)
    return shape


def streamed_text(api: str, stream: SSEStream) -> str:
    """The generated text of a stream of ``api`` ("chat", "responses" or "messages")."""
    parts = []
    for p in stream.payloads():
        if api == "chat" and p["choices"]:
            parts.append(p["choices"][0]["delta"].get("content") or "")
        elif api == "responses" and p["type"] == "response.output_text.delta":
            parts.append(p["delta"])
        elif api == "messages" and p["type"] == "content_block_delta":
            parts.append(p["delta"]["text"])
    return "".join(parts)


def assert_sse_framing(stream: SSEStream) -> None:
    assert stream.headers["content-type"] == "text/event-stream"
    assert stream.headers["x-accel-buffering"] == "no"
    assert "cache-control" not in stream.headers
    assert stream.headers["transfer-encoding"] == "chunked"
    assert all(e.id is None for e in stream.events)
    text = stream.raw.decode()
    assert "\r" not in text
    assert text.endswith("\n\n")
    assert all(block and not block.startswith(":") for block in text.split("\n\n")[:-1])


def chat_text(client: openai.OpenAI) -> tuple[str, int, int]:
    """The non-streamed answer to ``MESSAGES``: (text, prompt tokens, completion tokens)."""
    resp = client.chat.completions.create(**CHAT_BODY)
    assert resp.usage is not None
    text = resp.choices[0].message.content or ""
    return text, resp.usage.prompt_tokens, resp.usage.completion_tokens


# -- chat completions, through the openai SDK -------------------------------------------


def test_models_lists_the_alias(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == [LLAMA_MODEL]


def test_streaming_chat_returns_content_and_finishes(client: openai.OpenAI) -> None:
    content, finish, chunks = stream_chat(client, MESSAGES)
    assert content.strip(), "streamed content is empty"
    assert content.isascii() and content.isprintable()
    assert finish == "stop"  # this prompt ends with a "." well before MAX_TOKENS
    first, last = chunks[0], chunks[-1]
    assert first.choices[0].delta.role == "assistant"
    assert not first.choices[0].delta.content
    assert last.choices[0].finish_reason == "stop"
    assert not last.choices[0].delta.content
    assert len({c.id for c in chunks}) == 1
    assert all(c.object == "chat.completion.chunk" and c.model == LLAMA_MODEL for c in chunks)


def test_streaming_max_tokens_finishes_with_length(client: openai.OpenAI) -> None:
    content, finish, chunks = stream_chat(client, MESSAGES, max_tokens=3)
    assert finish == "length"
    assert content
    # One content chunk per token: role chunk + 3 tokens + finish chunk.
    assert len(chunks) == 5


def test_non_streaming_chat(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(
        model=LLAMA_MODEL, messages=MESSAGES, temperature=0, seed=42, max_tokens=MAX_TOKENS
    )
    assert resp.object == "chat.completion"
    assert resp.model == LLAMA_MODEL
    choice = resp.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content and choice.message.content.strip()
    assert choice.finish_reason == "stop"
    assert resp.usage is not None
    assert resp.usage.prompt_tokens > 0 and resp.usage.completion_tokens > 0
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
    # Streaming and non-streaming generate the same text.
    content, finish, _ = stream_chat(client, MESSAGES)
    assert content == choice.message.content
    assert finish == choice.finish_reason


def test_stream_options_include_usage(client: openai.OpenAI) -> None:
    content, finish, chunks = stream_chat(client, MESSAGES, stream_options={"include_usage": True})
    plain, plain_finish, plain_chunks = stream_chat(client, MESSAGES)
    assert (content, finish) == (plain, plain_finish)
    assert all(c.usage is None for c in plain_chunks)
    # The OpenAI shape: after the finish chunk, one last chunk with no choices.
    *rest, last = chunks
    assert last.choices == [] and last.usage is not None
    assert all(c.usage is None for c in rest)
    assert rest[-1].choices[0].finish_reason == "stop"
    n_content = sum(1 for c in rest if c.choices[0].delta.content)
    assert last.usage.completion_tokens == n_content + 1  # + the end-of-turn token
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens


def test_direct_streams_are_deterministic(client: openai.OpenAI) -> None:
    """Same request, same stream -- also after a different prompt used the model's cache."""
    first = stream_chat(client, MESSAGES)[:2]
    assert stream_chat(client, MESSAGES)[:2] == first
    other = stream_chat(client, OTHER_MESSAGES)[:2]
    assert other[0] != first[0]  # the output depends on the prompt
    assert stream_chat(client, MESSAGES)[:2] == first
    assert stream_chat(client, OTHER_MESSAGES)[:2] == other


def test_concurrent_streams_queue_and_match(client: openai.OpenAI) -> None:
    """With one slot, overlapping streams all complete, each unchanged."""
    expected = {0: stream_chat(client, MESSAGES)[:2], 1: stream_chat(client, OTHER_MESSAGES)[:2]}
    jobs = [0, 1, 0, 1]
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        results = list(
            pool.map(lambda j: stream_chat(client, [MESSAGES, OTHER_MESSAGES][j])[:2], jobs)
        )
    assert results == [expected[j] for j in jobs]


# -- each format's raw stream, with plain httpx -----------------------------------------


def test_chat_completions_stream(llama_url: str, tmp_path: Path) -> None:
    """The byte-level shape described in the module docstring."""
    body = {**CHAT_BODY, "seed": 42, "stream_options": {"include_usage": True}}
    stream = read_sse(f"{llama_url}/chat/completions", body)
    (tmp_path / "llama-stream.sse").write_bytes(stream.raw)  # kept by pytest for inspection
    assert_sse_framing(stream)

    text = stream.raw.decode()
    assert text.endswith("data: [DONE]\n\n")
    assert set(stream.names) == {"message"}  # no event: fields
    blocks = text.split("\n\n")[:-1]
    assert all(b.startswith("data: ") and "\n" not in b for b in blocks)
    assert stream.events[-1].data == b"[DONE]"
    payloads = stream.payloads()
    *chunks, usage_chunk = payloads
    keys = ["choices", "created", "id", "model", "system_fingerprint", "object"]
    assert all(list(p) == keys for p in chunks[:-1])
    assert list(chunks[-1]) == keys  # with include_usage the timings move to the usage chunk
    assert list(usage_chunk) == [*keys, "usage", "timings"]
    assert all(p["object"] == "chat.completion.chunk" for p in payloads)
    assert len({p["id"] for p in payloads}) == 1
    assert len({p["created"] for p in payloads}) == 1
    choices = [p["choices"] for p in chunks]
    assert all(len(c) == 1 and c[0]["index"] == 0 for c in choices)
    deltas = [c[0]["delta"] for c in choices]
    finishes = [c[0]["finish_reason"] for c in choices]
    assert deltas[0] == {"role": "assistant", "content": None}
    assert all(set(d) == {"content"} and d["content"] for d in deltas[1:-1])
    assert deltas[-1] == {}
    assert finishes == [None] * (len(chunks) - 1) + ["stop"]
    assert usage_chunk["choices"] == []
    usage = usage_chunk["usage"]
    assert list(usage) == [
        "completion_tokens",
        "prompt_tokens",
        "total_tokens",
        "prompt_tokens_details",
    ]
    assert usage["completion_tokens"] == len(deltas) - 2 + 1  # + the end-of-turn token
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert stream_shape(text) == stream_shape(OBSERVED_STREAM)


def test_chat_completions_stream_without_usage_puts_timings_on_the_finish(
    llama_url: str,
) -> None:
    stream = read_sse(f"{llama_url}/chat/completions", CHAT_BODY)
    *chunks, done = stream.events
    assert done.data == b"[DONE]"
    payloads = [json.loads(e.data) for e in chunks]
    assert all("usage" not in p for p in payloads)
    assert [("timings" in p) for p in payloads] == [False] * (len(payloads) - 1) + [True]
    assert payloads[-1]["choices"][0]["finish_reason"] == "stop"


def test_responses_stream(llama_url: str, client: openai.OpenAI) -> None:
    stream = read_sse(f"{llama_url}/responses", RESPONSES_BODY)
    assert_sse_framing(stream)
    payloads = stream.payloads()
    assert len(payloads) == len(stream.events)  # no [DONE]
    assert [p["type"] for p in payloads] == stream.names
    n = stream.names.count("response.output_text.delta")
    assert stream.names == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * n,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    for p in payloads:
        assert not {"sequence_number", "output_index", "content_index"} & set(p)
    created, in_progress, item_added, part_added, *deltas = payloads[: 4 + n]
    text_done, part_done, item_done, completed = payloads[4 + n :]
    resp_id = created["response"]["id"]
    assert resp_id.startswith("resp_")
    for p in (created, in_progress):
        assert p["response"] == {"id": resp_id, "object": "response", "status": "in_progress"}
    item = item_added["item"]
    assert item["type"] == "message" and item["role"] == "assistant"
    assert item["content"] == [] and item["status"] == "in_progress"
    item_id = item["id"]
    assert part_added["part"] == {"type": "output_text", "text": ""}
    assert {p["item_id"] for p in (part_added, *deltas, text_done, part_done)} == {item_id}
    text = "".join(d["delta"] for d in deltas)
    assert text_done["text"] == text
    assert part_done["part"]["text"] == text
    assert item_done["item"]["id"] == item_id and item_done["item"]["status"] == "completed"

    final = completed["response"]
    assert set(completed) == {"type", "response", "timings"}
    assert final["id"] == resp_id and final["status"] == "completed"
    assert final["model"] == LLAMA_MODEL
    assert final["output"] == [item_done["item"]]
    usage = final["usage"]
    assert set(usage) == {"input_tokens", "output_tokens", "total_tokens", "input_tokens_details"}
    assert usage["output_tokens"] == n + 1  # + the end-of-turn token
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]

    # Same prompt, same text and prompt size as chat completions.
    chat, prompt_tokens, _ = chat_text(client)
    assert text == chat
    assert usage["input_tokens"] == prompt_tokens


def test_responses_max_output_tokens_still_completes(llama_url: str) -> None:
    stream = read_sse(f"{llama_url}/responses", {**RESPONSES_BODY, "max_output_tokens": 3})
    assert stream.names.count("response.output_text.delta") == 3
    final = stream.payloads()[-1]["response"]
    assert final["status"] == "completed"
    assert "incomplete_details" not in final
    assert final["usage"]["output_tokens"] == 3


def test_messages_stream(llama_url: str, client: openai.OpenAI) -> None:
    stream = read_sse(f"{llama_url}/messages", MESSAGES_BODY)
    assert_sse_framing(stream)
    payloads = stream.payloads()
    assert len(payloads) == len(stream.events)  # no [DONE]
    assert [p["type"] for p in payloads] == stream.names
    n = stream.names.count("content_block_delta")
    assert stream.names == [
        "message_start",
        "content_block_start",
        *["content_block_delta"] * n,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start, block_start, *deltas, block_stop, message_delta, stop = payloads
    message = start["message"]
    assert message["id"].startswith("chatcmpl-")
    assert {k: v for k, v in message.items() if k not in ("id", "usage")} == {
        "type": "message",
        "role": "assistant",
        "content": [],
        "model": LLAMA_MODEL,
        "stop_reason": None,
        "stop_sequence": None,
    }
    start_usage = message["usage"]
    assert set(start_usage) == {"cache_read_input_tokens", "input_tokens", "output_tokens"}
    assert start_usage["output_tokens"] == 0
    assert block_start == {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "text", "text": ""},
    }
    assert all(d["index"] == 0 and d["delta"]["type"] == "text_delta" for d in deltas)
    text = "".join(d["delta"]["text"] for d in deltas)
    assert block_stop == {"type": "content_block_stop", "index": 0}
    assert message_delta == {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {"output_tokens": n + 1},  # + the end-of-turn token
    }
    assert stop == {"type": "message_stop"}

    # Same prompt, same text as chat completions; the prompt is split into the part
    # read from the cache and the part computed.
    chat, prompt_tokens, _ = chat_text(client)
    assert text == chat
    assert start_usage["input_tokens"] + start_usage["cache_read_input_tokens"] == prompt_tokens


def test_messages_without_max_tokens_is_accepted(llama_url: str) -> None:
    body = {k: v for k, v in MESSAGES_BODY.items() if k != "max_tokens"}
    stream = read_sse(f"{llama_url}/messages", body)
    assert stream.names[-1] == "message_stop"
    assert stream.payloads()[-2]["delta"]["stop_reason"] == "end_turn"


def test_messages_max_tokens_stops_with_max_tokens(llama_url: str) -> None:
    stream = read_sse(f"{llama_url}/messages", {**MESSAGES_BODY, "max_tokens": 3})
    assert stream.names.count("content_block_delta") == 3
    message_delta = stream.payloads()[-2]
    assert message_delta["delta"]["stop_reason"] == "max_tokens"
    assert message_delta["usage"] == {"output_tokens": 3}


@pytest.mark.parametrize("api", ["chat", "responses", "messages"])
def test_any_model_name_is_answered_as_the_alias(llama_url: str, api: str) -> None:
    path, body = FORMATS[api]
    payloads = read_sse(f"{llama_url}/{path}", {**body, "model": "not-loaded"}).payloads()
    if api == "chat":
        models = {p["model"] for p in payloads}
    elif api == "responses":
        models = {payloads[-1]["response"]["model"]}
    else:
        models = {payloads[0]["message"]["model"]}
    assert models == {LLAMA_MODEL}


@pytest.mark.parametrize("api", ["chat", "responses", "messages"])
def test_tools_are_left_out_of_the_prompt(llama_url: str, api: str) -> None:
    """The tiny model's template has no tools: a request with tools (even a required
    one) streams exactly what it streams without them, and no tool call."""
    path, body = FORMATS[api]
    plain = read_sse(f"{llama_url}/{path}", body)
    with_tools = read_sse(f"{llama_url}/{path}", {**body, **TOOLS[api]})
    assert with_tools.names == plain.names
    assert streamed_text(api, with_tools) == streamed_text(api, plain) != ""
    for marker in (b"tool_call", b"function_call", b"tool_use", b"get_weather"):
        assert marker not in with_tools.raw


def read_http_response(sock: socket.socket) -> tuple[str, bytes]:
    """One HTTP/1.1 response off a raw socket: (lower-cased head, body as sent)."""
    received = b""
    deadline = time.monotonic() + STREAM_DEADLINE_S
    while True:
        if b"\r\n\r\n" in received:
            head, body = received.split(b"\r\n\r\n", 1)
            head_text = head.decode().lower()
            if "transfer-encoding: chunked" in head_text:
                if body.endswith(b"\r\n0\r\n\r\n"):
                    return head_text, body
            else:
                length = int(head_text.split("content-length: ", 1)[1].split("\r\n", 1)[0])
                if len(body) >= length:
                    return head_text, body
        piece = sock.recv(65536)
        assert piece, "closed before the response ended"
        received += piece
        assert time.monotonic() < deadline, f"no whole response after {STREAM_DEADLINE_S}s"


@pytest.mark.parametrize(
    ("api", "stream"),
    [("chat", True), ("responses", True), ("messages", True), ("chat", False)],
)
def test_streams_close_the_connection(llama_url: str, api: str, stream: bool) -> None:
    """After a streamed response the server closes the connection, though it announced
    keep-alive; after a non-streamed one it keeps it open."""
    url = httpx.URL(llama_url)
    assert url.port is not None
    path, body = FORMATS[api]
    payload = json.dumps({**body, "stream": stream}).encode()
    request = (
        f"POST /v1/{path} HTTP/1.1\r\nHost: {url.host}:{url.port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    ).encode() + payload
    with socket.create_connection((url.host, url.port), timeout=TIMEOUT_S) as sock:
        sock.sendall(request)
        head, _ = read_http_response(sock)
        sock.settimeout(1.0)
        try:
            closed = sock.recv(65536) == b""
        except TimeoutError:
            closed = False
    assert "keep-alive: timeout=5, max=100" in head
    assert "connection: close" not in head
    assert closed is stream


# -- embeddings -------------------------------------------------------------------------


def test_embeddings(llama_url: str) -> None:
    inputs = ["hello world", "the stream", "hello world"]
    with httpx.Client(trust_env=False, timeout=TIMEOUT_S, limits=NO_KEEPALIVE) as http:
        resp = http.post(f"{llama_url}/embeddings", json={"model": LLAMA_MODEL, "input": inputs})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert set(body) == {"model", "object", "usage", "data"}
    assert body["model"] == LLAMA_MODEL and body["object"] == "list"
    assert set(body["usage"]) == {"prompt_tokens", "total_tokens"}
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > 0
    data = body["data"]
    assert [d["index"] for d in data] == [0, 1, 2]
    assert all(d["object"] == "embedding" for d in data)
    vectors = [d["embedding"] for d in data]
    assert all(len(v) == 64 for v in vectors)  # make_gguf.N_EMBD
    assert all(math.isclose(math.hypot(*v), 1.0, rel_tol=1e-4) for v in vectors)
    assert vectors[0] == vectors[2] and vectors[0] != vectors[1]


def test_embeddings_need_the_flag_and_leave_chat_unchanged(
    tmp_path: Path, client: openai.OpenAI
) -> None:
    with_embeddings = chat_text(client)
    with (
        start_llama_server(tmp_path, embeddings=False) as url,
        httpx.Client(trust_env=False, timeout=TIMEOUT_S, limits=NO_KEEPALIVE) as http,
    ):
        refused = http.post(f"{url}/embeddings", json={"model": LLAMA_MODEL, "input": "hi"})
        chat = http.post(f"{url}/chat/completions", json=CHAT_BODY).json()
    assert refused.status_code == 501
    assert refused.json()["error"]["type"] == "not_supported_error"
    text = chat["choices"][0]["message"]["content"]
    assert text == with_embeddings[0]
