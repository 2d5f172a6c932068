"""Scenarios of the test upstream, and the pure helpers tests use to check them.

A request picks its scenario with its ``model`` field, ``NAME`` or ``NAME:k=v,k=v``
(``paced:n=20,interval=0.05``); the header ``x-upstream-scenario`` (same format)
overrides it, and then ``model`` is only echoed. Unknown names get a 404
``model_not_found``; unknown parameters or bad values a 400. Everything is
deterministic: the same model string always streams the same bytes, including the
completion ``id`` (derived from the model string) and ``created`` (``CREATED``).
Content chunk ``i`` is never equal to chunk ``i - 1``. Streams use ``\\n`` line
endings unless said otherwise, and end with ``data: [DONE]``.

Usage: ``prompt_tokens`` is the number of whitespace-separated words in the
request's message contents; ``completion_tokens`` the number of content deltas
(reasoning and tool-call argument deltas count too). The usage chunk is sent only
when the request asks for it (``stream_options.include_usage``); then every earlier
chunk carries ``"usage": null``.

Scenarios (parameters with defaults):

``normal`` (n=10, finish=stop, cached=0)
    ``n`` content chunks ``word0``, `` word1``, ... written back to back. ``cached``
    above 0: the usage says that many prompt tokens were read from the cache
    (``prompt_tokens_details.cached_tokens``; ``prompt_tokens`` includes them).
``slow_first`` (n=10, delay=1.0)
    As ``normal``, after waiting ``delay`` seconds before the status line.
``slow_first_body`` (n=10, delay=1.0)
    Headers at once, then ``delay`` seconds before the first body byte.
``paced`` (n=10, interval=0.05)
    As ``normal`` with ``interval`` seconds between SSE events.
``burst`` (n=200)
    As ``normal``; the whole response body is pre-encoded once per (model, usage)
    and written in one call: the benchmark path.
``error_status`` (status=500, retry_after=1.0)
    An OpenAI-shaped JSON error with that status (400, 401, 403, 404, 429, 500,
    503, or any other 4xx/5xx). 429 also sends ``retry-after`` (whole seconds,
    rounded up) and ``retry-after-ms``.
``echo_key`` (status=401, inband=0)
    That status, with OpenAI's words for a wrong key quoting the whole key the request
    sent (``Incorrect API key provided: KEY. ...``), as a careless upstream might.
    ``inband=1`` and ``stream``: 200, then the same error as the stream's only event.
``context_length`` (no parameters)
    A 400 ``context_length_exceeded`` error, as OpenAI answers when the messages do
    not fit the model's context window.
``midstream_error`` (after=3)
    ``after`` content chunks, then ``data: {"error": {...}}`` and a clean end of the
    HTTP body without ``[DONE]``. Without ``stream``: a 500 error.
``drop`` (after=3, rst=0)
    ``after`` content chunks, then the server closes the TCP connection without the
    last HTTP chunk or ``[DONE]`` (FIN; ``rst=1`` resets it instead). Without
    ``stream``: headers with the full Content-Length, half the body, then close.
``stall`` (after=3)
    ``after`` content chunks, then nothing, until the peer closes. Without
    ``stream``: headers and half the body, then nothing.
``bad_json`` (after=3)
    ``after`` content chunks, then a ``data:`` line that is not JSON, then a clean
    end of the HTTP body without ``[DONE]``. Without ``stream``: a 500 error.
``multibyte`` (interval=0.002)
    ``MULTIBYTE_TEXT`` (2-, 3- and 4-byte UTF-8), ``\\r\\n`` line endings. The SSE
    body is cut inside every multi-byte character, inside every ``data:`` and inside
    every ``\\r\\n`` (``multibyte_pieces``); each piece is its own HTTP chunk and its
    own TCP write, ``interval`` seconds apart.
``separators`` (no parameters)
    Content with raw U+2028, U+2029 and U+0085 in the JSON strings (JSON allows
    them unescaped); a splitter using ``str.splitlines`` breaks on them.
``large`` (n=3, size=262144)
    ``n`` content chunks of ``size`` ASCII characters each.
``comments`` (n=10, interval=0.0)
    As ``normal`` with ``\\r\\n`` line endings throughout, a ``: keep-alive`` comment
    block before every event and a ``: ping`` comment line inside every odd event.
``reasoning`` (steps=4, n=4)
    ``steps`` ``reasoning_content`` deltas (``think0``, `` think1``, ...), then ``n``
    content chunks, as DeepSeek and vLLM stream them.
``tool_call`` (calls=1, text=0, whole=0, finish=tool_calls)
    ``calls`` (1 or 2) function calls from ``TOOL_CALLS`` (the first is ``get_weather``
    with ``TOOL_ARGUMENTS``), one after the other with OpenAI indices 0 and 1, their
    arguments arriving in pieces; ``finish`` is the ``finish_reason`` (some servers
    say ``stop`` after a tool call). ``text=1``: the content ``TOOL_PREAMBLE`` comes
    first (else there is no content). ``whole=1``: each call's arguments come whole
    in its first chunk, with no pieces after it.
``choices`` (n=4)
    As many choices as the request's ``n`` (1 if absent), streamed interleaved: a
    role chunk per choice, then ``n`` rounds of one content chunk per choice (choice
    ``c`` says ``c{c}w0``, `` c{c}w1``, ...; ``choice_text``), then a finish chunk per
    choice. ``completion_tokens`` counts the content deltas of every choice.
``logprobs`` (n=4)
    As ``normal``; when the request asks (``"logprobs": true``) each content chunk
    carries its token's logprobs (``token_logprobs``) with the request's
    ``top_logprobs`` alternatives (0 if absent), and the JSON answer all of them.
    Without it every choice has ``"logprobs": null``.

``POST /v1/messages`` (Anthropic's Messages API) has scenarios of its own, in
``messages.py``; they are parsed the same way (``parse_with``).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

ParamValue = int | float | str

CREATED = 1_700_000_000
SYSTEM_FINGERPRINT = "fp_test"
SCENARIO_HEADER = "x-upstream-scenario"

MULTIBYTE_CHUNKS = ("h", "é", "llo", " w", "ö", "rld", " —", " 日本", "語", " 🎉", "🚀")
MULTIBYTE_TEXT = "".join(MULTIBYTE_CHUNKS)  # "héllo wörld — 日本語 🎉🚀"
SEPARATOR_CHUNKS = ("alpha\u2028beta", "\u2029", "gamma\u0085delta", " \u2028\u2029 end")
TOOL_CALL_ID = "call_test0"
TOOL_NAME = "get_weather"
TOOL_ARGUMENT_PIECES = ('{"city', '": "Par', 'is", "un', 'it": "cel', 'sius"}')
TOOL_ARGUMENTS = "".join(TOOL_ARGUMENT_PIECES)
TOOL_PREAMBLE = "Let me look."
BAD_JSON = b'{"id": "chatcmpl-broken", "choices": [{'


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    pieces: tuple[str, ...]

    @property
    def arguments(self) -> str:
        return "".join(self.pieces)


TOOL_CALLS = (
    ToolCall(TOOL_CALL_ID, TOOL_NAME, TOOL_ARGUMENT_PIECES),
    ToolCall("call_test1", "get_time", ('{"tz": "Eur', "ope/Par", 'is"}')),
)

#: Each scenario's parameters and their defaults; a default's type is the type
#: its value must parse as.
SCENARIOS: dict[str, dict[str, ParamValue]] = {
    "normal": {"n": 10, "finish": "stop", "cached": 0},
    "slow_first": {"n": 10, "delay": 1.0},
    "slow_first_body": {"n": 10, "delay": 1.0},
    "paced": {"n": 10, "interval": 0.05},
    "burst": {"n": 200},
    "error_status": {"status": 500, "retry_after": 1.0},
    "echo_key": {"status": 401, "inband": 0},
    "context_length": {},
    "midstream_error": {"after": 3},
    "drop": {"after": 3, "rst": 0},
    "stall": {"after": 3},
    "bad_json": {"after": 3},
    "multibyte": {"interval": 0.002},
    "separators": {},
    "large": {"n": 3, "size": 262144},
    "comments": {"n": 10, "interval": 0.0},
    "reasoning": {"steps": 4, "n": 4},
    "tool_call": {"calls": 1, "text": 0, "whole": 0, "finish": "tool_calls"},
    "choices": {"n": 4},
    "logprobs": {"n": 4},
}
#: Scenarios that stream ``after`` content chunks and then fail.
FAILING = frozenset({"midstream_error", "drop", "stall", "bad_json"})


class UnknownScenario(LookupError):
    """The scenario name is not one of ``SCENARIOS``."""


class BadScenario(ValueError):
    """A parameter is unknown or its value does not parse or is out of range."""


@dataclass(frozen=True, slots=True)
class Spec:
    """A parsed scenario: its name and every parameter (defaults filled in)."""

    name: str
    params: tuple[tuple[str, ParamValue], ...]

    def get(self, key: str) -> ParamValue:
        return dict(self.params)[key]

    def integer(self, key: str) -> int:
        value = self.get(key)
        assert isinstance(value, int)
        return value

    def number(self, key: str) -> float:
        value = self.get(key)
        assert isinstance(value, float)
        return value

    def text(self, key: str) -> str:
        return str(self.get(key))


def _parse_value(key: str, raw: str, default: ParamValue) -> ParamValue:
    try:
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            value = float(raw)
            if not math.isfinite(value):
                raise ValueError(raw)
            return value
    except ValueError:
        raise BadScenario(f"parameter {key!r} must be a {type(default).__name__}") from None
    return raw


def _check(spec: Spec) -> None:
    for key, value in spec.params:
        if isinstance(value, int | float) and value < 0:
            raise BadScenario(f"parameter {key!r} must not be negative")
    if spec.name == "error_status" and not 400 <= spec.integer("status") <= 599:
        raise BadScenario("parameter 'status' must be between 400 and 599")
    if spec.name == "large" and spec.integer("size") < 1:
        raise BadScenario("parameter 'size' must be at least 1")
    if spec.name == "tool_call" and not 1 <= spec.integer("calls") <= len(TOOL_CALLS):
        raise BadScenario(f"parameter 'calls' must be between 1 and {len(TOOL_CALLS)}")


@lru_cache(maxsize=1024)
def parse_spec(text: str) -> Spec:
    """Parse ``NAME`` or ``NAME:k=v,k=v``; raises UnknownScenario or BadScenario."""
    spec = parse_with(text, SCENARIOS)
    _check(spec)
    return spec


def parse_with(text: str, table: Mapping[str, Mapping[str, ParamValue]]) -> Spec:
    """Parse ``text`` against ``table`` (scenario → parameter defaults)."""
    name, _, rest = text.strip().partition(":")
    if name not in table:
        raise UnknownScenario(name)
    defaults = table[name]
    params = dict(defaults)
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, eq, raw = item.partition("=")
        key = key.strip()
        if not eq or key not in defaults:
            raise BadScenario(f"scenario {name!r} has no parameter {key!r}")
        params[key] = _parse_value(key, raw.strip(), defaults[key])
    return Spec(name, tuple(sorted(params.items())))


def _words(prefix: str, count: int) -> list[str]:
    return [f"{' ' if i else ''}{prefix}{i}" for i in range(count)]


def _large_chunk(index: int, size: int) -> str:
    head = f"<{index}>"
    pattern = "abcdefghijklmnopqrstuvwxyz0123456789 "
    body = pattern * (size // len(pattern) + 1)
    return (head + body)[:size]


def content_chunks(spec: Spec) -> list[str]:
    """The content deltas the scenario streams (for failing ones: those before the failure)."""
    name = spec.name
    if name in FAILING:
        return _words("word", spec.integer("after"))
    if name == "multibyte":
        return list(MULTIBYTE_CHUNKS)
    if name == "separators":
        return list(SEPARATOR_CHUNKS)
    if name == "large":
        return [_large_chunk(i, spec.integer("size")) for i in range(spec.integer("n"))]
    if name == "tool_call":
        return [TOOL_PREAMBLE] if spec.integer("text") else []
    if name in ("error_status", "echo_key", "context_length"):
        return []
    if name == "choices":
        return _words("c0w", spec.integer("n"))
    return _words("word", spec.integer("n"))


def choice_count(spec: Spec, requested: int) -> int:
    """How many choices the scenario streams for a request's ``n``."""
    return requested if spec.name == "choices" else 1


