"""Scenarios of the test upstream's ``POST /v1/messages`` (Anthropic's Messages API), and
the pure functions tests use to check them.

A request picks its scenario as on the OpenAI side: its ``model`` is ``NAME`` or
``NAME:k=v,k=v``, and the ``x-upstream-scenario`` header overrides it. Unknown names get
a 404 ``not_found_error``, bad parameters a 400, both in Anthropic's error shape
(``{"type": "error", "error": {"type", "message"}}``). Everything is deterministic.

Streams are framed as Anthropic frames them: ``event: NAME`` and one ``data:`` line of
compact JSON whose ``type`` is ``NAME``, LF line endings. Each opens with
``message_start`` (usage with ``input_tokens``, ``cache_read_input_tokens`` and
``cache_creation_input_tokens``, and ``output_tokens: 1``) and a ``ping``; then content
blocks, each ``content_block_start``, deltas and ``content_block_stop`` (block ``i`` has
``index: i``); then ``message_delta`` (``stop_reason``, ``stop_sequence``, usage with
``output_tokens``) and ``message_stop``. Without ``stream`` the answer is one
``message`` object.

Usage: ``input_tokens`` is the number of whitespace-separated words of the request's
``system`` and message texts (cache reads and writes are not in it, as with Anthropic);
``output_tokens`` the number of deltas (text, thinking and tool input pieces).

Scenarios (parameters with defaults):

``normal`` (n=10, stop=end_turn, cache_read=0, cache_write=0, cache_at=start, interval=0.0)
    One text block of ``n`` deltas ``word0``, `` word1``, ...; ``stop`` is the
    ``stop_reason`` (``stop_sequence`` comes with ``stop_sequence: "STOP"``);
    ``cache_read`` and ``cache_write`` are the cache counts of ``message_start``, or
    with ``cache_at=delta`` of ``message_delta`` (with ``input_tokens`` again, as some
    Anthropic-compatible servers report them; ``message_start`` then has no cache
    counts); each event is its own write, ``interval`` seconds after the one before.
``multibyte`` (interval=0.002)
    ``MULTIBYTE_CHUNKS`` as text deltas; the body is cut inside every multi-byte
    character and every ``data:``, each piece its own HTTP chunk and TCP write,
    ``interval`` seconds apart.
``thinking`` (steps=3, n=3)
    A thinking block of ``steps`` ``thinking_delta`` (``think0``, `` think1``, ...) and
    a ``signature_delta`` (``SIGNATURE``), then a text block of ``n`` deltas.
``redacted`` (n=3)
    A ``redacted_thinking`` block (``REDACTED``), then a text block of ``n`` deltas.
``tool_use`` (calls=1)
    A text block (``TOOL_PREAMBLE``), then ``calls`` (1 or 2) ``tool_use`` blocks from
    ``TOOL_CALLS``, each input sent as ``input_json_delta`` pieces; ``stop_reason`` is
    ``tool_use``.
``overloaded`` (after=3)
    ``after`` text deltas, then ``event: error`` with an ``overloaded_error`` and a
    clean end of the HTTP body. Without ``stream``: a 529.
``drop`` (after=3, rst=0)
    ``after`` text deltas, then the server closes the connection (``rst=1``: resets it).
``truncated`` (after=3)
    ``after`` text deltas, then a clean end of the HTTP body without ``message_stop``.
``bare_error`` (after=3, typed=1)
    ``after`` text deltas, then an error as a ``data:`` line with no ``event:`` line
    (``typed=1``: ``{"type": "error", "error": {...overloaded_error...}}``; ``typed=0``:
    ``{"error": {...api_error...}}`` alone, as some proxies write it), then a clean
    end of the HTTP body.
``error_status`` (status=500, retry_after=1.0)
    An Anthropic error body with that status (``ERROR_TYPES``; 529 is
    ``overloaded_error``); a 429 also sends ``retry-after`` (whole seconds, rounded up).
``prompt_too_long`` (no parameters)
    A 400 ``invalid_request_error``: ``prompt is too long: ...``, as Anthropic answers
    when the prompt does not fit the context window.

``POST /v1/messages/count_tokens`` answers ``{"input_tokens": N}``, ``N`` counted as
``input_tokens`` above (words of ``system`` and message texts) plus ``COUNT_EXTRA``
for every tool, so a count is told apart from a character estimate. Its ``model``
picks a scenario the same way: ``error_status`` answers that error, ``prompt_too_long``
its 400, any other known scenario the count; no ``max_tokens`` is needed.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from tests.upstream.scenarios import (
    MULTIBYTE_CHUNKS,
    BadScenario,
    ParamValue,
    Spec,
    parse_with,
)

SCENARIOS: dict[str, dict[str, ParamValue]] = {
    "normal": {
        "n": 10,
        "stop": "end_turn",
        "cache_read": 0,
        "cache_write": 0,
        "cache_at": "start",
        "interval": 0.0,
    },
    "multibyte": {"interval": 0.002},
    "thinking": {"steps": 3, "n": 3},
    "redacted": {"n": 3},
    "tool_use": {"calls": 1},
    "overloaded": {"after": 3},
    "drop": {"after": 3, "rst": 0},
    "truncated": {"after": 3},
    "bare_error": {"after": 3, "typed": 1},
    "error_status": {"status": 500, "retry_after": 1.0},
    "prompt_too_long": {},
}
#: Scenarios that stream ``after`` text deltas and then fail.
FAILING = frozenset({"overloaded", "drop", "truncated", "bare_error"})
STOP_REASONS = frozenset({"end_turn", "max_tokens", "stop_sequence", "tool_use", "refusal"})
STOP_SEQUENCE = "STOP"
SIGNATURE = "c2lnbmF0dXJlLW9mLXRoZS10aGlua2luZw=="
REDACTED = "EmwKAhgBEgy3va3pzix/LafPsn4aDFIT2Xlxh0L5L8rLVyIwxtE3rAFBa8cr3qpP"
TOOL_PREAMBLE = "Let me look."


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    pieces: tuple[str, ...]

    @property
    def arguments(self) -> str:
        return "".join(self.pieces)


TOOL_CALLS = (
    ToolCall("toolu_01", "get_weather", ('{"city', '": "Par', 'is", "unit": "cel', 'sius"}')),
    ToolCall("toolu_02", "get_time", ('{"tz": "Eur', "ope/Par", 'is"}')),
)

ERROR_TYPES: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "Simulated bad request."),
    401: ("authentication_error", "invalid x-api-key"),
    403: ("permission_error", "Simulated denial."),
    404: ("not_found_error", "model: simulated missing model"),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: ("rate_limit_error", "Simulated rate limit reached."),
    500: ("api_error", "Internal server error"),
    529: ("overloaded_error", "Overloaded"),
}
PROMPT_TOO_LONG = "prompt is too long: 200001 tokens > 200000 maximum"
#: Tokens ``count_tokens`` adds per tool definition.
COUNT_EXTRA = 100


@lru_cache(maxsize=1024)
def parse_spec(text: str) -> Spec:
    """Parse ``NAME`` or ``NAME:k=v,k=v``; raises UnknownScenario or BadScenario."""
    spec = parse_with(text, SCENARIOS)
    for key, value in spec.params:
        if isinstance(value, int | float) and value < 0:
            raise BadScenario(f"parameter {key!r} must not be negative")
    if spec.name == "error_status" and not 400 <= spec.integer("status") <= 599:
        raise BadScenario("parameter 'status' must be between 400 and 599")
    if spec.name == "normal" and spec.text("stop") not in STOP_REASONS:
        raise BadScenario(f"parameter 'stop' must be one of {', '.join(sorted(STOP_REASONS))}")
    if spec.name == "tool_use" and not 1 <= spec.integer("calls") <= len(TOOL_CALLS):
        raise BadScenario(f"parameter 'calls' must be between 1 and {len(TOOL_CALLS)}")
    if spec.name == "normal" and spec.text("cache_at") not in ("start", "delta"):
        raise BadScenario("parameter 'cache_at' must be start or delta")
    return spec


def _words(prefix: str, count: int) -> list[str]:
    return [f"{' ' if i else ''}{prefix}{i}" for i in range(count)]


@dataclass
class Block:
    """One content block: what ``content_block_start`` says and the deltas after it."""

    start: dict[str, Any]
    deltas: list[dict[str, Any]] = field(default_factory=list)


def _text_block(texts: list[str]) -> Block:
    return Block({"type": "text", "text": ""}, [{"type": "text_delta", "text": t} for t in texts])


def text_chunks(spec: Spec) -> list[str]:
    """The text deltas the scenario streams (for failing ones: those before the failure)."""
    name = spec.name
    if name in FAILING:
        return _words("word", spec.integer("after"))
    if name == "multibyte":
        return list(MULTIBYTE_CHUNKS)
    if name in ("thinking", "redacted", "normal"):
        return _words("word", spec.integer("n"))
    if name == "tool_use":
        return [TOOL_PREAMBLE]
    return []


def expected_text(model: str) -> str:
    return "".join(text_chunks(parse_spec(model)))


def thinking_chunks(spec: Spec) -> list[str]:
    return _words("think", spec.integer("steps")) if spec.name == "thinking" else []


def expected_thinking(model: str) -> str:
    return "".join(thinking_chunks(parse_spec(model)))


def tool_calls(spec: Spec) -> tuple[ToolCall, ...]:
    return TOOL_CALLS[: spec.integer("calls")] if spec.name == "tool_use" else ()


def blocks(spec: Spec) -> list[Block]:
    out: list[Block] = []
    if spec.name == "thinking":
        deltas = [{"type": "thinking_delta", "thinking": t} for t in thinking_chunks(spec)]
        deltas.append({"type": "signature_delta", "signature": SIGNATURE})
        out.append(Block({"type": "thinking", "thinking": ""}, deltas))
    if spec.name == "redacted":
        out.append(Block({"type": "redacted_thinking", "data": REDACTED}))
    out.append(_text_block(text_chunks(spec)))
    for call in tool_calls(spec):
        start = {"type": "tool_use", "id": call.id, "name": call.name, "input": {}}
        pieces = [{"type": "input_json_delta", "partial_json": p} for p in call.pieces]
        out.append(Block(start, pieces))
    return out


def stop_reason(spec: Spec) -> str:
    if spec.name == "tool_use":
        return "tool_use"
    if spec.name == "normal":
        return spec.text("stop")
    return "end_turn"


def output_tokens(spec: Spec) -> int:
    return sum(1 for block in blocks(spec) for d in block.deltas if d["type"] != "signature_delta")


def input_tokens(body: Mapping[str, Any]) -> int:
    """Words in the request's ``system`` and message texts."""
    total = 0
    texts: list[Any] = []
    system = body.get("system")
    texts.extend(system if isinstance(system, list) else [system])
    messages = body.get("messages")
    for message in messages if isinstance(messages, list) else ():
        content = message.get("content") if isinstance(message, dict) else None
        texts.extend(content if isinstance(content, list) else [content])
    for item in texts:
        text = item.get("text") if isinstance(item, dict) else item
        if isinstance(text, str):
            total += len(text.split())
    return total


