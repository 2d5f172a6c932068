"""OpenAI chat completions request bodies → the canonical ``ChatRequest``.

The body is checked against OpenAI's published description first (``sluice.schemas``);
what is read here is then known to have the right shape, and the checks that remain are
the ones a schema cannot say (``tool_choice`` without ``tools``, value ranges).
"""

from __future__ import annotations

from typing import Any

import orjson

from sluice import schemas
from sluice.dialects.bounds import (
    DEFAULT_BOUNDS,
    Bounds,
    check_count,
    check_depth,
    check_metadata,
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
    ResponseFormat,
    Role,
    TextPart,
    Tool,
    ToolCallPart,
    ToolChoice,
    ToolResultPart,
    WireFormat,
)

FORMAT: WireFormat = "openai_chat"
ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
#: Fields read into the canonical request; every other field rides in ``extra``.
_CANONICAL = frozenset(
    {
        "model",
        "messages",
        "stream",
        "stream_options",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "temperature",
        "top_p",
        "max_tokens",
        "seed",
        "stop",
        "n",
        "response_format",
        "reasoning_effort",
        "user",
    }
)
_NUMBER_FIELDS: dict[str, tuple[float, float]] = {
    "temperature": (0.0, 2.0),
    "top_p": (0.0, 1.0),
    "presence_penalty": (-2.0, 2.0),
    "frequency_penalty": (-2.0, 2.0),
}
_POSITIVE_INT_FIELDS = ("max_tokens", "max_completion_tokens", "n")


def fail(message: str, param: str | None = None) -> RequestError:
    return RequestError(message, param=param)


