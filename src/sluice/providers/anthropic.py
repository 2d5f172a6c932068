"""The Anthropic Messages wire: ``POST {base_url}/v1/messages``, streamed.

Sans-I/O: ``build`` makes the request body from the canonical request, ``MessagesDecoder``
turns response reads into batches, and ``error`` maps an error answer. Events are decoded
with msgspec structs that name only the fields read here, as the OpenAI wire does.

The request. Anthropic requires ``max_tokens``; a request without one gets the
deployment's ``max_tokens_default``. System and developer messages are hoisted into
``system``; tool results become ``tool_result`` blocks of a user message; consecutive
messages of one role are merged (the API wants user and assistant to alternate).
``cache_control`` markers are sent here and nowhere else. Fields of another wire format
(``ChatRequest.extra``) are dropped when they do not change the answer (``metadata``,
``store``, ...) and refused otherwise (``Unsupported``, naming the field); so are ``n``
above 1, a JSON response format, ``seed`` and a ``temperature`` above Anthropic's 1.
Reasoning from an earlier turn goes back only with its signature (Anthropic verifies
it); without one (an OpenAI client's ``reasoning_content``) it is left out.

The stream (https://docs.anthropic.com/en/docs/build-with-claude/streaming). Every event
is ``event: NAME`` plus one ``data:`` line whose JSON repeats the name as ``type``, so
the decoder reads only the data. Content block ``i`` is part ``i``; ``message_delta``
gives the finish and the usage; ``message_stop`` ends the stream, and a body that ends
before it is an error. Anthropic's ``input_tokens`` leaves out cache reads and writes:
``Usage.input_tokens`` adds them back.

With ``verbatim`` the consumer writes this format's bytes as they came: every event goes
out as a ``Verbatim`` (its events decoded beside it), except a run of plain
``text_delta`` events, which is checked in C and passed along unread. Without it, such a
run is decoded from the same check, skipping the SSE decoder's line-by-line path that
``event:`` lines take (about half the time per event).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Literal

import msgspec
import orjson

from sluice.errors import (
    RequestError,
    SluiceError,
    Unsupported,
    UpstreamProtocolError,
    UpstreamStatusError,
)
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
    RedactedReasoning,
    RedactedReasoningPart,
    Start,
    StreamEvent,
    TextDelta,
    TextPart,
    ToolCallDelta,
    ToolCallPart,
    ToolResultPart,
    Usage,
    Verbatim,
    WireFormat,
)
from sluice.providers import NO_OP, Decoder
from sluice.providers.upstream_errors import client_status, status_error
from sluice.sse import SSEDecoder

FORMAT: Literal["anthropic_messages"] = "anthropic_messages"
#: The ``anthropic-version`` header: the API version this wire speaks.
API_VERSION = "2023-06-01"
#: ``max_tokens`` when neither the request nor the deployment says.
MAX_TOKENS_DEFAULT = 4096
#: Anthropic's smallest thinking budget.
MIN_BUDGET = 1024
#: ``reasoning_effort`` → thinking budget (``none`` asks for no thinking).
BUDGETS: Mapping[str, int] = {"minimal": 1024, "low": 1024, "medium": 4096, "high": 16384}
UPSTREAM = "an Anthropic Messages upstream"
#: Where an Anthropic client's server tools ride in ``ChatRequest.extra``, and its
#: ``thinking`` and ``output_config`` as it sent them (when read whole).
SERVER_TOOLS = "server_tools"
AS_SENT = "as_sent"

# -- request ----------------------------------------------------------------------

#: Fields of other formats that do not change the answer: dropped on the way here.
#: ``max_completion_tokens`` is read into ``max_tokens`` already.
_DROPPABLE = frozenset(
    {
        "metadata",
        "store",
        "service_tier",
        "safety_identifier",
        "prompt_cache_key",
        "prompt_cache_retention",
        "max_completion_tokens",
        "container",
        "truncation",
    }
)


def _refused(where: str, what: str) -> Unsupported:
    return Unsupported(f"{what} cannot be sent to {UPSTREAM}", param=where)


def _image(part: ImagePart, where: str) -> dict[str, Any]:
    url = part.url
    source: dict[str, Any]
    if url.startswith("data:"):
        head, comma, data = url[5:].partition(",")
        media_type, _, encoding = head.partition(";")
        if not comma or encoding != "base64" or not media_type:
            raise RequestError(
                f"{where}: an image data URL must be data:<media type>;base64,<data>",
                param=where,
            )
        source = {"type": "base64", "media_type": media_type, "data": data}
    elif url.startswith(("https://", "http://")):
        source = {"type": "url", "url": url}
    else:
        raise RequestError(f"{where}: an image URL must be https:, http: or data:", param=where)
    block: dict[str, Any] = {"type": "image", "source": source}
    if part.cache_control is not None:
        block["cache_control"] = part.cache_control
    return block


def _text(part: TextPart) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "text", "text": part.text}
    if part.cache_control is not None:
        block["cache_control"] = part.cache_control
    return block


def _arguments(call: ToolCallPart, where: str) -> Any:
    if not call.arguments.strip():
        return {}
    try:
        arguments = orjson.loads(call.arguments)
    except orjson.JSONDecodeError as exc:
        raise RequestError(
            f"{where}: the arguments of tool call {call.id!r} are not valid JSON ({exc});"
            f" {UPSTREAM} needs them as an object",
            param=where,
        ) from exc
    if not isinstance(arguments, dict):
        raise RequestError(
            f"{where}: the arguments of tool call {call.id!r} must be a JSON object",
            param=where,
        )
    return arguments


def _foreign(part: OpaquePart, where: str) -> Unsupported:
    name = part.data.get("type", "part")
    return _refused(where, f"{where}: a {name!r} part of the {part.format} format")


def _block(part: Any, where: str) -> dict[str, Any] | None:
    """One part as a content block; None for a part that has no place here."""
    kind = type(part)
    if kind is TextPart:
        return _text(part)
    if kind is ImagePart:
        return _image(part, where)
    if kind is ToolCallPart:
        return {
            "type": "tool_use",
            "id": part.id,
            "name": part.name,
            "input": _arguments(part, where),
        }
    if kind is ToolResultPart:
        result: dict[str, Any] = {"type": "tool_result", "tool_use_id": part.call_id}
        if part.content:
            result["content"] = [
                _text(p) if type(p) is TextPart else _image(p, where) for p in part.content
            ]
        if part.is_error:
            result["is_error"] = True
        if part.cache_control is not None:
            result["cache_control"] = part.cache_control
        return result
    if kind is ReasoningPart:
        if part.signature is None:
            return None  # Anthropic accepts earlier thinking only with its signature
        return {"type": "thinking", "thinking": part.text, "signature": part.signature}
    if kind is RedactedReasoningPart:
        return {"type": "redacted_thinking", "data": part.data}
    if kind is OpaquePart:
        if part.format == FORMAT:
            return dict(part.data)
        raise _foreign(part, where)
    raise _refused(where, f"{where}: a {kind.__name__}")


def _system_blocks(message: Message, where: str) -> list[dict[str, Any]]:
    blocks = []
    for part in message.parts:
        if type(part) is TextPart:
            blocks.append(_text(part))
        elif type(part) is OpaquePart and part.format == FORMAT:
            blocks.append(dict(part.data))
        else:
            name = (
                part.data.get("type", "part") if type(part) is OpaquePart else type(part).__name__
            )
            raise _refused(where, f"{where}: a {message.role} message with a {name!r} part")
    return blocks


def _messages(request: ChatRequest) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``system`` blocks and ``messages``, merged so that the roles alternate."""
    system = [_text(p) for p in request.system]
    messages: list[dict[str, Any]] = []
    for i, message in enumerate(request.messages):
        where = f"messages[{i}]"
        role = message.role
        if role in ("system", "developer"):
            system.extend(_system_blocks(message, where))
            continue
        blocks = [b for b in (_block(p, where) for p in message.parts) if b is not None]
        if len(blocks) > 1:
            # An empty text next to other blocks is refused by the API, and says nothing.
            blocks = [b for b in blocks if b.get("type") != "text" or b["text"]] or blocks[:1]
        if not blocks:
            if role != "assistant":
                blocks = [{"type": "text", "text": ""}]  # let the upstream judge it
            else:
                continue  # an assistant turn that held only unsigned reasoning
        wire_role = "assistant" if role == "assistant" else "user"  # tool results: user
        if messages and messages[-1]["role"] == wire_role:
            messages[-1]["content"].extend(blocks)
        else:
            messages.append({"role": wire_role, "content": blocks})
    return system, messages


