"""The upstream HTTP/1.1 client: pooled keep-alive connections, one piece per socket read.

Built on httptools (llhttp, the parser uvicorn uses) and asyncio protocol callbacks.
Each HTTP chunk of a streamed body is appended to a list; the reader takes everything
that arrived since its last read as one piece. A read that held 200 SSE events costs
the provider one Python step, not 200 (a general client keeps each HTTP chunk as its
own buffer and hands them out one by one).

Flow control: past ``_HIGH_WATER`` unread bytes the socket stops being read until
the reader catches up, so a slow client slows its upstream instead of growing memory.
A connection goes back to the pool only after a complete response; anything else
closes it, which an upstream sees at once.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urlsplit

import httptools

from sluice.config.proxies import Proxies, Proxy

#: Unread bytes per connection past which the socket is not read until the reader
#: catches up. A thousand clients reading a byte a second hold 64 KiB each here at most
#: (the rest waits in the kernel and then in the upstream), which is more than any
#: token stream carries between two reads of a client that keeps up.
_HIGH_WATER = 1 << 16
#: Idle connections kept per origin, and for how long.
_MAX_IDLE = 1024
_IDLE_SECONDS = 15.0
#: How long a connection released before its body ended waits for that end.
_FINISH_WAIT = 2.0


class HTTPError(Exception):
    """The exchange with the upstream failed below HTTP semantics."""


class ConnectError(HTTPError):
    """No connection: the name did not resolve, the port refused, TLS failed."""


class TLSError(ConnectError):
    """The upstream's certificate did not verify (or TLS failed otherwise)."""


class ConnectTimeout(HTTPError):
    """The connection was not established in time."""


class ProtocolError(HTTPError):
    """The connection broke or the upstream sent something that is not HTTP/1.1."""


class InvalidHTTP(ProtocolError):
    """The upstream sent something that is not HTTP/1.1."""