def message_id(model: str) -> str:
    return "msg_" + hashlib.sha256(model.encode()).hexdigest()[:24]


def _cache(spec: Spec, prompt: int) -> dict[str, int]:
    read = spec.integer("cache_read") if spec.name == "normal" else 0
    write = spec.integer("cache_write") if spec.name == "normal" else 0
    return {
        "input_tokens": prompt,
        "cache_creation_input_tokens": write,
        "cache_read_input_tokens": read,
    }


def _cache_at_delta(spec: Spec) -> bool:
    return spec.name == "normal" and spec.text("cache_at") == "delta"


def usage_start(spec: Spec, prompt: int) -> dict[str, int]:
    if _cache_at_delta(spec):
        return {"input_tokens": prompt, "output_tokens": 1}
    return {**_cache(spec, prompt), "output_tokens": 1}


def count_tokens(body: Mapping[str, Any]) -> int:
    """What ``POST /v1/messages/count_tokens`` answers for ``body``."""
    tools = body.get("tools")
    return input_tokens(body) + COUNT_EXTRA * (len(tools) if isinstance(tools, list) else 0)


def _message(spec: Spec, model: str, prompt: int) -> dict[str, Any]:
    return {
        "id": message_id(model),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": usage_start(spec, prompt),
    }


def events(spec: Spec, model: str, prompt: int) -> list[tuple[str, dict[str, Any]]]:
    """Every event of the stream as ``(name, data)``; a failing scenario's stops after
    its text deltas (the failure itself is the server's)."""
    out: list[tuple[str, dict[str, Any]]] = [
        ("message_start", {"type": "message_start", "message": _message(spec, model, prompt)}),
        ("ping", {"type": "ping"}),
    ]
    for index, block in enumerate(blocks(spec)):
        start = {"type": "content_block_start", "index": index, "content_block": block.start}
        out.append(("content_block_start", start))
        for delta in block.deltas:
            event = {"type": "content_block_delta", "index": index, "delta": delta}
            out.append(("content_block_delta", event))
        if spec.name in FAILING:
            return out
        out.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
    reason = stop_reason(spec)
    delta = {
        "stop_reason": reason,
        "stop_sequence": STOP_SEQUENCE if reason == "stop_sequence" else None,
    }
    usage: dict[str, int] = {"output_tokens": output_tokens(spec)}
    if _cache_at_delta(spec):
        usage = {**_cache(spec, prompt), **usage}
    out.append(("message_delta", {"type": "message_delta", "delta": delta, "usage": usage}))
    out.append(("message_stop", {"type": "message_stop"}))
    return out