def choice_chunks(spec: Spec, index: int) -> list[str]:
    """The content deltas of choice ``index`` (only ``choices`` has more than one)."""
    if spec.name == "choices":
        return _words(f"c{index}w", spec.integer("n"))
    return content_chunks(spec) if index == 0 else []


def choice_text(model: str, index: int) -> str:
    """The exact content choice ``index`` of the scenario named by ``model`` streams."""
    return "".join(choice_chunks(parse_spec(model), index))


def token_logprobs(token: str, top: int) -> dict[str, Any]:
    """The logprobs of one content token, with ``top`` alternatives (the token first)."""

    def entry(text: str, rank: int) -> dict[str, Any]:
        return {"token": text, "logprob": -0.25 * (rank + 1), "bytes": list(text.encode())}

    alternatives = [token, *(f"alt{k}" for k in range(1, top))][:top]
    return {**entry(token, 0), "top_logprobs": [entry(t, k) for k, t in enumerate(alternatives)]}


def reasoning_chunks(spec: Spec) -> list[str]:
    return _words("think", spec.integer("steps")) if spec.name == "reasoning" else []


def text_of(spec: Spec) -> str:
    return "".join(content_chunks(spec))


def expected_text(model: str) -> str:
    """The exact content the scenario named by ``model`` streams (or returns)."""
    return text_of(parse_spec(model))