@dataclass(frozen=True, slots=True)
class Origin:
    scheme: str
    host: str
    port: int
    #: CA certificates trusted besides the system's (a deployment's ``ca_file``):
    #: part of the key, so connections made with other trust are never shared.
    ca_file: str | None = None

    @property
    def authority(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"


def split_url(url: str) -> tuple[Origin, str]:
    """The origin and the request target (path and query) of an http(s) URL."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    port = parts.port or (443 if scheme == "https" else 80)
    target = parts.path or "/"
    if parts.query:
        target = f"{target}?{parts.query}"
    return Origin(scheme, parts.hostname, port), target


def _forward(origin: Origin, proxy: Proxy) -> tuple[bytes, bytes]:
    prefix = f"http://{origin.authority}".encode("latin-1")
    if proxy.authorization is None:
        return prefix, b""
    return prefix, f"Proxy-Authorization: {proxy.authorization.get()}\r\n".encode("latin-1")


class _Connection(asyncio.Protocol):
    """One keep-alive connection; one response at a time."""

    __slots__ = (
        "_exc",
        "_finishing",
        "_framed",
        "_head",
        "_paused",
        "_pieces",
        "_size",
        "_waiter",
        "busy",
        "closed",
        "complete",
        "forward",
        "headers",
        "idle_since",
        "keep_alive",
        "origin",
        "parser",
        "pool",
        "received",
        "status",
        "transport",
    )

    def __init__(self, pool: Pool, origin: Origin) -> None:
        self.pool = pool
        self.origin = origin
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        #: A request was written and its response is not finished with.
        self.busy = False
        #: Through an HTTP proxy to an ``http://`` origin: the request line's
        #: absolute-form prefix and the ``Proxy-Authorization`` line.
        self.forward: tuple[bytes, bytes] | None = None
        self.idle_since = 0.0
        #: Released before the body's end arrived (see ``Response.release``).
        self._finishing: asyncio.TimerHandle | None = None
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.complete = False
        self.keep_alive = True
        self.received = False
        self._framed = False
        self._pieces: list[bytes] = []
        self._size = 0
        self._paused = False
        self._exc: Exception | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._head: asyncio.Future[None] | None = None

    # -- asyncio ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.received = True
        if self._exc is not None:
            return  # interrupted: whatever comes now is not read
        if not self.busy:
            self.close()  # bytes nobody asked for (a 408 before a close): not reusable
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(InvalidHTTP(f"the upstream sent invalid HTTP: {exc}"))
            self.close()
            return
        if self._size > _HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_finishing()
        self.closed = True
        self.transport = None
        self.pool._forget(self)
        if self.complete:
            return
        if self.status and not self._framed and exc is None:
            self.complete = True  # a body delimited by the close ends here
            self.keep_alive = False
        else:
            reason = f": {exc}" if exc else ""
            self._fail(ProtocolError(f"the upstream closed the connection{reason}"))
        self._wake()

    # -- httptools ----------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        if key in ("content-length", "transfer-encoding"):
            self._framed = True
        previous = self.headers.get(key)
        self.headers[key] = text if previous is None else f"{previous}, {text}"

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:
            self.headers = {}
            return
        self.status = status
        self.keep_alive = bool(self.parser.should_keep_alive())
        head = self._head
        if head is not None and not head.done():
            head.set_result(None)

    def on_body(self, body: bytes) -> None:
        if self._finishing is not None:
            return  # after the stream's own end: nobody reads it
        self._pieces.append(body)
        self._size += len(body)

    def on_message_complete(self) -> None:
        if self.status:
            self.complete = True
            if self._finishing is not None and self.keep_alive:
                self._stop_finishing()
                self.pool._park(self)

    # -- released early -----------------------------------------------------------

    def finish_later(self) -> None:
        """The reader is done (the stream said so: ``[DONE]``, ``message_stop``) but the
        body's last chunk is still on its way: back to the pool when it arrives, closed
        if it does not within ``_FINISH_WAIT``."""
        self._finishing = self.pool.loop.call_later(_FINISH_WAIT, self.close)

    def _stop_finishing(self) -> None:
        if self._finishing is not None:
            self._finishing.cancel()
            self._finishing = None

    # -- the exchange -------------------------------------------------------------

    def _fail(self, exc: HTTPError) -> None:
        if self._exc is None and not self.complete:
            self._exc = exc
        head = self._head
        if head is not None and not head.done():
            head.set_exception(exc)
            head.exception()  # retrieved here; the waiter re-raises it

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def send(self, data: bytes) -> asyncio.Future[None]:
        """Write a request; the future completes when the response head is in."""
        self._reset()
        self.busy = True
        loop = self.pool.loop
        self._head = head = loop.create_future()
        assert self.transport is not None
        if self.forward is not None:
            data = _absolute_form(data, *self.forward)
        self.transport.write(data)
        return head

    def take(self) -> bytes:
        pieces = self._pieces
        data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        pieces.clear()
        self._size = 0
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return data

    async def read(self) -> bytes:
        while True:
            if self._pieces:
                return self.take()
            if self._exc is not None:
                raise self._exc
            if self.complete:
                return b""
            self._waiter = waiter = self.pool.loop.create_future()
            try:
                await waiter
            finally:
                self._waiter = None

    def interrupt(self, exc: Exception) -> None:
        """Make the pending (or next) read raise ``exc``, before any data still unread
        (an upstream that keeps sending must not outrun a total-time limit); the
        connection is not reused."""
        self._exc = exc
        self.keep_alive = False
        self._pieces.clear()
        self._size = 0
        self._wake()

    def close(self) -> None:
        self._stop_finishing()
        self.closed = True
        if self.transport is not None:
            self.transport.close()


def _absolute_form(data: bytes, prefix: bytes, authorization: bytes) -> bytes:
    """``POST /v1/x HTTP/1.1`` → ``POST http://host:port/v1/x HTTP/1.1`` (what a proxy
    is sent), with the proxy's credentials after the request line."""
    method, _, rest = data.partition(b" ")
    end = rest.index(b"\r\n") + 2
    return b"".join((method, b" ", prefix, rest[:end], authorization, rest[end:]))


