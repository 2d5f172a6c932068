"""Anthropic Messages: ``POST /v1/messages`` (SSE and JSON) and
``POST /v1/messages/count_tokens``.

Streams follow Anthropic's "Streaming Messages" event flow: ``message_start``, then per
content block ``content_block_start``, its deltas and ``content_block_stop``, then
``message_delta`` (stop reason and usage) and ``message_stop``; ``ping`` while waiting
for the first token, ``error`` for a failure after the first byte. Block indices count
from 0 with no gaps, in the order the blocks start, and a block is closed before the
next one opens: the SDKs accumulate deltas by position in the content list.

Canonical parts map to blocks: text (and refusal text) → ``text``; reasoning →
``thinking`` (one block per part, its signature as a ``signature_delta``); redacted
reasoning → ``redacted_thinking``; a tool call → ``tool_use`` whose arguments always
come as ``input_json_delta`` events. Annotations have no Anthropic form and are dropped;
choices other than 0 cannot occur (``n`` does not exist in this API).

Identity: the model is the one the upstream said answered (``Start.model``); the id is
the upstream's when it speaks this format, else the gateway's own (``msg_`` + record
id). ``Verbatim`` bytes of this format (an Anthropic upstream) are written as they
came: they carry the upstream's whole event flow, ``message_start`` included.

Errors (before the first byte: the status and ``{"type": "error", "error": {...}}``;
after it: the same object as an ``error`` event). The gateway's statuses map to
Anthropic's types; upstream failures are decided this way: 503 (the upstream cannot be
reached, or said it is overloaded or unavailable, or a dependency of the gateway is
down) → 529 ``overloaded_error``, which clients retry with backoff; 504 (a timeout) →
504 ``timeout_error``; 502 and every other 5xx → ``api_error`` with its status.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

import orjson

from sluice.dialects import Headers, error_headers
from sluice.dialects.anthropic_request import decode_messages
from sluice.dialects.bounds import DEFAULT_BOUNDS, Bounds
from sluice.errors import SluiceError, UpstreamError, UpstreamProtocolError
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
    estimate_input_tokens,
)

FORMAT: WireFormat = "anthropic_messages"

_STATUS_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    504: "timeout_error",
    529: "overloaded_error",
}
#: Error types an Anthropic client knows; a ``StreamError`` of another type is an
#: ``api_error``.
ERROR_TYPES = frozenset({*_STATUS_TYPES.values(), "api_error"})
#: Stop reasons of this API that a canonical ``Finish`` keeps as its ``native`` word.
STOP_REASONS = frozenset(
    {
        "end_turn",
        "max_tokens",
        "stop_sequence",
        "tool_use",
        "pause_turn",
        "refusal",
        "model_context_window_exceeded",
    }
)


def status_and_type(exc: SluiceError) -> tuple[int, str]:
    status = exc.status
    if status == 503:
        return 529, "overloaded_error"
    kind = _STATUS_TYPES.get(status)
    if kind is not None:
        return status, kind
    return status, "invalid_request_error" if status < 500 else "api_error"


def error_object(kind: str, message: str) -> bytes:
    return orjson.dumps({"type": "error", "error": {"type": kind, "message": message}})


def error_event(kind: str, message: str) -> bytes:
    return b"event: error\ndata: " + error_object(kind, message) + b"\n\n"


def _event(name: bytes, payload: dict[str, Any]) -> bytes:
    return b"event: " + name + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


def stop_reason(finish: Finish | None, tool_used: bool, refused: bool) -> str:
    """``tool_use`` whenever a tool block was sent (clients run tools on that word)."""
    if tool_used:
        return "tool_use"
    if finish is None:
        return "refusal" if refused else "end_turn"
    native = finish.native
    if native is not None and native in STOP_REASONS:
        return native
    reason = finish.reason
    if reason == "length":
        return "max_tokens"
    if reason == "content_filter" or refused:
        return "refusal"
    if reason == "tool_calls":
        return "tool_use"
    if finish.stop_sequence is not None:
        return "stop_sequence"
    return "end_turn"


def input_usage(usage: Usage) -> dict[str, int]:
    """Anthropic's ``input_tokens`` leaves out what was read from or written to the
    prompt cache; canonical ``input_tokens`` counts them."""
    cached, written = usage.cached_tokens, usage.cache_write_tokens
    return {
        "input_tokens": max(0, usage.input_tokens - cached - written),
        "cache_creation_input_tokens": written,
        "cache_read_input_tokens": cached,
    }


class _Identity:
    __slots__ = ("id", "model", "start_usage")

    def __init__(self, request: ChatRequest, response_id: str) -> None:
        self.id = response_id
        self.model = request.model
        self.start_usage: Usage | None = None

    def start(self, event: Start) -> None:
        if event.format == FORMAT and event.id:
            self.id = event.id
        if event.model:
            self.model = event.model
        if event.usage is not None:
            self.start_usage = event.usage


class _Blocks:
    """Canonical parts of choice 0 → content blocks: the state machine both encoders
    share. Subclasses say what starting, extending and stopping a block does."""

    def __init__(self, request: ChatRequest, response_id: str) -> None:
        self._request = request
        self._identity = _Identity(request, response_id)
        self._next = 0
        #: The open block: its canonical part, block index and kind.
        self._part = -1
        self._block = -1
        self._kind = ""
        #: A tool call whose block waits for its name: [id, name, arguments].
        self._pending: list[str] | None = None
        #: Tool calls that arrived while another tool block was open, in order: part →
        #: [id, name, arguments]. Blocks cannot interleave, and an upstream may send a
        #: later call before an earlier one's last arguments, so a tool block stays open
        #: until other content (or the end) comes, and the calls that came meanwhile are
        #: written after it, whole.
        self._queued: dict[int, list[str]] = {}
        #: Tool parts whose blocks were written and closed.
        self._written: set[int] = set()
        self._tool_used = False
        self._refused = False
        self._finish: Finish | None = None
        self._usage: Usage | None = None
        self._output_chars = 0

    # -- what a subclass does with blocks ------------------------------------------

    def _open_block(self, block: int, content: dict[str, Any]) -> None:
        raise NotImplementedError

    def _delta(self, block: int, delta: dict[str, Any]) -> None:
        raise NotImplementedError

    def _close_block(self, block: int) -> None:
        raise NotImplementedError

    # -- the state machine -------------------------------------------------------

    def _close(self) -> None:
        if self._pending is not None:
            self._start_tool()
        if self._block >= 0:
            self._close_block(self._block)
        if self._kind == "tool":
            self._written.add(self._part)
        self._part = self._block = -1
        self._kind = ""
        if self._queued:
            queued, self._queued = self._queued, {}
            for part, call in queued.items():
                self._pending = call
                self._start_tool()
                self._close_block(self._block)
                self._written.add(part)
            self._block = -1

    def _enter(self, part: int, kind: str, content: dict[str, Any] | None) -> bool:
        """Make ``part`` the open block (of ``kind``); True if it was opened now."""
        if self._part == part and self._kind == kind:
            return False
        self._close()
        self._part, self._kind = part, kind
        if content is not None:
            self._block = self._next
            self._next += 1
            self._open_block(self._block, content)
        return True

    def _start_tool(self) -> None:
        assert self._pending is not None
        call_id, name, arguments = self._pending
        self._pending = None
        self._block = self._next
        self._next += 1
        self._tool_used = True
        content = {
            "type": "tool_use",
            "id": call_id or f"toolu_{uuid.uuid4().hex[:24]}",
            "name": name,
            "input": {},
        }
        self._open_block(self._block, content)
        if arguments:
            self._delta(self._block, {"type": "input_json_delta", "partial_json": arguments})

    def _text(self, part: int, text: str) -> None:
        if not text:
            return
        self._enter(part, "text", {"type": "text", "text": ""})
        self._output_chars += len(text)
        self._delta(self._block, {"type": "text_delta", "text": text})

    def _reasoning(self, event: ReasoningDelta) -> None:
        if not event.text and event.signature is None:
            return
        self._enter(event.index, "thinking", {"type": "thinking", "thinking": "", "signature": ""})
        if event.text:
            self._output_chars += len(event.text)
            self._delta(self._block, {"type": "thinking_delta", "thinking": event.text})
        if event.signature is not None:
            self._delta(self._block, {"type": "signature_delta", "signature": event.signature})

    def _redacted(self, event: RedactedReasoning) -> None:
        self._enter(event.index, "redacted", {"type": "redacted_thinking", "data": event.data})
        self._close()

    def _tool(self, event: ToolCallDelta) -> None:
        part = event.index
        if (self._kind == "tool" and part != self._part) or part in self._queued:
            call = self._queued.setdefault(part, ["", "", ""])
            if event.id:
                call[0] = event.id
            if event.name:
                call[1] += event.name
            call[2] += event.arguments
            self._output_chars += len(event.arguments)
            return
        if part in self._written:
            # Its block is closed; content blocks cannot be reopened.
            raise UpstreamProtocolError(
                "the upstream sent more arguments for a tool call after other content"
            )
        if self._enter(part, "tool", None):
            self._pending = [event.id or "", event.name or "", event.arguments]
        elif self._pending is not None:
            pending = self._pending
            if event.id:
                pending[0] = event.id
            if event.name:
                pending[1] += event.name
            pending[2] += event.arguments
        else:
            if event.arguments:
                self._output_chars += len(event.arguments)
                self._delta(
                    self._block, {"type": "input_json_delta", "partial_json": event.arguments}
                )
            return
        pending = self._pending
        if pending is not None and pending[1]:
            self._output_chars += len(pending[2])
            self._start_tool()

    def _event(self, event: StreamEvent) -> bool:
        """Apply one event; False for events the subclass handles itself."""
        kind = type(event)
        if kind is TextDelta:
            e: TextDelta = event  # type: ignore[assignment]
            if e.choice == 0:
                self._text(e.index, e.text)
        elif kind is ReasoningDelta:
            if event.choice == 0:  # type: ignore[union-attr]
                self._reasoning(event)  # type: ignore[arg-type]
        elif kind is ToolCallDelta:
            if event.choice == 0:  # type: ignore[union-attr]
                self._tool(event)  # type: ignore[arg-type]
        elif kind is PartEnd:
            p: PartEnd = event  # type: ignore[assignment]
            # A tool block stays open: more arguments for it may follow later calls.
            if p.choice == 0 and p.index == self._part and self._kind != "tool":
                self._close()
        elif kind is RefusalDelta:
            # Anthropic has no refusal part: the words are text, the stop reason says it.
            x: RefusalDelta = event  # type: ignore[assignment]
            if x.choice == 0:
                self._refused = True
                self._text(x.index, x.text)
        elif kind is RedactedReasoning:
            if event.choice == 0:  # type: ignore[union-attr]
                self._redacted(event)  # type: ignore[arg-type]
        elif kind is Finish:
            f: Finish = event  # type: ignore[assignment]
            if f.choice == 0:
                self._close()
                self._finish = f
        elif kind is Usage:
            self._usage = event  # type: ignore[assignment]
        elif kind is Start:
            self._identity.start(event)  # type: ignore[arg-type]
        elif kind is Annotations:
            pass  # OpenAI's url citations have no Anthropic block form
        else:
            return False
        return True

    # -- the summary -------------------------------------------------------------

    def _stop_reason(self) -> str:
        return stop_reason(self._finish, self._tool_used, self._refused)

    def _stop_sequence(self) -> str | None:
        finish = self._finish
        if finish is None or self._stop_reason() != "stop_sequence":
            return None
        return finish.stop_sequence

    def _start_usage(self) -> dict[str, int]:
        usage = self._identity.start_usage
        if usage is not None:
            return {**input_usage(usage), "output_tokens": usage.output_tokens}
        return {
            "input_tokens": estimate_input_tokens(self._request),
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": 0,
        }

    def _final_usage(self) -> dict[str, int]:
        usage = self._usage
        if usage is not None:
            return {**input_usage(usage), "output_tokens": usage.output_tokens}
        out = self._start_usage()
        # No usage came: an estimate, as for a cut stream (never a silent zero).
        out["output_tokens"] = max(out["output_tokens"], (self._output_chars + 3) // 4)
        return out

    def _failed_finish(self) -> SluiceError | None:
        if self._finish is not None and self._finish.reason == "error":
            return UpstreamError("the upstream ended the answer with an error")
        return None


class StreamEncoder(_Blocks):
    """SSE events, encoded; ``Verbatim`` bytes of this format written as they came."""

    streaming: bool = True
    content_type: bytes = b"text/event-stream; charset=utf-8"
    keepalive: bytes | None = b'event: ping\ndata: {"type": "ping"}\n\n'
    verbatim: WireFormat | None = FORMAT

    def __init__(self, request: ChatRequest, response_id: str) -> None:
        super().__init__(request, response_id)
        self._out: list[bytes] = []
        #: message_start is out (ours, or the upstream's in its verbatim bytes).
        self._started = False
        #: The upstream's verbatim bytes carry the whole event flow.
        self._passthrough = False
        #: A Start of this format came: the upstream's message_start may follow verbatim.
        self._deferred = False
        self._over = False
        #: A text block's open delta bytes, reused by each text delta of the block.
        self._text_head = b""

    def _open_block(self, block: int, content: dict[str, Any]) -> None:
        self._out.append(
            _event(
                b"content_block_start",
                {"type": "content_block_start", "index": block, "content_block": content},
            )
        )
        if content["type"] == "text":
            self._text_head = (
                b'event: content_block_delta\ndata: {"type":"content_block_delta","index":%d,'
                b'"delta":{"type":"text_delta","text":' % block
            )

    def _delta(self, block: int, delta: dict[str, Any]) -> None:
        if delta["type"] == "text_delta":
            self._out.append(self._text_head + orjson.dumps(delta["text"]) + b"}}\n\n")
            return
        self._out.append(
            _event(
                b"content_block_delta",
                {"type": "content_block_delta", "index": block, "delta": delta},
            )
        )

    def _close_block(self, block: int) -> None:
        self._out.append(
            b'event: content_block_stop\ndata: {"type":"content_block_stop","index":%d}\n\n' % block
        )

    def _message_start(self) -> None:
        self._started = True
        self._deferred = False
        identity = self._identity
        message: dict[str, Any] = {
            "id": identity.id,
            "type": "message",
            "role": "assistant",
            "model": identity.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": self._start_usage(),
        }
        self._out.append(_event(b"message_start", {"type": "message_start", "message": message}))

    def encode(self, batch: Batch) -> bytes:
        if self._over:
            return b""
        self._encode(batch)
        out = self._out
        if not out:
            return b""
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        return data

    def _encode(self, batch: list[StreamEvent]) -> None:
        out = self._out
        for event in batch:
            if self._over:
                return
            kind = type(event)
            if kind is TextDelta:
                t: TextDelta = event  # type: ignore[assignment]
                if t.index == self._part and self._kind == "text" and not t.choice:
                    # The common case, written here: more text for the open text block.
                    if t.text:
                        self._output_chars += len(t.text)
                        out.append(self._text_head + orjson.dumps(t.text) + b"}}\n\n")
                    continue
            if kind is Verbatim:
                v: Verbatim = event  # type: ignore[assignment]
                if v.format == FORMAT and (self._passthrough or not self._started):
                    self._passthrough = self._started = True
                    self._deferred = False
                    self._out.append(v.data)
                    if v.events:
                        self._watch(v.events)
                else:
                    self._encode(v.expanded())
                continue
            if kind is Start:
                s: Start = event  # type: ignore[assignment]
                self._identity.start(s)
                if not self._started:
                    if s.format == FORMAT:
                        # An Anthropic upstream's own message_start may follow verbatim.
                        self._deferred = True
                    else:
                        self._message_start()
                continue
            if kind is StreamError:
                err: StreamError = event  # type: ignore[assignment]
                kind_ = err.type if err.type in ERROR_TYPES else "api_error"
                self._fail(error_event(kind_, err.message))
                continue
            if not self._started:
                self._message_start()
            if self._passthrough:
                # The upstream's bytes own the block indices; nothing else may add blocks.
                if kind is Usage:
                    self._usage = event  # type: ignore[assignment]
                elif kind is Finish:
                    self._finish = event  # type: ignore[assignment]
                continue
            self._event(event)
            if kind is Finish:
                failed = self._failed_finish()
                if failed is not None:
                    self._fail(self.error(failed))

    def _watch(self, events: list[StreamEvent]) -> None:
        """Follow what the verbatim bytes said, for the record of this encoder."""
        for event in events:
            kind = type(event)
            if kind is Finish:
                self._finish = event  # type: ignore[assignment]
            elif kind is Usage:
                self._usage = event  # type: ignore[assignment]
            elif kind is StreamError:
                self._over = True  # the upstream's own error event went out with them

    def _fail(self, data: bytes) -> None:
        self._out.append(data)
        self._over = True

    def end(self) -> bytes:
        if self._over or self._passthrough:
            # The upstream's message_stop (or an error event) already went out.
            return b""
        if not self._started:
            self._message_start()
        self._close()
        delta = {"stop_reason": self._stop_reason(), "stop_sequence": self._stop_sequence()}
        self._out.append(
            _event(
                b"message_delta",
                {"type": "message_delta", "delta": delta, "usage": self._final_usage()},
            )
        )
        self._out.append(b'event: message_stop\ndata: {"type":"message_stop"}\n\n')
        data = b"".join(self._out)
        self._out.clear()
        self._over = True
        return data

    def error(self, exc: SluiceError) -> bytes:
        if self._over:
            return b""  # an error event (the upstream's, or ours) already ended it
        self._over = True
        _, kind = status_and_type(exc)
        return error_event(kind, exc.message)


class MessageEncoder(_Blocks):
    """The whole ``message`` object, written once the generation ended."""

    streaming: bool = False
    content_type: bytes = b"application/json"
    keepalive: bytes | None = None
    verbatim: WireFormat | None = None

    def __init__(self, request: ChatRequest, response_id: str) -> None:
        super().__init__(request, response_id)
        self._content: list[dict[str, Any]] = []
        self._json: dict[int, list[str]] = {}

    def _open_block(self, block: int, content: dict[str, Any]) -> None:
        self._content.append(dict(content))

    def _delta(self, block: int, delta: dict[str, Any]) -> None:
        content = self._content[block]
        kind = delta["type"]
        if kind == "text_delta":
            content["text"] += delta["text"]
        elif kind == "thinking_delta":
            content["thinking"] += delta["thinking"]
        elif kind == "signature_delta":
            content["signature"] = delta["signature"]
        elif kind == "input_json_delta":
            self._json.setdefault(block, []).append(delta["partial_json"])

    def _close_block(self, block: int) -> None:
        pieces = self._json.pop(block, None)
        if pieces is None:
            return
        text = "".join(pieces)
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError:
            value = None
        # Arguments that are not a JSON object are kept as the model wrote them.
        self._content[block]["input"] = value if isinstance(value, dict) else text

    def encode(self, batch: Batch) -> bytes:
        for event in batch:
            kind = type(event)
            if kind is Verbatim:
                self.encode(event.expanded())  # type: ignore[union-attr]
            elif kind is StreamError:
                err: StreamError = event  # type: ignore[assignment]
                raise UpstreamError(err.message)
            elif self._event(event) and kind is Finish:
                failed = self._failed_finish()
                if failed is not None:
                    raise failed
        return b""

    def end(self) -> bytes:
        self._close()
        identity = self._identity
        body = {
            "id": identity.id,
            "type": "message",
            "role": "assistant",
            "model": identity.model,
            "content": self._content,
            "stop_reason": self._stop_reason(),
            "stop_sequence": self._stop_sequence(),
            "usage": self._final_usage(),
        }
        return orjson.dumps(body)

    def error(self, exc: SluiceError) -> bytes:
        return error_object(status_and_type(exc)[1], exc.message)


def count_tokens_body(tokens: int) -> bytes:
    return orjson.dumps({"input_tokens": tokens})


class AnthropicMessagesDialect:
    name = "anthropic_messages"
    id_prefix = "msg_"

    def __init__(self, bounds: Bounds = DEFAULT_BOUNDS) -> None:
        self.bounds = bounds

    def decode(
        self, body: bytes, query: Mapping[str, str], headers: Mapping[str, str], default_model: str
    ) -> ChatRequest:
        return decode_messages(body, headers, bounds=self.bounds)

    def decode_count(self, body: bytes, headers: Mapping[str, str]) -> ChatRequest:
        """A ``count_tokens`` body: a messages body without ``max_tokens``."""
        return decode_messages(body, headers, count_only=True, bounds=self.bounds)

    def error_response(self, exc: SluiceError) -> tuple[int, Headers, bytes]:
        status, kind = status_and_type(exc)
        return status, error_headers(b"application/json", exc), error_object(kind, exc.message)

    def encoder(self, request: ChatRequest, response_id: str) -> StreamEncoder | MessageEncoder:
        if request.stream:
            return StreamEncoder(request, response_id)
        return MessageEncoder(request, response_id)
