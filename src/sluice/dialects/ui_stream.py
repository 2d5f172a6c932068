"""The Vercel AI SDK UI message stream: ``POST /api/chat``, read by ``useChat`` through
``DefaultChatTransport``.

The stream is SSE with ``data:`` lines only, one JSON chunk each, as the SDK's
``uiMessageChunkSchema`` (ai 6) defines them, then ``data: [DONE]``; the response says
``x-vercel-ai-ui-message-stream: v1``. An answer is one message and one step::

    start {messageId}  start-step
      text-start {id}  text-delta {id, delta} ...  text-end {id}
      reasoning-start / reasoning-delta / reasoning-end          (the same, for thinking)
      tool-input-start {toolCallId, toolName}  tool-input-delta {inputTextDelta} ...
        tool-input-available {input}       (tool-input-error when the input is not JSON)
      source-url                           (an upstream's url citations)
    finish-step  finish {finishReason, messageMetadata: {model, usage}}  [DONE]

Each canonical part (by its index) is one UI part; a part ends when the stream says so
or the next one starts. A reasoning signature (and a redacted reasoning part) travels in
``providerMetadata.anthropic``, where the SDK's Anthropic provider puts it, so it comes
back with the next request. ``usage`` has the fields of the SDK's
``LanguageModelUsage``.

A failure after the first byte is an ``error`` chunk (``errorText``) and then the end:
no ``finish``, so the client never takes a cut answer for a whole one. ``data: [DONE]``
follows it as it does in the SDK's own server (``JsonToSseTransformStream``), where it
is framing, not a verdict. A generation stopped on request ends with ``abort``.

The encoder is a pure function of the events and the message id it is given: a replay of
a journal, encoded again, is the same stream byte for byte.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from sluice.dialects import Headers, error_headers
from sluice.dialects.bounds import DEFAULT_BOUNDS, Bounds
from sluice.dialects.openai_chat import error_body
from sluice.dialects.ui_request import UIChatRequest, decode_ui_chat
from sluice.errors import SluiceError
from sluice.events import (
    Annotations,
    Batch,
    ChatRequest,
    Finish,
    PartEnd,
    ReasoningDelta,
    RedactedReasoning,
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

HEADER = (b"x-vercel-ai-ui-message-stream", b"v1")
#: The code of the ``StreamError`` that ends a generation stopped on request: rendered
#: as an ``abort`` chunk, not as an error.
STOPPED = "generation_stopped"
_FINISH_REASONS = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool-calls",
    "content_filter": "content-filter",
    "other": "other",
}


def _chunk(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def usage_metadata(usage: Usage) -> dict[str, Any]:
    """``usage`` as the SDK's ``LanguageModelUsage``."""
    return {
        "inputTokens": usage.input_tokens,
        "inputTokenDetails": {
            "noCacheTokens": max(
                0, usage.input_tokens - usage.cached_tokens - usage.cache_write_tokens
            ),
            "cacheReadTokens": usage.cached_tokens,
            "cacheWriteTokens": usage.cache_write_tokens,
        },
        "outputTokens": usage.output_tokens,
        "outputTokenDetails": {
            "textTokens": max(0, usage.output_tokens - usage.reasoning_tokens),
            "reasoningTokens": usage.reasoning_tokens,
        },
        "totalTokens": usage.input_tokens + usage.output_tokens,
    }


def _sources(items: list[Any]) -> list[tuple[str, str | None]]:
    """``(url, title)`` of the url citations among an upstream's annotations (chat
    completions nests them under ``url_citation``; Responses does not)."""
    out: list[tuple[str, str | None]] = []
    for item in items:
        if not isinstance(item, dict) or item.get("type") != "url_citation":
            continue
        cite = item.get("url_citation", item)
        url = cite.get("url") if isinstance(cite, dict) else None
        if isinstance(url, str):
            title = cite.get("title")
            out.append((url, title if isinstance(title, str) else None))
    return out


