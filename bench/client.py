"""The load generator: raw asyncio connections with httptools, one stream at a time each.

It shares a core with the fake upstream, so per chunk it does as little as it can: it
counts events in each body piece (or content bytes for plain-text targets) and, only
in timed mode, stamps each piece. Which events, and what ends a stream, depends on the
client API the target speaks (``FRAMINGS``):

- ``sse``, OpenAI chat completions: ``data:`` events; ends with ``[DONE]``; an
  ``{"error"`` payload is an in-band error.
- ``anthropic``, Anthropic Messages: ``content_block_delta`` events; ends with
  ``message_stop``; an ``error`` event is an in-band error.
- ``responses``, OpenAI Responses: ``response.output_text.delta`` events; ends with
  ``response.completed``; an ``error`` or ``response.failed`` event is an in-band error.

Every stream ends as a ``Result``; a stream that is short, failed, errored in-band or
answered with a non-200 status is counted as failed with its reason, never dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, cast

import httptools
import orjson

Kind = Literal["sse", "text", "anthropic", "responses"]


@dataclass(frozen=True, slots=True)
class Framing:
    """What an SSE client API's stream looks like to the load generator."""

    #: Counted: one per content chunk (OpenAI: every ``data:`` event, so at least one).
    event: bytes
    #: Seen once a stream is complete.
    done: bytes
    #: Any of these is an in-band error.
    errors: tuple[bytes, ...]
    #: What ``done`` is called in a failure's reason.
    done_name: str

    @property
    def overlap(self) -> int:
        """Bytes kept from one body piece for the next: a marker may be split between
        them, and none fits whole in this many (so none is counted twice)."""
        return max(len(m) for m in (self.event, self.done, *self.errors)) - 1


FRAMINGS: dict[str, Framing] = {
    "sse": Framing(b"data:", b"[DONE]", (b'{"error"',), "[DONE]"),
    "anthropic": Framing(
        b"event: content_block_delta\n",
        b"event: message_stop\n",
        (b"event: error\n",),
        "message_stop",
    ),
    "responses": Framing(
        b"event: response.output_text.delta\n",
        b"event: response.completed\n",
        (b"event: error\n", b"event: response.failed\n"),
        "response.completed",
    ),
}


@dataclass(slots=True)
class Expect:
    """What a complete stream looks like."""

    kind: Kind
    #: Content chunks the upstream sends (sse: at least this many events).
    chunks: int
    #: The exact content text; checked on streams asked to verify.
    text: str


@dataclass(slots=True)
class Result:
    ok: bool
    #: Content chunks relayed: all of them for a complete stream, else what arrived.
    chunks: int
    error: str | None = None
    #: Seconds from the request's write to the first event (or text) byte.
    ttft: float | None = None
    #: Seconds between consecutive events (timed streams only).
    gaps: list[float] = field(default_factory=list)


class _Stream:
    __slots__ = (
        "body",
        "done",
        "error",
        "events",
        "expect",
        "first",
        "framing",
        "future",
        "gaps",
        "last",
        "nbytes",
        "sent",
        "status",
        "tail",
        "timed",
    )

    def __init__(
        self, expect: Expect, future: asyncio.Future[Result], timed: bool, verify: bool
    ) -> None:
        self.expect = expect
        self.framing = FRAMINGS.get(expect.kind)
        self.future = future
        self.timed = timed
        self.body: bytearray | None = bytearray() if verify else None
        self.status = 0
        self.events = 0
        self.nbytes = 0
        self.done = False
        self.error: str | None = None
        self.tail = b""
        self.sent = time.perf_counter()
        self.first: float | None = None
        self.last = 0.0
        self.gaps: list[float] = []


