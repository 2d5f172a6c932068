"""Compact bytes for journal entries: one batch, or the end of a journal.

Batches are ``[[elapsed_ms, [event, ...]], ...]`` in JSON, each event a short array led
by a one-letter tag. The upstream's ``raw`` payloads are left out: a replayed or followed
stream is always encoded again by the reader's dialect, for its own response id.
"""

from __future__ import annotations

from typing import Any

import orjson

from sluice import errors
from sluice.errors import SluiceError
from sluice.events import (
    Finish,
    ReasoningDelta,
    StreamError,
    StreamEvent,
    TextDelta,
    ToolCallDelta,
    Usage,
)
from sluice.providers import Batch


def _event(event: StreamEvent) -> list[Any]:
    kind = type(event)
    if kind is TextDelta:
        return ["t", event.text]  # type: ignore[union-attr]
    if kind is ReasoningDelta:
        return ["r", event.text]  # type: ignore[union-attr]
    if kind is ToolCallDelta:
        e: ToolCallDelta = event  # type: ignore[assignment]
        return ["c", e.index, e.id, e.name, e.arguments]
    if kind is Usage:
        u: Usage = event  # type: ignore[assignment]
        return ["u", u.input_tokens, u.output_tokens, u.source]
    if kind is Finish:
        return ["f", event.reason]  # type: ignore[union-attr]
    if kind is StreamError:
        s: StreamError = event  # type: ignore[assignment]
        return ["e", s.message, s.code, s.type]
    # A journal expands Chunks as it is written (``Journal.append``); nothing else is
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
        return TextDelta(item[1])
    if tag == "r":
        return ReasoningDelta(item[1])
    if tag == "c":
        return ToolCallDelta(index=item[1], id=item[2], name=item[3], arguments=item[4])
    if tag == "u":
        return Usage(item[1], item[2], item[3])
    if tag == "f":
        return Finish(item[1])
    if tag == "e":
        return StreamError(item[1], item[2], item[3])
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
