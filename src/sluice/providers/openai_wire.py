"""The upstream side of OpenAI's ``chat.completion.chunk``, decoded into typed structs.

msgspec decodes only the fields named here, skipping the rest without building dicts
for them: on this workload about twice as fast as a generic JSON parse followed by
dict lookups, and it checks the types on the way. The structs never form reference
cycles, so the cyclic garbage collector does not track them (``gc=False``).

Cheaper still is not mapping to events at all: ``plain_chunks`` recognises a read made
only of content chunks, passed along as one ``Chunks`` event, and ``expand`` maps it to
events for the consumers that need them.
"""

from __future__ import annotations

from typing import Any

import msgspec

from sluice.errors import UpstreamProtocolError
from sluice.events import (
    Chunks,
    Finish,
    ReasoningDelta,
    StreamEvent,
    TextDelta,
    ToolCallDelta,
    Usage,
)


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
    tool_calls: list[_ToolCall] | None = None


class _Choice(msgspec.Struct, gc=False):
    index: int = 0
    delta: _Delta | None = None
    finish_reason: str | None = None


class _Usage(msgspec.Struct, gc=False):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class Chunk(msgspec.Struct, gc=False):
    choices: list[_Choice] | None = None
    usage: _Usage | None = None
    #: Some servers report a late failure as ``data: {"error": …}``.
    error: Any = None


decode_chunk = msgspec.json.Decoder(Chunk).decode
DecodeError = msgspec.DecodeError


def chunk_events(chunk: Chunk, raw: bytes, out: list[StreamEvent]) -> None:
    """Map one chunk to events, appended to ``out``.

    ``raw`` rides on the event only when the chunk maps to exactly one event, so a
    dialect that forwards raw payloads never forwards one twice.
    """
    start = len(out)
    for choice in chunk.choices or ():
        if choice.index != 0:
            continue
        delta = choice.delta
        if delta is not None:
            reasoning = delta.reasoning_content or delta.reasoning
            if reasoning:
                out.append(ReasoningDelta(reasoning))
            content = delta.content
            if content is not None or (not reasoning and delta.role is not None):
                out.append(TextDelta(content or ""))
            if delta.tool_calls:
                for call in delta.tool_calls:
                    function = call.function
                    out.append(
                        ToolCallDelta(
                            index=call.index,
                            id=call.id,
                            name=function.name if function else None,
                            arguments=(function.arguments or "") if function else "",
                        )
                    )
        if choice.finish_reason:
            out.append(Finish(choice.finish_reason))
    usage = chunk.usage
    if usage is not None:
        out.append(Usage(usage.prompt_tokens or 0, usage.completion_tokens or 0))
    if len(out) - start == 1:
        out[start].raw = raw


def not_a_chunk(exc: Exception) -> UpstreamProtocolError:
    """The error for an upstream event that does not decode as a chunk."""
    return UpstreamProtocolError(
        f"the upstream sent an event that is not a chat completion chunk: {exc}"
    )


class _PlainChoice(msgspec.Struct, gc=False):
    index: int = 0
    delta: _Delta | None = None
    finish_reason: None = None


class _PlainChunk(msgspec.Struct, gc=False):
    """``Chunk`` as it must be for ``plain_chunks``: the same fields and types, except
    that finish_reason, usage and error may only be null (or absent)."""

    choices: list[_PlainChoice] | None = None
    usage: None = None
    error: None = None


_check_plain = msgspec.json.Decoder(_PlainChunk).decode


def plain_chunks(data: bytes) -> Chunks | None:
    """``data`` as one ``Chunks`` event if it is only whole content chunks, else None.

    ``data`` is one upstream read. It qualifies when it is a run of complete SSE events,
    each one ``data: `` line (LF only), whose payloads are chat completion chunks with
    no finish_reason, usage or error: forwarding it unchanged is then the same as
    forwarding each payload, and ``expand`` gives exactly the events that decoding it
    the usual way would. None means "decode it the usual way"; it may say None to a read
    that would have qualified (a ``"choices": null`` chunk, say), never the other way.

    ``data`` must start at an event boundary: give it only reads that come while the
    SSE decoder holds nothing of an earlier one (a read that starts inside an event can
    look like whole events).
    """
    # Framing: with no CR, and no LF but the two ending each ``data: `` event (as many
    # LFs as the split found events, twice), every event is one ``data: `` line, and
    # its payload is what the SSE decoder would give.
    if data[:6] != b"data: " or data[-2:] != b"\n\n" or b"\r" in data:
        return None
    payloads = data[6:-2].split(b"\n\ndata: ")
    if data.count(b"\n") != 2 * len(payloads):
        return None
    # Content: every payload decodes as a ``_PlainChunk``, so it decodes as a ``Chunk``
    # too (same fields, same or looser types) and maps to no Finish, Usage or error.
    # Searching the bytes for those keys instead costs about as much as decoding them
    # here, and a malformed payload would get through. ``map`` runs the decoder over the
    # payloads in C: no Python code runs per event. A duplicate key must be null at
    # every occurrence, since each is checked as it is read.
    try:
        list(map(_check_plain, payloads))
    except (DecodeError, UnicodeDecodeError):  # msgspec raises the latter for bad UTF-8
        return None
    return Chunks(data, len(payloads))


def expand(batch: list[StreamEvent]) -> list[StreamEvent]:
    """``batch`` with each ``Chunks`` decoded into the events its chunks map to, as
    ``chunk_events`` makes them (``raw`` included); ``batch`` itself if it has none."""
    if Chunks not in map(type, batch):
        return batch
    out: list[StreamEvent] = []
    for event in batch:
        if type(event) is not Chunks:
            out.append(event)
            continue
        # ``data: P1\n\ndata: P2\n\n...``: no payload holds an LF, so this splits exactly.
        for payload in event.data[6:-2].split(b"\n\ndata: "):
            try:
                chunk = decode_chunk(payload)
            except (DecodeError, UnicodeDecodeError) as exc:
                raise not_a_chunk(exc) from exc
            chunk_events(chunk, payload, out)
    return out