class Response:
    """An upstream response whose head is in; the body is read piece by piece."""

    __slots__ = ("_conn", "_done", "headers", "read", "status")

    def __init__(self, conn: _Connection) -> None:
        self._conn = conn
        self._done = False
        self.status = conn.status
        #: Lower-case names; repeated headers joined with ``", "``.
        self.headers = conn.headers
        #: ``await read()``: everything that arrived since the last read; ``b""`` once
        #: the body ended. The connection's own method: no coroutine in between.
        self.read: Callable[[], Coroutine[Any, Any, bytes]] = conn.read

    async def read_all(self, limit: int) -> bytes:
        """The body, up to ``limit`` bytes (the rest is not waited for)."""
        parts: list[bytes] = []
        size = 0
        while size < limit:
            piece = await self._conn.read()
            if not piece:
                break
            parts.append(piece)
            size += len(piece)
        return b"".join(parts)[:limit]

    def interrupt(self, exc: Exception) -> None:
        """Make the pending (or next) read raise ``exc`` (a timeout, say)."""
        self._conn.interrupt(exc)

    def release(self, ended: bool = False) -> None:
        """Done with the response: back to the pool if it ended cleanly, else closed.
        ``ended``: the reader saw the stream's own end (``[DONE]``, ``message_stop``),
        although perhaps not yet the body's: then the body's end is waited for (an
        abandoned stream is closed at once, which is how its upstream learns of it)."""
        if self._done:
            return
        self._done = True
        conn = self._conn
        reusable = conn.keep_alive and not conn.closed and conn._exc is None
        if reusable and conn.complete:
            conn.pool._park(conn)
        elif ended and reusable and conn.status and not conn._pieces and not conn._paused:
            # Everything that arrived was read: what is missing is most likely only the
            # body's last chunk, which upstreams often send apart from their last event.
            conn.finish_later()
        else:
            conn.close()


