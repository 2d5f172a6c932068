"""The floor: the least a Python relay costs per chunk on this machine.

A uvloop server made of two ``asyncio.Protocol`` classes and nothing else: no ASGI, no
framework, no event objects. A client's request is read with httptools (only to find
where it ends and take its body: the model name picks the upstream's scenario); the
upstream request is a pre-built head plus that body, written on a pooled keep-alive
connection to the upstream (a new one only when the pool is empty). The upstream's
response goes back as it arrives: **one ``transport.write`` per upstream read**, the
bytes unchanged (its head and chunked framing included: the client parses them).

The upstream side runs httptools too, with no ``on_body`` callback: the C parser walks
the chunked framing without calling Python per chunk, and ``on_message_complete`` says
when the response ended, so the connection can go back to the pool. A client that
reads slowly pauses reading from its upstream (``pause_writing``), as any relay must.

What is left per read is the event loop's dispatch, one parser call in C and two
syscalls (the read and the write): what any Python relay with one read and one write
per chunk pays at least. It relays chat completions only and has no error handling
beyond closing: it is a measuring stick, not a gateway.

``python -m bench.floor --port PORT --upstream http://127.0.0.1:UPORT/v1``
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import signal
import socket
from typing import cast
from urllib.parse import urlsplit

import httptools

BAD_GATEWAY = b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


def _nodelay(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Relay:
    """The shared state: where the upstream is, its idle connections, built requests."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.head = (
            f"POST {parts.path.rstrip('/')}/chat/completions HTTP/1.1\r\n"
            f"host: {self.host}:{self.port}\r\n"
            "content-type: application/json\r\naccept: text/event-stream\r\n"
        ).encode()
        self.pool: list[Upstream] = []
        self.requests: dict[bytes, bytes] = {}

    def request(self, body: bytes) -> bytes:
        built = self.requests.get(body)
        if built is None:
            built = self.head + b"content-length: %d\r\n\r\n" % len(body) + body
            if len(self.requests) < 256:
                self.requests[body] = built
        return built


class Upstream(asyncio.Protocol):
    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.transport: asyncio.Transport | None = None
        # Only the callbacks below exist: httptools calls nothing per HTTP chunk.
        self.parser = httptools.HttpResponseParser(self)
        self.client: Client | None = None
        self.reusable = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        _nodelay(transport)

    def data_received(self, data: bytes) -> None:
        client = self.client  # kept: the response may end (and detach) inside the feed
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.reusable = False
        if client is not None and client.transport is not None:
            client.transport.write(data)
        if not self.reusable and self.transport is not None:
            self.transport.close()

    def on_headers_complete(self) -> None:
        self.reusable = bool(self.parser.should_keep_alive())

    def on_message_complete(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            client.done()
        if self.reusable:
            self.relay.pool.append(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self in self.relay.pool:
            self.relay.pool.remove(self)
        if self.client is not None and self.client.transport is not None:
            self.client.transport.abort()  # the response was cut: the client must see it


class Client(asyncio.Protocol):
    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.body = bytearray()
        self.upstream: Upstream | None = None
        self.keep_alive = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        _nodelay(transport)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.abort()

    def on_message_begin(self) -> None:
        self.body.clear()

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.keep_alive = bool(self.parser.should_keep_alive())
        request = self.relay.request(bytes(self.body))
        pool = self.relay.pool
        if pool:
            self.attach(pool.pop(), request)
        else:
            asyncio.get_running_loop().create_task(self.connect(request))

    async def connect(self, request: bytes) -> None:
        loop = asyncio.get_running_loop()
        relay = self.relay
        try:
            _, upstream = await loop.create_connection(
                lambda: Upstream(relay), relay.host, relay.port
            )
        except OSError:
            if self.transport is not None:
                self.transport.write(BAD_GATEWAY)
                self.transport.close()
            return
        if self.transport is None:
            relay.pool.append(upstream)
        else:
            self.attach(upstream, request)

    def attach(self, upstream: Upstream, request: bytes) -> None:
        upstream.client = self
        self.upstream = upstream
        assert upstream.transport is not None
        upstream.transport.write(request)

    def done(self) -> None:
        self.upstream = None
        if not self.keep_alive and self.transport is not None:
            self.transport.close()

    def pause_writing(self) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        upstream, self.upstream = self.upstream, None
        if upstream is not None:  # mid-response: that connection can't be reused
            upstream.client = None
            upstream.reusable = False
            if upstream.transport is not None:
                upstream.transport.abort()


async def serve(host: str, port: int, upstream: str) -> None:
    loop = asyncio.get_running_loop()
    relay = Relay(upstream)
    server = await loop.create_server(lambda: Client(relay), host, port, backlog=4096)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    gc.collect()
    gc.freeze()
    await stop.wait()
    server.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="base URL, e.g. http://h:p/v1")
    args = parser.parse_args(argv)
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(args.host, args.port, args.upstream))


if __name__ == "__main__":
    main()
