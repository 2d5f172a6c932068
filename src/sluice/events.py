"""The shared vocabulary: the canonical request and the stream events.

Providers turn an upstream wire format into ``StreamEvent`` values; dialects turn
them into a client wire format. No other module knows a wire format.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Role = Literal["system", "developer", "user", "assistant", "tool"]
FinishReason = str  # "stop", "length", "tool_calls", "content_filter", "error", ...


@dataclass(slots=True)
class ChatRequest:
    """A chat request in canonical form, whatever API the client spoke."""

    model: str
    messages: list[dict[str, Any]]
    stream: bool = True
    #: Sampling and tool fields passed through to OpenAI-compatible upstreams as given
    #: (temperature, top_p, max_tokens, stop, seed, tools, tool_choice, ...).
    options: dict[str, Any] = field(default_factory=dict)
    #: The client asked for the usage chunk (``stream_options.include_usage``).
    include_usage: bool = False
    user: str | None = None


@dataclass(slots=True)
class TextDelta:
    text: str
    #: The upstream's original ``data:`` payload, when it came from an OpenAI-shaped
    #: stream and mapped to this one event; a dialect speaking the same wire format
    #: may forward it unchanged instead of encoding the event again.
    raw: bytes | None = None


@dataclass(slots=True)
class ReasoningDelta:
    text: str
    raw: bytes | None = None


@dataclass(slots=True)
class ToolCallDelta:
    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""
    raw: bytes | None = None


@dataclass(slots=True)
class Usage:
    input_tokens: int
    output_tokens: int
    #: How the numbers are known: "reported" by the upstream or "estimated" here.
    source: Literal["reported", "estimated"] = "reported"
    raw: bytes | None = None


@dataclass(slots=True)
class Finish:
    reason: FinishReason = "stop"
    raw: bytes | None = None


@dataclass(slots=True)
class StreamError:
    """A failure after the stream started; dialects render it in-band."""

    message: str
    code: str = "upstream_error"
    type: str = "upstream_error"
    raw: bytes | None = None


@dataclass(slots=True)
class Chunks:
    """OpenAI chat.completion.chunk events passed along unread.

    ``data`` is ``count`` complete SSE events (``data: {...}\n\n`` each), exactly as the
    upstream sent them; each carries only deltas (no finish_reason, usage or error).
    A dialect speaking OpenAI's format with passthrough writes ``data`` as is;
    every other consumer turns it into events with ``sluice.providers.openai_wire.expand``.
    """

    data: bytes
    count: int
    #: Always None: here only so that every event has a ``raw``.
    raw: bytes | None = None


StreamEvent = TextDelta | ReasoningDelta | ToolCallDelta | Usage | Finish | StreamError | Chunks


@dataclass(slots=True)
class StreamStart:
    """What a provider knows once the upstream accepted the request."""

    id: str
    model: str
    created: int