def expected_reasoning(model: str) -> str:
    return "".join(reasoning_chunks(parse_spec(model)))


def tool_calls(spec: Spec) -> tuple[ToolCall, ...]:
    """The function calls the scenario streams (only ``tool_call`` has any)."""
    return TOOL_CALLS[: spec.integer("calls")] if spec.name == "tool_call" else ()


def finish_reason(spec: Spec) -> str:
    if spec.name in ("tool_call", "normal"):
        return spec.text("finish")
    return "stop"


def deltas(spec: Spec) -> list[dict[str, Any]]:
    """Every delta after the role chunk and before the finish chunk."""
    if spec.name == "tool_call":
        out: list[dict[str, Any]] = [{"content": text} for text in content_chunks(spec)]
        whole = bool(spec.integer("whole"))
        for index, call in enumerate(tool_calls(spec)):
            first: dict[str, Any] = {
                "index": index,
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments if whole else ""},
            }
            pieces = [] if whole else call.pieces
            rest = [{"index": index, "function": {"arguments": p}} for p in pieces]
            out += [{"tool_calls": [item]} for item in (first, *rest)]
        return out
    reasoning = [{"reasoning_content": text} for text in reasoning_chunks(spec)]
    return reasoning + [{"content": text} for text in content_chunks(spec)]


