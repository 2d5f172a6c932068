"""Vercel AI SDK chat requests (what ``DefaultChatTransport`` posts) → ``ChatRequest``.

The body is the transport's: ``id`` (the chat), ``messages`` (UI messages: ``id``,
``role``, ``parts``), ``trigger`` (``submit-message`` or ``regenerate-message``),
``messageId``, and whatever the application added with the transport's ``body`` option.
Of those extra fields these are read: ``model`` (else the gateway's default model),
``system``, ``tools`` (``{name: {description, inputSchema}}``), ``toolChoice``,
``temperature``, ``topP`` and ``maxOutputTokens`` (the names of the SDK's own call
settings); the others are the application's and are ignored.

UI messages become model messages the way the SDK's ``convertToModelMessages`` makes
them: a system message's text parts are one system message; a user message keeps its
text and file parts (images as image parts; other files as parts only an upstream that
can take them accepts); an assistant message is split at its ``step-start`` parts, and
each step becomes an assistant message (text, reasoning, tool calls) followed by a tool
message with the results of its tool parts that have one (``output-available``,
``output-error``, ``output-denied``). Tool parts still ``input-streaming`` are left out;
sources and ``data-*`` parts are not for the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from sluice.dialects.bounds import DEFAULT_BOUNDS, Bounds, check_count, no_line_break
from sluice.dialects.openai_request import parse_object
from sluice.errors import RequestError
from sluice.events import (
    ChatRequest,
    ImagePart,
    Message,
    OpaquePart,
    Part,
    ReasoningPart,
    RedactedReasoningPart,
    TextPart,
    Tool,
    ToolCallPart,
    ToolChoice,
    ToolResultPart,
    WireFormat,
)

FORMAT: WireFormat = "ui_stream"
TRIGGERS = frozenset({"submit-message", "regenerate-message"})
ROLES = frozenset({"system", "user", "assistant"})
#: Parts a UI message may hold that say nothing to the model.
_NOT_FOR_THE_MODEL = frozenset({"step-start", "source-url", "source-document"})
_DENIED = "Tool call execution denied."


@dataclass(slots=True)
class UIChatRequest:
    request: ChatRequest
    #: The chat's id (``id``), when the client sent one.
    chat_id: str | None
    trigger: str
    #: The id of the assistant message this answer continues (the last message, when
    #: it is the assistant's: a turn that goes on after tool results), else None.
    continues: str | None


def fail(where: str, message: str) -> RequestError:
    return RequestError(f"{where}: {message}", param=where)


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise fail(where, "must be a string")
    return value


def _optional_string(data: dict[str, Any], key: str, where: str) -> str | None:
    value = data.get(key)
    return None if value is None else _string(value, where)


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise fail(where, "must be an object")
    return value


def _number(data: dict[str, Any], key: str, low: float, high: float) -> float | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise fail(key, f"must be a number between {low:g} and {high:g}")
    return float(value)


def _anthropic(part: dict[str, Any]) -> dict[str, Any]:
    """The Anthropic entry of a part's ``providerMetadata`` (thinking signatures)."""
    metadata = part.get("providerMetadata")
    entry = metadata.get("anthropic") if isinstance(metadata, dict) else None
    return entry if isinstance(entry, dict) else {}


def _file(part: dict[str, Any], where: str) -> Part:
    media = _string(part.get("mediaType"), f"{where}.mediaType")
    url = _string(part.get("url"), f"{where}.url")
    if media.startswith("image/"):
        return ImagePart(url)
    # No canonical form: an upstream that cannot take it refuses it, naming the part.
    data = {"type": "file", "mediaType": media, "url": url}
    filename = part.get("filename")
    if isinstance(filename, str):
        data["filename"] = filename
    return OpaquePart(FORMAT, data)


def _json_text(value: Any) -> str:
    return orjson.dumps(value).decode()


def _tool(part: dict[str, Any], kind: str, where: str) -> tuple[ToolCallPart, Part | None]:
    """A tool part → its call, and its result when it has one."""
    if kind == "dynamic-tool":
        name = _string(part.get("toolName"), f"{where}.toolName")
    else:
        name = kind.removeprefix("tool-")
    call_id = _string(part.get("toolCallId"), f"{where}.toolCallId")
    state = _string(part.get("state"), f"{where}.state")
    tool_input = part.get("input")
    if state == "output-error" and tool_input is None:
        tool_input = part.get("rawInput")
    call = ToolCallPart(call_id, name, _json_text({} if tool_input is None else tool_input))
    if state == "output-available":
        output = part.get("output")
        text = output if isinstance(output, str) else _json_text(output)
        return call, ToolResultPart(call_id, [TextPart(text)])
    if state == "output-error":
        error = _string(part.get("errorText"), f"{where}.errorText")
        return call, ToolResultPart(call_id, [TextPart(error)], is_error=True)
    if state == "output-denied":
        approval = part.get("approval")
        reason = approval.get("reason") if isinstance(approval, dict) else None
        text = reason if isinstance(reason, str) else _DENIED
        return call, ToolResultPart(call_id, [TextPart(text)], is_error=True)
    if state in ("input-available", "approval-requested", "approval-responded"):
        return call, None
    raise fail(
        f"{where}.state",
        "must be input-streaming, input-available, approval-requested,"
        f" approval-responded, output-available, output-error or output-denied; got {state!r}",
    )


