"""The OpenAI Responses wire, for upstreams that speak only ``POST /v1/responses``.

Sans-I/O like every wire: ``body`` builds a ``CreateResponse`` from the canonical
request (``store: false``: the gateway keeps what it needs itself), ``ResponsesDecoder``
turns the stream's events into canonical ones, ``error`` maps error answers.

Each output item is one part (a message's content parts each get their own): part
indices follow the order items start. Nothing goes out verbatim: a Responses client
gets its own ids and sequence numbers from the gateway, which stores the response.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import msgspec
import orjson

from sluice.errors import SluiceError, Unsupported, UpstreamProtocolError, UpstreamStatusError
from sluice.events import (
    Annotations,
    Batch,
    ChatRequest,
    Finish,
    FinishReason,
    ImagePart,
    Message,
    OpaquePart,
    PartEnd,
    ReasoningDelta,
    ReasoningPart,
    RedactedReasoningPart,
    RefusalDelta,
    Start,
    TextDelta,
    TextPart,
    ToolCallDelta,
    ToolCallPart,
    ToolResultPart,
    Usage,
    WireFormat,
)
from sluice.providers import NO_OP, Decoder
from sluice.providers.openai_chat import error_fields
from sluice.providers.upstream_errors import status_error
from sluice.sse import SSEDecoder

FORMAT: WireFormat = "openai_responses"
#: Fields of other formats that do not change the answer: dropped on the way here.
#: (``as_sent``: an Anthropic client's fields whose meaning is in canonical form;
#: ``max_completion_tokens`` is read into ``max_tokens`` already.)
_DROPPABLE = frozenset(
    {"metadata", "service_tier", "store", "stream_options", "as_sent", "max_completion_tokens"}
)

# -- request ----------------------------------------------------------------------


def _content(message: Message, where: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    assistant = message.role == "assistant"
    for part in message.parts:
        if isinstance(part, TextPart):
            out.append({"type": "output_text" if assistant else "input_text", "text": part.text})
        elif isinstance(part, ImagePart) and not assistant:
            image: dict[str, Any] = {"type": "input_image", "image_url": part.url}
            if part.detail is not None:
                image["detail"] = part.detail
            out.append(image)
        elif isinstance(part, OpaquePart) and part.format == FORMAT:
            out.append(part.data)
        else:
            name = (
                part.data.get("type", "part")
                if isinstance(part, OpaquePart)
                else type(part).__name__
            )
            raise Unsupported(
                f"{where}: a {name} part cannot be sent to an OpenAI Responses upstream",
                param=where,
            )
    return out


def _items(request: ChatRequest) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    for i, message in enumerate(request.messages):
        where = f"messages[{i}]"
        if message.role == "tool":
            for part in message.parts:
                if type(part) is not ToolResultPart:
                    raise Unsupported(
                        f"{where}: a tool message holds only tool results", param=where
                    )
                text = "".join(p.text for p in part.content if isinstance(p, TextPart))
                items.append(
                    {"type": "function_call_output", "call_id": part.call_id, "output": text}
                )
            continue
        plain = Message(message.role, [])
        for part in message.parts:
            kind = type(part)
            if kind is ToolCallPart:
                if plain.parts:
                    items.append(_message_item(plain, where))
                    plain = Message(message.role, [])
                items.append(
                    {
                        "type": "function_call",
                        "call_id": part.id,  # type: ignore[union-attr]
                        "name": part.name,  # type: ignore[union-attr]
                        "arguments": part.arguments,  # type: ignore[union-attr]
                    }
                )
            elif kind is ReasoningPart or kind is RedactedReasoningPart:
                continue  # another provider's reasoning cannot be replayed here
            else:
                plain.parts.append(part)
        if plain.parts or not message.parts:
            items.append(_message_item(plain, where))
    return items


def _message_item(message: Message, where: str) -> dict[str, Any]:
    return {"type": "message", "role": message.role, "content": _content(message, where)}


def build(request: ChatRequest, model: str) -> dict[str, Any]:
    if request.n != 1:
        raise Unsupported("'n' above 1 cannot be sent to an OpenAI Responses upstream", param="n")
    if request.stop:
        raise Unsupported("'stop' cannot be sent to an OpenAI Responses upstream", param="stop")
    if request.seed is not None:
        raise Unsupported("'seed' cannot be sent to an OpenAI Responses upstream", param="seed")
    body: dict[str, Any] = {"model": model, "input": _items(request)}
    if request.system:
        body["instructions"] = "\n\n".join(p.text for p in request.system)
    if request.tools:
        tools = []
        for tool in request.tools:
            item: dict[str, Any] = {"type": "function", "name": tool.name}
            if tool.description is not None:
                item["description"] = tool.description
            item["parameters"] = tool.parameters or {"type": "object", "properties": {}}
            if tool.strict is not None:
                item["strict"] = tool.strict
            tools.append(item)
        body["tools"] = tools
    choice = request.tool_choice
    if choice is not None:
        body["tool_choice"] = (
            {"type": "function", "name": choice.name} if choice.mode == "tool" else choice.mode
        )
    if request.parallel_tool_calls is not None:
        body["parallel_tool_calls"] = request.parallel_tool_calls
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.top_p is not None:
        body["top_p"] = request.top_p
    if request.max_tokens is not None:
        body["max_output_tokens"] = request.max_tokens
    if request.user is not None:
        body["user"] = request.user
    fmt = request.response_format
    if fmt is not None:
        text_format: dict[str, Any] = {"type": fmt.type}
        if fmt.type == "json_schema":
            text_format.update(name=fmt.name or "response", schema=fmt.schema or {})
            if fmt.strict is not None:
                text_format["strict"] = fmt.strict
        body["text"] = {"format": text_format}
    reasoning = request.reasoning
    if reasoning is not None:
        effort = reasoning.effort
        if effort is None and reasoning.budget_tokens is not None:
            budget = reasoning.budget_tokens
            effort = "low" if budget <= 2048 else "medium" if budget <= 8192 else "high"
        body["reasoning"] = {"effort": effort}
    if request.source == FORMAT:
        # What the canonical form did not hold of ``text`` and ``reasoning``
        # (``verbosity``, a format's ``description``) completes what it did.
        body.update(_merged(body, request.extra))
    else:
        refused = sorted(
            k
            for k, v in request.extra.items()
            if k not in _DROPPABLE and v is not None and v not in NO_OP.get(k, ())
        )
        if refused:
            # The value is shown too: a field such as Anthropic's server tools names
            # the tools only there.
            shown = orjson.dumps(request.extra[refused[0]]).decode()
            shown = shown if len(shown) <= 200 else shown[:199] + "…"
            raise Unsupported(
                f"'{refused[0]}' ({shown}) cannot be sent to an OpenAI Responses upstream",
                param=refused[0],
            )
    body["stream"] = True
    body["store"] = False
    return body


def _merged(into: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``extra`` over ``into``, objects merged key by key."""
    out = {}
    for name, value in extra.items():
        have = into.get(name)
        if isinstance(have, dict) and isinstance(value, dict):
            value = {**have, **_merged(have, value)}
        out[name] = value
    return out