def completion_tokens(spec: Spec, choices: int = 1) -> int:
    if spec.name == "tool_call":
        pieces = sum(1 if spec.integer("whole") else len(c.pieces) for c in tool_calls(spec))
        return pieces + len(content_chunks(spec))
    return len(reasoning_chunks(spec)) + len(content_chunks(spec)) * choice_count(spec, choices)


def prompt_tokens(messages: Any) -> int:
    """Words in the messages' contents (strings, or the ``text`` of content parts)."""
    total = 0
    for message in messages if isinstance(messages, list) else ():
        content = message.get("content") if isinstance(message, dict) else None
        parts = content if isinstance(content, list) else [content]
        for part in parts:
            text = part.get("text") if isinstance(part, dict) else part
            if isinstance(text, str):
                total += len(text.split())
    return total


def completion_id(model: str) -> str:
    return "chatcmpl-" + hashlib.sha256(model.encode()).hexdigest()[:24]


def usage(spec: Spec, prompt: int, choices: int = 1) -> dict[str, Any]:
    done = completion_tokens(spec, choices)
    cached = spec.integer("cached") if spec.name == "normal" else 0
    # Cached tokens are part of the prompt, as OpenAI counts them.
    prompt += cached
    out: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": done,
        "total_tokens": prompt + done,
    }
    if cached:
        out["prompt_tokens_details"] = {"cached_tokens": cached}
    return out


def _logprobs(spec: Spec, tokens: list[str], top_logprobs: int | None) -> Any:
    if spec.name != "logprobs" or top_logprobs is None:
        return None
    return {"content": [token_logprobs(t, top_logprobs) for t in tokens], "refusal": None}


