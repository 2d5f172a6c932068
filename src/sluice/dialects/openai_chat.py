"""OpenAI chat completions: ``POST /v1/chat/completions``, SSE and JSON.

Chunks follow ``CreateChatCompletionStreamResponse`` in OpenAI's published API
description. The SSE stream carries only ``data:`` lines: no ``id:`` or ``retry:``
fields (the openai SDK's parser fails on a later comment once it has seen an ``id:``),
and it ends right after ``data: [DONE]``.

One id and one model name per response, streamed or not: the model is the one the
upstream said answered (``Start.model``); the id is the upstream's when it speaks this
format, else the gateway's own.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import orjson

from sluice.dialects import Headers, error_headers
from sluice.dialects.bounds import DEFAULT_BOUNDS, Bounds
from sluice.dialects.openai_request import decode_chat
from sluice.errors import SluiceError, UpstreamError
from sluice.events import (
    Annotations,
    Batch,
    ChatRequest,
    Finish,
    ReasoningDelta,
    RefusalDelta,
    Start,
    StreamError,
    StreamEvent,
    TextDelta,
    ToolCallDelta,
    Usage,
    Verbatim,
    WireFormat,
)
from sluice.sse import DONE

FORMAT = "openai_chat"


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


def finish_reason(event: Finish) -> str:
    if event.reason == "other":
        return event.native or "stop"
    return event.reason


def usage_body(usage: Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.input_tokens + usage.output_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
    }


class _Identity:
    """The response's id, model and creation time, settled by the stream's ``Start``."""

    __slots__ = ("created", "extra", "id", "model")

    def __init__(self, request: ChatRequest, response_id: str, created: int | None = None) -> None:
        self.id = response_id
        self.model = request.model
        self.created = int(time.time()) if created is None else created
        self.extra: dict[str, Any] = {}

    def start(self, event: Start) -> None:
        if event.format == FORMAT and event.id:
            self.id = event.id
        if event.model:
            self.model = event.model
        if event.created and event.format == FORMAT:
            self.created = event.created
        if event.extra and event.format == FORMAT:
            self.extra = event.extra


class _ToolIndex:
    """Part index → OpenAI's tool-call index (0, 1, ... within a choice)."""

    __slots__ = ("_seen",)

    def __init__(self) -> None:
        self._seen: dict[tuple[int, int], int] = {}

    def get(self, choice: int, part: int) -> int:
        key = (choice, part)
        index = self._seen.get(key)
        if index is None:
            index = self._seen[key] = sum(1 for c, _ in self._seen if c == choice)
        return index