# -- response ---------------------------------------------------------------------


class _Item(msgspec.Struct, gc=False):
    type: str = ""
    id: str | None = None
    call_id: str | None = None
    name: str | None = None
    arguments: str | None = None
    encrypted_content: str | None = None


class _InputDetails(msgspec.Struct, gc=False):
    cached_tokens: int = 0


class _OutputDetails(msgspec.Struct, gc=False):
    reasoning_tokens: int = 0


class _Usage(msgspec.Struct, gc=False):
    input_tokens: int = 0
    output_tokens: int = 0
    input_tokens_details: _InputDetails | None = None
    output_tokens_details: _OutputDetails | None = None


class _Incomplete(msgspec.Struct, gc=False):
    reason: str | None = None


class _Error(msgspec.Struct, gc=False):
    code: str | None = None
    message: str | None = None


class _Response(msgspec.Struct, gc=False):
    id: str = ""
    model: str = ""
    created_at: float = 0
    status: str | None = None
    usage: _Usage | None = None
    incomplete_details: _Incomplete | None = None
    error: _Error | None = None


class _Event(msgspec.Struct, gc=False):
    type: str
    response: _Response | None = None
    output_index: int = 0
    content_index: int = 0
    item: _Item | None = None
    delta: str | None = None
    logprobs: list[Any] | None = None
    annotation: Any = None
    code: str | None = None
    message: str | None = None


_decode_event = msgspec.json.Decoder(_Event).decode

_INCOMPLETE: dict[str, FinishReason] = {
    "max_output_tokens": "length",
    "content_filter": "content_filter",
}


