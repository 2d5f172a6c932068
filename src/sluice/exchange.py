"""One HTTP exchange over ASGI: the request's parts, and a response that knows whether
its head is already out (after which the status code is history)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qsl

from sluice import codings
from sluice.errors import BodyTooLarge, HeadersTooLarge, RequestError
from sluice.store import Record, VirtualKey

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class ClientGone(Exception):
    """The client disconnected before the request was read."""


def check_head(headers: list[tuple[bytes, bytes]], limit: int) -> None:
    """431 when the request's header fields, as sent (``name: value``), pass ``limit``
    bytes together. The ASGI server read them already (httptools sets no bound of its
    own; h11 refuses a head over 16 KiB with its own 400): this keeps them out of
    everything after.

    400 (and the connection closed) when the body's length is ambiguous: a
    ``Content-Length`` beside a ``Transfer-Encoding``, or two ``Content-Length`` that
    differ, as a proxy in front may have read them otherwise (request smuggling).
    httptools (llhttp) refuses these itself; h11 lets ``Transfer-Encoding`` win."""
    size = 0
    lengths: set[bytes] = set()
    encoded = False
    for name, value in headers:
        size += len(name) + len(value) + 4
        if name == b"content-length":
            lengths.add(value.strip())
        elif name == b"transfer-encoding":
            encoded = True
    if size > limit:
        raise HeadersTooLarge(
            f"the request's header fields take {size} bytes, more than {limit} (max_header_bytes)"
        )
    if len(lengths) > 1 or (lengths and encoded):
        raise RequestError(
            "the request's length is ambiguous: Content-Length with Transfer-Encoding,"
            " or Content-Length values that differ",
            headers={"Connection": "close"},
        )


class Exchange:
    __slots__ = (
        "_query",
        "disconnected",
        "headers",
        "key",
        "public",
        "receive",
        "record",
        "response_headers",
        "scope",
        "send",
        "started",
        "status",
    )

    def __init__(self, scope: Scope, receive: Receive, send: Send, record: Record) -> None:
        self.scope = scope
        self.receive = receive
        self.send = send
        self.record = record
        self.headers: dict[str, str] = {
            k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]
        }
        self.started = False
        self.disconnected = False
        self.status = 0
        #: Who the request is from (set by authentication, before dispatch).
        self.key: VirtualKey | None = None
        self.public = False
        self._query: dict[str, str] | None = None
        self.response_headers: list[tuple[bytes, bytes]] = [(b"x-request-id", record.id.encode())]

    @property
    def query(self) -> dict[str, str]:
        if self._query is None:
            raw = self.scope.get("query_string", b"").decode("latin-1")
            self._query = dict(parse_qsl(raw, keep_blank_values=True))
        return self._query

    async def read_body(self, limit: int) -> bytes:
        """The body, decoded as its ``Content-Encoding`` says: at most ``limit`` bytes as
        sent and as decoded, ``BodyTooLarge`` (413) past either."""
        declared = self.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise BodyTooLarge(f"the request body is larger than {limit} bytes")
        decoder = codings.decoder(self.headers.get("content-encoding"), limit)
        parts: list[bytes] = []
        size = 0
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                self.disconnected = True
                raise ClientGone
            body = message.get("body", b"")
            if body:
                size += len(body)
                if size > limit:
                    raise BodyTooLarge(f"the request body is larger than {limit} bytes")
                parts.append(decoder.feed(body))
            if not message.get("more_body", False):
                parts.append(decoder.flush())
                return b"".join(parts)

    async def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.started = True
        self.status = self.record.status = status
        await self.send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": headers + self.response_headers,
            }
        )

    def write(self, body: bytes, more: bool = True) -> Awaitable[None]:
        """The ASGI send of a body message, to be awaited: no coroutine of its own, so a
        write per chunk costs one frame less."""
        return self.send({"type": "http.response.body", "body": body, "more_body": more})

    async def respond(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        await self.start(status, headers)
        await self.write(body, more=False)

    def watch_disconnect(self, task: asyncio.Task[Any]) -> asyncio.Task[None]:
        """Cancel ``task`` the moment the client goes away (once the body was read)."""

        async def watch() -> None:
            while True:
                message = await self.receive()
                if message["type"] == "http.disconnect":
                    self.disconnected = True
                    task.cancel()
                    return

        return asyncio.create_task(watch())
