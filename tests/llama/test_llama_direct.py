"""llama-cpp-python's OpenAI-compatible server, spoken to directly (no gateway).

These tests pin down what a real third-party upstream sends, so the gateway tests can
compare what the gateway relays with what the upstream streams directly.

Observed with llama-cpp-python 0.3.36 (``python -m llama_cpp.server``) on the tiny model of
``make_gguf.py`` at ``temperature=0`` -- ``OBSERVED_STREAM`` below is a verbatim capture of
one ``POST /v1/chat/completions`` body with ``"stream": true``:

* response headers: ``content-type: text/event-stream; charset=utf-8``,
  ``cache-control: no-store``, ``x-accel-buffering: no``, ``transfer-encoding: chunked``;
* every event is one ``data: <json>`` line and a blank line, ``\n`` line ends (no ``\r``),
  no ``event:``/``id:`` fields; the JSON is Python's ``json.dumps`` (a space after ``:``
  and ``,``) with keys ``id, model, created, object, choices``: no ``system_fingerprint``,
  no ``usage`` key; the same ``id`` and ``created`` on every chunk; ``model`` is the alias;
* the first chunk is a role chunk, ``delta: {"role": "assistant"}`` with no content;
* then one chunk per generated token, ``delta: {"content": "<piece>"}`` (a SentencePiece
  model's first piece keeps its leading space: the content starts with ``" str"``);
* then a finish chunk with an empty delta and ``finish_reason`` ``"stop"`` (end of turn)
  or ``"length"`` (``max_tokens`` reached);
* then ``data: [DONE]``;
* ``stream_options: {"include_usage": true}`` is accepted and ignored: no usage chunk,
  ever, so a gateway cannot take streamed usage from this upstream. Non-streaming
  responses do carry ``usage``;
* comment pings (``: ping``) would come only after 15 s of silence: never with this model;
* with its default ``interrupt_requests=True`` the server ends an in-flight stream with
  ``data: [DONE]`` and no finish chunk as soon as another request arrives; the fixture
  turns that off, so concurrent requests queue instead.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.llama.fixture import LLAMA_MODEL, start_llama_server

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

#: Verbatim body of a stream from the request in ``test_raw_sse_transcript``.
OBSERVED_STREAM = """\
data: {"id": "chatcmpl-9ebd0af6-d4a6-49e4-ba85-a622b6ed997c", "model": "tiny", "created": 1795942843, "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"role": "assistant"}, "logprobs": null, "finish_reason": null}]}

data: {"id": "chatcmpl-9ebd0af6-d4a6-49e4-ba85-a622b6ed997c", "model": "tiny", "created": 1795942843, "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": " str"}, "logprobs": null, "finish_reason": null}]}

data: {"id": "chatcmpl-9ebd0af6-d4a6-49e4-ba85-a622b6ed997c", "model": "tiny", "created": 1795942843, "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": "z"}, "logprobs": null, "finish_reason": null}]}

data: {"id": "chatcmpl-9ebd0af6-d4a6-49e4-ba85-a622b6ed997c", "model": "tiny", "created": 1795942843, "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": "}"}, "logprobs": null, "finish_reason": null}]}

data: {"id": "chatcmpl-9ebd0af6-d4a6-49e4-ba85-a622b6ed997c", "model": "tiny", "created": 1795942843, "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": "H"}, "logprobs": null, "finish_reason": null}]}

data: {"id": "chatcmpl-9ebd0af6-d4a6-49e4-ba85-a622b6ed997c", "model": "tiny", "created": 1795942843, "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": "x"}, "logprobs": null, "finish_reason": null}]}

data: {"id": "chatcmpl-9ebd0af6-d4a6-49e4-ba85-a622b6ed997c", "model": "tiny", "created": 1795942843, "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": "p"}, "logprobs": null, "finish_reason": null}]}

data: {"id": "chatcmpl-9ebd0af6-d4a6-49e4-ba85-a622b6ed997c", "model": "tiny", "created": 1795942843, "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": "t"}, "logprobs": null, "finish_reason": null}]}

data: {"id": "chatcmpl-9ebd0af6-d4a6-49e4-ba85-a622b6ed997c", "model": "tiny", "created": 1795942843, "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": " stre"}, "logprobs": null, "finish_reason": null}]}

data: {"id": "chatcmpl-9ebd0af6-d4a6-49e4-ba85-a622b6ed997c", "model": "tiny", "created": 1795942843, "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": "B"}, "logprobs": null, "finish_reason": null}]}

data: {"id": "chatcmpl-9ebd0af6-d4a6-49e4-ba85-a622b6ed997c", "model": "tiny", "created": 1795942843, "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": "0"}, "logprobs": null, "finish_reason": null}]}

data: {"id": "chatcmpl-9ebd0af6-d4a6-49e4-ba85-a622b6ed997c", "model": "tiny", "created": 1795942843, "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": "d"}, "logprobs": null, "finish_reason": null}]}

data: {"id": "chatcmpl-9ebd0af6-d4a6-49e4-ba85-a622b6ed997c", "model": "tiny", "created": 1795942843, "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": "0"}, "logprobs": null, "finish_reason": null}]}

data: {"id": "chatcmpl-9ebd0af6-d4a6-49e4-ba85-a622b6ed997c", "model": "tiny", "created": 1795942843, "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": " hell"}, "logprobs": null, "finish_reason": null}]}

data: {"id": "chatcmpl-9ebd0af6-d4a6-49e4-ba85-a622b6ed997c", "model": "tiny", "created": 1795942843, "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": "1"}, "logprobs": null, "finish_reason": null}]}

data: {"id": "chatcmpl-9ebd0af6-d4a6-49e4-ba85-a622b6ed997c", "model": "tiny", "created": 1795942843, "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": "."}, "logprobs": null, "finish_reason": null}]}

