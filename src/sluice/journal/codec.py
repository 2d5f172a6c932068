"""Compact bytes for journal entries: one batch, or the end of a journal.

Batches are ``[[elapsed_ms, [event, ...]], ...]`` in JSON, each event a short array led
by a one-letter tag. A replayed or followed stream is always encoded again by the reader's dialect.
"""

from __future__ import annotations

from typing import Any

import orjson

from sluice import errors
from sluice.errors import SluiceError
from sluice.events import (
    Annotations,
    Batch,
    Embedding,
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
)


def _event(event: StreamEvent) -> list[Any]:
    kind = type(event)
    if kind is TextDelta:
        t: TextDelta = event  # type: ignore[assignment]
        if t.logprobs is None and not t.index and not t.choice:
            return ["t", t.text]
        return ["t", t.text, t.index, t.choice, t.logprobs]
    if kind is PartEnd:
        return ["p", event.index, event.choice]  # type: ignore[union-attr]
    if kind is ReasoningDelta:
        r: ReasoningDelta = event  # type: ignore[assignment]
        return ["r", r.text, r.index, r.choice, r.signature]
    if kind is ToolCallDelta:
        e: ToolCallDelta = event  # type: ignore[assignment]
        return ["c", e.index, e.id, e.name, e.arguments, e.choice]
    if kind is Usage:
        u: Usage = event  # type: ignore[assignment]
        return [
            "u",
            u.input_tokens,
            u.output_tokens,
            u.source,
            u.cached_tokens,
            u.cache_write_tokens,
            u.reasoning_tokens,
        ]
    if kind is Finish:
        f: Finish = event  # type: ignore[assignment]
        return ["f", f.reason, f.native, f.choice, f.stop_sequence]
    if kind is Start:
        s: Start = event  # type: ignore[assignment]
        usage = _event(s.usage) if s.usage is not None else None
        return ["s", s.format, s.id, s.model, s.created, usage, s.extra]
    if kind is StreamError:
        x: StreamError = event  # type: ignore[assignment]
        return ["e", x.message, x.code, x.type]
    if kind is RefusalDelta:
        d: RefusalDelta = event  # type: ignore[assignment]
        return ["x", d.text, d.index, d.choice]
    if kind is RedactedReasoning:
        g: RedactedReasoning = event  # type: ignore[assignment]
        return ["R", g.data, g.index, g.choice]
    if kind is Embedding:
        m: Embedding = event  # type: ignore[assignment]
        return ["m", m.index, m.vector]
    if kind is Annotations:
        a: Annotations = event  # type: ignore[assignment]
        return ["a", a.items, a.index, a.choice]
    # A journal expands Verbatim as it is written (``Journal.append``); nothing else is
    # stored.
    raise TypeError(f"a journal cannot store a {kind.__name__} event")


def encode_batches(items: list[tuple[float, Batch]]) -> bytes:
    """Consecutive batches, each with its elapsed seconds: ``[[ms, [event, ...]], ...]``."""
    return orjson.dumps(
        [[round(elapsed * 1000), [_event(e) for e in batch]] for elapsed, batch in items]
    )


def _decode_event(item: list[Any]) -> StreamEvent:
    tag = item[0]
    if tag == "t":
        return TextDelta(*item[1:])
    if tag == "p":
        return PartEnd(*item[1:])
    if tag == "r":
        return ReasoningDelta(*item[1:])
    if tag == "c":
        return ToolCallDelta(*item[1:])
    if tag == "u":
        return Usage(*item[1:])
    if tag == "f":
        return Finish(*item[1:])
    if tag == "s":
        usage = item[5]
        decoded = _decode_event(usage) if usage else None
        assert decoded is None or type(decoded) is Usage
        return Start(item[1], item[2], item[3], item[4], decoded, item[6])
    if tag == "e":
        return StreamError(*item[1:])
    if tag == "x":
        return RefusalDelta(*item[1:])
    if tag == "R":
        return RedactedReasoning(*item[1:])
    if tag == "m":
        return Embedding(*item[1:])
    if tag == "a":
        return Annotations(*item[1:])
    raise ValueError(f"unknown journal event tag {tag!r}")


def decode_batches(data: bytes | str) -> list[tuple[float, Batch]]:
    return [
        (elapsed_ms / 1000, [_decode_event(item) for item in events])
        for elapsed_ms, events in orjson.loads(data)
    ]


def error_fields(exc: SluiceError) -> dict[str, Any]:
    return {
        "class": type(exc).__name__,
        "message": exc.message,
        "status": exc.status,
        "type": exc.type,
        "code": exc.code,
        "param": exc.param,
        "headers": exc.headers,
    }


def _error_class(name: str) -> type[SluiceError]:
    # Errors raised by generations are the error tree's, or the journal's own.
    from sluice import journal

    for module in (errors, journal):
        found = getattr(module, name, None)
        if isinstance(found, type) and issubclass(found, SluiceError):
            return found
    return SluiceError


def error_from_fields(fields: dict[str, Any]) -> SluiceError:
    cls = _error_class(str(fields.get("class", "")))
    exc = cls(
        str(fields.get("message", "")),
        param=fields.get("param"),
        code=fields.get("code"),
        status=fields.get("status"),
        headers=dict(fields.get("headers") or {}),
    )
    if fields.get("type"):
        exc.type = str(fields["type"])
    return exc


def copy_error(exc: SluiceError) -> SluiceError:
    """A fresh instance of ``exc`` for one more reader (tracebacks are per raise)."""
    return error_from_fields(error_fields(exc))


def encode_end(state: str, error: SluiceError | None) -> bytes:
    return orjson.dumps({"state": state, "error": error_fields(error) if error else None})


def decode_end(data: bytes | str) -> tuple[str, SluiceError | None]:
    fields = orjson.loads(data)
    error = fields.get("error")
    return str(fields["state"]), (error_from_fields(error) if error else None)
