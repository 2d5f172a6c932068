"""llama.cpp's ``llama-server``, spoken to directly (no gateway).

These tests pin down what a real third-party upstream sends, so the gateway tests can
compare what the gateway relays with what the upstream streams directly.

Observed with the ``llama-server`` that ``scripts/build-llama-server`` builds from the
llama.cpp vendored in the llama-cpp-python 0.3.36 sdist (llama.cpp commit ``0c1e570``,
``llama-server --version``: "0.5.0-dev (build 1, commit 0c1e570)"), on the tiny model of
``make_gguf.py``, one slot, ``temperature=0``.

``POST /v1/chat/completions`` with ``"stream": true`` (``OBSERVED_STREAM``)
    Headers ``content-type: text/event-stream`` (no charset), ``x-accel-buffering: no``,
    no ``cache-control``, chunked transfer; ``\\n`` line ends, one ``data:`` line per
    event, no ``event:`` or ``id:`` fields, no comment pings.  Compact JSON, keys
    ``choices, created, id, model, system_fingerprint, object`` (the fingerprint is
    ``b<build>-<commit>``); one ``id`` and ``created`` for the stream.  First chunk
    ``delta: {"role": "assistant", "content": null}``; then one ``delta: {"content":
    ...}`` chunk per token (a SentencePiece model's first piece keeps its leading space);
    then a finish chunk, ``delta: {}`` and ``finish_reason`` ``"stop"`` or ``"length"``;
    then ``data: [DONE]``.  Without ``stream_options`` the finish chunk also carries
    llama.cpp's ``timings`` object and there is no usage.  With ``stream_options:
    {"include_usage": true}`` a usage chunk follows the finish chunk: ``choices: []``,
    ``usage: {completion_tokens, prompt_tokens, total_tokens, prompt_tokens_details:
    {cached_tokens}}`` and ``timings``.  Usage counts the end-of-turn token, which is
    never streamed.  Non-streaming responses always carry ``usage`` (and ``timings``).
    After a stream the server closes the connection although it announced keep-alive
    (see ``NO_KEEPALIVE``).
"""

from __future__ import annotations

import json
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

CHAT_BODY: dict[str, Any] = {
    "model": LLAMA_MODEL,
    "messages": MESSAGES,
    "temperature": 0,
    "max_tokens": MAX_TOKENS,
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