class ResponsesDecoder:
    """Response reads → batches, one Responses stream."""

    __slots__ = ("_argued", "_calls", "_open", "_parts", "_sse", "_started", "done", "error")

    def __init__(self) -> None:
        self._sse = SSEDecoder()
        self._parts: dict[tuple[int, int], int] = {}
        #: Parts of function calls whose arguments came (as deltas, or in the item).
        self._argued: set[int] = set()
        self._open = -1
        self._calls = False
        self._started = False
        self.done = False
        self.error: SluiceError | None = None

    def eof(self) -> Batch:
        if not self.done:
            raise UpstreamProtocolError("the upstream closed the stream before it finished")
        return []

    def _part(self, output: int, content: int, out: Batch) -> int:
        key = (output, content)
        part = self._parts.get(key)
        if part is None:
            if self._open >= 0:
                out.append(PartEnd(self._open))
            part = self._parts[key] = len(self._parts)
            self._open = part
        return part

    def feed(self, data: bytes) -> Batch:
        out: Batch = []
        for payload in self._sse.feed_data(data):
            try:
                event = _decode_event(payload)
            except (msgspec.DecodeError, UnicodeDecodeError) as exc:
                raise UpstreamProtocolError(
                    f"the upstream sent an event that is not a Responses event: {exc}"
                ) from exc
            self._event(event, out)
            if self.done:
                break
        return out

    def _event(self, event: _Event, out: Batch) -> None:
        kind = event.type
        if kind == "response.output_text.delta":
            part = self._part(event.output_index, event.content_index, out)
            out.append(TextDelta(event.delta or "", part, 0, event.logprobs or None))
        elif kind == "response.function_call_arguments.delta":
            part = self._part(event.output_index, 0, out)
            self._argued.add(part)
            out.append(ToolCallDelta(part, None, None, event.delta or ""))
        elif kind in ("response.reasoning_summary_text.delta", "response.reasoning_text.delta"):
            out.append(ReasoningDelta(event.delta or "", self._part(event.output_index, 0, out)))
        elif kind == "response.refusal.delta":
            part = self._part(event.output_index, event.content_index, out)
            out.append(RefusalDelta(event.delta or "", part))
        elif kind == "response.output_text.annotation.added" and event.annotation is not None:
            part = self._part(event.output_index, event.content_index, out)
            out.append(Annotations([event.annotation], part))
        elif kind == "response.output_item.added" and event.item is not None:
            item = event.item
            if item.type == "function_call":
                self._calls = True
                part = self._part(event.output_index, 0, out)
                arguments = item.arguments or ""
                if arguments:
                    self._argued.add(part)
                out.append(ToolCallDelta(part, item.call_id or item.id, item.name, arguments))
        elif kind == "response.output_item.done" and event.item is not None:
            item = event.item
            if item.type == "reasoning" and item.encrypted_content:
                part = self._part(event.output_index, 0, out)
                out.append(ReasoningDelta("", part, 0, item.encrypted_content))
            elif item.type == "function_call" and item.arguments:
                # A server that streams no argument deltas has them only here.
                part = self._part(event.output_index, 0, out)
                if part not in self._argued:
                    self._argued.add(part)
                    out.append(ToolCallDelta(part, None, None, item.arguments))
        elif kind == "response.created" and event.response is not None and not self._started:
            self._started = True
            response = event.response
            out.append(Start(FORMAT, response.id, response.model, int(response.created_at)))
        elif kind in ("response.completed", "response.incomplete") and event.response:
            self._finish(event.response, out)
        elif kind == "response.failed" or kind == "error":
            error = event.response.error if event.response is not None else None
            message = (error.message if error else None) or event.message or "generation failed"
            code = (error.code if error else None) or event.code
            failure = UpstreamStatusError(f"upstream error: {message}", code=code)
            self.error = failure
            self.done = True

    def _finish(self, response: _Response, out: Batch) -> None:
        if self._open >= 0:
            out.append(PartEnd(self._open))
            self._open = -1
        reason: FinishReason = "tool_calls" if self._calls else "stop"
        native = response.status or "completed"
        details = response.incomplete_details
        if details is not None and details.reason:
            reason = _INCOMPLETE.get(details.reason, "other")
            native = details.reason
        out.append(Finish(reason, native))
        usage = response.usage
        if usage is not None:
            cached = usage.input_tokens_details.cached_tokens if usage.input_tokens_details else 0
            details_out = usage.output_tokens_details
            reasoning = details_out.reasoning_tokens if details_out else 0
            out.append(
                Usage(usage.input_tokens, usage.output_tokens, "reported", cached, 0, reasoning)
            )
        self.done = True


class OpenAIResponsesWire:
    format: WireFormat = FORMAT
    path = "/responses"
    embeddings_path: str | None = "/embeddings"
    fixed_headers: Mapping[str, str] = MappingProxyType({})

    def auth_headers(self, key: str, base_url: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}

    def request_headers(self, request: ChatRequest) -> dict[str, str]:
        return {}

    def body(self, request: ChatRequest, model: str) -> bytes:
        if request.operation == "embeddings":
            from sluice.providers import openai_embeddings

            return openai_embeddings.body(request, model)
        return orjson.dumps(build(request, model))

    def decoder(self, request: ChatRequest, verbatim: bool) -> Decoder:
        if request.operation == "embeddings":
            from sluice.providers.openai_embeddings import EmbeddingsDecoder

            return EmbeddingsDecoder(request.model)
        return ResponsesDecoder()

    def error(self, status: int, body: bytes, headers: Mapping[str, str]) -> SluiceError:
        message, code, kind = error_fields(body)
        return status_error(status, message, code, kind, headers)
