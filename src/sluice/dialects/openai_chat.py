"""OpenAI chat completions: ``POST /v1/chat/completions``, SSE and JSON.

Chunks follow ``CreateChatCompletionStreamResponse`` in OpenAI's published API
description. The SSE stream carries only ``data:`` lines: no ``id:`` or ``retry:``
fields (the openai SDK's parser fails on a later comment once it has seen an ``id:``),
and it ends right after ``data: [DONE]``.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from sluice import schemas
from sluice.dialects import Headers
from sluice.errors import RequestError, SluiceError
from sluice.events import (
    ChatRequest,
    Chunks,
    Finish,
    ReasoningDelta,
    StreamError,
    TextDelta,
    ToolCallDelta,
    Usage,
)
from sluice.providers import Batch
from sluice.providers.openai_wire import expand
from sluice.sse import DONE

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
#: Fields the gateway reads itself; everything else is passed to the upstream as given.
_OWN_FIELDS = frozenset({"model", "messages", "stream", "stream_options"})
_NUMBER_FIELDS: dict[str, tuple[float, float]] = {
    "temperature": (0.0, 2.0),
    "top_p": (0.0, 1.0),
    "presence_penalty": (-2.0, 2.0),
    "frequency_penalty": (-2.0, 2.0),
}
_POSITIVE_INT_FIELDS = ("max_tokens", "max_completion_tokens", "n")


def _fail(message: str, param: str | None = None) -> RequestError:
    return RequestError(message, param=param)


def decode(body: bytes) -> ChatRequest:
    if not body.strip():
        raise _fail("the request body is empty; expected a JSON object")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise _fail(f"the request body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise _fail("the request body must be a JSON object")
    schemas.validate("openai_chat_request", data)
    model = data.get("model")
    if not isinstance(model, str) or not model.strip():
        raise _fail("'model' is required and must be a non-empty string", "model")
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _fail("'messages' must be a non-empty array", "messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _fail(f"messages[{i}] must be an object", f"messages[{i}]")
        role = message.get("role")
        if role not in ROLES:
            raise _fail(
                f"messages[{i}].role must be one of {', '.join(sorted(ROLES))}; got {role!r}",
                f"messages[{i}].role",
            )
        content = message.get("content")
        if content is not None and not isinstance(content, str | list):
            raise _fail(
                f"messages[{i}].content must be a string or an array of parts",
                f"messages[{i}].content",
            )
    stream = data.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise _fail("'stream' must be a boolean", "stream")
    include_usage = False
    stream_options = data.get("stream_options")
    if stream_options is not None:
        if not isinstance(stream_options, dict):
            raise _fail("'stream_options' must be an object", "stream_options")
        include_usage = stream_options.get("include_usage", False)
        if not isinstance(include_usage, bool):
            raise _fail(
                "'stream_options.include_usage' must be a boolean",
                "stream_options.include_usage",
            )
    for name, (low, high) in _NUMBER_FIELDS.items():
        value = data.get(name)
        if value is not None and (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not low <= value <= high
        ):
            raise _fail(f"'{name}' must be a number between {low:g} and {high:g}", name)
    for name in _POSITIVE_INT_FIELDS:
        value = data.get(name)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            raise _fail(f"'{name}' must be a positive integer", name)
    user = data.get("user")
    if user is not None and not isinstance(user, str):
        raise _fail("'user' must be a string", "user")
    options = {k: v for k, v in data.items() if k not in _OWN_FIELDS}
    return ChatRequest(
        model=model,
        messages=messages,
        stream=stream,
        options=options,
        include_usage=stream and include_usage,
        user=user,
    )


def error_body(exc: SluiceError) -> bytes:
    return orjson.dumps(
        {
            "error": {
                "message": exc.message,
                "type": exc.type,
                "param": exc.param,
                "code": exc.code,
            }
        }
    )


class StreamEncoder:
    """SSE chunks. With ``passthrough`` an upstream chunk that maps to one event is
    forwarded as it came, without decoding and encoding it again, and so are ``Chunks``;
    without it, ``Chunks`` are expanded into events and encoded like any others."""

    streaming: bool = True
    content_type: bytes = b"text/event-stream; charset=utf-8"
    keepalive: bytes | None = b": keep-alive\n\n"
    passthrough: bool
    takes_chunks: bool = True

    def __init__(self, request: ChatRequest, response_id: str) -> None:
        self.passthrough = False
        self._include_usage = request.include_usage
        head = orjson.dumps(
            {
                "id": response_id,
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": request.model,
            }
        )
        # Everything up to the choices, reused by every chunk this encoder writes.
        self._head = b"data: " + head[:-1] + b',"choices":'
        self._role_sent = False

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        if not self._role_sent:
            self._role_sent = True
            delta = {"role": "assistant", **delta}
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return self._head + orjson.dumps([choice]) + b"}\n\n"

    def encode(self, batch: Batch) -> bytes:
        parts: list[bytes] = []
        passthrough = self.passthrough
        if not passthrough:
            batch = expand(batch)
        for event in batch:
            kind = type(event)
            if kind is Usage:
                if self._include_usage:
                    if passthrough and event.raw is not None:
                        parts.append(b"data: " + event.raw + b"\n\n")
                    else:
                        parts.append(self._usage(event))  # type: ignore[arg-type]
                continue
            if passthrough and event.raw is not None:
                self._role_sent = True
                parts.append(b"data: " + event.raw + b"\n\n")
            elif kind is TextDelta:
                parts.append(self._chunk({"content": event.text}))  # type: ignore[union-attr]
            elif kind is Chunks:  # only with passthrough: expanded above otherwise
                self._role_sent = True
                parts.append(event.data)  # type: ignore[union-attr]
            elif kind is Finish:
                parts.append(self._chunk({}, event.reason))  # type: ignore[union-attr]
            elif kind is ReasoningDelta:
                parts.append(self._chunk({"reasoning_content": event.text}))  # type: ignore[union-attr]
            elif kind is ToolCallDelta:
                parts.append(self._chunk({"tool_calls": [_tool_call(event)]}))  # type: ignore[arg-type]
            elif kind is StreamError:
                parts.append(self._error(event.message, event.type, event.code))  # type: ignore[union-attr]
        if len(parts) == 1:
            return parts[0]
        return b"".join(parts)

    def _usage(self, usage: Usage) -> bytes:
        body = {
            "prompt_tokens": usage.input_tokens,
            "completion_tokens": usage.output_tokens,
            "total_tokens": usage.input_tokens + usage.output_tokens,
        }
        return self._head + b"[]," + b'"usage":' + orjson.dumps(body) + b"}\n\n"

    def end(self) -> bytes:
        return DONE

    @staticmethod
    def _error(message: str, type_: str, code: str | None) -> bytes:
        payload = {"error": {"message": message, "type": type_, "param": None, "code": code}}
        return b"data: " + orjson.dumps(payload) + b"\n\n"

    def error(self, exc: SluiceError) -> bytes:
        return self._error(exc.message, exc.type, exc.code)


def _tool_call(event: ToolCallDelta) -> dict[str, Any]:
    call: dict[str, Any] = {"index": event.index}
    if event.id is not None:
        call["id"] = event.id
        call["type"] = "function"
    function: dict[str, Any] = {"arguments": event.arguments}
    if event.name is not None:
        function["name"] = event.name
    call["function"] = function
    return call


class CompletionEncoder:
    """A whole ``chat.completion`` object, written once the generation ended."""

    streaming: bool = False
    content_type: bytes = b"application/json"
    keepalive: bytes | None = None
    passthrough: bool = False
    takes_chunks: bool = False

    def __init__(self, request: ChatRequest, response_id: str) -> None:
        self._request = request
        self._id = response_id
        self._created = int(time.time())
        self._text: list[str] = []
        self._reasoning: list[str] = []
        self._tools: dict[int, dict[str, Any]] = {}
        self._finish = "stop"
        self._usage: Usage | None = None

    def encode(self, batch: Batch) -> bytes:
        for event in expand(batch):
            kind = type(event)
            if kind is TextDelta:
                self._text.append(event.text)  # type: ignore[union-attr]
            elif kind is Finish:
                self._finish = event.reason  # type: ignore[union-attr]
            elif kind is Usage:
                self._usage = event  # type: ignore[assignment]
            elif kind is ReasoningDelta:
                self._reasoning.append(event.text)  # type: ignore[union-attr]
            elif kind is ToolCallDelta:
                self._tool(event)  # type: ignore[arg-type]
        return b""

    def _tool(self, event: ToolCallDelta) -> None:
        call = self._tools.setdefault(
            event.index, {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}
        )
        if event.id is not None:
            call["id"] = event.id
        if event.name:
            call["function"]["name"] += event.name
        call["function"]["arguments"] += event.arguments

    def end(self) -> bytes:
        message: dict[str, Any] = {
            "role": "assistant",
            "content": "".join(self._text) if self._text or not self._tools else None,
            "refusal": None,
        }
        if self._reasoning:
            message["reasoning_content"] = "".join(self._reasoning)
        if self._tools:
            message["tool_calls"] = [self._tools[i] for i in sorted(self._tools)]
        usage = self._usage
        body: dict[str, Any] = {
            "id": self._id,
            "object": "chat.completion",
            "created": self._created,
            "model": self._request.model,
            "choices": [
                {"index": 0, "message": message, "logprobs": None, "finish_reason": self._finish}
            ],
            "usage": {
                "prompt_tokens": usage.input_tokens if usage else 0,
                "completion_tokens": usage.output_tokens if usage else 0,
                "total_tokens": (usage.input_tokens + usage.output_tokens) if usage else 0,
            },
        }
        return orjson.dumps(body)

    def error(self, exc: SluiceError) -> bytes:
        return error_body(exc)


class OpenAIChatDialect:
    name = "openai_chat"

    def error_response(self, exc: SluiceError) -> tuple[int, Headers, bytes]:
        headers: Headers = [(b"content-type", b"application/json")]
        headers.extend((k.lower().encode(), v.encode()) for k, v in exc.headers.items())
        return exc.status, headers, error_body(exc)

    def encoder(self, request: ChatRequest, response_id: str) -> StreamEncoder | CompletionEncoder:
        if request.stream:
            return StreamEncoder(request, response_id)
        return CompletionEncoder(request, response_id)