def _tool_choice(request: ChatRequest) -> dict[str, Any] | None:
    choice = request.tool_choice
    parallel_off = request.parallel_tool_calls is False and bool(request.tools)
    if choice is None:
        return {"type": "auto", "disable_parallel_tool_use": True} if parallel_off else None
    if choice.mode == "none":
        return {"type": "none"}
    out: dict[str, Any]
    if choice.mode == "tool":
        out = {"type": "tool", "name": choice.name}
    else:
        out = {"type": "any" if choice.mode == "required" else "auto"}
    if parallel_off:
        out["disable_parallel_tool_use"] = True
    return out


def _thinking(request: ChatRequest, max_tokens: int | None, default: int) -> tuple[Any, int]:
    """``thinking`` (or None) and ``max_tokens``, which must exceed the budget."""
    reasoning = request.reasoning
    limit = max_tokens if max_tokens is not None else default
    if reasoning is None:
        return None, limit
    if reasoning.budget_tokens is not None:
        # An explicit budget (an Anthropic client's own ``thinking``) goes as it is.
        budget = reasoning.budget_tokens
        if max_tokens is None and limit <= budget:
            limit = budget + default
        return {"type": "enabled", "budget_tokens": budget}, limit
    effort = reasoning.effort
    if effort is None or effort == "none":
        return None, limit
    budget = BUDGETS.get(effort, 0)
    if not budget:
        raise Unsupported(
            f"reasoning_effort {effort!r} cannot be sent to {UPSTREAM}"
            f" (it takes {', '.join(BUDGETS)} or none)",
            param="reasoning_effort",
        )
    if max_tokens is None:
        limit = budget + default  # the default room for the answer, after the thinking
    elif max_tokens <= budget:
        # The client's max_tokens is a cap on everything the model writes: think less.
        budget = max_tokens - 1
        if budget < MIN_BUDGET:
            raise Unsupported(
                f"'max_tokens' must be above {MIN_BUDGET} to think on {UPSTREAM}",
                param="max_tokens",
            )
    return {"type": "enabled", "budget_tokens": budget}, limit


