"""OpenAI Responses input items: checked, brought into their listed shape, and read
as canonical messages.

The listed shape is the one ``GET /v1/responses/{id}/input_items`` answers with: string
contents as parts, a status on each item. Canonical messages are read from that shape
(``messages_of``), the same way for the items of a request and for those of the stored
responses a ``previous_response_id`` chains in. Items of tools only OpenAI runs are kept
whole (``OpaquePart``), for an upstream of this format; another refuses them by name.
"""

from __future__ import annotations

from typing import Any

from sluice.dialects.openai_request import fail
from sluice.events import (
    ImagePart,
    Message,
    OpaquePart,
    Part,
    ReasoningPart,
    RedactedReasoningPart,
    Role,
    TextPart,
    ToolCallPart,
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


# -- checked, in their listed shape ---------------------------------------------


def need_string(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise fail(f"'{where}' must be a string", where)
    return value


def need_object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise fail(f"'{where}' must be an object", where)
    return value


def optional_string(item: dict[str, Any], key: str, where: str) -> str | None:
    value = item.get(key)
    if value is None:
        return None
    return need_string(value, f"{where}.{key}")


def _content_part(value: Any, where: str, assistant: bool) -> dict[str, Any]:
    part = need_object(value, where)
    kind = part.get("type")
    if kind in ("input_text", "output_text"):
        text = need_string(part.get("text"), f"{where}.text")
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
        return {"type": "refusal", "refusal": need_string(part.get("refusal"), f"{where}.refusal")}
    if kind == "input_image":
        url = optional_string(part, "image_url", where)
        file_id = optional_string(part, "file_id", where)
        if url is None and file_id is None:
            raise fail(f"'{where}' needs an 'image_url' or a 'file_id'", f"{where}.image_url")
        detail = optional_string(part, "detail", where) or "auto"
        return {**part, "detail": detail}
    if kind == "input_file":
        return part
    if isinstance(kind, str):
        raise fail(f"'{where}.type' {kind!r} is not a content type of a message", f"{where}.type")
    raise fail(f"'{where}.type' must be a string", f"{where}.type")


def _message(item: dict[str, Any], where: str) -> dict[str, Any]:
    role = item.get("role")
    if not isinstance(role, str) or role not in _INPUT_ROLES:
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
        out["id"] = need_string(value, f"{where}.id")


def _function_call(item: dict[str, Any], where: str) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "function_call"}
    _keep_id(item, out, where)
    out["call_id"] = need_string(item.get("call_id"), f"{where}.call_id")
    out["name"] = need_string(item.get("name"), f"{where}.name")
    out["arguments"] = need_string(item.get("arguments", ""), f"{where}.arguments")
    out["status"] = item.get("status") or "completed"
    return out


def _function_output(item: dict[str, Any], where: str) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "function_call_output"}
    _keep_id(item, out, where)
    out["call_id"] = need_string(item.get("call_id"), f"{where}.call_id")
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
        part = need_object(part, at)
        if part.get("type", kind) != kind:
            raise fail(f"'{at}.type' must be '{kind}'", f"{at}.type")
        out.append({"type": kind, "text": need_string(part.get("text"), f"{at}.text")})
    return out


def _reasoning(item: dict[str, Any], where: str) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "reasoning"}
    _keep_id(item, out, where)
    out["summary"] = _texts(item.get("summary"), "summary_text", f"{where}.summary")
    content = _texts(item.get("content"), "reasoning_text", f"{where}.content")
    if content:
        out["content"] = content
    encrypted = optional_string(item, "encrypted_content", where)
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
        item = need_object(item, where)
        kind = item.get("type", "message" if "role" in item else None)
        if kind == "message":
            items.append(_message(item, where))
        elif kind == "function_call":
            items.append(_function_call(item, where))
        elif kind == "function_call_output":
            items.append(_function_output(item, where))
        elif kind == "reasoning":
            items.append(_reasoning(item, where))
        elif isinstance(kind, str) and (kind in BUILTIN_CALL_ITEMS or kind in BUILTIN_OUTPUT_ITEMS):
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