data: {"id": "chatcmpl-9ebd0af6-d4a6-49e4-ba85-a622b6ed997c", "model": "tiny", "created": 1795942843, "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {}, "logprobs": null, "finish_reason": "stop"}]}

data: [DONE]

"""  # noqa: E501


@pytest.fixture(scope="module")
def llama_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with start_llama_server(tmp_path_factory.mktemp("llama")) as url:
        yield url


@pytest.fixture
def client(llama_url: str) -> Iterator[openai.OpenAI]:
    http = openai.DefaultHttpxClient(trust_env=False, timeout=TIMEOUT_S)
    with openai.OpenAI(base_url=llama_url, api_key="unused", max_retries=0, http_client=http) as c:
        yield c


def stream_chat(
    client: openai.OpenAI, messages: list[ChatCompletionMessageParam], **kwargs: Any
) -> tuple[str, str | None, list[Any]]:
    """Stream one chat completion: (content, finish_reason, chunks)."""
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
            for choice in chunk.choices:
                if choice.delta.content:
                    content.append(choice.delta.content)
                if choice.finish_reason is not None:
                    finish = choice.finish_reason
    return "".join(content), finish, chunks


def stream_shape(text: str) -> list[str]:
    """A stream body with ids, timestamps and texts blanked and content runs collapsed.

    Keeps the framing, key order and JSON spacing; drops a usage-only last chunk.
    """
    shape: list[str] = []
    for event in text.split("\n\n"):
        if not event.startswith("data: {"):
            shape.append(event)
            continue
        payload = json.loads(event.removeprefix("data: "))
        if payload.get("choices") == [] and "usage" in payload:
            continue
        payload["id"], payload["created"] = "ID", 0
        for choice in payload["choices"]:
            if "content" in choice["delta"]:
                choice["delta"]["content"] = "TEXT"
        line = "data: " + json.dumps(payload)
        if not shape or shape[-1] != line:
            shape.append(line)
    return shape


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
    # One content chunk per token here: role chunk + 3 tokens + finish chunk.
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
    plain, plain_finish, _ = stream_chat(client, MESSAGES)
    assert (content, finish) == (plain, plain_finish)
    usage_chunks = [c for c in chunks if getattr(c, "usage", None) is not None]
    # llama-cpp-python 0.3.36 ignores stream_options: no usage chunk. Should a later
    # release send one, it must be the OpenAI shape: a last chunk with no choices.
    for c in usage_chunks:
        assert c is chunks[-1] and c.choices == []
        assert c.usage.completion_tokens > 0


def test_direct_streams_are_deterministic(client: openai.OpenAI) -> None:
    """Same request, same stream -- also after a different prompt used the model's cache."""
    first = stream_chat(client, MESSAGES)[:2]
    assert stream_chat(client, MESSAGES)[:2] == first
    other = stream_chat(client, OTHER_MESSAGES)[:2]
    assert other[0] != first[0]  # the output depends on the prompt
    assert stream_chat(client, MESSAGES)[:2] == first
    assert stream_chat(client, OTHER_MESSAGES)[:2] == other


def test_concurrent_streams_queue_and_match(client: openai.OpenAI) -> None:
    """With interrupt_requests off, overlapping streams all complete, each unchanged."""
    expected = {0: stream_chat(client, MESSAGES)[:2], 1: stream_chat(client, OTHER_MESSAGES)[:2]}
    jobs = [0, 1, 0, 1]
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        results = list(
            pool.map(lambda j: stream_chat(client, [MESSAGES, OTHER_MESSAGES][j])[:2], jobs)
        )
    assert results == [expected[j] for j in jobs]


def test_raw_sse_transcript(llama_url: str, tmp_path: Path) -> None:
    """The byte-level shape described in the module docstring."""
    body = {
        "model": LLAMA_MODEL,
        "messages": MESSAGES,
        "stream": True,
        "temperature": 0,
        "seed": 42,
        "max_tokens": MAX_TOKENS,
        "stream_options": {"include_usage": True},
    }
    with (
        httpx.Client(trust_env=False, timeout=TIMEOUT_S) as http,
        http.stream("POST", f"{llama_url}/chat/completions", json=body) as resp,
    ):
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        raw = b"".join(resp.iter_raw())
    (tmp_path / "llama-stream.sse").write_bytes(raw)  # kept by pytest for inspection

    text = raw.decode()
    assert "\r" not in text
    assert text.endswith("data: [DONE]\n\n")
    events = text.split("\n\n")
    assert events[-1] == ""
    events = events[:-1]
    assert all(e.startswith("data: ") and "\n" not in e for e in events)
    payloads = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
    # 0.3.36 sends no usage chunk; a later release might append one (no choices).
    if payloads[-1].get("choices") == [] and "usage" in payloads[-1]:
        payloads.pop()
    assert all("usage" not in p for p in payloads)
    assert all(set(p) == {"id", "model", "created", "object", "choices"} for p in payloads)
    assert all(p["object"] == "chat.completion.chunk" for p in payloads)
    choices = [p["choices"] for p in payloads]
    assert all(len(c) == 1 and c[0]["index"] == 0 and c[0]["logprobs"] is None for c in choices)
    deltas = [c[0]["delta"] for c in choices]
    finishes = [c[0]["finish_reason"] for c in choices]
    assert deltas[0] == {"role": "assistant"}
    assert all(set(d) == {"content"} and d["content"] for d in deltas[1:-1])
    assert deltas[-1] == {}
    assert finishes == [None] * (len(payloads) - 1) + ["stop"]
    assert len({p["id"] for p in payloads}) == 1
    assert len({p["created"] for p in payloads}) == 1
    assert stream_shape(text) == stream_shape(OBSERVED_STREAM)
