"""Helpers for the cache and coalescing tests: unique prompts, raw SSE reads, and the
test upstream's count of the requests that reached it."""

from __future__ import annotations

import json
import socket
import uuid
from dataclasses import dataclass
from typing import Any

import httpx

KEY_ENV = {"TEST_UPSTREAM_KEY": "sk-test"}


def prompt() -> str:
    """A prompt no other test sends: the upstream's log and the cache are shared."""
    return f"Tell me a story {uuid.uuid4().hex}"


def body(model: str, text: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


def upstream_calls(upstream: Any, text: str) -> int:
    """Requests that reached the test upstream with this prompt."""
    count = 0
    for request in upstream.log()["requests"]:
        payload = request["body"]
        if isinstance(payload, dict) and text in json.dumps(payload.get("messages")):
            count += 1
    return count


@dataclass
class Reply:
    status: int
    headers: httpx.Headers
    #: The ``data:`` payloads of a stream, in order (``[DONE]`` included).
    events: list[str]
    #: How many reads the body arrived in.
    reads: int
    body: bytes

    @property
    def cache(self) -> str | None:
        return self.headers.get("x-sluice-cache")

    @property
    def chunks(self) -> list[dict[str, Any]]:
        return [json.loads(e) for e in self.events if e != "[DONE]"]

    @property
    def text(self) -> str:
        if not self.events:
            return str(json.loads(self.body)["choices"][0]["message"]["content"])
        parts = []
        for chunk in self.chunks:
            for choice in chunk.get("choices") or ():
                parts.append(choice["delta"].get("content") or "")
        return "".join(parts)

    @property
    def usage(self) -> dict[str, Any] | None:
        if not self.events:
            usage: dict[str, Any] = json.loads(self.body)["usage"]
            return usage
        found = [c["usage"] for c in self.chunks if c.get("usage")]
        return found[-1] if found else None

    @property
    def error(self) -> dict[str, Any] | None:
        found = [c["error"] for c in self.chunks if c.get("error")]
        return found[-1] if found else None


def post(api: str, payload: dict[str, Any], headers: dict[str, str] | None = None) -> Reply:
    """POST a chat completion and read the whole answer, chunk by chunk."""
    with (
        httpx.Client(timeout=30) as client,
        client.stream("POST", f"{api}/chat/completions", json=payload, headers=headers) as r,
    ):
        pieces = list(r.iter_bytes())
    data = b"".join(pieces)
    events = []
    if r.headers.get("content-type", "").startswith("text/event-stream"):
        for block in data.decode().split("\n\n"):
            for line in block.splitlines():
                if line.startswith("data: "):
                    events.append(line[len("data: ") :])
    return Reply(r.status_code, r.headers, events, len(pieces), data)


def open_stream(url: str, payload: dict[str, Any]) -> socket.socket:
    """Start a streamed request on a raw socket, to leave it whenever the test likes."""
    raw = json.dumps(payload).encode()
    host, port = url.removeprefix("http://").split("/")[0].split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(raw)}\r\n\r\n".encode()
        + raw
    )
    return sock


def read_events(sock: socket.socket, count: int) -> bytes:
    """Read until ``count`` SSE events arrived."""
    received = b""
    while received.count(b"data: ") < count:
        data = sock.recv(65536)
        if not data:
            break
        received += data
    return received
