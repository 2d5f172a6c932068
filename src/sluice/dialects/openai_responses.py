"""OpenAI Responses: ``POST /v1/responses``, SSE and JSON.

The request is decoded in ``responses_request`` (its items in ``responses_items``); the
events are made by ``responses_stream.ResponseBuilder``, which the stream encoder writes
as it goes and the JSON encoder once, as the whole Response object.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import orjson

from sluice.dialects import Headers, error_headers
from sluice.dialects.bounds import DEFAULT_BOUNDS, Bounds
from sluice.dialects.responses_request import ResponsesRequest, decode_responses
from sluice.dialects.responses_stream import ID_PREFIX, ResponseBuilder
from sluice.errors import SluiceError
from sluice.events import Batch, ChatRequest, WireFormat

__all__ = ["ID_PREFIX", "OpenAIResponsesDialect", "ResponseEncoder", "StreamEncoder"]


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


def echo_of(request: ChatRequest) -> dict[str, Any]:
    """The Response object's request fields, from a canonical request alone."""
    fmt = request.response_format
    text: dict[str, Any] = {"type": "text"}
    if fmt is not None:
        text = {"type": fmt.type}
        if fmt.type == "json_schema":
            text.update(name=fmt.name, schema=fmt.schema, strict=fmt.strict)
    choice = request.tool_choice
    return {
        "instructions": "\n\n".join(p.text for p in request.system) or None,
        "max_output_tokens": request.max_tokens,
        "metadata": request.extra.get("metadata") or {},
        "parallel_tool_calls": request.parallel_tool_calls is not False,
        "previous_response_id": None,
        "reasoning": {
            "effort": request.reasoning.effort if request.reasoning else None,
            "summary": None,
        },
        "store": False,
        "temperature": request.temperature,
        "text": {"format": text},
        "tool_choice": (
            "auto"
            if choice is None
            else {"type": "function", "name": choice.name}
            if choice.mode == "tool"
            else choice.mode
        ),
        "tools": [
            {
                "type": "function",
                "name": t.name,
                "description": t.description,
                "parameters": t.parameters,
                "strict": t.strict,
            }
            for t in request.tools
        ],
        "top_p": request.top_p,
        "truncation": "disabled",
    } | ({"user": request.user} if request.user is not None else {})


class StreamEncoder:
    """Server-sent events, from the first batch on."""

    streaming: bool = True
    content_type: bytes = b"text/event-stream; charset=utf-8"
    keepalive: bytes | None = b": keep-alive\n\n"
    # The gateway names the response (the stored one) and numbers its events itself,
    # so even bytes of this format are read, never passed along as they came.
    verbatim: WireFormat | None = None

    def __init__(self, builder: ResponseBuilder) -> None:
        self.builder = builder

    def encode(self, batch: Batch) -> bytes:
        self.builder.feed(batch)
        return self.builder.take()

    def end(self) -> bytes:
        self.builder.settle()
        return self.builder.take()

    def error(self, exc: SluiceError) -> bytes:
        self.builder.fail(exc)
        return self.builder.take()


class ResponseEncoder:
    """The whole Response object, written once the generation ended."""

    streaming: bool = False
    content_type: bytes = b"application/json"
    keepalive: bytes | None = None
    verbatim: WireFormat | None = None

    def __init__(self, builder: ResponseBuilder) -> None:
        self.builder = builder

    def encode(self, batch: Batch) -> bytes:
        self.builder.feed(batch)
        return b""

    def end(self) -> bytes:
        return orjson.dumps(self.builder.settle())

    def error(self, exc: SluiceError) -> bytes:
        return error_body(exc)


ResponsesEncoder = StreamEncoder | ResponseEncoder


class OpenAIResponsesDialect:
    name = "openai_responses"
    id_prefix = ID_PREFIX

    def __init__(self, bounds: Bounds = DEFAULT_BOUNDS) -> None:
        self.bounds = bounds

    def decode(
        self, body: bytes, query: Mapping[str, str], headers: Mapping[str, str], default_model: str
    ) -> ChatRequest:
        return decode_responses(body, self.bounds).request

    def error_response(self, exc: SluiceError) -> tuple[int, Headers, bytes]:
        return exc.status, error_headers(b"application/json", exc), error_body(exc)

    def encoder(self, request: ChatRequest, response_id: str) -> ResponsesEncoder:
        created = int(time.time())
        builder = ResponseBuilder(
            response_id, created, request.model, echo_of(request), False, request.stream
        )
        return StreamEncoder(builder) if request.stream else ResponseEncoder(builder)

    def encoder_for(
        self, decoded: ResponsesRequest, response_id: str, created_at: int
    ) -> ResponsesEncoder:
        """The encoder for a decoded request: the Response object repeats the request
        as it was given."""
        request = decoded.request
        builder = ResponseBuilder(
            response_id,
            created_at,
            request.model,
            decoded.echo,
            decoded.summaries,
            request.stream,
        )
        return StreamEncoder(builder) if request.stream else ResponseEncoder(builder)
