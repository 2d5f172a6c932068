"""OpenAI Responses request bodies (``CreateResponse``) → the canonical ``ChatRequest``.

Input is a string or a list of items (``responses_items``). What the canonical request
has no place for rides in ``extra`` under its own name, so an upstream of another
format refuses it by name instead of dropping it: built-in tools (``builtin_tools``),
``include``, ``prompt``, ``truncation``, ... Some fields are the gateway's own business
and never go upstream: ``store``, ``previous_response_id`` and ``reasoning.summary``
(reasoning is streamed as summary text when asked for, as reasoning text otherwise).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sluice.dialects.bounds import (
    DEFAULT_BOUNDS,
    Bounds,
    check_count,
    check_metadata,
    no_line_break,
)
from sluice.dialects.openai_request import fail, parse_object
from sluice.dialects.responses_items import (
    FORMAT,
    messages_of,
    need_object,
    need_string,
    normalise_items,
    optional_string,
)
from sluice.events import (
    ChatRequest,
    Reasoning,
    ResponseFormat,
    TextPart,
    Tool,
    ToolChoice,
)

_SUMMARY_MODES = frozenset({"auto", "concise", "detailed"})
#: Values of ``include`` the gateway honours itself: a reasoning signature is always
#: sent as ``encrypted_content``.
_INCLUDED = frozenset({"reasoning.encrypted_content"})
#: Read here; every other top-level field rides in ``extra``.
_READ = frozenset(
    {
        "model",
        "input",
        "instructions",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "temperature",
        "top_p",
        "max_output_tokens",
        "text",
        "reasoning",
        "store",
        "previous_response_id",
        "metadata",
        "user",
        "stream",
        "background",
        "conversation",
        "include",
    }
)
#: Fields the Response object repeats from the request as they were given.
_ECHOED = (
    "max_tool_calls",
    "prompt_cache_key",
    "safety_identifier",
    "service_tier",
    "top_logprobs",
)


@dataclass(slots=True)
class ResponsesRequest:
    """A decoded ``POST /v1/responses``: the canonical request, and what the gateway
    itself does with the rest."""

    request: ChatRequest
    #: This request's input, as items in their listed shape (ids not yet assigned).
    items: list[dict[str, Any]]
    store: bool = True
    previous_response_id: str | None = None
    #: Run to its end whatever the client does; read back by id (``background``).
    background: bool = False
    #: Reasoning is streamed as summary text (``reasoning.summary`` was given).
    summaries: bool = False
    #: The request's fields as the Response object repeats them.
    echo: dict[str, Any] = field(default_factory=dict)


# -- the fields besides input ---------------------------------------------------


def _tools(value: Any) -> tuple[list[Tool], list[dict[str, Any]], list[dict[str, Any]]]:
    """Function tools, built-in tools, and every tool as the Response object repeats it."""
    if value is None:
        return [], [], []
    if not isinstance(value, list):
        raise fail("'tools' must be an array", "tools")
    tools: list[Tool] = []
    builtin: list[dict[str, Any]] = []
    echo: list[dict[str, Any]] = []
    for i, item in enumerate(value):
        at = f"tools[{i}]"
        item = need_object(item, at)
        kind = item.get("type")
        if not isinstance(kind, str):
            raise fail(f"'{at}.type' must be a string", f"{at}.type")
        if kind != "function":
            builtin.append(item)
            echo.append(item)
            continue
        name = item.get("name")
        if not isinstance(name, str) or not name:
            raise fail(f"'{at}.name' is required", f"{at}.name")
        description = optional_string(item, "description", at)
        parameters = item.get("parameters")
        if parameters is not None and not isinstance(parameters, dict):
            raise fail(f"'{at}.parameters' must be an object", f"{at}.parameters")
        strict = item.get("strict")
        if strict is not None and not isinstance(strict, bool):
            raise fail(f"'{at}.strict' must be a boolean", f"{at}.strict")
        tools.append(Tool(name, description, parameters, strict))
        shown = {"type": "function", "name": name, "description": description}
        echo.append({**shown, "parameters": parameters, "strict": strict})
    return tools, builtin, echo


def _tool_choice(value: Any, tools: list[Tool], extra: dict[str, Any]) -> ToolChoice | None:
    if value is None:
        return None
    if value in ("auto", "none", "required"):
        if not tools and value != "required":
            return None  # nothing to choose from: the same as not saying
        if not tools and not extra.get("builtin_tools"):
            raise fail("'tool_choice' is 'required' but there are no 'tools'", "tool_choice")
        return ToolChoice(value)
    if isinstance(value, dict) and value.get("type") == "function":
        name = value.get("name")
        if not isinstance(name, str) or not name:
            raise fail("'tool_choice.name' is required", "tool_choice.name")
        if name not in {t.name for t in tools}:
            raise fail(f"'tool_choice' names '{name}', which is not in 'tools'", "tool_choice")
        return ToolChoice("tool", name)
    if isinstance(value, dict) and isinstance(value.get("type"), str):
        extra["tool_choice"] = value  # a built-in tool, allowed_tools, ...
        return None
    raise fail(
        "'tool_choice' must be 'none', 'auto', 'required' or an object with a 'type'",
        "tool_choice",
    )


def _text_format(value: Any, extra: dict[str, Any]) -> tuple[ResponseFormat | None, Any]:
    if value is None:
        return None, {"format": {"type": "text"}}
    text = need_object(value, "text")
    rest = {k: v for k, v in text.items() if k != "format" and v is not None}
    fmt = text.get("format")
    response_format: ResponseFormat | None = None
    if fmt is not None:
        fmt = need_object(fmt, "text.format")
        kind = fmt.get("type")
        if kind in ("text", "json_object"):
            response_format = ResponseFormat(kind)
        elif kind == "json_schema":
            name = fmt.get("name")
            if not isinstance(name, str) or not name:
                raise fail("'text.format.name' is required", "text.format.name")
            schema = fmt.get("schema")
            if not isinstance(schema, dict):
                raise fail("'text.format.schema' must be an object", "text.format.schema")
            strict = fmt.get("strict")
            if strict is not None and not isinstance(strict, bool):
                raise fail("'text.format.strict' must be a boolean", "text.format.strict")
            response_format = ResponseFormat("json_schema", schema, name, strict)
            if fmt.get("description") is not None:
                rest["format"] = {"description": fmt["description"]}
        else:
            raise fail(
                "'text.format.type' must be 'text', 'json_object' or 'json_schema'",
                "text.format.type",
            )
    if rest:
        extra["text"] = rest  # verbosity, ...
    return response_format, {**text, "format": fmt or {"type": "text"}}


def _reasoning_options(value: Any, extra: dict[str, Any]) -> tuple[Reasoning | None, bool, Any]:
    if value is None:
        return None, False, {"effort": None, "summary": None}
    options = need_object(value, "reasoning")
    effort = optional_string(options, "effort", "reasoning")
    summary = options.get("summary") or options.get("generate_summary")
    if summary is not None and (not isinstance(summary, str) or summary not in _SUMMARY_MODES):
        raise fail(
            "'reasoning.summary' must be 'auto', 'concise' or 'detailed'", "reasoning.summary"
        )
    rest = {
        k: v
        for k, v in options.items()
        if k not in ("effort", "summary", "generate_summary") and v is not None
    }
    if rest:
        extra["reasoning"] = rest
    reasoning = Reasoning(effort=effort) if effort is not None else None
    return reasoning, summary is not None, {**options, "effort": effort, "summary": summary}


def _number(data: dict[str, Any], name: str, low: float, high: float) -> float | None:
    value = data.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise fail(f"'{name}' must be a number between {low:g} and {high:g}", name)
    return float(value)


def _flag(data: dict[str, Any], name: str, default: bool | None) -> bool | None:
    value = data.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise fail(f"'{name}' must be a boolean", name)
    return value


def _metadata(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    metadata = need_object(value, "metadata")
    if len(metadata) > 16:
        raise fail("'metadata' holds at most 16 keys", "metadata")
    for key, item in metadata.items():
        if len(key) > 64:
            raise fail(f"'metadata' key {key[:16]!r}… is longer than 64 characters", "metadata")
        if not isinstance(item, str) or len(item) > 512:
            raise fail(f"'metadata.{key}' must be a string of at most 512 characters", "metadata")
    check_metadata(metadata)
    return metadata


def _include(value: Any, extra: dict[str, Any]) -> None:
    if value is None:
        return
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise fail("'include' must be an array of strings", "include")
    rest = [v for v in value if v not in _INCLUDED]
    if rest:
        extra["include"] = rest


def decode_responses(body: bytes, bounds: Bounds = DEFAULT_BOUNDS) -> ResponsesRequest:
    data = parse_object(body, bounds)
    check_count(data.get("input"), bounds.messages, "input")
    model = data.get("model")
    if not isinstance(model, str) or not model.strip():
        raise fail("'model' is required and must be a non-empty string", "model")
    no_line_break(model, "model")
    background = bool(_flag(data, "background", False))
    if background and data.get("store") is False:
        raise fail(
            "background mode requires 'store': a background response is read back from the"
            " store; send it without 'store': false",
            "background",
        )
    if data.get("conversation") is not None:
        raise fail(
            "conversations are not available on this gateway; continue a conversation with"
            " 'previous_response_id'",
            "conversation",
        )
    previous = data.get("previous_response_id")
    if previous is not None:
        previous = need_string(previous, "previous_response_id")
    items = normalise_items(data["input"]) if data.get("input") is not None else []
    if not items and previous is None:
        raise fail("'input' is required and must not be empty", "input")
    instructions = data.get("instructions")
    if instructions is not None:
        instructions = need_string(instructions, "instructions")
    stream = _flag(data, "stream", False)
    store = _flag(data, "store", True)
    parallel = _flag(data, "parallel_tool_calls", None)
    temperature = _number(data, "temperature", 0.0, 2.0)
    top_p = _number(data, "top_p", 0.0, 1.0)
    max_tokens = data.get("max_output_tokens")
    if max_tokens is not None and (
        isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 16
    ):
        raise fail("'max_output_tokens' must be an integer of at least 16", "max_output_tokens")
    user = data.get("user")
    if user is not None:
        user = need_string(user, "user")
        no_line_break(user, "user")
    metadata = _metadata(data.get("metadata"))

    extra = {k: v for k, v in data.items() if k not in _READ and v is not None}
    if metadata:
        extra["metadata"] = metadata
    tools, builtin, tools_echo = _tools(data.get("tools"))
    if builtin:
        extra["builtin_tools"] = builtin
    tool_choice = _tool_choice(data.get("tool_choice"), tools, extra)
    response_format, text_echo = _text_format(data.get("text"), extra)
    reasoning, summaries, reasoning_echo = _reasoning_options(data.get("reasoning"), extra)
    _include(data.get("include"), extra)

    request = ChatRequest(
        model=model,
        messages=messages_of(items),
        stream=bool(stream),
        system=[TextPart(instructions)] if instructions else [],
        tools=tools,
        tool_choice=tool_choice,
        parallel_tool_calls=parallel,
        temperature=temperature,
        top_p=top_p,
        max_tokens=max_tokens,
        response_format=response_format,
        reasoning=reasoning,
        include_usage=True,
        user=user,
        source=FORMAT,
        extra=extra,
    )
    echo: dict[str, Any] = {
        "instructions": instructions,
        "max_output_tokens": max_tokens,
        "metadata": metadata,
        "parallel_tool_calls": True if parallel is None else parallel,
        "previous_response_id": previous,
        "reasoning": reasoning_echo,
        "store": store,
        "background": background,
        "temperature": temperature,
        "text": text_echo,
        "tool_choice": data.get("tool_choice") or "auto",
        "tools": tools_echo,
        "top_p": top_p,
        "truncation": data.get("truncation") or "disabled",
    }
    if user is not None:  # a string or absent, never null
        echo["user"] = user
    echo.update((k, data.get(k)) for k in _ECHOED)
    return ResponsesRequest(request, items, bool(store), previous, background, summaries, echo)