def _check_foreign(request: ChatRequest) -> None:
    """Refuse what another format asked for that Anthropic cannot do."""
    for name, value in sorted(request.extra.items()):
        if name in _DROPPABLE or value is None or value in NO_OP.get(name, ()):
            continue
        raise _refused(name, f"'{name}'")
    if request.n != 1:
        raise _refused("n", "'n' above 1 (Anthropic writes one answer per request)")
    if request.seed is not None:
        raise _refused("seed", "'seed'")
    fmt = request.response_format
    if fmt is not None and fmt.type != "text":
        raise Unsupported(
            f"response_format {fmt.type} cannot be sent to {UPSTREAM}: Anthropic upstreams"
            " cannot carry it (describe the JSON in the prompt, or use a tool with that"
            " schema)",
            param="response_format",
        )
    if request.temperature is not None and request.temperature > 1:
        raise _refused("temperature", "a 'temperature' above 1 (Anthropic's range is 0 to 1)")


def build(request: ChatRequest, model: str, max_tokens_default: int) -> dict[str, Any]:
    native = request.source == FORMAT
    if not native:
        _check_foreign(request)
    system, messages = _messages(request)
    body: dict[str, Any] = {"model": model, "messages": messages}
    if system:
        body["system"] = system
    as_sent = request.extra.get(AS_SENT) if native else None
    if as_sent is None:
        thinking, max_tokens = _thinking(request, request.max_tokens, max_tokens_default)
    else:
        # An Anthropic client's own thinking and output_config go back as they came.
        thinking, max_tokens = None, request.max_tokens or max_tokens_default
    body["max_tokens"] = max_tokens
    if thinking is not None:
        body["thinking"] = thinking
    if request.tools:
        tools = []
        for tool in request.tools:
            item: dict[str, Any] = {
                "name": tool.name,
                "input_schema": tool.parameters or {"type": "object", "properties": {}},
            }
            if tool.description is not None:
                item["description"] = tool.description
            if tool.cache_control is not None:
                item["cache_control"] = tool.cache_control
            tools.append(item)
        body["tools"] = tools
    choice = _tool_choice(request)
    if choice is not None:
        body["tool_choice"] = choice
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.top_p is not None:
        body["top_p"] = request.top_p
    if request.stop:
        body["stop_sequences"] = request.stop
    if request.user is not None:
        body["metadata"] = {"user_id": request.user}
    if native:
        extra = dict(request.extra)
        # An Anthropic client's server tools ride apart from its custom tools (other
        # formats refuse them by that name): here they go back in ``tools``.
        server = extra.pop(SERVER_TOOLS, None)
        if server:
            body["tools"] = [*body.get("tools", ()), *server]
        body.update(extra.pop(AS_SENT, None) or {})
        body.update(extra)
    body["stream"] = True
    return body


