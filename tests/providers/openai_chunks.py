"""Chat completion streams as OpenAI-compatible servers send them, for property tests
of the OpenAI chat wire: hypothesis strategies, serialisers and the reads a stream
arrives in.

Each chunk is tagged with what it is, so a test knows which events a read holds:
``plain`` (one choice 0 delta of some content and maybe a role: what may pass unread),
``delta`` (any other delta, empty ones too), ``finish``, ``usage``, ``error``, ``bad``
(not JSON).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from itertools import pairwise
from typing import Any

import orjson
from hypothesis import strategies as st

Payload = dict[str, Any]
Tagged = list[tuple[str, Payload | bytes]]

# Text that tries to look like the markers the checks search for, and like framing.
TRICKS = [
    '"finish_reason":null',
    '"finish_reason": null',
    '"finish_reason":"stop"',
    "finish_reason",
    "[DONE]",
    "data: [DONE]",
    '"usage":{',
    '"usage": {"prompt_tokens":1}',
    '"usage":null',
    "usage",
    '"error"',
    "error",
    "data: {",
    "}\n\ndata: {",
    "\n\n",
    "\n",
    "\r\n",
    "\r",
    "\\",
    '\\"',
    '"',
    "\\u0075sage",
    "\u00e9",
    "\u2028",
    "\u0085",
    "\U0001f600",
    "\x00\x1f\x7f",
    "}",
]
text = st.one_of(
    st.sampled_from(TRICKS),
    st.text(max_size=8),
    st.lists(st.sampled_from(TRICKS), min_size=2, max_size=4).map("".join),
)

SERIALISERS: dict[str, Callable[[Payload], bytes]] = {
    "orjson": orjson.dumps,
    "json spaced": lambda c: json.dumps(c).encode(),
    "json spaced utf-8": lambda c: json.dumps(c, ensure_ascii=False).encode(),
    "json compact": lambda c: json.dumps(c, separators=(",", ":")).encode(),
}


def chunk(choices: list[Payload], include_usage: bool, **extra: Any) -> Payload:
    out: Payload = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "m",
        "system_fingerprint": "fp_1",
        "choices": choices,
        **extra,
    }
    if include_usage and "usage" not in out:
        out["usage"] = None
    return out


def choice(delta: Payload, finish: str | None = None, index: int = 0, **extra: Any) -> Payload:
    return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish, **extra}


ROLE: Payload = {"role": "assistant", "content": ""}
LOGPROBS: Payload = {
    "content": [{"token": "a", "logprob": -0.25, "bytes": [97], "top_logprobs": []}],
    "refusal": None,
}


@st.composite
def _delta(draw: st.DrawFn, call: list[int]) -> tuple[str, Payload, Payload]:
    """A delta, its tag and extra fields of its choice. ``call`` holds the index of the
    last tool call of the choice: as OpenAI sends them, tool calls come last and each
    streams whole before the next one starts."""
    kinds = ["content"] * 4 + ["empty", "reasoning", "refusal", "call", "annotation", "logprobs"]
    kind = "call" if call[0] >= 0 else draw(st.sampled_from(kinds))
    if kind == "content":
        content = draw(text)
        return ("plain" if content else "delta"), {"content": content}, {}
    if kind == "empty":
        return "delta", draw(st.sampled_from([{}, {"content": ""}, {"content": None}])), {}
    if kind == "reasoning":
        key = draw(st.sampled_from(["reasoning_content", "reasoning"]))
        return "delta", {key: draw(text), "content": None}, {}
    if kind == "refusal":
        return "delta", {"refusal": draw(text)}, {}
    if kind == "annotation":
        url = {"url": "https://example.com", "title": draw(text)}
        return "delta", {"annotations": [{"type": "url_citation", "url_citation": url}]}, {}
    if kind == "logprobs":
        return "delta", {"content": draw(text)}, {"logprobs": LOGPROBS}
    new = call[0] < 0 or draw(st.booleans())
    if new:
        call[0] += 1
    head = {"id": f"call_{call[0]}", "type": "function"} if new else {}
    function = {"name": "get_weather", "arguments": ""} if new else {"arguments": draw(text)}
    return "delta", {"tool_calls": [{"index": call[0], **head, "function": function}]}, {}


@st.composite
def chunk_stream(draw: st.DrawFn, choices: int = 1) -> Tagged:
    """A realistic stream of ``choices`` choices: a role chunk, deltas, finish chunks,
    maybe a usage chunk; sometimes a late error or a payload that is not JSON instead
    of the end. Without ``[DONE]``."""
    include_usage = draw(st.booleans())
    calls = [[-1] for _ in range(choices)]
    out: Tagged = [("delta", chunk([choice(ROLE, index=i)], include_usage)) for i in range(choices)]
    for _ in range(draw(st.integers(0, 14))):
        index = draw(st.integers(0, choices - 1))
        tag, delta, extra = draw(_delta(calls[index]))
        tag = "delta" if index else tag
        out.append((tag, chunk([choice(delta, None, index, **extra)], include_usage)))
    ending = draw(st.sampled_from(["finish", "finish", "finish-with-content", "error", "bad"]))
    if ending == "error":
        out.append(("error", {"error": {"message": draw(text), "type": "server_error"}}))
        return out
    if ending == "bad":
        out.append(("bad", b'{"choices": [{"delta": {"content": "cut'))
        return out
    for index in range(choices):
        reason = draw(st.sampled_from(["stop", "length", "tool_calls", "content_filter", "eos"]))
        delta = {"content": draw(text)} if ending == "finish-with-content" else {}
        out.append(("finish", chunk([choice(delta, reason, index)], include_usage)))
    if include_usage:
        usage = {
            "prompt_tokens": 7,
            "completion_tokens": 5,
            "total_tokens": 12,
            "prompt_tokens_details": {"cached_tokens": 3},
            "completion_tokens_details": {"reasoning_tokens": 2},
        }
        out.append(("usage", chunk([], False, usage=usage)))
    return out


def sse(tagged: Tagged, dumps: Callable[[Payload], bytes], eol: bytes = b"\n") -> list[bytes]:
    """Each chunk as one SSE event, then ``[DONE]``."""
    events = [b"data: " + (p if isinstance(p, bytes) else dumps(p)) + eol + eol for _, p in tagged]
    events.append(b"data: [DONE]" + eol + eol)
    return events


def reads(stream: bytes, cuts: list[int]) -> list[bytes]:
    """``stream`` cut at ``cuts`` (taken modulo its length): the reads it arrives in."""
    points = sorted({0, len(stream)} | {c % (len(stream) + 1) for c in cuts})
    return [stream[a:b] for a, b in pairwise(points) if b > a]