def parse_object(body: bytes, bounds: Bounds = DEFAULT_BOUNDS) -> dict[str, Any]:
    if not body.strip():
        raise fail("the request body is empty; expected a JSON object")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise fail(f"the request body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise fail("the request body must be a JSON object")
    check_depth(data, bounds.json_depth)
    return data


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise fail(f"{where} must be a string", where)
    return value


def _parts(content: Any, where: str) -> list[Part]:
    if content is None:
        return []
    if isinstance(content, str):
        return [TextPart(content)]
    if not isinstance(content, list):
        raise fail(f"{where} must be a string or an array of parts", where)
    parts: list[Part] = []
    for j, item in enumerate(content):
        at = f"{where}[{j}]"
        if not isinstance(item, dict):
            raise fail(f"{at} must be an object", at)
        kind = item.get("type")
        if kind == "text":
            parts.append(TextPart(_text(item.get("text"), f"{at}.text")))
        elif kind == "image_url":
            image = item.get("image_url")
            if not isinstance(image, dict):
                raise fail(f"{at}.image_url must be an object", f"{at}.image_url")
            detail = image.get("detail")
            parts.append(
                ImagePart(
                    _text(image.get("url"), f"{at}.image_url.url"),
                    detail if isinstance(detail, str) else None,
                )
            )
        elif kind == "refusal":
            parts.append(OpaquePart(FORMAT, item))
        elif isinstance(kind, str):
            parts.append(OpaquePart(FORMAT, item))  # input_audio, file, ...
        else:
            raise fail(f"{at}.type must be a string", f"{at}.type")
    return parts


def _tool_calls(calls: Any, where: str) -> list[Part]:
    if calls is None:
        return []
    if not isinstance(calls, list):
        raise fail(f"{where} must be an array", where)
    parts: list[Part] = []
    for j, call in enumerate(calls):
        at = f"{where}[{j}]"
        if not isinstance(call, dict) or not isinstance(call.get("function"), dict):
            raise fail(f"{at} must be an object with a 'function'", at)
        function = call["function"]
        parts.append(
            ToolCallPart(
                _text(call.get("id", ""), f"{at}.id"),
                _text(function.get("name"), f"{at}.function.name"),
                _text(function.get("arguments", ""), f"{at}.function.arguments"),
            )
        )
    return parts


def _message(item: Any, i: int) -> Message:
    where = f"messages[{i}]"
    if not isinstance(item, dict):
        raise fail(f"{where} must be an object", where)
    role = item.get("role")
    if not isinstance(role, str) or role not in ROLES:
        raise fail(
            f"{where}.role must be one of {', '.join(sorted(ROLES))}; got {role!r}",
            f"{where}.role",
        )
    name = item.get("name")
    if name is not None and not isinstance(name, str):
        raise fail(f"{where}.name must be a string", f"{where}.name")
    content = _parts(item.get("content"), f"{where}.content")
    if role in ("tool", "function"):
        call_id = item.get("tool_call_id") if role == "tool" else name
        if not isinstance(call_id, str):
            raise fail(f"{where}.tool_call_id must be a string", f"{where}.tool_call_id")
        results = [p for p in content if isinstance(p, TextPart | ImagePart)]
        return Message("tool", [ToolResultPart(call_id, results)])
    canonical: Role = role  # type: ignore[assignment]
    if role == "assistant":
        reasoning = item.get("reasoning_content")
        if isinstance(reasoning, str) and reasoning:
            content.insert(0, ReasoningPart(reasoning))
        content.extend(_tool_calls(item.get("tool_calls"), f"{where}.tool_calls"))
        legacy = item.get("function_call")
        if isinstance(legacy, dict):
            content.extend(_tool_calls([{"id": "", "function": legacy}], f"{where}.function_call"))
    return Message(canonical, content, name)


def _tools(value: Any) -> list[Tool]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise fail("'tools' must be an array", "tools")
    tools: list[Tool] = []
    for i, item in enumerate(value):
        at = f"tools[{i}]"
        if not isinstance(item, dict) or item.get("type", "function") != "function":
            raise fail(f"{at} must be a function tool", f"{at}.type")
        function = item.get("function")
        if not isinstance(function, dict):
            raise fail(f"{at}.function must be an object", f"{at}.function")
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise fail(f"{at}.function.name is required", f"{at}.function.name")
        parameters = function.get("parameters")
        if parameters is not None and not isinstance(parameters, dict):
            raise fail(f"{at}.function.parameters must be an object", f"{at}.function.parameters")
        description = function.get("description")
        strict = function.get("strict")
        tools.append(
            Tool(
                name,
                description if isinstance(description, str) else None,
                parameters,
                strict if isinstance(strict, bool) else None,
            )
        )
    return tools


def _tool_choice(value: Any, tools: list[Tool]) -> ToolChoice | None:
    if value is None:
        return None
    if not tools:
        raise fail("'tool_choice' is only allowed when 'tools' are specified", "tool_choice")
    if value in ("auto", "none", "required"):
        return ToolChoice(value)
    if isinstance(value, dict) and value.get("type") == "function":
        function = value.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if isinstance(name, str) and name:
            if name not in {t.name for t in tools}:
                raise fail(f"tool_choice names '{name}', which is not in 'tools'", "tool_choice")
            return ToolChoice("tool", name)
    raise fail(
        "'tool_choice' must be 'none', 'auto', 'required' or"
        ' {"type": "function", "function": {"name": ...}}',
        "tool_choice",
    )


def _response_format(value: Any) -> ResponseFormat | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise fail("'response_format' must be an object", "response_format")
    kind = value.get("type")
    if kind in ("text", "json_object"):
        return ResponseFormat(kind)
    if kind == "json_schema":
        spec = value.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise fail(
                "response_format.json_schema must be an object with a 'name'",
                "response_format.json_schema",
            )
        schema = spec.get("schema")
        if schema is not None and not isinstance(schema, dict):
            raise fail(
                "response_format.json_schema.schema must be an object",
                "response_format.json_schema.schema",
            )
        strict = spec.get("strict")
        return ResponseFormat(
            "json_schema", schema, spec["name"], strict if isinstance(strict, bool) else None
        )
    raise fail(
        "response_format.type must be 'text', 'json_object' or 'json_schema'",
        "response_format.type",
    )


def _stop(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(s, str) for s in value):
        return list(value)
    raise fail("'stop' must be a string or an array of strings", "stop")


def check_numbers(data: dict[str, Any]) -> None:
    for name, (low, high) in _NUMBER_FIELDS.items():
        value = data.get(name)
        if value is not None and (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not low <= value <= high
        ):
            raise fail(f"'{name}' must be a number between {low:g} and {high:g}", name)
    for name in _POSITIVE_INT_FIELDS:
        value = data.get(name)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            raise fail(f"'{name}' must be a positive integer", name)


def decode_chat(body: bytes, bounds: Bounds = DEFAULT_BOUNDS) -> ChatRequest:
    data = parse_object(body, bounds)
    check_count(data.get("messages"), bounds.messages, "messages")
    schemas.validate("openai_chat_request", data)
    model = data.get("model")
    if not isinstance(model, str) or not model.strip():
        raise fail("'model' is required and must be a non-empty string", "model")
    no_line_break(model, "model")
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise fail("'messages' must be a non-empty array", "messages")
    canonical = [_message(item, i) for i, item in enumerate(messages)]
    stream = data.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise fail("'stream' must be a boolean", "stream")
    include_usage = False
    stream_options = data.get("stream_options")
    if stream_options is not None:
        if not isinstance(stream_options, dict):
            raise fail("'stream_options' must be an object", "stream_options")
        include_usage = stream_options.get("include_usage", False)
        if not isinstance(include_usage, bool):
            raise fail(
                "'stream_options.include_usage' must be a boolean",
                "stream_options.include_usage",
            )
    check_numbers(data)
    user = data.get("user")
    if user is not None:
        if not isinstance(user, str):
            raise fail("'user' must be a string", "user")
        no_line_break(user, "user")
    check_metadata(data.get("metadata"))
    seed = data.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise fail("'seed' must be an integer", "seed")
    parallel = data.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise fail("'parallel_tool_calls' must be a boolean", "parallel_tool_calls")
    effort = data.get("reasoning_effort")
    if effort is not None and not isinstance(effort, str):
        raise fail("'reasoning_effort' must be a string", "reasoning_effort")
    tools = _tools(data.get("tools"))
    max_tokens = data.get("max_completion_tokens") or data.get("max_tokens")
    return ChatRequest(
        model=model,
        messages=canonical,
        stream=stream,
        tools=tools,
        tool_choice=_tool_choice(data.get("tool_choice"), tools),
        parallel_tool_calls=parallel,
        temperature=data.get("temperature"),
        top_p=data.get("top_p"),
        max_tokens=max_tokens,
        stop=_stop(data.get("stop")),
        seed=seed,
        response_format=_response_format(data.get("response_format")),
        reasoning=Reasoning(effort=effort) if effort is not None else None,
        n=data.get("n") or 1,
        include_usage=stream and include_usage,
        user=user,
        source=FORMAT,
        extra={k: v for k, v in data.items() if k not in _CANONICAL},
    )
