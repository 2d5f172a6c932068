"""OpenAI Responses request bodies (``CreateResponse``) → the canonical ``ChatRequest``.

Input is a string or a list of items. Items are checked and brought into the shape
``GET /v1/responses/{id}/input_items`` lists them in (string contents as parts, a
status on each), and the canonical messages are read from that shape, the same way
for the items of this request and for those of stored responses a
``previous_response_id`` chains in (``messages_of``).

What the canonical request has no place for rides in ``extra`` under its own name,
so an upstream of another format refuses it by name instead of dropping it: built-in
tools (``builtin_tools``), ``include``, ``prompt``, ``truncation``, ... Some fields are
the gateway's own business and never go upstream: ``store``, ``previous_response_id``
and ``reasoning.summary`` (reasoning is streamed as summary text when asked for, as
reasoning text otherwise).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sluice.dialects.openai_request import fail, parse_object
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
    Role,
    TextPart,
    Tool,
    ToolCallPart,
    ToolChoice,
    ToolResultPart,
    WireFormat,
)

FORMAT: WireFormat = "openai_responses"

#: Items of tools that only OpenAI runs (``Item`` in OpenAI's description): kept whole,
#: for an upstream of this format; another refuses them by name.
BUILTIN_CALL_ITEMS = frozenset(
    {
        "file_search_call",
        "computer_call",
        "web_search_call",
        "tool_search_call",
        "additional_tools",
        "compaction",
        "image_generation_call",
        "code_interpreter_call",
        "local_shell_call",
        "shell_call",
        "apply_patch_call",
        "mcp_list_tools",
        "mcp_approval_request",
        "mcp_call",
        "custom_tool_call",
        "program",
    }
)
BUILTIN_OUTPUT_ITEMS = frozenset(
    {
        "computer_call_output",
        "tool_search_output",
        "local_shell_call_output",
        "shell_call_output",
        "apply_patch_call_output",
        "mcp_approval_response",
        "custom_tool_call_output",
        "program_output",
    }
)
_INPUT_ROLES = frozenset({"user", "assistant", "system", "developer"})
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
    #: Reasoning is streamed as summary text (``reasoning.summary`` was given).
    summaries: bool = False
    #: The request's fields as the Response object repeats them.
    echo: dict[str, Any] = field(default_factory=dict)


# -- items -----------------------------------------------------------------------


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise fail(f"'{where}' must be a string", where)
    return value


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise fail(f"'{where}' must be an object", where)
    return value


def _optional_string(item: dict[str, Any], key: str, where: str) -> str | None:
    value = item.get(key)
    if value is None:
        return None
    return _string(value, f"{where}.{key}")


def _content_part(value: Any, where: str, assistant: bool) -> dict[str, Any]:
    part = _object(value, where)
    kind = part.get("type")
    if kind in ("input_text", "output_text"):
        text = _string(part.get("text"), f"{where}.text")
        if assistant:
            annotations = part.get("annotations")
            logprobs = part.get("logprobs")
            return {
                "type": "output_text",
                "text": text,
                "annotations": annotations if isinstance(annotations, list) else [],
                "logprobs": logprobs if isinstance(logprobs, list) else [],
            }
        return {"type": "input_text", "text": text}
    if kind == "refusal":
        return {"type": "refusal", "refusal": _string(part.get("refusal"), f"{where}.refusal")}
    if kind == "input_image":
        url = _optional_string(part, "image_url", where)
        file_id = _optional_string(part, "file_id", where)
        if url is None and file_id is None:
            raise fail(f"'{where}' needs an 'image_url' or a 'file_id'", f"{where}.image_url")
        detail = _optional_string(part, "detail", where) or "auto"
        return {**part, "detail": detail}
    if kind == "input_file":
        return part
    if isinstance(kind, str):
        raise fail(f"'{where}.type' {kind!r} is not a content type of a message", f"{where}.type")
    raise fail(f"'{where}.type' must be a string", f"{where}.type")


def _message(item: dict[str, Any], where: str) -> dict[str, Any]:
    role = item.get("role")
    if role not in _INPUT_ROLES:
        raise fail(
            f"'{where}.role' must be one of assistant, developer, system, user; got {role!r}",
            f"{where}.role",
        )
    assistant = role == "assistant"
    content = item.get("content")
    if isinstance(content, str):
        content = [{"type": "output_text" if assistant else "input_text", "text": content}]
    if not isinstance(content, list):
        raise fail(f"'{where}.content' must be a string or an array", f"{where}.content")
    parts = [_content_part(p, f"{where}.content[{j}]", assistant) for j, p in enumerate(content)]
    out: dict[str, Any] = {"type": "message", "role": role, "content": parts}
    _keep_id(item, out, where)
    out["status"] = item.get("status") or "completed"
    return out


def _keep_id(item: dict[str, Any], out: dict[str, Any], where: str) -> None:
    value = item.get("id")
    if value is not None:
        out["id"] = _string(value, f"{where}.id")


def _function_call(item: dict[str, Any], where: str) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "function_call"}
    _keep_id(item, out, where)
    out["call_id"] = _string(item.get("call_id"), f"{where}.call_id")
    out["name"] = _string(item.get("name"), f"{where}.name")
    out["arguments"] = _string(item.get("arguments", ""), f"{where}.arguments")
    out["status"] = item.get("status") or "completed"
    return out


def _function_output(item: dict[str, Any], where: str) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "function_call_output"}
    _keep_id(item, out, where)
    out["call_id"] = _string(item.get("call_id"), f"{where}.call_id")
    output = item.get("output")
    if isinstance(output, list):
        output = [
            _content_part(p, f"{where}.output[{j}]", assistant=False) for j, p in enumerate(output)
        ]
    elif not isinstance(output, str):
        raise fail(f"'{where}.output' must be a string or an array", f"{where}.output")
    out["output"] = output
    out["status"] = item.get("status") or "completed"
    return out


def _texts(value: Any, kind: str, where: str) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise fail(f"'{where}' must be an array", where)
    out = []
    for j, part in enumerate(value):
        at = f"{where}[{j}]"
        part = _object(part, at)
        if part.get("type", kind) != kind:
            raise fail(f"'{at}.type' must be '{kind}'", f"{at}.type")
        out.append({"type": kind, "text": _string(part.get("text"), f"{at}.text")})
    return out


def _reasoning(item: dict[str, Any], where: str) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "reasoning"}
    _keep_id(item, out, where)
    out["summary"] = _texts(item.get("summary"), "summary_text", f"{where}.summary")
    content = _texts(item.get("content"), "reasoning_text", f"{where}.content")
    if content:
        out["content"] = content
    encrypted = _optional_string(item, "encrypted_content", where)
    if encrypted is not None:
        out["encrypted_content"] = encrypted
    if item.get("status") is not None:
        out["status"] = item["status"]
    return out


def normalise_items(value: Any) -> list[dict[str, Any]]:
    """``input`` as items in their listed shape; raises naming what is wrong."""
    if isinstance(value, str):
        return [
            {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": value}],
                "status": "completed",
            }
        ]
    if not isinstance(value, list):
        raise fail("'input' must be a string or an array of items", "input")
    items = []
    for i, item in enumerate(value):
        where = f"input[{i}]"
        item = _object(item, where)
        kind = item.get("type", "message" if "role" in item else None)
        if kind == "message":
            items.append(_message(item, where))
        elif kind == "function_call":
            items.append(_function_call(item, where))
        elif kind == "function_call_output":
            items.append(_function_output(item, where))
        elif kind == "reasoning":
            items.append(_reasoning(item, where))
        elif kind in BUILTIN_CALL_ITEMS or kind in BUILTIN_OUTPUT_ITEMS:
            items.append(item)
        elif kind == "item_reference":
            raise fail(
                f"'{where}': item references are not supported; send the item itself, or"
                " continue the conversation with 'previous_response_id'",
                f"{where}.type",
            )
        elif isinstance(kind, str):
            raise fail(f"'{where}.type' {kind!r} is not a known input item type", f"{where}.type")
        else:
            raise fail(f"'{where}' needs a 'type' (or a 'role' for a message)", f"{where}.type")
    return items


# -- items → messages ------------------------------------------------------------


def _parts(content: list[dict[str, Any]]) -> list[Part]:
    parts: list[Part] = []
    for part in content:
        kind = part.get("type")
        if kind in ("input_text", "output_text"):
            parts.append(TextPart(part["text"]))
        elif kind == "refusal":
            parts.append(TextPart(part["refusal"]))  # what the assistant said, as text
        elif kind == "input_image" and isinstance(part.get("image_url"), str):
            detail = part.get("detail")
            parts.append(ImagePart(part["image_url"], detail if detail != "auto" else None))
        else:
            parts.append(OpaquePart(FORMAT, part))  # input_file, an image by file_id
    return parts


def _reasoning_part(item: dict[str, Any]) -> Part:
    texts = item.get("content") or item.get("summary") or []
    text = "\n\n".join(t["text"] for t in texts)
    signature = item.get("encrypted_content")
    if not text and signature:
        # Reasoning sent encrypted and nothing else: Anthropic's redacted thinking, or
        # OpenAI's encrypted reasoning; either way only its own format can read it.
        return RedactedReasoningPart(signature)
    return ReasoningPart(text, signature)


def messages_of(items: list[dict[str, Any]]) -> list[Message]:
    """The canonical messages of items in their listed shape. What the assistant did in
    a row (messages, reasoning, function calls) is one assistant message."""
    messages: list[Message] = []

    def assistant(part: Part) -> None:
        if messages and messages[-1].role == "assistant":
            messages[-1].parts.append(part)
        else:
            messages.append(Message("assistant", [part]))

    for item in items:
        kind = item.get("type")
        if kind == "message":
            role: Role = item["role"]
            parts = _parts(item["content"])
            if role == "assistant":
                for part in parts:
                    assistant(part)
            else:
                messages.append(Message(role, parts))
        elif kind == "function_call":
            assistant(ToolCallPart(item["call_id"], item["name"], item["arguments"]))
        elif kind == "function_call_output":
            output = item["output"]
            if isinstance(output, str):
                result: list[TextPart | ImagePart] = [TextPart(output)]
            else:
                result = []
                for part in _parts(output):
                    if isinstance(part, TextPart | ImagePart):
                        result.append(part)
                    else:
                        result = []
                        break
                if not result and output:
                    # A file in a tool result has no canonical form: keep the item whole.
                    messages.append(Message("tool", [OpaquePart(FORMAT, item)]))
                    continue
            messages.append(Message("tool", [ToolResultPart(item["call_id"], result)]))
        elif kind == "reasoning":
            assistant(_reasoning_part(item))
        elif kind in BUILTIN_OUTPUT_ITEMS:
            messages.append(Message("tool", [OpaquePart(FORMAT, item)]))
        else:
            assistant(OpaquePart(FORMAT, item))
    return messages


# -- the other fields ------------------------------------------------------------


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
        item = _object(item, at)
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
        description = _optional_string(item, "description", at)
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
    text = _object(value, "text")
    rest = {k: v for k, v in text.items() if k != "format" and v is not None}
    fmt = text.get("format")
    response_format: ResponseFormat | None = None
    if fmt is not None:
        fmt = _object(fmt, "text.format")
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
    options = _object(value, "reasoning")
    effort = _optional_string(options, "effort", "reasoning")
    summary = options.get("summary") or options.get("generate_summary")
    if summary is not None and summary not in _SUMMARY_MODES:
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
    metadata = _object(value, "metadata")
    if len(metadata) > 16:
        raise fail("'metadata' holds at most 16 keys", "metadata")
    for key, item in metadata.items():
        if len(key) > 64:
            raise fail(f"'metadata' key {key[:16]!r}… is longer than 64 characters", "metadata")
        if not isinstance(item, str) or len(item) > 512:
            raise fail(f"'metadata.{key}' must be a string of at most 512 characters", "metadata")
    return metadata


def _include(value: Any, extra: dict[str, Any]) -> None:
    if value is None:
        return
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise fail("'include' must be an array of strings", "include")
    rest = [v for v in value if v not in _INCLUDED]
    if rest:
        extra["include"] = rest


def decode_responses(body: bytes) -> ResponsesRequest:
    data = parse_object(body)
    model = data.get("model")
    if not isinstance(model, str) or not model.strip():
        raise fail("'model' is required and must be a non-empty string", "model")
    if data.get("background") not in (None, False):
        raise fail(
            "background mode is not available on this gateway: send the request without"
            " 'background' (streamed or not)",
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
        previous = _string(previous, "previous_response_id")
    if data.get("input") is None:
        if previous is None:
            raise fail("'input' is required", "input")
        items: list[dict[str, Any]] = []
    else:
        items = normalise_items(data["input"])
    instructions = data.get("instructions")
    if instructions is not None:
        instructions = _string(instructions, "instructions")
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
        user = _string(user, "user")
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
    return ResponsesRequest(request, items, bool(store), previous, summaries, echo)