def stream_chunks(
    spec: Spec,
    model: str,
    *,
    include_usage: bool,
    prompt: int,
    choices: int = 1,
    top_logprobs: int | None = None,
) -> list[dict[str, Any]]:
    """Every ``chat.completion.chunk`` of a complete stream, in order (without [DONE]).

    ``choices`` is the request's ``n``; ``top_logprobs`` its ``top_logprobs`` (0 if
    absent) when it asked for ``logprobs``, else None."""

    def chunk(items: list[dict[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": completion_id(model),
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": items,
        }
        if include_usage:
            out["usage"] = None
        return out

    def choice(
        delta: Mapping[str, Any], finish: str | None = None, index: int = 0, logprobs: Any = None
    ) -> dict[str, Any]:
        return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}

    count = choice_count(spec, choices)
    role = {"role": "assistant", "content": ""}
    chunks = [chunk([choice(role, index=c)]) for c in range(count)]
    if spec.name == "choices":
        texts = [choice_chunks(spec, c) for c in range(count)]
        for step in range(spec.integer("n")):
            chunks += [chunk([choice({"content": texts[c][step]}, index=c)]) for c in range(count)]
    else:
        for delta in deltas(spec):
            tokens = [delta["content"]] if "content" in delta else []
            chunks.append(chunk([choice(delta, logprobs=_logprobs(spec, tokens, top_logprobs))]))
    chunks += [chunk([choice({}, finish_reason(spec), c)]) for c in range(count)]
    if include_usage:
        chunks.append({**chunk([]), "usage": usage(spec, prompt, choices)})
    return chunks


def completion(
    spec: Spec, model: str, *, prompt: int, choices: int = 1, top_logprobs: int | None = None
) -> dict[str, Any]:
    """The non-streaming ``chat.completion`` body (arguments as for ``stream_chunks``)."""
    out: list[dict[str, Any]] = []
    for index in range(choice_count(spec, choices)):
        message: dict[str, Any] = {
            "role": "assistant",
            "content": "".join(choice_chunks(spec, index)),
        }
        if spec.name == "tool_call":
            message["content"] = message["content"] or None
            message["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments},
                }
                for call in tool_calls(spec)
            ]
        if spec.name == "reasoning":
            message["reasoning_content"] = "".join(reasoning_chunks(spec))
        message["refusal"] = None
        logprobs = _logprobs(spec, choice_chunks(spec, index), top_logprobs)
        out.append(
            {
                "index": index,
                "message": message,
                "logprobs": logprobs,
                "finish_reason": finish_reason(spec),
            }
        )
    return {
        "id": completion_id(model),
        "object": "chat.completion",
        "created": CREATED,
        "model": model,
        "choices": out,
        "usage": usage(spec, prompt, choices),
        "system_fingerprint": SYSTEM_FINGERPRINT,
    }


def error_body(message: str, type_: str, code: str | None, param: str | None = None) -> Any:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


_STATUS_ERRORS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Simulated bad request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided (simulated)."),
    403: ("invalid_request_error", "unsupported_country_region_territory", "Simulated denial."),
    404: ("invalid_request_error", "model_not_found", "Simulated missing model."),
    429: ("requests", "rate_limit_exceeded", "Simulated rate limit reached."),
    500: ("server_error", None, "The server had an error while processing your request."),
    503: ("server_error", None, "The engine is currently overloaded, please try again later."),
}


def status_error(status: int) -> Any:
    """The OpenAI-shaped error body ``error_status`` sends for ``status``."""
    default = ("server_error", None, f"Simulated error {status}.")
    if status < 500:
        default = ("invalid_request_error", None, f"Simulated error {status}.")
    type_, code, message = _STATUS_ERRORS.get(status, default)
    return error_body(message, type_, code)


CONTEXT_LENGTH_ERROR = error_body(
    "This model's maximum context length is 128000 tokens. However, your messages"
    " resulted in 131072 tokens. Please reduce the length of the messages.",
    "invalid_request_error",
    "context_length_exceeded",
    "messages",
)


def retry_after_headers(spec: Spec) -> list[tuple[str, str]]:
    seconds = spec.number("retry_after")
    return [
        ("retry-after", str(math.ceil(seconds))),
        ("retry-after-ms", str(round(seconds * 1000))),
    ]


def midstream_error(spec: Spec) -> Any:
    after = spec.integer("after")
    return error_body(f"Simulated failure after {after} chunks.", "server_error", "upstream_error")


def encode(obj: Any) -> bytes:
    """Compact JSON, UTF-8 as is (U+2028, U+2029 and non-ASCII stay raw)."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


def sse_event(payload: bytes, eol: bytes = b"\n") -> bytes:
    return b"data: " + payload + eol + eol


DONE = b"[DONE]"


def multibyte_pieces(body: bytes) -> list[bytes]:
    """Cut ``body`` inside every multi-byte character, ``data:`` and CRLF."""
    cuts = {i + 1 for i, byte in enumerate(body) if byte >= 0xC0}
    cuts.update(m.start() + 2 for m in re.finditer(rb"data:", body))
    cuts.update(m.start() + 1 for m in re.finditer(rb"\r\n", body))
    bounds = [0, *sorted(c for c in cuts if 0 < c < len(body)), len(body)]
    return [body[a:b] for a, b in itertools.pairwise(bounds)]
