"""The floor as an ASGI app: what an ASGI server adds to a bare relay.

The same relay as ``bench/floor.py`` (a pre-built upstream request on a pooled keep-alive
connection, httptools for the response), written as the least an ASGI app can do: the
upstream protocol appends each read's body into one buffer and wakes the app, which
hands everything that arrived to ``send`` as one ``http.response.body``. The server
then frames and writes it. Beside ``floor``, the difference is the ASGI server's cost
per chunk (and the one task wake-up per read that any ASGI app needs), with no Sluice.

Served as ``bench.floor_asgi:app`` by uvicorn (``floor-uvicorn``: httptools, uvloop)
and by granian (``floor-granian``), the upstream's base URL in ``BENCH_FLOOR_UPSTREAM``.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any, cast

import httptools

from bench.floor import Relay, _nodelay

Message = dict[str, Any]
HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


class Upstream(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.buffer = bytearray()
        self.waiter: asyncio.Future[None] | None = None
        self.status = 0
        self.complete = False
        self.closed = False
        self.reusable = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        _nodelay(transport)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.closed = True
            self.reusable = False
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.reusable = False
        self._wake()

    def on_message_begin(self) -> None:
        self.status = 0
        self.complete = False

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.reusable = bool(self.parser.should_keep_alive())

    def on_body(self, body: bytes) -> None:
        self.buffer += body

    def on_message_complete(self) -> None:
        self.complete = True

    def _wake(self) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self) -> None:
        """Until something arrived, the response ended or the connection went away."""
        while not self.buffer and not self.complete and not self.closed:
            self.waiter = asyncio.get_running_loop().create_future()
            await self.waiter

    def take(self) -> bytes:
        data = bytes(self.buffer)
        self.buffer.clear()
        return data


class App:
    def __init__(self, upstream: str) -> None:
        self.relay = Relay(upstream)
        self.pool: list[Upstream] = []

    async def __call__(self, scope: Message, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        body = bytearray()
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        upstream = self.pool.pop() if self.pool else await self.connect()
        try:
            await self.relay_to(upstream, bytes(body), send)
        finally:
            if upstream.complete and upstream.reusable and not upstream.closed:
                upstream.complete = False
                self.pool.append(upstream)
            elif upstream.transport is not None:
                upstream.transport.close()

    async def relay_to(self, upstream: Upstream, body: bytes, send: Any) -> None:
        assert upstream.transport is not None
        upstream.transport.write(self.relay.request(body))
        while not upstream.status and not upstream.closed:
            await upstream.wait()
        if not upstream.status:
            await send({"type": "http.response.start", "status": 502, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        await send({"type": "http.response.start", "status": upstream.status, "headers": HEADERS})
        while True:
            await upstream.wait()
            data = upstream.take()
            if upstream.complete or upstream.closed:
                await send({"type": "http.response.body", "body": data})
                return
            await send({"type": "http.response.body", "body": data, "more_body": True})

    async def connect(self) -> Upstream:
        loop = asyncio.get_running_loop()
        _, upstream = await loop.create_connection(Upstream, self.relay.host, self.relay.port)
        return upstream


app = App(os.environ.get("BENCH_FLOOR_UPSTREAM", "http://127.0.0.1:8000/v1"))