#: Anthropic's token count, beside ``/v1/messages``.
COUNT_PATH = "/v1/messages/count_tokens"
#: What ``count_tokens`` takes of a Messages body (not ``max_tokens``, ``stream``,
#: sampling or ``metadata``).
_COUNTED = frozenset(
    {
        "model",
        "messages",
        "system",
        "tools",
        "tool_choice",
        "thinking",
        "mcp_servers",
        "context_management",
        "output_config",
    }
)


def count_body(request: ChatRequest, model: str) -> bytes:
    """The ``count_tokens`` body for ``request``: its Messages body, less what only a
    generation takes."""
    body = build(request, model, MAX_TOKENS_DEFAULT)
    return orjson.dumps({k: v for k, v in body.items() if k in _COUNTED})


def counted(body: bytes) -> int:
    """The ``input_tokens`` of a ``count_tokens`` answer."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise UpstreamProtocolError(f"the upstream's token count is not JSON: {exc}") from exc
    tokens = parsed.get("input_tokens") if isinstance(parsed, dict) else None
    if type(tokens) is not int or tokens < 0:
        raise UpstreamProtocolError("the upstream's token count has no input_tokens number")
    return tokens


# -- response ---------------------------------------------------------------------


class _OutputDetails(msgspec.Struct, gc=False):
    thinking_tokens: int | None = None


class _Usage(msgspec.Struct, gc=False):
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None
    #: Newer API versions break the output down (``thinking_tokens``).
    output_tokens_details: _OutputDetails | None = None


class _Message(msgspec.Struct, gc=False):
    id: str = ""
    model: str = ""
    usage: _Usage | None = None


class _Block(msgspec.Struct, gc=False):
    type: str = ""
    text: str | None = None
    thinking: str | None = None
    signature: str | None = None
    data: str | None = None
    id: str | None = None
    name: str | None = None
    input: Any = None


class _Delta(msgspec.Struct, gc=False):
    type: str | None = None
    text: str | None = None
    thinking: str | None = None
    signature: str | None = None
    partial_json: str | None = None
    citation: Any = None
    # message_delta's
    stop_reason: str | None = None
    stop_sequence: str | None = None


class _Error(msgspec.Struct, gc=False):
    type: str | None = None
    message: str | None = None


class Event(msgspec.Struct, gc=False):
    type: str = ""
    index: int = 0
    message: _Message | None = None
    content_block: _Block | None = None
    delta: _Delta | None = None
    usage: _Usage | None = None
    error: _Error | None = None


decode_event = msgspec.json.Decoder(Event).decode
DecodeError = msgspec.DecodeError

_REASONS: dict[str, FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

#: Anthropic's error types and the statuses they come with
#: (https://docs.anthropic.com/en/api/errors).
ERROR_STATUS: Mapping[str, int] = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


def _usage(start: _Usage | None, last: _Usage | None) -> Usage:
    """Anthropic's counts (``last`` over ``start``, field by field) as a ``Usage``."""

    def pick(name: str) -> int:
        for usage in (last, start):
            if usage is not None:
                value = getattr(usage, name)
                if value is not None:
                    return int(value)
        return 0

    read = pick("cache_read_input_tokens")
    write = pick("cache_creation_input_tokens")
    details = last.output_tokens_details if last is not None else None
    thinking = (details.thinking_tokens or 0) if details is not None else 0
    return Usage(
        pick("input_tokens") + read + write,
        pick("output_tokens"),
        "reported",
        read,
        write,
        thinking,
    )