class Connection(asyncio.Protocol):
    """A keep-alive HTTP/1.1 client connection; ``request`` one stream at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.stream: _Stream | None = None
        self.closed = False
        self.keep_alive = True
        self.framed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._finish(f"bad HTTP from the server: {exc}")
            if self.transport is not None:
                self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.transport = None
        stream = self.stream
        if stream is not None and stream.status and not self.framed and exc is None:
            self._finish(None)  # a body delimited by the close ends here
        self._finish("the connection closed mid-stream" + (f": {exc}" if exc else ""))

    # httptools callbacks --------------------------------------------------------
    def on_message_begin(self) -> None:
        self.framed = False

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() in (b"content-length", b"transfer-encoding"):
            self.framed = True

    def on_headers_complete(self) -> None:
        stream = self.stream
        if stream is not None:
            stream.status = self.parser.get_status_code()
        self.keep_alive = bool(self.parser.should_keep_alive())

    def on_body(self, piece: bytes) -> None:
        stream = self.stream
        if stream is None:
            return
        if stream.body is not None:
            stream.body += piece
        framing = stream.framing
        if framing is None:
            stream.nbytes += len(piece)
            count = 1
        else:
            tail = stream.tail
            window = tail + piece
            # The tail is too short to hold a whole marker: nothing is counted twice.
            count = window.count(framing.event)
            for error in framing.errors:
                if error in window:
                    stream.error = "in-band error event"
            if framing.done in window:
                stream.done = True
            stream.tail = window[-framing.overlap :]
            stream.events += count
        if count and stream.timed:
            now = time.perf_counter()
            if stream.first is None:
                stream.first = now
                count -= 1
            else:
                stream.gaps.append(now - stream.last)
                count -= 1
            if count:
                stream.gaps.extend([0.0] * count)
            stream.last = now
        elif count and stream.first is None:
            stream.first = time.perf_counter()

    def on_message_complete(self) -> None:
        self._finish(None)

    # ----------------------------------------------------------------------------
    def request(
        self,
        data: bytes,
        expect: Expect,
        timed: bool = False,
        verify: bool = False,
        lazy: float = 0.0,
    ) -> asyncio.Future[Result]:
        """Send one request; the future ends with its stream.

        ``lazy``: leave the response in the kernel's socket buffer for that many
        seconds before reading it, so streams nobody times cost the load core nothing
        per chunk (the sender's work is the same; the buffer holds a whole stream).
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Result] = loop.create_future()
        stream = _Stream(expect, future, timed, verify)
        if self.transport is None or self.closed:
            future.set_result(Result(False, 0, "not connected"))
            return future
        self.stream = stream
        self.transport.write(data)
        if lazy > 0:
            self.transport.pause_reading()
            loop.call_later(lazy, self._resume)
        return future

    def _resume(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def _finish(self, failure: str | None) -> None:
        stream = self.stream
        if stream is None:
            return
        self.stream = None
        result = _judge(stream, failure)
        if not stream.future.done():
            stream.future.set_result(result)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.abort()


def _judge(stream: _Stream, failure: str | None) -> Result:
    expect = stream.expect
    framing = stream.framing
    if framing is None:
        want = len(expect.text.encode())
        got = min(expect.chunks, expect.chunks * stream.nbytes // max(want, 1))
        short = stream.nbytes != want
        what = f"{stream.nbytes} of {want} content bytes"
    else:
        got = min(stream.events, expect.chunks)
        short = stream.events < expect.chunks or not stream.done
        seen = "seen" if stream.done else "missing"
        what = f"{stream.events} events, {framing.done_name} {seen}"
    ttft = stream.first - stream.sent if stream.first is not None else None
    error = failure
    if error is None and stream.status != 200:
        error = f"status {stream.status}"
    error = error or stream.error
    if error is None and short:
        error = f"short stream: {what}"
    if error is None and stream.body is not None:
        text = content_of(bytes(stream.body), expect.kind)
        if text != expect.text:
            error = f"content differs: {len(text)} chars, expected {len(expect.text)}"
    if error is not None:
        if stream.status and stream.status != 200 and stream.body is not None:
            error += f": {bytes(stream.body[:200])!r}"
        return Result(False, got, error, ttft, stream.gaps)
    return Result(True, expect.chunks, None, ttft, stream.gaps)


def content_of(body: bytes, kind: Kind) -> str:
    """The content text of a whole response body: OpenAI's joined ``delta.content``,
    Anthropic's text deltas, Responses' ``response.output_text.delta`` deltas."""
    if kind == "text":
        return body.decode("utf-8", "replace")
    parts: list[str] = []
    for line in body.replace(b"\r\n", b"\n").split(b"\n"):
        if not line.startswith(b"data:"):
            continue
        payload = line[5:].strip()
        if payload == b"[DONE]":
            break
        try:
            event = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return "<not JSON>"
        if kind == "sse":
            for choice in event.get("choices") or ():
                content = (choice.get("delta") or {}).get("content")
                if content:
                    parts.append(content)
        elif kind == "anthropic":
            delta = event.get("delta") if event.get("type") == "content_block_delta" else None
            if isinstance(delta, dict) and delta.get("type") == "text_delta":
                parts.append(delta.get("text") or "")
        elif event.get("type") == "response.output_text.delta":
            parts.append(event.get("delta") or "")
    return "".join(parts)


async def connect(host: str, port: int) -> Connection:
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(30):
        _, protocol = await loop.create_connection(Connection, host, port)
    sock = protocol.transport.get_extra_info("socket") if protocol.transport else None
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return protocol


def build_request(
    method: str, path: str, body: bytes, headers: dict[str, str], host: str, port: int
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"host: {host}:{port}"]
    lowered = {k.lower() for k in headers}
    lines += [f"{k}: {v}" for k, v in headers.items()]
    if body and "content-length" not in lowered:
        lines.append(f"content-length: {len(body)}")
    if "content-type" not in lowered and body:
        lines.append("content-type: application/json")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


@dataclass
class Worker:
    """One client slot: a connection reused for stream after stream (reconnecting when the
    server closes it), until ``more()`` says stop."""

    host: str
    port: int
    data: bytes
    expect: Expect
    timed: bool = False
    lazy: float = 0.0
    results: list[Result] = field(default_factory=list)
    stream_timeout: float = 120.0

    async def run(self, more: Callable[[], bool], verify_first: bool = False) -> None:
        conn: Connection | None = None
        verify = verify_first
        try:
            while more():
                if conn is None or conn.closed or not conn.keep_alive:
                    if conn is not None:
                        conn.close()
                    try:
                        conn = await connect(self.host, self.port)
                    except (OSError, TimeoutError) as exc:
                        self.results.append(Result(False, 0, f"connect failed: {exc!r}"))
                        conn = None
                        await asyncio.sleep(0.05)
                        continue
                future = conn.request(self.data, self.expect, self.timed, verify, self.lazy)
                verify = False
                try:
                    async with asyncio.timeout(self.stream_timeout):
                        result = await future
                except TimeoutError:
                    result = Result(False, 0, f"no end after {self.stream_timeout:g} s")
                    conn.close()
                    conn = None
                self.results.append(result)
        finally:
            if conn is not None:
                conn.close()