class StreamEncoder:
    """Canonical events of choice 0 → UI message chunks, under one message id."""

    streaming: bool = True
    content_type: bytes = b"text/event-stream; charset=utf-8"
    keepalive: bytes | None = b": keep-alive\n\n"
    verbatim: WireFormat | None = None

    def __init__(self, message_id: str, model: str) -> None:
        self._message_id = message_id
        self._model = model
        self._out: list[bytes] = []
        self._started = False
        self._over = False
        #: The open part: its canonical index, kind (text, reasoning, tool) and UI id.
        self._part = -1
        self._kind = ""
        self._id = ""
        #: The text-delta (or reasoning-delta) chunk of the open part, up to the delta.
        self._delta_head = b""
        self._signature: str | None = None
        #: The open tool call: its name (None until known) and arguments so far.
        self._tool_name: str | None = None
        self._arguments: list[str] = []
        self._finish: Finish | None = None
        self._usage: Usage | None = None
        self._sources = 0

    # -- parts ---------------------------------------------------------------------

    def _flush(self) -> bytes:
        """What is waiting to go out, after ``start`` if this is the first of it: the
        stream starts with the answer's first chunk, so an upstream that fails before
        it still gets an HTTP status, and the time to the first token is that."""
        out = self._out
        if not out:
            return b""
        if not self._started:
            self._started = True
            start = _chunk({"type": "start", "messageId": self._message_id})
            out[:0] = (start, b'data: {"type":"start-step"}\n\n')
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        return data

    def _open(self, index: int, kind: str) -> None:
        self._close()
        self._part, self._kind = index, kind
        if kind == "tool":
            self._id = f"call_{self._message_id}_{index}"
            self._tool_name = None
            self._arguments = []
            return
        self._id = part_id = f"{kind}-{index}"
        self._signature = None
        self._out.append(_chunk({"type": f"{kind}-start", "id": part_id}))
        self._delta_head = (
            b'data: {"type":"' + kind.encode() + b'-delta","id":' + orjson.dumps(part_id)
        ) + b',"delta":'

    def _close(self) -> None:
        kind = self._kind
        if not kind:
            return
        self._part, self._kind = -1, ""
        if kind == "tool":
            self._tool_input()
            return
        end: dict[str, Any] = {"type": f"{kind}-end", "id": self._id}
        if self._signature is not None:
            end["providerMetadata"] = {"anthropic": {"signature": self._signature}}
        self._out.append(_chunk(end))

    def _tool_start(self, name: str) -> None:
        self._tool_name = name
        self._out.append(
            _chunk({"type": "tool-input-start", "toolCallId": self._id, "toolName": name})
        )
        pending = "".join(self._arguments)
        if pending:
            self._tool_delta(pending)

    def _tool_delta(self, text: str) -> None:
        self._out.append(
            _chunk({"type": "tool-input-delta", "toolCallId": self._id, "inputTextDelta": text})
        )

    def _tool_input(self) -> None:
        """The call is whole: its input, parsed (empty input is ``{}``, as in the SDK)."""
        if self._tool_name is None:
            self._tool_start("")
        name = self._tool_name
        text = "".join(self._arguments)
        try:
            value = orjson.loads(text) if text.strip() else {}
        except orjson.JSONDecodeError as exc:
            self._out.append(
                _chunk(
                    {
                        "type": "tool-input-error",
                        "toolCallId": self._id,
                        "toolName": name,
                        "input": text,
                        "errorText": f"the tool input is not valid JSON: {exc}",
                    }
                )
            )
            return
        self._out.append(
            _chunk(
                {
                    "type": "tool-input-available",
                    "toolCallId": self._id,
                    "toolName": name,
                    "input": value,
                }
            )
        )

    def _tool(self, event: ToolCallDelta) -> None:
        if self._part != event.index or self._kind != "tool":
            self._open(event.index, "tool")
        if event.id and self._tool_name is None:
            self._id = event.id  # not announced yet: the upstream's id is the call's
        if event.arguments:
            self._arguments.append(event.arguments)
        if self._tool_name is None:
            if event.name:
                self._tool_start(event.name)  # writes what came before the name too
        elif event.arguments:
            self._tool_delta(event.arguments)

    def _reasoning(self, event: ReasoningDelta) -> None:
        if self._part != event.index or self._kind != "reasoning":
            self._open(event.index, "reasoning")
        if event.text:
            self._out.append(self._delta_head + orjson.dumps(event.text) + b"}\n\n")
        if event.signature is not None:
            self._signature = event.signature

    def _redacted(self, event: RedactedReasoning) -> None:
        """A whole reasoning part, encrypted: the SDK's Anthropic provider keeps it so."""
        self._close()
        part_id = f"reasoning-{event.index}"
        metadata = {"anthropic": {"redactedData": event.data}}
        self._out.append(
            _chunk({"type": "reasoning-start", "id": part_id, "providerMetadata": metadata})
        )
        self._out.append(_chunk({"type": "reasoning-end", "id": part_id}))

    # -- the stream ----------------------------------------------------------------

    def encode(self, batch: Batch) -> bytes:
        if self._over:
            return b""
        self._encode(batch)
        return self._flush()

    def _encode(self, batch: list[StreamEvent]) -> None:
        out = self._out
        for event in batch:
            if self._over:
                return
            kind = type(event)
            if kind is TextDelta or kind is RefusalDelta:
                # A refusal has no UI part of its own: its words are text.
                t: TextDelta = event  # type: ignore[assignment]
                if t.choice or not t.text:
                    continue
                if t.index != self._part or self._kind != "text":
                    self._open(t.index, "text")
                out.append(self._delta_head + orjson.dumps(t.text) + b"}\n\n")
            elif kind is Verbatim:
                self._encode(event.expanded())  # type: ignore[union-attr]
            elif getattr(event, "choice", 0):
                continue  # only choice 0 is a UI message (the SDK asks for no more)
            elif kind is ReasoningDelta:
                self._reasoning(event)  # type: ignore[arg-type]
            elif kind is ToolCallDelta:
                self._tool(event)  # type: ignore[arg-type]
            elif kind is PartEnd:
                if event.index == self._part:  # type: ignore[union-attr]
                    self._close()
            elif kind is RedactedReasoning:
                self._redacted(event)  # type: ignore[arg-type]
            elif kind is Annotations:
                for url, title in _sources(event.items):  # type: ignore[union-attr]
                    self._sources += 1
                    source: dict[str, Any] = {
                        "type": "source-url",
                        "sourceId": f"source-{self._sources}",
                        "url": url,
                    }
                    if title is not None:
                        source["title"] = title
                    out.append(_chunk(source))
            elif kind is Finish:
                f: Finish = event  # type: ignore[assignment]
                if f.reason == "error":  # the open part stays unfinished, as it is
                    self._fail("the upstream ended the answer with an error")
                else:
                    self._close()
                    self._finish = f
            elif kind is Usage:
                self._usage = event  # type: ignore[assignment]
            elif kind is Start:
                if event.model:  # type: ignore[union-attr]
                    self._model = event.model  # type: ignore[union-attr]
            elif kind is StreamError:
                s: StreamError = event  # type: ignore[assignment]
                if s.code == STOPPED:
                    out.append(_chunk({"type": "abort", "reason": s.message}))
                    out.append(DONE)
                    self._over = True
                else:
                    self._fail(s.message)
            # Embeddings have no UI form.

    def _fail(self, message: str) -> None:
        self._out.append(_chunk({"type": "error", "errorText": message}))
        self._out.append(DONE)
        self._over = True

    def end(self) -> bytes:
        if self._over:
            return b""
        self._close()
        finish: dict[str, Any] = {"type": "finish"}
        if self._finish is not None:
            finish["finishReason"] = _FINISH_REASONS[self._finish.reason]
        metadata: dict[str, Any] = {"model": self._model}
        if self._usage is not None:
            metadata["usage"] = usage_metadata(self._usage)
        finish["messageMetadata"] = metadata
        self._out.append(b'data: {"type":"finish-step"}\n\n')
        self._out.append(_chunk(finish))
        self._out.append(DONE)
        self._over = True
        return self._flush()

    def error(self, exc: SluiceError) -> bytes:
        if self._over:
            return b""
        self._fail(exc.message)
        return self._flush()


class UIStreamDialect:
    name = "ui_stream"
    id_prefix = "msg-"

    def __init__(self, bounds: Bounds = DEFAULT_BOUNDS) -> None:
        self.bounds = bounds

    def decode(
        self, body: bytes, query: Mapping[str, str], headers: Mapping[str, str], default_model: str
    ) -> ChatRequest:
        return decode_ui_chat(body, default_model, self.bounds).request

    def decode_chat(self, body: bytes, default_model: str) -> UIChatRequest:
        return decode_ui_chat(body, default_model, self.bounds)

    def error_response(self, exc: SluiceError) -> tuple[int, Headers, bytes]:
        # DefaultChatTransport shows the body's text as the error.
        return exc.status, error_headers(b"application/json", exc), error_body(exc)

    def encoder(self, request: ChatRequest, response_id: str) -> StreamEncoder:
        return StreamEncoder(response_id, request.model)