def stream_error(kind: str, message: str) -> UpstreamStatusError:
    """The error for an ``event: error`` in the stream (``overloaded_error`` → 503)."""
    status = ERROR_STATUS.get(kind, 500)
    error = UpstreamStatusError(
        f"upstream error ({kind or 'unknown'}): {message}",
        status=client_status(status),
        code=kind or None,
    )
    error.upstream_status = status
    return error


class _PlainText(msgspec.Struct, gc=False):
    type: Literal["text_delta"]
    text: str


class _PlainEvent(msgspec.Struct, gc=False):
    """A ``content_block_delta`` event that is one text delta and nothing else."""

    type: Literal["content_block_delta"]
    index: int
    delta: _PlainText


_check_plain = msgspec.json.Decoder(_PlainEvent).decode
_PLAIN = b"event: content_block_delta\ndata: "
_PLAIN_SEP = b"\n\n" + _PLAIN
#: Events that end a run of text deltas, as they start a line (a JSON string holds no
#: raw LF, so these never match inside a payload).
_STOPS = (
    b"\nevent: content_block_s",  # _start, _stop
    b"\nevent: message_",
    b"\nevent: ping",
    b"\nevent: error",
)


def plain_payloads(data: bytes) -> list[bytes] | None:
    """The payloads of ``data`` if it is only whole plain text-delta events, else None.

    ``data`` must start at an event boundary. It qualifies when it is a run of complete
    events, each ``event: content_block_delta`` and one ``data:`` line (LF only), whose
    payloads decode as ``_PlainEvent``. None means "decode it the usual way"; it may
    refuse a read that would have qualified, never the other way.
    """
    if data[: len(_PLAIN)] != _PLAIN or data[-2:] != b"\n\n" or b"\r" in data:
        return None
    payloads = data[len(_PLAIN) : -2].split(_PLAIN_SEP)
    if data.count(b"\n") != 3 * len(payloads):
        return None
    # ``map`` runs the decoder over the payloads in C: no Python code runs per event.
    try:
        list(map(_check_plain, payloads))
    except (DecodeError, UnicodeDecodeError):  # msgspec raises the latter for bad UTF-8
        return None
    return payloads


def plain_events(data: bytes) -> list[StreamEvent]:
    """The events of a run of plain text-delta events (``Verbatim.decode``)."""
    return [
        TextDelta(event.delta.text, event.index)
        for event in map(_check_plain, data[len(_PLAIN) : -2].split(_PLAIN_SEP))
    ]


def _plain_prefix(events: bytes) -> int:
    """How many bytes at the start of ``events`` (whole events) are plain text deltas."""
    if events[: len(_PLAIN)] != _PLAIN:
        return 0
    size = stop = len(events)
    for marker in _STOPS:
        at = events.find(marker, 0, stop)
        if at >= 0:
            stop = at + 1
    cut = size if stop == size else events.rfind(b"\n\n", 0, stop) + 2
    if cut < 2:
        return 0
    return cut if plain_payloads(events if cut == size else events[:cut]) is not None else 0