def _assistant(parts: list[Any], where: str) -> list[Message]:
    out: list[Message] = []
    content: list[Part] = []
    results: list[Part] = []

    def step() -> None:
        nonlocal content, results
        if content:
            out.append(Message("assistant", content))
        if results:
            out.append(Message("tool", results))
        content, results = [], []

    for j, item in enumerate(parts):
        at = f"{where}.parts[{j}]"
        part = _object(item, at)
        kind = _string(part.get("type"), f"{at}.type")
        if kind == "text":
            content.append(TextPart(_string(part.get("text"), f"{at}.text")))
        elif kind == "reasoning":
            text = _string(part.get("text"), f"{at}.text")
            anthropic = _anthropic(part)
            redacted, signature = anthropic.get("redactedData"), anthropic.get("signature")
            if isinstance(redacted, str):
                content.append(RedactedReasoningPart(redacted))
            else:
                content.append(
                    ReasoningPart(text, signature if isinstance(signature, str) else None)
                )
        elif kind == "file":
            content.append(_file(part, at))
        elif kind.startswith("tool-") or kind == "dynamic-tool":
            if part.get("state") == "input-streaming":
                continue  # not a call yet
            call, result = _tool(part, kind, at)
            content.append(call)
            if result is not None:
                results.append(result)
        elif kind == "step-start":
            step()
        elif not (kind in _NOT_FOR_THE_MODEL or kind.startswith("data-")):
            raise fail(f"{at}.type", f"unknown part type {kind!r}")
    step()
    return out


def _user(parts: list[Any], where: str) -> Message:
    content: list[Part] = []
    for j, item in enumerate(parts):
        at = f"{where}.parts[{j}]"
        part = _object(item, at)
        kind = _string(part.get("type"), f"{at}.type")
        if kind == "text":
            content.append(TextPart(_string(part.get("text"), f"{at}.text")))
        elif kind == "file":
            content.append(_file(part, at))
        # Anything else in a user message is the application's (data parts): not sent.
    return Message("user", content)


def _messages(value: Any) -> tuple[list[Message], str | None]:
    """The model messages, and the id of the last message if it is the assistant's."""
    if not isinstance(value, list) or not value:
        raise fail("messages", "must be a non-empty array of UI messages")
    out: list[Message] = []
    continues: str | None = None
    for i, item in enumerate(value):
        where = f"messages[{i}]"
        message = _object(item, where)
        role = message.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise fail(f"{where}.role", f"must be system, user or assistant; got {role!r}")
        message_id = _optional_string(message, "id", f"{where}.id")
        continues = message_id if role == "assistant" and message_id else None
        parts = message.get("parts")
        if not isinstance(parts, list):
            raise fail(f"{where}.parts", "must be an array of parts")
        if role == "assistant":
            out.extend(_assistant(parts, where))
        elif role == "user":
            out.append(_user(parts, where))
        else:
            texts = []
            for j, part in enumerate(parts):
                at = f"{where}.parts[{j}]"
                if _object(part, at).get("type") == "text":
                    texts.append(_string(part.get("text"), f"{at}.text"))
            out.append(Message("system", [TextPart("".join(texts))]))
    return out, continues


def _tools(value: Any) -> list[Tool]:
    if value is None:
        return []
    tools: list[Tool] = []
    for name, spec in _object(value, "tools").items():
        where = f"tools.{name}"
        spec = _object(spec, where)
        description = _optional_string(spec, "description", f"{where}.description")
        schema = spec.get("inputSchema")
        if schema is not None:
            _object(schema, f"{where}.inputSchema")
        tools.append(Tool(name, description, schema))
    return tools


def _tool_choice(value: Any, tools: list[Tool]) -> ToolChoice | None:
    if value is None:
        return None
    if not tools:
        raise fail("toolChoice", "is only allowed with 'tools'")
    if value in ("auto", "none", "required"):
        return ToolChoice(value)
    if isinstance(value, dict) and value.get("type") == "tool":
        name = value.get("toolName")
        if isinstance(name, str) and name in {t.name for t in tools}:
            return ToolChoice("tool", name)
        raise fail("toolChoice.toolName", f"must name one of 'tools'; got {name!r}")
    raise fail(
        "toolChoice",
        "must be 'auto', 'none', 'required' or {\"type\": \"tool\", \"toolName\": ...}",
    )


def decode_ui_chat(
    body: bytes, default_model: str, bounds: Bounds = DEFAULT_BOUNDS
) -> UIChatRequest:
    data = parse_object(body, bounds)
    check_count(data.get("messages"), bounds.messages, "messages")
    chat_id = _optional_string(data, "id", "id")
    trigger = data.get("trigger", "submit-message")
    if not isinstance(trigger, str) or trigger not in TRIGGERS:
        raise fail("trigger", f"must be submit-message or regenerate-message; got {trigger!r}")
    _optional_string(data, "messageId", "messageId")
    model = data.get("model")
    if model is None:
        model = default_model
    elif not isinstance(model, str) or not model.strip():
        raise fail("model", "must be a non-empty string")
    no_line_break(model, "model")
    messages, continues = _messages(data.get("messages"))
    system = _optional_string(data, "system", "system")
    tools = _tools(data.get("tools"))
    max_tokens = data.get("maxOutputTokens")
    if max_tokens is not None and (
        isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1
    ):
        raise fail("maxOutputTokens", "must be a positive integer")
    request = ChatRequest(
        model=model,
        messages=messages,
        stream=True,
        system=[TextPart(system)] if system else [],
        tools=tools,
        tool_choice=_tool_choice(data.get("toolChoice"), tools),
        temperature=_number(data, "temperature", 0.0, 2.0),
        top_p=_number(data, "topP", 0.0, 1.0),
        max_tokens=max_tokens,
        include_usage=True,
        source=FORMAT,
    )
    return UIChatRequest(request, chat_id or None, trigger, continues)