def encode(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


def sse_event(name: str, data: dict[str, Any]) -> bytes:
    # Anthropic writes its pings with a space after the colon; the rest compact.
    payload = b'{"type": "ping"}' if name == "ping" else encode(data)
    return b"event: " + name.encode() + b"\ndata: " + payload + b"\n\n"


@lru_cache(maxsize=256)
def stream_events(spec: Spec, model: str, prompt: int) -> tuple[bytes, ...]:
    return tuple(sse_event(name, data) for name, data in events(spec, model, prompt))


def error_event(kind: str, message: str) -> bytes:
    return sse_event("error", error_body(kind, message))


def bare_error(spec: Spec) -> bytes:
    """``bare_error``'s failure: a ``data:`` line with no ``event:`` line."""
    if spec.integer("typed"):
        data = error_body("overloaded_error", "Overloaded")
    else:
        data = {"error": {"type": "api_error", "message": "Upstream proxy failure."}}
    return b"data: " + encode(data) + b"\n\n"


def message(spec: Spec, model: str, prompt: int) -> dict[str, Any]:
    """The non-streaming answer: one ``message`` object."""
    content: list[dict[str, Any]] = []
    for block in blocks(spec):
        item = dict(block.start)
        kind = item["type"]
        if kind == "text":
            item["text"] = "".join(d["text"] for d in block.deltas)
        elif kind == "thinking":
            item["thinking"] = "".join(d.get("thinking", "") for d in block.deltas)
            item["signature"] = SIGNATURE
        elif kind == "tool_use":
            item["input"] = json.loads("".join(d["partial_json"] for d in block.deltas))
        content.append(item)
    reason = stop_reason(spec)
    body = _message(spec, model, prompt)
    body.update(
        content=content,
        stop_reason=reason,
        stop_sequence=STOP_SEQUENCE if reason == "stop_sequence" else None,
    )
    body["usage"] = {**_cache(spec, prompt), "output_tokens": output_tokens(spec)}
    return body


def error_body(kind: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}}


def status_error(status: int) -> dict[str, Any]:
    default = ("api_error" if status >= 500 else "invalid_request_error", f"Simulated {status}.")
    kind, text = ERROR_TYPES.get(status, default)
    return error_body(kind, text)


def retry_after(spec: Spec) -> list[tuple[str, str]]:
    return [("retry-after", str(math.ceil(spec.number("retry_after"))))]