class MessagesDecoder:
    """Response reads → batches, one Messages stream."""

    __slots__ = ("_input", "_sse", "_started", "_tools", "_verbatim", "done", "error")

    def __init__(self, verbatim: bool) -> None:
        self._sse = SSEDecoder()
        self._verbatim = verbatim
        self._started = False
        #: message_start's usage: the input side, unless message_delta says otherwise.
        self._input: _Usage | None = None
        #: Indices of tool_use blocks (a server tool's input deltas are not calls).
        self._tools: set[int] = set()
        self.done = False
        self.error: SluiceError | None = None

    def eof(self) -> Batch:
        if not self.done:
            raise UpstreamProtocolError("the upstream closed the stream before message_stop")
        return []

    def feed(self, data: bytes) -> Batch:
        out: Batch = []
        if not self._started:
            # message_start says who answers: it is decoded first, then the rest of the
            # read may take the unread path (a whole burst body often comes in one read).
            first = data.find(b"\n\n")
            if first < 0 or first + 2 == len(data):
                self._decoded(data, out)
                return out
            if self._decoded(data[: first + 2], out) or not self._started:
                if not self.done:
                    self._decoded(data[first + 2 :], out)
                return out
            data = data[first + 2 :]
        verbatim = self._verbatim
        for item in self._split(data):
            if type(item) is bytes:
                if self._payload(item, out):
                    break
            elif verbatim:
                out.append(item)  # type: ignore[arg-type]
            else:
                out.extend(item.expanded())  # type: ignore[union-attr]
        return out

    def _decoded(self, data: bytes, out: Batch) -> bool:
        """Decode ``data`` through the SSE decoder into ``out`` (up to the stream's end);
        True when the stream is over."""
        return any(self._payload(payload, out) for payload in self._sse.feed_data(data))

    def _payload(self, payload: bytes, out: Batch) -> bool:
        """Decode one event into ``out``; True when the stream is over."""
        try:
            event = decode_event(payload)
        except (DecodeError, UnicodeDecodeError) as exc:
            # What came before it in this read still reaches the client, then the error.
            self.error = UpstreamProtocolError(
                f"the upstream sent an event that is not a Messages stream event: {exc}"
            )
            self.error.__cause__ = exc
            self.done = True
            return True
        kind = event.type
        if kind == "error" or (not kind and event.error is not None):
            # Some proxies write a late failure as ``data: {"error": {...}}`` alone.
            error = event.error or _Error()
            self.error = stream_error(error.type or "", error.message or "no message")
            self.done = True
            return True
        if not self._started:
            if kind == "ping":
                return False
            if kind != "message_start" or event.message is None:
                raise UpstreamProtocolError(
                    f"the upstream stream began with {kind or 'an untyped event'!r},"
                    " not message_start"
                )
            self._started = True
            message = event.message
            self._input = message.usage
            usage = _usage(message.usage, None) if message.usage is not None else None
            out.append(Start(FORMAT, message.id, message.model, 0, usage))
            if self._verbatim:
                out.append(Verbatim(FORMAT, _frame(kind, payload), 1, None, []))
            return False
        if kind == "message_stop":
            self.done = True
        if self._verbatim:
            events: Batch = []
            self._events(event, events)
            out.append(Verbatim(FORMAT, _frame(kind, payload), 1, None, events))
        else:
            self._events(event, out)
        return self.done

    def _events(self, event: Event, out: Batch) -> None:
        kind = event.type
        index = event.index
        if kind == "content_block_delta":
            delta = event.delta
            if delta is None:
                return
            what = delta.type
            if what == "text_delta":
                out.append(TextDelta(delta.text or "", index))
            elif what == "thinking_delta":
                out.append(ReasoningDelta(delta.thinking or "", index))
            elif what == "signature_delta":
                out.append(ReasoningDelta("", index, 0, delta.signature))
            elif what == "input_json_delta":
                if index in self._tools:
                    out.append(ToolCallDelta(index, None, None, delta.partial_json or ""))
            elif what == "citations_delta" and delta.citation is not None:
                out.append(Annotations([delta.citation], index))
        elif kind == "content_block_start":
            block = event.content_block
            if block is None:
                return
            what = block.type
            if what == "text":
                if block.text:
                    out.append(TextDelta(block.text, index))
            elif what == "thinking":
                if block.thinking:
                    out.append(ReasoningDelta(block.thinking, index))
                if block.signature:
                    out.append(ReasoningDelta("", index, 0, block.signature))
            elif what == "redacted_thinking":
                out.append(RedactedReasoning(block.data or "", index))
            elif what == "tool_use":
                self._tools.add(index)
                # Streams start with ``input: {}`` and send it as deltas; a server that
                # sends the whole input up front gets it passed on as the arguments.
                arguments = orjson.dumps(block.input).decode() if block.input else ""
                out.append(ToolCallDelta(index, block.id or "", block.name or "", arguments))
        elif kind == "content_block_stop":
            out.append(PartEnd(index))
        elif kind == "message_delta":
            delta = event.delta
            if delta is not None and delta.stop_reason:
                native = delta.stop_reason
                out.append(Finish(_REASONS.get(native, "other"), native, 0, delta.stop_sequence))
            if event.usage is not None:
                out.append(_usage(self._input, event.usage))
        # ping, message_stop and event types added later carry nothing to decode.

    def _split(self, data: bytes) -> list[bytes | Verbatim]:
        """One read as payloads to decode and, where it holds a run of plain text
        deltas (after whatever events come first), one ``Verbatim`` passing them along
        undecoded, in stream order.

        What the SSE decoder holds of an event from earlier reads is finished through it
        first and the read's unfinished last event goes to it after, so
        ``plain_payloads`` only ever sees whole events that start at a boundary.
        """
        sse = self._sse
        feed = sse.feed_data
        items: list[bytes | Verbatim] = []
        start = 0
        if not sse.at_boundary:
            first = data.find(b"\n\n")
            if first < 0:
                items.extend(feed(data))
                return items
            start = first + 2
            items.extend(feed(data[:start]))
            if not sse.at_boundary:
                items.extend(feed(data[start:]))
                return items
        last = data.rfind(b"\n\n")
        if last < start:
            items.extend(feed(data[start:]))
            return items
        end = last + 2
        # The events before the first text delta (message_start, ping, a block's start)
        # are decoded; a run of plain text deltas may follow them in the same read.
        head = data.find(_PLAIN, start, end)
        if head < 0:
            items.extend(feed(data[start:]))
            return items
        if head > start:
            items.extend(feed(data[start:head]))
            if not sse.at_boundary:  # the match was not where an event starts
                items.extend(feed(data[head:]))
                return items
            start = head
        whole = data if start == 0 and end == len(data) else data[start:end]
        cut = _plain_prefix(whole)
        if not cut:
            items.extend(feed(data[start:]))
            return items
        run = whole if cut == len(whole) else whole[:cut]
        items.append(Verbatim(FORMAT, run, run.count(b"\n\n"), plain_events))
        items.extend(feed(data[start + cut :]))
        return items


