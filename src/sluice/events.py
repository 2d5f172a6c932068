"""The shared vocabulary: the canonical request, the stream events and ``Batch``.

No wire format owns these. Decoders (dialects on the client side, wires on the
upstream side) map their format into them; encoders map them back out. Only
``Verbatim`` carries bytes of a named format, with the way to decode them, so that the
fast path crosses every layer without any layer knowing the format.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

#: The wire formats Sluice reads and writes: one upstream module and one client
#: dialect each. ``sluice`` is the simulator's (it has no bytes of its own);
#: ``ui_stream`` (the Vercel AI SDK's UI messages) is only ever a client's.
WireFormat = Literal["openai_chat", "anthropic_messages", "openai_responses", "sluice", "ui_stream"]
Role = Literal["system", "developer", "user", "assistant", "tool"]
#: The closed set of reasons a choice ends; ``Finish.native`` keeps the upstream's word.
FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "error", "other"]
#: What a request asks for: a generation, or embeddings of ``ChatRequest.input``.
Operation = Literal["chat", "embeddings"]
FINISH_REASONS: frozenset[str] = frozenset(
    {"stop", "length", "tool_calls", "content_filter", "error", "other"}
)


# -- the canonical request -------------------------------------------------------


@dataclass(slots=True)
class TextPart:
    text: str
    #: Anthropic's prompt-caching marker; forwarded to Anthropic, dropped elsewhere.
    cache_control: dict[str, Any] | None = None


@dataclass(slots=True)
class ImagePart:
    #: An ``https:`` URL or a ``data:`` URL (base64 bytes with their media type).
    url: str
    detail: str | None = None
    cache_control: dict[str, Any] | None = None


@dataclass(slots=True)
class ToolCallPart:
    id: str
    name: str
    #: The arguments as JSON text, as the model wrote them.
    arguments: str


@dataclass(slots=True)
class ToolResultPart:
    call_id: str
    content: list[TextPart | ImagePart]
    is_error: bool = False
    cache_control: dict[str, Any] | None = None


@dataclass(slots=True)
class ReasoningPart:
    text: str
    #: Anthropic's thinking signature: it must come back unchanged with the text.
    signature: str | None = None


@dataclass(slots=True)
class RedactedReasoningPart:
    data: str


@dataclass(slots=True)
class OpaquePart:
    """A part of one wire format that has no canonical meaning (OpenAI's
    ``input_audio``, Anthropic's ``document``, ...): forwarded only to that format."""

    format: WireFormat
    data: dict[str, Any]


Part = (
    TextPart
    | ImagePart
    | ToolCallPart
    | ToolResultPart
    | ReasoningPart
    | RedactedReasoningPart
    | OpaquePart
)


@dataclass(slots=True)
class Message:
    role: Role
    parts: list[Part]
    name: str | None = None


@dataclass(slots=True)
class Tool:
    name: str
    description: str | None = None
    #: JSON Schema of the arguments.
    parameters: dict[str, Any] | None = None
    strict: bool | None = None
    cache_control: dict[str, Any] | None = None


@dataclass(slots=True)
class ToolChoice:
    mode: Literal["auto", "none", "required", "tool"]
    #: The tool's name when ``mode`` is ``tool``.
    name: str | None = None


@dataclass(slots=True)
class ResponseFormat:
    type: Literal["text", "json_object", "json_schema"]
    schema: dict[str, Any] | None = None
    name: str | None = None
    strict: bool | None = None


@dataclass(slots=True)
class Reasoning:
    """A request to think first: an effort (OpenAI) or a token budget (Anthropic)."""

    effort: str | None = None
    budget_tokens: int | None = None


@dataclass(slots=True)
class ChatRequest:
    """A chat request in canonical form, whatever API the client spoke."""

    model: str
    messages: list[Message]
    stream: bool = True
    #: Instructions: Anthropic's ``system``, Responses' ``instructions``. OpenAI chat
    #: keeps its system and developer messages in place, as messages.
    system: list[TextPart] = field(default_factory=list)
    tools: list[Tool] = field(default_factory=list)
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    response_format: ResponseFormat | None = None
    reasoning: Reasoning | None = None
    #: Choices to generate (OpenAI chat's ``n``).
    n: int = 1
    #: The client asked for usage on the stream (``stream_options.include_usage``).
    include_usage: bool = False
    user: str | None = None
    #: The wire format the client spoke, which ``extra`` belongs to.
    source: WireFormat = "openai_chat"
    #: Top-level fields of ``source`` with no canonical meaning (``logprobs``,
    #: ``top_k``, ...), forwarded only to an upstream of that same format.
    extra: dict[str, Any] = field(default_factory=dict)
    #: Request headers meant for an upstream of ``source``'s format (``anthropic-beta``).
    headers: dict[str, str] = field(default_factory=dict)
    operation: Operation = "chat"
    #: What to embed (``operation == "embeddings"``): texts, or token id arrays.
    input: list[str | list[int]] = field(default_factory=list)


# -- events ----------------------------------------------------------------------


@dataclass(slots=True)
class Usage:
    #: Every input token, cached ones included (OpenAI's ``prompt_tokens``).
    input_tokens: int
    output_tokens: int
    #: How the numbers are known: "reported" by the upstream or "estimated" here.
    source: Literal["reported", "estimated"] = "reported"
    #: Of ``input_tokens``: read from the provider's prompt cache, and written to it.
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    #: Of ``output_tokens``: spent reasoning.
    reasoning_tokens: int = 0


@dataclass(slots=True)
class Start:
    """The first event of a stream: who answers, under which id and model name."""

    format: WireFormat
    id: str
    model: str
    created: int = 0
    #: Input usage when the upstream reports it up front (Anthropic's message_start).
    usage: Usage | None = None
    #: Response-level fields of ``format`` (``system_fingerprint``, ``service_tier``).
    extra: dict[str, Any] | None = None


@dataclass(slots=True)
class TextDelta:
    text: str
    #: The part of the choice's output this belongs to (Anthropic's content block
    #: index, Responses' output item): parts are numbered from 0 in the order they start.
    index: int = 0
    choice: int = 0
    #: OpenAI's token logprobs for this text, as the upstream sent them.
    logprobs: list[Any] | None = None


@dataclass(slots=True)
class RefusalDelta:
    text: str
    index: int = 0
    choice: int = 0


@dataclass(slots=True)
class ReasoningDelta:
    text: str
    index: int = 0
    choice: int = 0
    #: The signature of the whole reasoning part, sent once it is known.
    signature: str | None = None


@dataclass(slots=True)
class RedactedReasoning:
    """A reasoning part the upstream sent encrypted: one event, the whole part."""

    data: str
    index: int = 0
    choice: int = 0


@dataclass(slots=True)
class ToolCallDelta:
    #: The part index (as for text); a tool call is one part.
    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""
    choice: int = 0


@dataclass(slots=True)
class Annotations:
    """Citations and the like that came with a choice's text (OpenAI's ``annotations``)."""

    items: list[Any]
    index: int = 0
    choice: int = 0


@dataclass(slots=True)
class Embedding:
    """One input's embedding: floats, or the upstream's base64 text of them."""

    index: int
    vector: list[float] | str


@dataclass(slots=True)
class PartEnd:
    index: int
    choice: int = 0


@dataclass(slots=True)
class Finish:
    reason: FinishReason = "stop"
    #: The upstream's own word for it (``end_turn``, ``max_tokens``, ...).
    native: str | None = None
    choice: int = 0
    #: Anthropic's ``stop_sequence``: which stop string ended it.
    stop_sequence: str | None = None


@dataclass(slots=True)
class StreamError:
    """A failure after the stream started; dialects render it in-band."""

    message: str
    code: str = "upstream_error"
    type: str = "upstream_error"


@dataclass(slots=True)
class Verbatim:
    """Bytes of ``format`` passed along unread: ``count`` whole upstream events.

    An encoder of the same format (with passthrough) writes ``data`` as it is; every
    other consumer reads the events: ``events`` when the upstream side decoded them
    anyway, else ``decode(data)``. They are never a ``Start`` or another ``Verbatim``,
    and a Verbatim that holds a ``Usage``, ``Finish`` or ``StreamError`` always has
    ``events`` (so the relay can account without decoding the plain ones).
    """

    format: WireFormat
    data: bytes
    count: int
    decode: Callable[[bytes], list[StreamEvent]] | None = None
    events: list[StreamEvent] | None = None

    def expanded(self) -> list[StreamEvent]:
        if self.events is not None:
            return self.events
        assert self.decode is not None
        return self.decode(self.data)


StreamEvent = (
    Start
    | TextDelta
    | RefusalDelta
    | ReasoningDelta
    | RedactedReasoning
    | ToolCallDelta
    | Annotations
    | Embedding
    | PartEnd
    | Usage
    | Finish
    | StreamError
    | Verbatim
)

#: What one upstream read gave: events that arrived together are written together.
Batch = list[StreamEvent]


def expand(batch: Batch) -> Batch:
    """``batch`` with each ``Verbatim`` replaced by its events; ``batch`` itself if it
    has none."""
    if Verbatim not in map(type, batch):
        return batch
    out: Batch = []
    for event in batch:
        if type(event) is Verbatim:
            out.extend(event.expanded())
        else:
            out.append(event)
    return out


# -- token estimates -------------------------------------------------------------

#: About four characters to a token for English text.
CHARS_PER_TOKEN = 4


def part_chars(part: Part) -> int:
    kind = type(part)
    if kind is TextPart:
        return len(part.text)  # type: ignore[union-attr]
    if kind is ToolCallPart:
        return len(part.name) + len(part.arguments)  # type: ignore[union-attr]
    if kind is ToolResultPart:
        content: list[TextPart | ImagePart] = part.content  # type: ignore[union-attr]
        return sum(len(p.text) for p in content if isinstance(p, TextPart))
    if kind is ReasoningPart:
        return len(part.text)  # type: ignore[union-attr]
    if kind is ImagePart:
        return 85 * CHARS_PER_TOKEN  # OpenAI's low-detail image cost, a floor
    return 0


def prompt_chars(request: ChatRequest) -> int:
    chars = sum(len(p.text) for p in request.system)
    for item in request.input:
        # A token id array is already tokens: count it as that many tokens' characters.
        chars += len(item) if isinstance(item, str) else len(item) * CHARS_PER_TOKEN
    for message in request.messages:
        for part in message.parts:
            chars += part_chars(part)
    for tool in request.tools or ():
        # Definitions are prompt too: every upstream renders them into the model's input.
        chars += len(tool.name) + len(tool.description or "")
        if tool.parameters:
            chars += len(orjson.dumps(tool.parameters))
    return chars


def estimate_input_tokens(request: ChatRequest) -> int:
    """The one estimate of a prompt's tokens (never zero), used wherever the real
    number is not known: rate-limit charges, usage of a cut stream, ``count_tokens``."""
    return max(1, (prompt_chars(request) + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN)


def message_text(message: Message) -> str:
    return " ".join(p.text for p in message.parts if isinstance(p, TextPart))


def transcript(request: ChatRequest) -> list[dict[str, Any]]:
    """The conversation as the record stores it: ``{"role", "content"}`` per message,
    the content a string when the message is only text, else its parts."""
    out: list[dict[str, Any]] = []
    if request.system:
        out.append({"role": "system", "content": "\n\n".join(p.text for p in request.system)})
    for message in request.messages:
        if all(isinstance(p, TextPart) for p in message.parts):
            out.append({"role": message.role, "content": message_text(message)})
        else:
            parts = [{"type": type(p).__name__, **_fields(p)} for p in message.parts]
            out.append({"role": message.role, "content": parts})
    return out


def _fields(part: Part) -> dict[str, Any]:
    return {k: getattr(part, k) for k in part.__slots__ if getattr(part, k) is not None}
