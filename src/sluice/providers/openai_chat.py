"""The OpenAI chat completions wire: OpenAI itself and every OpenAI-compatible server
(vLLM, Ollama, llama.cpp, Groq, OpenRouter, Azure-style base URLs).

Sans-I/O: ``body`` builds the request (always asking for the usage chunk, so every
request's tokens are known), ``ChatDecoder`` turns response reads into batches, and
``error`` maps an error answer. Chunks are decoded with msgspec structs that name only
the fields read here (about twice as fast as a generic parse, and type-checked).

With ``verbatim`` the consumer writes this format's bytes as they came: every chunk goes
out as a ``Verbatim`` with its events decoded beside it, except a run of plain content
chunks, which is checked in C and passed along unread (its events are decoded only if
someone asks, ``Verbatim.decode``).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from types import MappingProxyType
from typing import Annotated, Any, Literal

import msgspec
import orjson

from sluice.errors import SluiceError, Unsupported, UpstreamProtocolError
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
from sluice.providers import Decoder
from sluice.providers import openai_embeddings as embeddings
from sluice.providers.upstream_errors import status_error
from sluice.sse import SSEDecoder

FORMAT: Literal["openai_chat"] = "openai_chat"

# -- request ----------------------------------------------------------------------

#: Fields of other formats that do not change the answer: dropped on the way here
#: (``as_sent``: an Anthropic client's fields whose meaning is in canonical form).
_DROPPABLE = frozenset({"metadata", "service_tier", "store", "container", "truncation", "as_sent"})


def _content(parts: list[Any], where: str) -> str | list[dict[str, Any]]:
    if len(parts) == 1 and type(parts[0]) is TextPart:
        return str(parts[0].text)
    out: list[dict[str, Any]] = []
    for part in parts:
        kind = type(part)
        if kind is TextPart:
            out.append({"type": "text", "text": part.text})
        elif kind is ImagePart:
            image: dict[str, Any] = {"url": part.url}
            if part.detail is not None:
                image["detail"] = part.detail
            out.append({"type": "image_url", "image_url": image})
        elif kind is OpaquePart and part.format == FORMAT:
            out.append(part.data)
        else:
            name = part.data.get("type", "part") if kind is OpaquePart else kind.__name__
            raise Unsupported(
                f"{where}: a {name} part cannot be sent to an OpenAI chat completions upstream",
                param=where,
            )
    return out


def _message(message: Message, i: int, out: list[dict[str, Any]]) -> None:
    where = f"messages[{i}]"
    role = message.role
    if role == "tool":
        for part in message.parts:
            if type(part) is ToolResultPart:
                content = _content(list(part.content), where) if part.content else ""
                out.append({"role": "tool", "tool_call_id": part.call_id, "content": content})
            else:
                out.append({"role": "tool", "content": _content([part], where)})
        return
    item: dict[str, Any] = {"role": role}
    if message.name is not None:
        item["name"] = message.name
    if role == "assistant":
        texts = [p for p in message.parts if type(p) is TextPart or type(p) is OpaquePart]
        calls = [p for p in message.parts if type(p) is ToolCallPart]
        # Reasoning from an earlier turn has no place in chat completions' input.
        rest = [
            p
            for p in message.parts
            if type(p) not in (TextPart, OpaquePart, ToolCallPart, ReasoningPart)
            and type(p) is not RedactedReasoningPart
        ]
        if rest:
            _content(rest, where)  # raises naming the part
        item["content"] = _content(texts, where) if texts else None
        if calls:
            item["tool_calls"] = [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments},
                }
                for c in calls
            ]
    else:
        item["content"] = _content(message.parts, where) if message.parts else ""
    out.append(item)


def _messages(request: ChatRequest) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if request.system:
        out.append({"role": "system", "content": "\n\n".join(p.text for p in request.system)})
    for i, message in enumerate(request.messages):
        _message(message, i, out)
    return out


def _effort(budget: int) -> str:
    return "low" if budget <= 2048 else "medium" if budget <= 8192 else "high"


def build(request: ChatRequest, model: str) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": _messages(request)}
    if request.tools:
        tools = []
        for tool in request.tools:
            function: dict[str, Any] = {"name": tool.name}
            if tool.description is not None:
                function["description"] = tool.description
            if tool.parameters is not None:
                function["parameters"] = tool.parameters
            if tool.strict is not None:
                function["strict"] = tool.strict
            tools.append({"type": "function", "function": function})
        body["tools"] = tools
    choice = request.tool_choice
    if choice is not None:
        body["tool_choice"] = (
            {"type": "function", "function": {"name": choice.name}}
            if choice.mode == "tool"
            else choice.mode
        )
    if request.parallel_tool_calls is not None:
        body["parallel_tool_calls"] = request.parallel_tool_calls
    for name in ("temperature", "top_p", "max_tokens", "seed", "user"):
        value = getattr(request, name)
        if value is not None:
            body[name] = value
    if request.stop:
        body["stop"] = request.stop
    if request.n != 1:
        body["n"] = request.n
    fmt = request.response_format
    if fmt is not None:
        if fmt.type == "json_schema":
            schema: dict[str, Any] = {"name": fmt.name or "response", "schema": fmt.schema or {}}
            if fmt.strict is not None:
                schema["strict"] = fmt.strict
            body["response_format"] = {"type": "json_schema", "json_schema": schema}
        else:
            body["response_format"] = {"type": fmt.type}
    reasoning = request.reasoning
    if reasoning is not None:
        if reasoning.effort is not None:
            body["reasoning_effort"] = reasoning.effort
        elif reasoning.budget_tokens is not None:
            body["reasoning_effort"] = _effort(reasoning.budget_tokens)
    if request.source == FORMAT:
        body.update(request.extra)
    else:
        refused = sorted(k for k in request.extra if k not in _DROPPABLE)
        if refused:
            # The value is shown too: a field such as Anthropic's server tools names
            # the tools only there.
            shown = orjson.dumps(request.extra[refused[0]]).decode()
            shown = shown if len(shown) <= 200 else shown[:199] + "…"
            raise Unsupported(
                f"'{refused[0]}' ({shown}) cannot be sent to an OpenAI chat completions upstream",
                param=refused[0],
            )
    if "max_completion_tokens" in body:
        body.pop("max_tokens", None)
    body["stream"] = True
    body["stream_options"] = {"include_usage": True}
    return body


# -- response ---------------------------------------------------------------------


class _Function(msgspec.Struct, gc=False):
    name: str | None = None
    arguments: str | None = None


class _ToolCall(msgspec.Struct, gc=False):
    index: int = 0
    id: str | None = None
    function: _Function | None = None


class _Delta(msgspec.Struct, gc=False):
    role: str | None = None
    content: str | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None
    refusal: str | None = None
    tool_calls: list[_ToolCall] | None = None
    annotations: list[Any] | None = None


class _Logprobs(msgspec.Struct, gc=False):
    content: list[Any] | None = None
    refusal: list[Any] | None = None


class _Choice(msgspec.Struct, gc=False):
    index: int = 0
    delta: _Delta | None = None
    finish_reason: str | None = None
    logprobs: _Logprobs | None = None


class _PromptDetails(msgspec.Struct, gc=False):
    cached_tokens: int | None = None


class _CompletionDetails(msgspec.Struct, gc=False):
    reasoning_tokens: int | None = None


class _Usage(msgspec.Struct, gc=False):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    prompt_tokens_details: _PromptDetails | None = None
    completion_tokens_details: _CompletionDetails | None = None


class Chunk(msgspec.Struct, gc=False):
    id: str | None = None
    model: str | None = None
    created: int | None = None
    system_fingerprint: str | None = None
    service_tier: str | None = None
    choices: list[_Choice] | None = None
    usage: _Usage | None = None
    #: Some servers report a late failure as ``data: {"error": …}``.
    error: Any = None


decode_chunk = msgspec.json.Decoder(Chunk).decode
DecodeError = msgspec.DecodeError

_REASONS: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "content_filter": "content_filter",
    "error": "error",  # OpenRouter's late failure
}


def not_a_chunk(exc: Exception) -> UpstreamProtocolError:
    """The error for an upstream event that does not decode as a chunk."""
    return UpstreamProtocolError(
        f"the upstream sent an event that is not a chat completion chunk: {exc}"
    )


class _Parts:
    """One choice's output parts as they start: text, reasoning and refusal runs and
    tool calls each get the next part index; a part ends when another starts."""

    __slots__ = ("calls", "kind", "next", "open")

    def __init__(self) -> None:
        self.open = -1
        self.kind = ""
        self.next = 0
        self.calls: dict[int, int] = {}

    def enter(self, kind: str, choice: int, out: Batch) -> int:
        if self.kind != kind:
            if self.open >= 0:
                out.append(PartEnd(self.open, choice))
            self.open = self.next
            self.next += 1
            self.kind = kind
        return self.open

    def call(self, index: int, choice: int, out: Batch) -> int:
        part = self.calls.get(index)
        if part is None:
            if self.open >= 0:
                out.append(PartEnd(self.open, choice))
            part = self.calls[index] = self.open = self.next
            self.next += 1
            self.kind = "call"
        return part

    def close(self, choice: int, out: Batch) -> None:
        if self.open >= 0:
            out.append(PartEnd(self.open, choice))
        self.open = -1
        self.kind = ""


class _PlainDelta(msgspec.Struct, gc=False):
    #: Some text: a run of plain chunks is a text part, so each must hold text (an
    #: empty one, read, starts no part; left unread it would start an empty one).
    content: Annotated[str, msgspec.Meta(min_length=1)]
    role: str | None = None
    reasoning_content: None = None
    reasoning: None = None
    refusal: None = None
    tool_calls: None = None
    function_call: None = None
    annotations: None = None


class _PlainChoice(msgspec.Struct, gc=False):
    delta: _PlainDelta
    index: Literal[0] = 0
    finish_reason: None = None
    logprobs: None = None


class _PlainChunk(msgspec.Struct, gc=False):
    """A chunk that maps to exactly one text delta of choice 0 and nothing else."""

    choices: Annotated[list[_PlainChoice], msgspec.Meta(min_length=1, max_length=1)]
    usage: None = None
    error: None = None


_check_plain = msgspec.json.Decoder(_PlainChunk).decode


def plain_payloads(data: bytes) -> list[bytes] | None:
    """The payloads of ``data`` if it is only whole plain content chunks, else None.

    ``data`` must start at an event boundary. It qualifies when it is a run of complete
    SSE events, each one ``data: `` line (LF only), whose payloads decode as
    ``_PlainChunk``: forwarding it unchanged is then the same as forwarding each
    payload. None means "decode it the usual way"; it may refuse a read that would have
    qualified, never the other way.
    """
    if data[:6] != b"data: " or data[-2:] != b"\n\n" or b"\r" in data:
        return None
    payloads = data[6:-2].split(b"\n\ndata: ")
    if data.count(b"\n") != 2 * len(payloads):
        return None
    # ``map`` runs the decoder over the payloads in C: no Python code runs per event.
    try:
        list(map(_check_plain, payloads))
    except (DecodeError, UnicodeDecodeError):  # msgspec raises the latter for bad UTF-8
        return None
    return payloads


def plain_events(index: int, data: bytes) -> list[StreamEvent]:
    """The events of a run of plain content chunks (``Verbatim.decode``)."""
    out: list[StreamEvent] = []
    for payload in data[6:-2].split(b"\n\ndata: "):
        out.append(TextDelta(_check_plain(payload).choices[0].delta.content, index))
    return out


#: What ends a run of plain content chunks: a finish reason, a usage object, an error
#: or ``[DONE]`` (in compact JSON; other spellings only make ``plain_payloads`` refuse).
_STOPS = (b'"finish_reason":"', b'"usage":{', b'"error"', b"data: [DONE]")
#: They come at the end of a stream, so only a read's last bytes are searched for them.
_TAIL = 4096


def _plain_prefix(events: bytes) -> int:
    """How many bytes at the start of ``events`` (whole events) are plain chunks."""
    size = len(events)
    stop = size
    tail = max(0, size - _TAIL)
    for marker in _STOPS:
        at = events.find(marker, tail, stop)
        if at >= 0:
            stop = at
    cut = size if stop == size else events.rfind(b"\n\n", 0, stop) + 2
    if cut < 2:
        return 0
    return cut if plain_payloads(events if cut == size else events[:cut]) is not None else 0


class ChatDecoder:
    """Response reads → batches, one chat completion stream."""

    __slots__ = ("_choices", "_plain", "_sse", "_started", "_verbatim", "done", "error")

    def __init__(self, verbatim: bool, plain: bool) -> None:
        self._sse = SSEDecoder()
        self._verbatim = verbatim
        self._plain = verbatim and plain
        self._choices: dict[int, _Parts] = {}
        self._started = False
        self.done = False
        self.error: SluiceError | None = None

    def eof(self) -> Batch:
        if not self.done:
            raise UpstreamProtocolError("the upstream closed the stream before it finished")
        return []

    def feed(self, data: bytes) -> Batch:
        out: Batch = []
        if self._plain and not self._started:
            # The first event says who answers (Start): decode up to its end, then
            # the rest of the read may take the unread path (a whole burst body often
            # comes in the first read).
            first = data.find(b"\n\n")
            if first < 0 or first + 2 == len(data):
                return self._decoded(data, out)
            self._decoded(data[: first + 2], out)
            if self.done or not self._started:
                return self._decoded(data[first + 2 :], out)
            data = data[first + 2 :]
        if self._plain:
            before, run, after = self._split(data)
            for payload in before:
                if self._payload(payload, out):
                    return out
            if run:
                self._run(run, out)
            for payload in after:
                if self._payload(payload, out):
                    break
            return out
        return self._decoded(data, out)

    def _decoded(self, data: bytes, out: Batch) -> Batch:
        if self.done:
            return out
        for payload in self._sse.feed_data(data):
            if self._payload(payload, out):
                break
        return out

    def _payload(self, payload: bytes, out: Batch) -> bool:
        """Decode one event into ``out``; True when the stream is over."""
        if payload == b"[DONE]":
            self.done = True
            return True
        try:
            chunk = decode_chunk(payload)
        except (DecodeError, UnicodeDecodeError) as exc:
            # What came before it in this read still reaches the client, then the error.
            self.error = not_a_chunk(exc)
            self.error.__cause__ = exc
            self.done = True
            return True
        if chunk.error is not None:
            message, _, _ = error_fields(payload)
            self.error = UpstreamProtocolError(f"upstream error: {message}")
            self.done = True
            return True
        if not self._started:
            self._started = True
            extra = {}
            if chunk.system_fingerprint is not None:
                extra["system_fingerprint"] = chunk.system_fingerprint
            if chunk.service_tier is not None:
                extra["service_tier"] = chunk.service_tier
            out.append(
                Start(FORMAT, chunk.id or "", chunk.model or "", chunk.created or 0, None, extra)
            )
        if self._verbatim:
            events: Batch = []
            self._events(chunk, events)
            if b"\n" in payload:
                # JSON split over several ``data:`` lines (legal between tokens): each
                # line goes out as its own, or the client would read half a chunk.
                payload = payload.replace(b"\n", b"\ndata: ")
            out.append(Verbatim(FORMAT, b"data: " + payload + b"\n\n", 1, None, events))
        else:
            self._events(chunk, out)
        return False

    def _events(self, chunk: Chunk, out: Batch) -> None:
        for choice in chunk.choices or ():
            index = choice.index
            parts = self._choices.get(index)
            if parts is None:
                parts = self._choices[index] = _Parts()
            delta = choice.delta
            if delta is not None:
                reasoning = delta.reasoning_content or delta.reasoning
                if reasoning:
                    out.append(ReasoningDelta(reasoning, parts.enter("r", index, out), index))
                logprobs = choice.logprobs
                if delta.content or (logprobs is not None and logprobs.content):
                    out.append(
                        TextDelta(
                            delta.content or "",
                            parts.enter("t", index, out),
                            index,
                            logprobs.content if logprobs is not None else None,
                        )
                    )
                if delta.refusal:
                    out.append(RefusalDelta(delta.refusal, parts.enter("x", index, out), index))
                if delta.annotations:
                    out.append(Annotations(delta.annotations, parts.enter("t", index, out), index))
                if delta.tool_calls:
                    for call in delta.tool_calls:
                        function = call.function
                        out.append(
                            ToolCallDelta(
                                parts.call(call.index, index, out),
                                call.id,
                                function.name if function else None,
                                (function.arguments or "") if function else "",
                                index,
                            )
                        )
            native = choice.finish_reason
            if native:
                parts.close(index, out)
                out.append(Finish(_REASONS.get(native, "other"), native, index))
        usage = chunk.usage
        if usage is not None:
            prompt = usage.prompt_tokens_details
            completion = usage.completion_tokens_details
            out.append(
                Usage(
                    usage.prompt_tokens or 0,
                    usage.completion_tokens or 0,
                    "reported",
                    (prompt.cached_tokens or 0) if prompt else 0,
                    0,
                    (completion.reasoning_tokens or 0) if completion else 0,
                )
            )

    def _split(self, data: bytes) -> tuple[list[bytes], bytes, list[bytes]]:
        """One read as the payloads before a run of plain content chunks, the run (left
        unread; empty if there is none) and the payloads after it, in stream order.

        What the SSE decoder holds of an event from earlier reads is finished through it
        first and the read's unfinished last event goes to it after, so
        ``plain_payloads`` only ever sees whole events that start at a boundary.
        """
        sse = self._sse
        feed = sse.feed_data
        before: list[bytes] = []
        start = 0
        if not sse.at_boundary:
            first = data.find(b"\n\n")
            if first < 0:
                return feed(data), b"", []
            start = first + 2
            before = feed(data[:start])
            if not sse.at_boundary:
                before.extend(feed(data[start:]))
                return before, b"", []
        last = data.rfind(b"\n\n")
        if last < start:
            before.extend(feed(data[start:]))
            return before, b"", []
        end = last + 2
        whole = data if start == 0 and end == len(data) else data[start:end]
        cut = _plain_prefix(whole)
        if not cut:
            before.extend(feed(data[start:]))
            return before, b"", []
        run = whole if cut == len(whole) else whole[:cut]
        return before, run, feed(data[start + cut :])

    def _run(self, run: bytes, out: Batch) -> None:
        """A run of plain content chunks as one ``Verbatim``. Its part is settled here,
        once the payloads before it in the read were decoded: they may have started
        another part (a read that finishes a reasoning chunk, then holds content)."""
        parts = self._choices.get(0)
        if parts is None:
            parts = self._choices[0] = _Parts()
        if parts.kind != "t":
            # The run is text (every chunk of it holds some): its part starts here.
            ends: Batch = []
            parts.enter("t", 0, ends)
            if ends:
                out.append(Verbatim(FORMAT, b"", 0, None, ends))
        count = run.count(b"\n\ndata: ") + 1
        out.append(Verbatim(FORMAT, run, count, partial(plain_events, parts.open)))


# -- errors -----------------------------------------------------------------------


def error_fields(body: bytes) -> tuple[str, str | None, str | None]:
    """The message, code and type of an OpenAI-shaped error body."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        text = body.decode("utf-8", "replace").strip()
        return (text[:500] or "no body"), None, None
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if isinstance(error, dict):
        code, kind = error.get("code"), error.get("type")
        return (
            str(error.get("message") or error),
            str(code) if code is not None else None,
            str(kind) if kind is not None else None,
        )
    if isinstance(error, str):
        return error, None, None
    return str(parsed)[:500], None, None


class OpenAIChatWire:
    format: WireFormat = FORMAT
    path = "/chat/completions"
    embeddings_path: str | None = "/embeddings"
    fixed_headers: Mapping[str, str] = MappingProxyType({})

    def auth_headers(self, key: str, base_url: str) -> dict[str, str]:
        if ".azure.com" in base_url:
            return {"api-key": key}
        return {"Authorization": f"Bearer {key}"}

    def request_headers(self, request: ChatRequest) -> dict[str, str]:
        return {}

    def body(self, request: ChatRequest, model: str) -> bytes:
        if request.operation == "embeddings":
            return embeddings.body(request, model)
        return orjson.dumps(build(request, model))

    def decoder(self, request: ChatRequest, verbatim: bool) -> Decoder:
        if request.operation == "embeddings":
            return embeddings.EmbeddingsDecoder(request.model)
        # With several choices every chunk is read, so each choice gets its parts.
        return ChatDecoder(verbatim, plain=request.n == 1)

    def error(self, status: int, body: bytes, headers: Mapping[str, str]) -> SluiceError:
        message, code, kind = error_fields(body)
        return status_error(status, message, code, kind, headers)