def _frame(kind: str, payload: bytes) -> bytes:
    """One event as Anthropic frames it (its name is the payload's ``type``)."""
    if not kind:
        return b"data: " + payload + b"\n\n"
    return b"event: " + kind.encode() + b"\ndata: " + payload + b"\n\n"


# -- errors -----------------------------------------------------------------------


def error_fields(body: bytes) -> tuple[str, str | None]:
    """The message and type of an Anthropic error body (``{"type": "error", "error":
    {"type", "message"}}``); OpenAI-shaped bodies from proxies read the same way."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        text = body.decode("utf-8", "replace").strip()
        return (text[:500] or "no body"), None
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if isinstance(error, dict):
        kind = error.get("type")
        return str(error.get("message") or error), str(kind) if kind is not None else None
    if isinstance(error, str):
        return error, None
    return str(parsed)[:500], None


def _header_value(value: str, name: str) -> str:
    if any(c in value for c in "\r\n\0"):
        raise RequestError(f"the {name} header holds a line break", param=name)
    return value


class AnthropicWire:
    format: WireFormat = FORMAT
    path = "/v1/messages"
    embeddings_path: str | None = None
    #: Sent with every request, with or without a key (a keyless proxy needs it too).
    fixed_headers: Mapping[str, str] = MappingProxyType({"anthropic-version": API_VERSION})

    def __init__(self, max_tokens_default: int = MAX_TOKENS_DEFAULT) -> None:
        self.max_tokens_default = max_tokens_default

    def auth_headers(self, key: str, base_url: str) -> dict[str, str]:
        return {"x-api-key": key}

    def request_headers(self, request: ChatRequest) -> dict[str, str]:
        if request.source != FORMAT or not request.headers:
            return {}
        for name, value in request.headers.items():
            if name.lower() == "anthropic-beta":
                return {"anthropic-beta": _header_value(value, "anthropic-beta")}
        return {}

    def body(self, request: ChatRequest, model: str) -> bytes:
        return orjson.dumps(build(request, model, self.max_tokens_default))

    def decoder(self, request: ChatRequest, verbatim: bool) -> Decoder:
        return MessagesDecoder(verbatim)

    def error(self, status: int, body: bytes, headers: Mapping[str, str]) -> SluiceError:
        message, kind = error_fields(body)
        code = "rate_limit_exceeded" if status == 429 else None
        return status_error(status, message, code, kind, headers)
