"""The streaming client APIs side by side, for fault tests: the request each sends, and
how its stream ended as a client reads it: ``clean`` (the API's own end: ``[DONE]``,
``message_stop``, ``response.completed``, a UI ``finish``), ``error`` (its in-band error:
a ``data: {"error": …}`` chunk, an ``event: error``, ``error`` then ``response.failed``,
an ``error`` part) or ``cut`` (neither: the bytes just stopped)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

Ending = Literal["clean", "error", "cut"]
PROMPT = "Tell me a story"


@dataclass(frozen=True)
class API:
    name: str
    path: str

    def body(self, model: str, stream: bool = True) -> dict[str, Any]:
        if self.name == "chat":
            messages = [{"role": "user", "content": PROMPT}]
            return {"model": model, "messages": messages, "stream": stream}
        if self.name == "messages":
            messages = [{"role": "user", "content": PROMPT}]
            return {"model": model, "max_tokens": 100, "messages": messages, "stream": stream}
        if self.name == "responses":
            return {"model": model, "input": PROMPT, "stream": stream, "store": False}
        user = {"id": "u1", "role": "user", "parts": [{"type": "text", "text": PROMPT}]}
        return {"id": f"chat-{model}", "messages": [user], "model": model}

    def ending(self, raw: bytes) -> Ending:
        """How a streamed answer (its body bytes) ended."""
        data = [json.loads(d) for d in _data(raw) if d != "[DONE]"]
        done = b"data: [DONE]" in raw
        if self.name == "chat":
            if data and "error" in data[-1]:
                return "error"
            return "clean" if done else "cut"
        types = [d.get("type") for d in data]
        if self.name == "messages":
            if types and types[-1] == "error":
                return "error"
            return "clean" if types and types[-1] == "message_stop" else "cut"
        if self.name == "responses":
            if types and types[-1] == "response.failed" and "error" in types:
                return "error"
            return "clean" if types and types[-1] == "response.completed" else "cut"
        if "error" in types and done:
            return "error"
        return "clean" if "finish" in types and done else "cut"

    def error_message(self, raw: bytes) -> str:
        """The in-band error's message."""
        for item in reversed([json.loads(d) for d in _data(raw) if d != "[DONE]"]):
            error = item.get("error")
            if isinstance(error, dict) and error.get("message"):
                return str(error["message"])
            if item.get("type") == "error":
                return str(item.get("errorText") or item.get("message") or "")
        return ""

    def text(self, raw: bytes) -> str:
        """The answer's text as the client would show it."""
        out = []
        for item in (json.loads(d) for d in _data(raw) if d != "[DONE]"):
            if self.name == "chat":
                for choice in item.get("choices") or ():
                    out.append((choice.get("delta") or {}).get("content") or "")
            elif self.name == "messages" and item.get("type") == "content_block_delta":
                out.append(item["delta"].get("text") or "")
            elif item.get("type") == _TEXT_DELTA.get(self.name):
                out.append(item["delta"])
        return "".join(out)


def _data(raw: bytes) -> list[str]:
    text = raw.decode("utf-8", "replace").replace("\r\n", "\n")
    return [line[6:] for line in text.split("\n") if line.startswith("data: ")]


_TEXT_DELTA = {"responses": "response.output_text.delta", "ui": "text-delta"}
APIS = (
    API("chat", "/v1/chat/completions"),
    API("messages", "/v1/messages"),
    API("responses", "/v1/responses"),
    API("ui", "/api/chat"),
)
BY_NAME = {api.name: api for api in APIS}