class StreamEncoder:
    """SSE chunks. Verbatim OpenAI chunks are written as they came; every other event
    is encoded under the same id and model."""

    streaming: bool = True
    content_type: bytes = b"text/event-stream; charset=utf-8"
    keepalive: bytes | None = b": keep-alive\n\n"
    verbatim: WireFormat | None = "openai_chat"

    def __init__(self, request: ChatRequest, response_id: str, created: int | None = None) -> None:
        self._include_usage = request.include_usage
        #: ``created`` given: the same stream again (a resumed one), not a new one.
        self._identity = _Identity(request, response_id, created)
        self._head = b""
        self._roles: set[int] = set()
        self._tools = _ToolIndex()
        #: An in-band error went out: nothing follows it, not even ``[DONE]``.
        self._failed = False
        self._head_for()

    def _head_for(self) -> None:
        identity = self._identity
        head: dict[str, Any] = {
            "id": identity.id,
            "object": "chat.completion.chunk",
            "created": identity.created,
            "model": identity.model,
        }
        head.update(identity.extra)
        # Everything up to the choices, reused by every chunk this encoder writes.
        self._head = b"data: " + orjson.dumps(head)[:-1] + b',"choices":'

    def _chunk(
        self,
        choice: int,
        delta: dict[str, Any],
        finish: str | None = None,
        logprobs: Any = None,
    ) -> bytes:
        opening = b""
        if choice not in self._roles:
            if choice:
                # The SDKs' accumulators add a choice they have not seen at the end of
                # their list: lower choices not heard from yet open first, in order.
                opening = b"".join(
                    self._chunk(c, {}) for c in range(choice) if c not in self._roles
                )
            self._roles.add(choice)
            delta = {"role": "assistant", **delta}
        body = {"index": choice, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        return opening + self._head + orjson.dumps([body]) + b"}\n\n"

    def encode(self, batch: Batch) -> bytes:
        if self._failed:
            return b""
        parts: list[bytes] = []
        self._encode(batch, parts)
        if len(parts) == 1:
            return parts[0]
        return b"".join(parts)

    def _encode(self, batch: list[StreamEvent], parts: list[bytes]) -> None:
        for event in batch:
            if self._failed:
                return
            kind = type(event)
            if kind is Verbatim:
                v: Verbatim = event  # type: ignore[assignment]
                if v.format != FORMAT:
                    self._encode(v.expanded(), parts)
                    continue
                events = v.events
                if events and not self._include_usage and all(type(e) is Usage for e in events):
                    continue  # the usage chunk the gateway asked for, not the client
                if v.count:
                    # The upstream's chunks carry the role themselves, and number their
                    # tool calls (from 0, in order, as tool calls encoded here are).
                    for inner in events or ():
                        self._roles.add(getattr(inner, "choice", 0))
                        if type(inner) is ToolCallDelta:
                            self._tools.get(inner.choice, inner.index)
                    self._roles.add(0)
                parts.append(v.data)
            elif kind is TextDelta:
                e: TextDelta = event  # type: ignore[assignment]
                logprobs = {"content": e.logprobs, "refusal": None} if e.logprobs else None
                parts.append(self._chunk(e.choice, {"content": e.text}, None, logprobs))
            elif kind is Finish:
                f: Finish = event  # type: ignore[assignment]
                parts.append(self._chunk(f.choice, {}, finish_reason(f)))
            elif kind is Usage:
                if self._include_usage:
                    body = orjson.dumps(usage_body(event))  # type: ignore[arg-type]
                    parts.append(self._head + b'[],"usage":' + body + b"}\n\n")
            elif kind is ToolCallDelta:
                t: ToolCallDelta = event  # type: ignore[assignment]
                call: dict[str, Any] = {"index": self._tools.get(t.choice, t.index)}
                if t.id is not None:
                    call["id"] = t.id
                    call["type"] = "function"
                function: dict[str, Any] = {"arguments": t.arguments}
                if t.name is not None:
                    function["name"] = t.name
                call["function"] = function
                parts.append(self._chunk(t.choice, {"tool_calls": [call]}))
            elif kind is ReasoningDelta:
                r: ReasoningDelta = event  # type: ignore[assignment]
                if r.text:
                    parts.append(self._chunk(r.choice, {"reasoning_content": r.text}))
            elif kind is RefusalDelta:
                x: RefusalDelta = event  # type: ignore[assignment]
                parts.append(self._chunk(x.choice, {"refusal": x.text}))
            elif kind is Annotations:
                a: Annotations = event  # type: ignore[assignment]
                parts.append(self._chunk(a.choice, {"annotations": a.items}))
            elif kind is Start:
                self._identity.start(event)  # type: ignore[arg-type]
                self._head_for()
            elif kind is StreamError:
                s: StreamError = event  # type: ignore[assignment]
                parts.append(self._error(s.message, s.type, s.code))
                self._failed = True
            # PartEnd and RedactedReasoning have no chat completions form.

    def end(self) -> bytes:
        return b"" if self._failed else DONE

    @staticmethod
    def _error(message: str, type_: str, code: str | None) -> bytes:
        payload = {"error": {"message": message, "type": type_, "param": None, "code": code}}
        return b"data: " + orjson.dumps(payload) + b"\n\n"

    def error(self, exc: SluiceError) -> bytes:
        if self._failed:
            return b""
        self._failed = True
        return self._error(exc.message, exc.type, exc.code)


class _Choice:
    __slots__ = ("annotations", "finish", "logprobs", "reasoning", "refusal", "text", "tools")

    def __init__(self) -> None:
        self.text: list[str] = []
        self.refusal: list[str] = []
        self.reasoning: list[str] = []
        self.tools: dict[int, dict[str, Any]] = {}
        self.logprobs: list[Any] | None = None
        self.annotations: list[Any] = []
        self.finish = "stop"

    def message(self) -> dict[str, Any]:
        content: str | None = "".join(self.text)
        if not content and (self.tools or self.refusal):
            content = None  # as OpenAI: a tool-call-only or refused answer has no content
        message: dict[str, Any] = {
            "role": "assistant",
            "content": content,
            "refusal": "".join(self.refusal) if self.refusal else None,
        }
        if self.annotations:
            message["annotations"] = self.annotations
        if self.reasoning:
            message["reasoning_content"] = "".join(self.reasoning)
        if self.tools:
            message["tool_calls"] = [self.tools[i] for i in sorted(self.tools)]
        return message


class CompletionEncoder:
    """A whole ``chat.completion`` object, assembled from the stream and written once
    the generation ended: every choice, and every field the stream carried."""

    streaming: bool = False
    content_type: bytes = b"application/json"
    keepalive: bytes | None = None
    verbatim: WireFormat | None = None

    def __init__(self, request: ChatRequest, response_id: str) -> None:
        self._identity = _Identity(request, response_id)
        self._choices: dict[int, _Choice] = {}
        self._usage: Usage | None = None

    def _choice(self, index: int) -> _Choice:
        choice = self._choices.get(index)
        if choice is None:
            choice = self._choices[index] = _Choice()
        return choice

    def encode(self, batch: Batch) -> bytes:
        for event in batch:
            kind = type(event)
            if kind is Verbatim:
                self.encode(event.expanded())  # type: ignore[union-attr]
            elif kind is TextDelta:
                e: TextDelta = event  # type: ignore[assignment]
                choice = self._choice(e.choice)
                choice.text.append(e.text)
                if e.logprobs:
                    if choice.logprobs is None:
                        choice.logprobs = []
                    choice.logprobs.extend(e.logprobs)
            elif kind is Finish:
                f: Finish = event  # type: ignore[assignment]
                self._choice(f.choice).finish = finish_reason(f)
            elif kind is Usage:
                self._usage = event  # type: ignore[assignment]
            elif kind is ReasoningDelta:
                self._choice(event.choice).reasoning.append(event.text)  # type: ignore[union-attr]
            elif kind is RefusalDelta:
                self._choice(event.choice).refusal.append(event.text)  # type: ignore[union-attr]
            elif kind is Annotations:
                self._choice(event.choice).annotations.extend(event.items)  # type: ignore[union-attr]
            elif kind is ToolCallDelta:
                self._tool(event)  # type: ignore[arg-type]
            elif kind is Start:
                self._identity.start(event)  # type: ignore[arg-type]
            elif kind is StreamError:
                raise UpstreamError(event.message)  # type: ignore[union-attr]
        return b""

    def _tool(self, event: ToolCallDelta) -> None:
        call = self._choice(event.choice).tools.setdefault(
            event.index, {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}
        )
        if event.id is not None:
            call["id"] = event.id
        if event.name:
            call["function"]["name"] += event.name
        call["function"]["arguments"] += event.arguments

    def end(self) -> bytes:
        if not self._choices:
            self._choice(0)
        identity = self._identity
        usage = self._usage or Usage(0, 0)
        body: dict[str, Any] = {
            "id": identity.id,
            "object": "chat.completion",
            "created": identity.created,
            "model": identity.model,
            "choices": [
                {
                    "index": index,
                    "message": choice.message(),
                    "logprobs": (
                        {"content": choice.logprobs, "refusal": None}
                        if choice.logprobs is not None
                        else None
                    ),
                    "finish_reason": choice.finish,
                }
                for index, choice in sorted(self._choices.items())
            ],
            "usage": usage_body(usage),
        }
        body.update(identity.extra)
        return orjson.dumps(body)

    def error(self, exc: SluiceError) -> bytes:
        return error_body(exc)


class OpenAIChatDialect:
    name = "openai_chat"
    id_prefix = "chatcmpl-"

    def __init__(self, bounds: Bounds = DEFAULT_BOUNDS) -> None:
        self.bounds = bounds

    def decode(
        self, body: bytes, query: Mapping[str, str], headers: Mapping[str, str], default_model: str
    ) -> ChatRequest:
        return decode_chat(body, self.bounds)

    def error_response(self, exc: SluiceError) -> tuple[int, Headers, bytes]:
        return exc.status, error_headers(b"application/json", exc), error_body(exc)

    def encoder(self, request: ChatRequest, response_id: str) -> StreamEncoder | CompletionEncoder:
        if request.stream:
            return StreamEncoder(request, response_id)
        return CompletionEncoder(request, response_id)
