"""The test upstream's ``POST /v1/responses``: the scenario's content as an OpenAI
Responses event stream (``response.created`` … ``response.completed``, with
``sequence_number`` from 0), as OpenAI and llama.cpp send it.

Scenarios: ``normal`` (text; ``cached`` tokens of the input read from the cache, in
``input_tokens_details``), ``reasoning`` (a reasoning item with summary deltas and
``encrypted_content``, then text), ``tool_call`` (``calls`` function calls, each its
own output item, whose arguments come in pieces; ``text=1`` puts a message with
``TOOL_PREAMBLE`` first; ``whole=1`` sends no argument deltas: the arguments come
only in the ``response.output_item.done`` item), ``multibyte`` (the body cut inside
every multi-byte character, each piece its own write: ``server.py``),
``midstream_error`` (``after`` text deltas, then ``response.failed``), ``drop``
(``after`` text deltas, then the connection closes), ``length`` (text, then
``response.incomplete`` for ``max_output_tokens``). Usage is always reported.
"""

from __future__ import annotations

from typing import Any

from tests.upstream import scenarios as sc

CREATED = sc.CREATED


def _usage(spec: sc.Spec, prompt: int) -> dict[str, Any]:
    done = sc.completion_tokens(spec)
    cached = spec.integer("cached") if spec.name == "normal" else 0
    prompt += cached  # the input counts what was read from the cache
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": cached},
        "output_tokens": done,
        "output_tokens_details": {"reasoning_tokens": len(sc.reasoning_chunks(spec))},
        "total_tokens": prompt + done,
    }


def events(spec: sc.Spec, model: str, prompt: int, length: bool = False) -> list[dict[str, Any]]:
    """Every event of the stream (for failing scenarios: up to the failure)."""
    rid = "resp_" + sc.completion_id(model)[9:]
    base = {"id": rid, "object": "response", "created_at": CREATED, "model": model}
    out: list[dict[str, Any]] = [
        {"type": "response.created", "response": {**base, "status": "in_progress", "output": []}},
        {"type": "response.in_progress", "response": {**base, "status": "in_progress"}},
    ]
    index = 0
    reasoning = sc.reasoning_chunks(spec)
    if reasoning:
        item = {"type": "reasoning", "id": "rs_1", "summary": []}
        out.append({"type": "response.output_item.added", "output_index": index, "item": item})
        for text in reasoning:
            out.append(
                {
                    "type": "response.reasoning_summary_text.delta",
                    "item_id": "rs_1",
                    "output_index": index,
                    "summary_index": 0,
                    "delta": text,
                }
            )
        done = {**item, "encrypted_content": "ZW5jcnlwdGVk"}
        out.append({"type": "response.output_item.done", "output_index": index, "item": done})
        index += 1
    texts = sc.content_chunks(spec)
    if texts or spec.name != "tool_call":
        message = {"type": "message", "id": "msg_1", "role": "assistant", "content": []}
        out.append({"type": "response.output_item.added", "output_index": index, "item": message})
        part = {"type": "output_text", "text": "", "annotations": []}
        out.append(
            {
                "type": "response.content_part.added",
                "item_id": "msg_1",
                "output_index": index,
                "content_index": 0,
                "part": part,
            }
        )
        for text in texts:
            out.append(
                {
                    "type": "response.output_text.delta",
                    "item_id": "msg_1",
                    "output_index": index,
                    "content_index": 0,
                    "delta": text,
                    "logprobs": [],
                }
            )
        if spec.name in sc.FAILING:
            if spec.name == "midstream_error":
                error = {"code": "server_error", "message": "Simulated upstream failure."}
                failed = {**base, "status": "failed", "error": error}
                out.append({"type": "response.failed", "response": failed})
            return _numbered(out)
        text = "".join(texts)
        out.append(
            {
                "type": "response.output_text.done",
                "item_id": "msg_1",
                "output_index": index,
                "content_index": 0,
                "text": text,
            }
        )
        finished = {**message, "content": [{**part, "text": text}], "status": "completed"}
        out.append({"type": "response.output_item.done", "output_index": index, "item": finished})
        index += 1
    whole = spec.name == "tool_call" and bool(spec.integer("whole"))
    for n, tool in enumerate(sc.tool_calls(spec)):
        item_id = f"fc_{n + 1}"
        call = {
            "type": "function_call",
            "id": item_id,
            "call_id": tool.id,
            "name": tool.name,
            "arguments": "",
        }
        out.append({"type": "response.output_item.added", "output_index": index, "item": call})
        for piece in () if whole else tool.pieces:
            out.append(
                {
                    "type": "response.function_call_arguments.delta",
                    "item_id": item_id,
                    "output_index": index,
                    "delta": piece,
                }
            )
        done = {**call, "arguments": tool.arguments}
        out.append({"type": "response.output_item.done", "output_index": index, "item": done})
        index += 1
    final = {**base, "usage": _usage(spec, prompt)}
    if length:
        final.update(status="incomplete", incomplete_details={"reason": "max_output_tokens"})
        out.append({"type": "response.incomplete", "response": final})
    else:
        out.append({"type": "response.completed", "response": {**final, "status": "completed"}})
    return _numbered(out)


def _numbered(out: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for number, event in enumerate(out):
        event["sequence_number"] = number
    return out


def sse(event: dict[str, Any]) -> bytes:
    return f"event: {event['type']}\n".encode() + sc.sse_event(sc.encode(event))


def prompt_of(body: dict[str, Any]) -> int:
    items = body.get("input")
    if isinstance(items, str):
        return len(items.split())
    total = 0
    for item in items if isinstance(items, list) else ():
        content = item.get("content") if isinstance(item, dict) else None
        for part in content if isinstance(content, list) else [content]:
            text = part.get("text") if isinstance(part, dict) else part
            if isinstance(text, str):
                total += len(text.split())
    return total