class Pool:
    """Keep-alive connections per origin, shared by every provider of a gateway."""

    def __init__(
        self, ssl_context: ssl.SSLContext | None = None, proxies: Proxies | None = None
    ) -> None:
        self._ssl = ssl_context
        self._contexts: dict[str, ssl.SSLContext] = {}
        self._proxies = proxies or Proxies()
        self._idle: dict[Origin, dict[_Connection, None]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def _context(self, ca_file: str | None) -> ssl.SSLContext:
        """The system's trust (``SSL_CERT_FILE``, ``SSL_CERT_DIR``, the default store),
        plus ``ca_file``'s certificates when given."""
        if ca_file is not None:
            context = self._contexts.get(ca_file)
            if context is None:
                context = self._contexts[ca_file] = ssl.create_default_context()
                context.load_verify_locations(cafile=ca_file)
            return context
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
        return self._ssl

    async def request(self, origin: Origin, data: bytes, connect_timeout: float | None) -> Response:
        """Send ``data`` (a whole HTTP/1.1 request) and wait for the response head.

        A reused connection that the upstream closed before answering a single byte
        (its keep-alive timeout crossed our request) is replaced by a new one, once.
        """
        for attempt in (0, 1):
            conn, reused = await self._acquire(origin, connect_timeout)
            head = conn.send(data)
            try:
                await head
            except ProtocolError:
                if reused and not conn.received and attempt == 0:
                    continue
                raise
            except BaseException:
                conn.close()
                raise
            return Response(conn)
        raise AssertionError("unreachable")

    async def _acquire(
        self, origin: Origin, connect_timeout: float | None
    ) -> tuple[_Connection, bool]:
        if self._closed:
            raise ConnectError("the gateway is shutting down")
        idle = self._idle.get(origin)
        while idle:
            conn, _ = idle.popitem()
            if not conn.closed and conn.transport is not None:
                return conn, True
        loop = self.loop
        context = self._context(origin.ca_file) if origin.scheme == "https" else None
        proxy = self._proxies.for_origin(origin.scheme, origin.host, origin.port)
        try:
            async with asyncio.timeout(connect_timeout):
                if proxy is not None and context is not None:
                    protocol = await self._tunnel(origin, proxy, context)
                else:
                    host, port = (proxy.host, proxy.port) if proxy else (origin.host, origin.port)
                    _, protocol = await loop.create_connection(
                        lambda: _Connection(self, origin),
                        host,
                        port,
                        ssl=context,
                        server_hostname=origin.host if context is not None else None,
                    )
                    if proxy is not None:
                        protocol.forward = _forward(origin, proxy)
        except TimeoutError as exc:
            through = f" through the proxy {proxy.address}" if proxy else ""
            raise ConnectTimeout(f"timed out connecting to {origin.authority}{through}") from exc
        except ssl.SSLCertVerificationError as exc:
            reason = exc.verify_message or exc.reason or "unknown reason"
            raise TLSError(
                f"TLS to {origin.authority}: certificate verify failed: {reason}"
            ) from exc
        except ssl.SSLError as exc:
            raise TLSError(f"TLS to {origin.authority} failed: {exc.reason or exc}") from exc
        except OSError as exc:
            reason = exc.strerror or str(exc) or type(exc).__name__
            if proxy is not None:
                reason = f"the proxy {proxy.address}: {reason}"
            raise ConnectError(reason) from exc
        return protocol, False

    async def _tunnel(self, origin: Origin, proxy: Proxy, context: ssl.SSLContext) -> _Connection:
        """TLS to ``origin`` inside a ``CONNECT`` tunnel through ``proxy``."""
        loop = self.loop
        infos = await loop.getaddrinfo(proxy.host, proxy.port, type=socket.SOCK_STREAM)
        sock: socket.socket | None = None
        error: Exception = ConnectError(f"cannot resolve {proxy.host}")
        for family, kind, proto, _, address in infos:
            sock = socket.socket(family, kind, proto)
            sock.setblocking(False)
            try:
                await loop.sock_connect(sock, address)
                break
            except OSError as exc:
                sock.close()
                sock, error = None, exc
        if sock is None:
            raise error
        try:
            host = f"[{origin.host}]" if ":" in origin.host else origin.host
            target = f"{host}:{origin.port}"
            lines = [f"CONNECT {target} HTTP/1.1", f"Host: {target}"]
            if proxy.authorization is not None:
                lines.append(f"Proxy-Authorization: {proxy.authorization.get()}")
            await loop.sock_sendall(sock, ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
            answer = b""
            while b"\r\n\r\n" not in answer:
                piece = await loop.sock_recv(sock, 4096)
                if not piece or len(answer) > 65536:
                    raise ConnectError(f"the proxy {proxy.address} closed the CONNECT tunnel")
                answer += piece
            status_line = answer.partition(b"\r\n")[0].decode("latin-1")
            parts = status_line.split(" ", 2)
            if len(parts) < 2 or not parts[1].startswith("2"):
                raise ConnectError(
                    f"the proxy {proxy.address} refused CONNECT {target}: {status_line}"
                )
            _, protocol = await loop.create_connection(
                lambda: _Connection(self, origin),
                sock=sock,
                ssl=context,
                server_hostname=origin.host,
            )
        except BaseException:
            sock.close()
            raise
        return protocol

    def _park(self, conn: _Connection) -> None:
        idle = self._idle.setdefault(conn.origin, {})
        if self._closed or len(idle) >= _MAX_IDLE:
            conn.close()
            return
        conn.busy = False
        conn.idle_since = self.loop.time()
        idle[conn] = None
        if self._sweeper is None:
            self._sweeper = self.loop.call_later(_IDLE_SECONDS, self._sweep)

    def _forget(self, conn: _Connection) -> None:
        idle = self._idle.get(conn.origin)
        if idle:
            idle.pop(conn, None)

    def _sweep(self) -> None:
        self._sweeper = None
        cutoff = self.loop.time() - _IDLE_SECONDS
        left = False
        for idle in self._idle.values():
            for conn in [c for c in idle if c.idle_since <= cutoff]:
                del idle[conn]
                conn.close()
            left = left or bool(idle)
        if left and not self._closed:
            self._sweeper = self.loop.call_later(_IDLE_SECONDS, self._sweep)

    async def close(self) -> None:
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for idle in self._idle.values():
            for conn in list(idle):
                conn.close()
            idle.clear()
        await asyncio.sleep(0)  # let the transports run their close callbacks
