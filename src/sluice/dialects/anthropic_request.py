"""Anthropic Messages request bodies → the canonical ``ChatRequest``.

Follows the Messages API reference (``POST /v1/messages``, ``/v1/messages/count_tokens``).
Every field read here is type-checked, and a refusal names the parameter the way
Anthropic does: ``messages.0.content.1.type: ...``.

What has no canonical meaning stays Anthropic's: ``top_k``, ``metadata``,
``service_tier``, server tools (``web_search_20250305``, ``bash_...``, ...) and every
field this module does not know ride in ``extra`` and content blocks such as
``document`` as ``OpaquePart``; an upstream of another format refuses them by name.
A ``tool_result`` block becomes a canonical ``tool`` message of its own.

Newer fields map where they mean something canonical: ``thinking`` ``enabled`` (a
budget) and ``adaptive`` (no size), ``output_config.effort`` (the reasoning effort) and
``output_config.format`` (a JSON schema response format); top-level ``cache_control``
marks the last block that can carry one, as Anthropic applies it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from sluice.dialects.bounds import (
    DEFAULT_BOUNDS,
    Bounds,
    check_count,
    check_depth,
    no_line_break,
)
from sluice.errors import RequestError
from sluice.events import (
    ChatRequest,
    ImagePart,
    Message,
    OpaquePart,
    Part,
    Reasoning,
    ReasoningPart,
    RedactedReasoningPart,
    ResponseFormat,
    TextPart,
    Tool,
    ToolCallPart,
    ToolChoice,
    ToolResultPart,
    WireFormat,
)

FORMAT: WireFormat = "anthropic_messages"
#: Where server tools ride in ``ChatRequest.extra``: the tool objects as the client
#: sent them, in request order. Only an Anthropic upstream can run them.
SERVER_TOOLS = "server_tools"
#: Where ``thinking`` and ``output_config`` ride in ``ChatRequest.extra`` when their
#: canonical reading carries them whole: for an Anthropic upstream, as the client sent
#: them; other formats drop them.
AS_SENT = "as_sent"
#: Fields read into the canonical request; every other one rides in ``extra``.
_CANONICAL = frozenset(
    {
        "model",
        "max_tokens",
        "messages",
        "system",
        "tools",
        "tool_choice",
        "temperature",
        "top_p",
        "stop_sequences",
        "stream",
        "thinking",
        "output_config",
        "cache_control",
    }
)
#: Thinking types: with a budget, and the ones where the model decides how much.
_THINKING_UNSIZED = frozenset({"adaptive", "between_tools"})
_EFFORTS = frozenset({"low", "medium", "high", "xhigh", "max"})
#: Anthropic's smallest thinking budget.
MIN_THINKING_BUDGET = 1024


def fail(param: str, message: str) -> RequestError:
    return RequestError(f"{param}: {message}", param=param)


def parse_object(body: bytes, bounds: Bounds = DEFAULT_BOUNDS) -> dict[str, Any]:
    if not body.strip():
        raise RequestError("the request body is empty; expected a JSON object")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise RequestError(f"the request body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise RequestError("the request body must be a JSON object")
    check_depth(data, bounds.json_depth)
    return data


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise fail(where, "Input should be a valid string")
    return value


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise fail(where, "Input should be a valid dictionary")
    return value


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise fail(where, "Input should be a valid list")
    return value


def _cache_control(block: dict[str, Any], where: str) -> dict[str, Any] | None:
    value = block.get("cache_control")
    if value is None:
        return None
    return _object(value, f"{where}.cache_control")


def _integer(value: Any, where: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise fail(where, "Input should be a valid integer")
    if value < low:
        raise fail(where, f"Input should be greater than or equal to {low}")
    return value


def _number(value: Any, where: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise fail(where, "Input should be a valid number")
    if not low <= value <= high:
        raise fail(where, f"Input should be between {low:g} and {high:g}")
    return value


def _image(block: dict[str, Any], where: str) -> ImagePart | OpaquePart:
    source = _object(block.get("source"), f"{where}.source")
    kind = source.get("type")
    cache_control = _cache_control(block, where)
    if kind == "base64":
        media = _string(source.get("media_type"), f"{where}.source.media_type")
        data = _string(source.get("data"), f"{where}.source.data")
        return ImagePart(f"data:{media};base64,{data}", cache_control=cache_control)
    if kind == "url":
        return ImagePart(_string(source.get("url"), f"{where}.source.url"), None, cache_control)
    if isinstance(kind, str):
        return OpaquePart(FORMAT, block)  # a Files API ``file`` source, ...
    raise fail(f"{where}.source.type", "Input should be 'base64', 'url' or 'file'")


def _text_block(block: dict[str, Any], where: str) -> TextPart:
    return TextPart(_string(block.get("text"), f"{where}.text"), _cache_control(block, where))


def _result_content(value: Any, where: str) -> list[TextPart | ImagePart]:
    if value is None:
        return []
    if isinstance(value, str):
        return [TextPart(value)]
    out: list[TextPart | ImagePart] = []
    for j, block in enumerate(_list(value, where)):
        at = f"{where}.{j}"
        block = _object(block, at)
        kind = block.get("type")
        if kind == "text":
            out.append(_text_block(block, at))
        elif kind == "image":
            image = _image(block, at)
            if isinstance(image, OpaquePart):
                raise fail(f"{at}.source.type", "a tool result image must be 'base64' or 'url'")
            out.append(image)
        else:
            # A canonical tool result holds text and images only: refused, not dropped.
            raise fail(f"{at}.type", f"a tool result cannot hold a {kind!r} block here")
    return out


def _tool_result(block: dict[str, Any], where: str) -> ToolResultPart:
    is_error = block.get("is_error", False)
    if is_error is None:
        is_error = False
    if not isinstance(is_error, bool):
        raise fail(f"{where}.is_error", "Input should be a valid boolean")
    return ToolResultPart(
        _string(block.get("tool_use_id"), f"{where}.tool_use_id"),
        _result_content(block.get("content"), f"{where}.content"),
        is_error,
        _cache_control(block, where),
    )


def _block(block: dict[str, Any], where: str, role: str) -> Part:
    kind = block.get("type")
    if kind == "text":
        return _text_block(block, where)
    if kind == "image":
        return _image(block, where)
    if kind == "tool_use":
        if role != "assistant":
            raise fail(f"{where}.type", "tool_use blocks belong in assistant messages")
        arguments = _object(block.get("input"), f"{where}.input")
        return ToolCallPart(
            _string(block.get("id"), f"{where}.id"),
            _string(block.get("name"), f"{where}.name"),
            orjson.dumps(arguments).decode(),
        )
    if kind == "tool_result":
        if role != "user":
            raise fail(f"{where}.type", "tool_result blocks belong in user messages")
        return _tool_result(block, where)
    if kind == "thinking":
        signature = block.get("signature")
        if signature is not None:
            signature = _string(signature, f"{where}.signature")
        return ReasoningPart(_string(block.get("thinking"), f"{where}.thinking"), signature)
    if kind == "redacted_thinking":
        return RedactedReasoningPart(_string(block.get("data"), f"{where}.data"))
    if isinstance(kind, str):
        return OpaquePart(FORMAT, block)  # document, search_result, server tool blocks, ...
    raise fail(f"{where}.type", "Field required")


def _messages(value: Any) -> list[Message]:
    if value is None:
        raise fail("messages", "Field required")
    items = _list(value, "messages")
    if not items:
        raise fail("messages", "at least one message is required")
    out: list[Message] = []
    for i, item in enumerate(items):
        where = f"messages.{i}"
        item = _object(item, where)
        role = item.get("role")
        if role not in ("user", "assistant"):
            raise fail(f"{where}.role", "Input should be 'user' or 'assistant'")
        content = item.get("content")
        if isinstance(content, str):
            out.append(Message(role, [TextPart(content)]))
            continue
        if content is None:
            raise fail(f"{where}.content", "Field required")
        parts: list[Part] = []
        for j, block in enumerate(_list(content, f"{where}.content")):
            at = f"{where}.content.{j}"
            part = _block(_object(block, at), at, role)
            if type(part) is ToolResultPart:
                # Each result is a canonical tool message, in place between the rest.
                if parts:
                    out.append(Message(role, parts))
                    parts = []
                out.append(Message("tool", [part]))
            else:
                parts.append(part)
        if parts or not content:
            out.append(Message(role, parts))
    return out


def _system(value: Any) -> list[TextPart]:
    if value is None:
        return []
    if isinstance(value, str):
        return [TextPart(value)] if value else []
    out: list[TextPart] = []
    for i, block in enumerate(_list(value, "system")):
        at = f"system.{i}"
        block = _object(block, at)
        if block.get("type") != "text":
            raise fail(f"{at}.type", "Input should be 'text'")
        out.append(_text_block(block, at))
    return out


def _tools(value: Any) -> tuple[list[Tool], list[dict[str, Any]]]:
    """Custom tools, canonical; and server tools, kept as they came."""
    if value is None:
        return [], []
    tools: list[Tool] = []
    server: list[dict[str, Any]] = []
    for i, item in enumerate(_list(value, "tools")):
        at = f"tools.{i}"
        item = _object(item, at)
        kind = item.get("type")
        if kind is not None and kind != "custom":
            _string(kind, f"{at}.type")
            _string(item.get("name"), f"{at}.name")
            server.append(item)
            continue
        name = _string(item.get("name"), f"{at}.name")
        if not name:
            raise fail(f"{at}.name", "String should have at least 1 character")
        if "input_schema" not in item:
            raise fail(f"{at}.input_schema", "Field required")
        schema = _object(item.get("input_schema"), f"{at}.input_schema")
        description = item.get("description")
        if description is not None:
            description = _string(description, f"{at}.description")
        strict = item.get("strict")
        if strict is not None and not isinstance(strict, bool):
            raise fail(f"{at}.strict", "Input should be a valid boolean")
        tools.append(Tool(name, description, schema, strict, _cache_control(item, at)))
    return tools, server


def _tool_choice(
    value: Any, tools: list[Tool], server: list[dict[str, Any]]
) -> tuple[ToolChoice | None, bool | None]:
    if value is None:
        return None, None
    choice = _object(value, "tool_choice")
    kind = choice.get("type")
    parallel: bool | None = None
    if "disable_parallel_tool_use" in choice:
        disable = choice["disable_parallel_tool_use"]
        if not isinstance(disable, bool):
            raise fail("tool_choice.disable_parallel_tool_use", "Input should be a valid boolean")
        parallel = not disable
    if kind == "auto":
        return ToolChoice("auto"), parallel
    if kind == "none":
        return ToolChoice("none"), parallel
    if kind == "any":
        return ToolChoice("required"), parallel
    if kind == "tool":
        name = _string(choice.get("name"), "tool_choice.name")
        known = {t.name for t in tools} | {str(t.get("name")) for t in server}
        if name not in known:
            raise fail("tool_choice.name", f"names {name!r}, which is not in 'tools'")
        return ToolChoice("tool", name), parallel
    raise fail("tool_choice.type", "Input should be 'auto', 'any', 'tool' or 'none'")


def _thinking(
    value: Any, max_tokens: int | None, effort: str | None
) -> tuple[Reasoning | None, bool]:
    """The canonical reasoning request, and whether it says all ``thinking`` said.

    ``enabled`` is a budget; ``adaptive`` (the model decides) is a request to reason
    with no size but the ``output_config.effort``, if any. What canonical form cannot
    say (``between_tools``, ``display``, a type this module does not know) keeps the
    object in ``extra`` too, for an Anthropic upstream; others refuse it by name.
    """
    if value is None:
        return (Reasoning(effort=effort) if effort is not None else None), True
    thinking = _object(value, "thinking")
    kind = thinking.get("type")
    whole = thinking.get("display") is None
    if kind == "disabled":
        return None, True
    if kind == "enabled":
        budget = _integer(
            thinking.get("budget_tokens"), "thinking.budget_tokens", MIN_THINKING_BUDGET
        )
        if max_tokens is not None and budget >= max_tokens:
            raise fail("thinking.budget_tokens", "must be less than max_tokens")
        return Reasoning(effort=effort, budget_tokens=budget), whole
    if isinstance(kind, str) and kind in _THINKING_UNSIZED:
        return Reasoning(effort=effort), whole and kind == "adaptive"
    _string(kind, "thinking.type")
    return None, False


def _output_config(value: Any) -> tuple[str | None, ResponseFormat | None, bool]:
    """``output_config``: its effort, its JSON output format, and whether that is all
    it said (else the object rides in ``extra`` as well)."""
    if value is None:
        return None, None, True
    config = _object(value, "output_config")
    effort = config.get("effort")
    if effort is not None and (not isinstance(effort, str) or effort not in _EFFORTS):
        raise fail("output_config.effort", f"Input should be one of {', '.join(sorted(_EFFORTS))}")
    fmt: ResponseFormat | None = None
    spec = config.get("format")
    if spec is not None:
        spec = _object(spec, "output_config.format")
        if spec.get("type") != "json_schema":
            raise fail("output_config.format.type", "Input should be 'json_schema'")
        fmt = ResponseFormat(
            "json_schema", _object(spec.get("schema"), "output_config.format.schema")
        )
    whole = set(config) <= {"effort", "format"} and (
        spec is None or set(spec) <= {"type", "schema"}
    )
    return effort, fmt, whole


def _cache_last_block(messages: list[Message], cache_control: dict[str, Any]) -> None:
    """Top-level ``cache_control``: the marker goes on the last block that can hold
    one, as Anthropic applies it."""
    for message in reversed(messages):
        for part in reversed(message.parts):
            if isinstance(part, TextPart | ImagePart | ToolResultPart):
                if part.cache_control is None:
                    part.cache_control = cache_control
                return


def _stop(value: Any) -> list[str]:
    if value is None:
        return []
    out = _list(value, "stop_sequences")
    for i, item in enumerate(out):
        _string(item, f"stop_sequences.{i}")
    return list(out)


def decode_messages(
    body: bytes,
    headers: Mapping[str, str],
    *,
    count_only: bool = False,
    bounds: Bounds = DEFAULT_BOUNDS,
) -> ChatRequest:
    """A ``/v1/messages`` body (``count_only``: a ``count_tokens`` body, which has no
    ``max_tokens``) as a canonical request."""
    data = parse_object(body, bounds)
    check_count(data.get("messages"), bounds.messages, "messages")
    model = data.get("model")
    if model is None:
        raise fail("model", "Field required")
    if not isinstance(model, str) or not model.strip():
        raise fail("model", "Input should be a non-empty string")
    no_line_break(model, "model")
    if "n" in data:
        # One answer per request in this API: a client cannot ask for more choices.
        raise fail("n", "Extra inputs are not permitted")
    max_tokens: int | None = None
    if not count_only:
        if data.get("max_tokens") is None:
            raise fail("max_tokens", "Field required")
        max_tokens = _integer(data["max_tokens"], "max_tokens", 1)
    messages = _messages(data.get("messages"))
    stream = data.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise fail("stream", "Input should be a valid boolean")
    temperature = data.get("temperature")
    if temperature is not None:
        temperature = _number(temperature, "temperature", 0.0, 1.0)
    top_p = data.get("top_p")
    if top_p is not None:
        top_p = _number(top_p, "top_p", 0.0, 1.0)
    if data.get("top_k") is not None:
        _integer(data["top_k"], "top_k", 0)
    if data.get("metadata") is not None:
        metadata = _object(data["metadata"], "metadata")
        user_id = metadata.get("user_id")
        if user_id is not None:
            no_line_break(_string(user_id, "metadata.user_id"), "metadata.user_id")
    if data.get("service_tier") is not None:
        _string(data["service_tier"], "service_tier")
    if data.get("cache_control") is not None:
        _cache_last_block(messages, _object(data["cache_control"], "cache_control"))
    tools, server = _tools(data.get("tools"))
    tool_choice, parallel = _tool_choice(data.get("tool_choice"), tools, server)
    effort, response_format, output_read = _output_config(data.get("output_config"))
    reasoning, thinking_read = _thinking(data.get("thinking"), max_tokens, effort)
    extra = {k: v for k, v in data.items() if k not in _CANONICAL}
    # Read whole, ``thinking`` and ``output_config`` still go to an Anthropic upstream
    # as they came (their canonical reading cannot tell adaptive thinking from an
    # effort alone); other formats drop them. Not read whole, other formats refuse them.
    as_sent: dict[str, Any] = {}
    for name, whole in (("thinking", thinking_read), ("output_config", output_read)):
        if data.get(name) is not None:
            (as_sent if whole else extra)[name] = data[name]
    if as_sent:
        extra[AS_SENT] = as_sent
    if server:
        extra[SERVER_TOOLS] = server
    request_headers = {}
    beta = headers.get("anthropic-beta")
    if beta:
        request_headers["anthropic-beta"] = beta
    return ChatRequest(
        model=model,
        messages=messages,
        stream=stream,
        system=_system(data.get("system")),
        tools=tools,
        tool_choice=tool_choice,
        parallel_tool_calls=parallel,
        temperature=temperature,
        top_p=top_p,
        max_tokens=max_tokens,
        stop=_stop(data.get("stop_sequences")),
        response_format=response_format,
        reasoning=reasoning,
        source=FORMAT,
        extra=extra,
        headers=request_headers,
    )
