"""Every request decoder, given bytes that are not a request or a request with one or
two places changed, answers with a typed error (``sluice.errors``) or a request, never
another exception. What runs on every decoded request (the token estimate, the
recorded transcript, the cache key) takes whatever a decoder let through.

A Hypothesis property per API: random bytes; random JSON; and valid requests of that
API (a few shapes each) mutated by ``tests.mutations.change``. The gateway-level twin,
through a running server, is ``test_chat_fuzz``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sluice.dialects.anthropic_request import decode_messages
from sluice.dialects.openai_embeddings import decode as decode_embeddings
from sluice.dialects.openai_request import decode_chat
from sluice.dialects.responses_request import decode_responses
from sluice.dialects.ui_request import decode_ui_chat
from sluice.errors import SluiceError
from sluice.events import ChatRequest, estimate_input_tokens, transcript
from sluice.policies.cache import cache_key
from tests.mutations import change, junk

IMAGE = "data:image/png;base64,iVBORw0KGgo="
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}}

CHAT = [
    {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
    {
        "model": "m",
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0,
        "seed": 7,
        "messages": [
            {"role": "system", "content": "be brief"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "look"},
                    {"type": "image_url", "image_url": {"url": IMAGE, "detail": "low"}},
                ],
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "f", "arguments": '{"city":"x"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        ],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": SCHEMA}}],
        "tool_choice": {"type": "function", "function": {"name": "f"}},
        "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": SCHEMA}},
        "stop": ["\n\n"],
        "max_completion_tokens": 20,
        "metadata": {"a": "b"},
        "user": "u",
    },
]
EMBEDDINGS = [
    {"model": "e", "input": "hello"},
    {"model": "e", "input": [[1, 2, 3], [4]], "encoding_format": "base64", "dimensions": 8},
    {"model": "e", "input": ["a", "b"], "user": "u"},
]
RESPONSES = [
    {"model": "m", "input": "hi"},
    {
        "model": "m",
        "stream": True,
        "instructions": "be brief",
        "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "hi"}]},
            {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "hello"}],
            },
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "ok"},
            {
                "type": "reasoning",
                "id": "rs_1",
                "summary": [{"type": "summary_text", "text": "thought"}],
            },
            {"role": "user", "content": [{"type": "input_image", "image_url": IMAGE}]},
        ],
        "tools": [
            {"type": "function", "name": "f", "parameters": SCHEMA, "strict": True},
            {"type": "web_search"},
        ],
        "tool_choice": "auto",
        "text": {"format": {"type": "json_schema", "name": "s", "schema": SCHEMA}},
        "reasoning": {"effort": "low", "summary": "auto"},
        "max_output_tokens": 50,
        "metadata": {"a": "b"},
        "store": False,
        "include": ["reasoning.encrypted_content"],
    },
]
MESSAGES = [
    {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]},
    {
        "model": "m",
        "max_tokens": 2000,
        "stream": True,
        "system": [{"type": "text", "text": "be brief", "cache_control": {"type": "ephemeral"}}],
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "look"},
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": "iVBO"},
                    },
                ],
            },
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                    {"type": "tool_use", "id": "t1", "name": "f", "input": {"city": "x"}},
                ],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "sunny"}],
            },
        ],
        "tools": [{"name": "f", "input_schema": SCHEMA}],
        "tool_choice": {"type": "tool", "name": "f"},
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "stop_sequences": ["END"],
        "temperature": 0.5,
        "metadata": {"user_id": "u"},
    },
]
COUNT = [{k: v for k, v in body.items() if k != "max_tokens"} for body in MESSAGES]
UI = [
    {
        "id": "chat1",
        "messages": [{"id": "m1", "role": "user", "parts": [{"type": "text", "text": "hi"}]}],
    },
    {
        "id": "chat1",
        "trigger": "submit-message",
        "model": "m",
        "system": "be brief",
        "temperature": 0.5,
        "maxOutputTokens": 30,
        "messages": [
            {"id": "s", "role": "system", "parts": [{"type": "text", "text": "rules"}]},
            {
                "id": "m1",
                "role": "user",
                "parts": [
                    {"type": "text", "text": "hi"},
                    {"type": "file", "mediaType": "image/png", "url": IMAGE},
                ],
            },
            {
                "id": "m2",
                "role": "assistant",
                "parts": [
                    {"type": "step-start"},
                    {"type": "reasoning", "text": "hmm"},
                    {
                        "type": "tool-weather",
                        "toolCallId": "c1",
                        "state": "output-available",
                        "input": {"city": "x"},
                        "output": {"t": 20},
                    },
                    {"type": "step-start"},
                    {"type": "text", "text": "sunny"},
                ],
            },
        ],
        "tools": {"weather": {"description": "w", "inputSchema": SCHEMA}},
        "toolChoice": "auto",
    },
]


def _chat(body: bytes) -> ChatRequest:
    return decode_chat(body)


def _responses(body: bytes) -> ChatRequest:
    return decode_responses(body).request


def _messages(body: bytes) -> ChatRequest:
    return decode_messages(body, {"anthropic-beta": "x"})


def _count(body: bytes) -> ChatRequest:
    return decode_messages(body, {}, count_only=True)


def _ui(body: bytes) -> ChatRequest:
    return decode_ui_chat(body, "m").request


DECODERS: dict[str, tuple[Callable[[bytes], ChatRequest], list[dict[str, Any]]]] = {
    "chat": (_chat, CHAT),
    "embeddings": (decode_embeddings, EMBEDDINGS),
    "responses": (_responses, RESPONSES),
    "messages": (_messages, MESSAGES),
    "count_tokens": (_count, COUNT),
    "ui_chat": (_ui, UI),
}
NAMES = ("role", "type", "content", "model", "messages", "input", "parts", "text")


def _decode(name: str, body: bytes) -> None:
    decoder, _ = DECODERS[name]
    try:
        request = decoder(body)
    except SluiceError as exc:
        assert 400 <= exc.status < 500, exc
        assert exc.message
        return
    estimate_input_tokens(request)
    orjson.dumps(transcript(request))
    cache_key(request)


@pytest.mark.parametrize("name", sorted(DECODERS))
def test_the_valid_examples_decode(name: str) -> None:
    decoder, examples = DECODERS[name]
    for body in examples:
        decoder(orjson.dumps(body))


@st.composite
def mutated(draw: st.DrawFn, examples: list[dict[str, Any]]) -> bytes:
    body: Any = draw(st.sampled_from(examples))
    for _ in range(draw(st.integers(1, 3))):
        body = change(draw, body, NAMES)
    return json.dumps(body).encode()


FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("name", sorted(DECODERS))
@FUZZ
@given(data=st.data())
def test_a_changed_request_is_a_request_or_a_typed_error(name: str, data: st.DataObject) -> None:
    _decode(name, data.draw(mutated(DECODERS[name][1])))


@pytest.mark.parametrize("name", sorted(DECODERS))
@settings(max_examples=100, deadline=None)
@given(body=st.binary(max_size=200) | junk.map(lambda v: json.dumps(v).encode()))
def test_bytes_that_are_not_a_request_are_a_typed_error(name: str, body: bytes) -> None:
    _decode(name, body)
