"""The test upstream: an OpenAI-compatible HTTP/1.1 server with per-request scenarios.

Run ``python -m tests.upstream.server --host 127.0.0.1 --port 0 [--port-file PATH]``;
it prints ``listening on http://HOST:PORT`` once ready and stops on SIGTERM/SIGINT.
Raw asyncio protocol + httptools, so every TCP write and every close is deliberate.
Endpoints: ``POST /v1/chat/completions``, ``POST /v1/messages`` (Anthropic's Messages
API) and ``POST /v1/messages/count_tokens``, ``POST /v1/responses`` (``responses.py``),
``POST /v1/embeddings``, ``GET /v1/models``, ``GET /_log``, ``POST /_reset``. See
``scenarios.py`` and ``messages.py`` for what each scenario does. ``/_log`` keeps every
request's headers and body, so tests can check what was sent.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import ssl
import struct
import sys
import time
import traceback
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from functools import lru_cache
from http import HTTPStatus
from typing import Any, cast

import httptools

from tests.upstream import messages as am
from tests.upstream import responses as rs
from tests.upstream import scenarios as sc

CONTROL_PATHS = frozenset({"/_log", "/_reset"})
LAST_CHUNK = b"0\r\n\r\n"


class ConnectionClosed(Exception):
    """The connection is gone; the handler stops."""


# --------------------------------------------------------------------------- log


@dataclass
class ConnectionRecord:
    id: int
    opened_at: float
    closed_at: float | None = None
    closed_by: str | None = None
    requests: int = 0
    #: Served a control request (/_log, /_reset): hidden unless it served others too.
    control: bool = False

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "opened_at": self.opened_at,
            "closed_at": self.closed_at,
            "closed_by": self.closed_by,
            "requests": self.requests,
        }


@dataclass
class Log:
    """What the server saw; at most ``limit`` requests and connections (oldest go first)."""

    limit: int = 10_000
    requests: deque[dict[str, Any]] = field(default_factory=deque)
    connections: dict[int, ConnectionRecord] = field(default_factory=dict)
    next_connection: int = 1
    next_request: int = 1

    def open_connection(self) -> ConnectionRecord:
        record = ConnectionRecord(self.next_connection, time.time())
        self.connections[record.id] = record
        self.next_connection += 1
        if len(self.connections) > self.limit:
            closed = [k for k, c in self.connections.items() if c.closed_at is not None]
            for key in closed[: len(self.connections) - self.limit]:
                del self.connections[key]
        return record

    def add_request(self, conn: ConnectionRecord, request: Request) -> dict[str, Any]:
        conn.requests += 1
        entry = {
            "id": self.next_request,
            "connection": conn.id,
            "path": request.path,
            "method": request.method,
            "headers": request.headers,
            "body": request.json(),
            "received_at": request.received_at,
            "scenario": None,
        }
        self.next_request += 1
        self.requests.append(entry)
        if len(self.requests) > self.limit:
            self.requests.popleft()
        return entry

    def snapshot(self) -> dict[str, Any]:
        shown = (c for c in self.connections.values() if not (c.control and c.requests == 0))
        return {"requests": list(self.requests), "connections": [c.as_json() for c in shown]}

    def reset(self) -> None:
        """Forget requests and closed connections; open ones stay, counted from zero."""
        self.requests.clear()
        self.connections = {k: c for k, c in self.connections.items() if c.closed_at is None}
        for record in self.connections.values():
            record.requests = 0


# ----------------------------------------------------------------------- http


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    keep_alive: bool
    received_at: float

    def json(self) -> Any:
        try:
            return json.loads(self.body) if self.body else None
        except ValueError:
            return None


#: Reason phrases of statuses ``http.HTTPStatus`` does not know.
OTHER_PHRASES = {529: "Site Overloaded"}


def head(status: int, headers: list[tuple[str, str]], keep_alive: bool = True) -> bytes:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:  # 529 (Anthropic's "overloaded") and other unlisted statuses
        phrase = OTHER_PHRASES.get(status, "Unknown")
    lines = [f"HTTP/1.1 {status} {phrase}"]
    lines += [f"{name}: {value}" for name, value in headers]
    lines.append(f"connection: {'keep-alive' if keep_alive else 'close'}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def http_chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


class Connection(asyncio.Protocol):
    """One client connection: parses requests and serves them one at a time."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.transport: asyncio.Transport | None = None
        self.record = app.log.open_connection()
        self.parser = httptools.HttpRequestParser(self)
        self.queue: asyncio.Queue[Request | None] = asyncio.Queue()
        self.closed = asyncio.Event()
        self.writable = asyncio.Event()
        self.writable.set()
        self.worker: asyncio.Task[None] | None = None
        self.broken = False
        self._url = b""
        self._headers: dict[str, str] = {}
        self._body = bytearray()

    # asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.app.open.add(self)
        self.worker = asyncio.get_running_loop().create_task(self._serve())

    def data_received(self, data: bytes) -> None:
        if self.broken:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass
        except httptools.HttpParserError:
            self.broken = True
            self.queue.put_nowait(None)

    def eof_received(self) -> bool:
        self._mark_closed("peer")
        return False  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self._mark_closed("peer")
        self.closed.set()
        self.writable.set()
        self.app.open.discard(self)
        if self.worker is not None:
            self.worker.cancel()

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._url, self._headers, self._body = b"", {}, bytearray()

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        self._headers[key] = f"{self._headers[key]}, {text}" if key in self._headers else text

    def on_headers_complete(self) -> None:
        if self._headers.get("expect", "").lower() == "100-continue" and self.transport:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self._body += body

    def on_message_complete(self) -> None:
        request = Request(
            method=self.parser.get_method().decode("latin-1"),
            path=self._url.decode("latin-1"),
            headers=self._headers,
            body=bytes(self._body),
            keep_alive=bool(self.parser.should_keep_alive()),
            received_at=time.time(),
        )
        self.queue.put_nowait(request)

    # writing and closing
    def _mark_closed(self, by: str) -> None:
        if self.record.closed_at is None:
            self.record.closed_at = time.time()
            self.record.closed_by = by

    def write(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            raise ConnectionClosed
        self.transport.write(data)

    async def drain(self) -> None:
        await self.writable.wait()
        if self.closed.is_set():
            raise ConnectionClosed

    async def flushed(self) -> None:
        """Wait until everything written has been handed to the kernel."""
        while self.transport is not None and self.transport.get_write_buffer_size():
            if self.closed.is_set():
                raise ConnectionClosed
            await asyncio.sleep(0.001)

    def close(self, rst: bool = False) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self._mark_closed("server")
        if rst:
            sock = self.transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.transport.abort()
        else:
            self.transport.close()

    async def _serve(self) -> None:
        try:
            while True:
                request = await self.queue.get()
                if request is None:
                    body = sc.encode(
                        sc.error_body("Malformed HTTP request.", "invalid_request_error", None)
                    )
                    self.write(head(400, json_headers(body), keep_alive=False) + body)
                    self.close()
                    return
                await self.app.handle(self, request)
                if not request.keep_alive:
                    self.close()
                    return
        except ConnectionClosed:
            pass
        except Exception:
            traceback.print_exc(file=sys.stderr)
            self.close()


def json_headers(body: bytes) -> list[tuple[str, str]]:
    return [("content-type", "application/json"), ("content-length", str(len(body)))]


def send_json(
    conn: Connection,
    status: int,
    obj: Any,
    keep_alive: bool,
    extra: list[tuple[str, str]] | None = None,
) -> None:
    body = sc.encode(obj)
    conn.write(head(status, [*json_headers(body), *(extra or [])], keep_alive) + body)


# ------------------------------------------------------------------ scenarios


@dataclass
class Call:
    """One chat completion request, decoded."""

    conn: Connection
    spec: sc.Spec
    model: str
    stream: bool
    include_usage: bool
    prompt: int
    request_id: int
    keep_alive: bool
    #: The request's ``n``, and its ``top_logprobs`` if it asked for ``logprobs``.
    choices: int = 1
    top_logprobs: int | None = None

    def headers(self, content_type: str) -> list[tuple[str, str]]:
        return [("content-type", content_type), ("x-request-id", f"req_{self.request_id}")]

    def stream_head(self) -> bytes:
        headers = self.headers("text/event-stream; charset=utf-8")
        headers += [("transfer-encoding", "chunked"), ("cache-control", "no-cache")]
        return head(200, headers, self.keep_alive)


@lru_cache(maxsize=512)
def sse_events(
    spec: sc.Spec,
    model: str,
    include_usage: bool,
    prompt: int,
    choices: int = 1,
    top_logprobs: int | None = None,
) -> tuple[bytes, ...]:
    """Every SSE event of the complete stream, ``\\n`` line endings, [DONE] last."""
    chunks = sc.stream_chunks(
        spec,
        model,
        include_usage=include_usage,
        prompt=prompt,
        choices=choices,
        top_logprobs=top_logprobs,
    )
    return (*(sc.sse_event(sc.encode(c)) for c in chunks), sc.sse_event(sc.DONE))


@lru_cache(maxsize=512)
def framed_events(
    spec: sc.Spec,
    model: str,
    include_usage: bool,
    prompt: int,
    choices: int = 1,
    top_logprobs: int | None = None,
) -> tuple[bytes, ...]:
    events = sse_events(spec, model, include_usage, prompt, choices, top_logprobs)
    return tuple(http_chunk(e) for e in events)


@lru_cache(maxsize=512)
def burst_body(spec: sc.Spec, model: str, include_usage: bool, prompt: int) -> bytes:
    return b"".join(framed_events(spec, model, include_usage, prompt)) + LAST_CHUNK


def crlf_events(call: Call) -> list[bytes]:
    chunks = sc.stream_chunks(
        call.spec, call.model, include_usage=call.include_usage, prompt=call.prompt
    )
    payloads = [sc.encode(c) for c in chunks] + [sc.DONE]
    return [sc.sse_event(p, b"\r\n") for p in payloads]


async def write_events(
    call: Call | MessagesCall, events: tuple[bytes, ...] | list[bytes], interval: float
) -> None:
    for index, event in enumerate(events):
        if index and interval:
            await asyncio.sleep(interval)
        call.conn.write(event)
        await call.conn.drain()


async def stream_normal(call: Call) -> None:
    conn, spec = call.conn, call.spec
    events = framed_events(
        spec, call.model, call.include_usage, call.prompt, call.choices, call.top_logprobs
    )
    if spec.name == "burst":
        conn.write(
            call.stream_head() + burst_body(spec, call.model, call.include_usage, call.prompt)
        )
        return
    conn.write(call.stream_head())
    if spec.name == "slow_first_body":
        await asyncio.sleep(spec.number("delay"))
    interval = spec.number("interval") if spec.name == "paced" else 0.0
    await write_events(call, events, interval)
    conn.write(LAST_CHUNK)


async def stream_comments(call: Call) -> None:
    framed = []
    for index, event in enumerate(crlf_events(call)):
        inline = b": ping\r\n" if index % 2 else b""
        framed.append(http_chunk(b": keep-alive\r\n\r\n" + inline + event))
    call.conn.write(call.stream_head())
    await write_events(call, framed, call.spec.number("interval"))
    call.conn.write(LAST_CHUNK)


async def stream_multibyte(call: Call) -> None:
    pieces = sc.multibyte_pieces(b"".join(crlf_events(call)))
    call.conn.write(call.stream_head())
    await call.conn.flushed()
    await write_events(call, [http_chunk(p) for p in pieces], call.spec.number("interval"))
    call.conn.write(LAST_CHUNK)


async def stream_failing(call: Call) -> None:
    conn, spec = call.conn, call.spec
    events = framed_events(spec, call.model, call.include_usage, call.prompt)
    conn.write(call.stream_head())
    await write_events(call, events[: 1 + spec.integer("after")], 0.0)
    if spec.name == "midstream_error":
        conn.write(http_chunk(sc.sse_event(sc.encode(sc.midstream_error(spec)))) + LAST_CHUNK)
    elif spec.name == "bad_json":
        conn.write(http_chunk(sc.sse_event(sc.BAD_JSON)) + LAST_CHUNK)
    elif spec.name == "drop":
        await drop(call)
    else:
        await conn.closed.wait()
        raise ConnectionClosed


async def drop(call: Call | MessagesCall) -> None:
    await call.conn.flushed()
    await asyncio.sleep(0.005)  # let the peer read what was sent before it goes
    call.conn.close(rst=bool(call.spec.integer("rst")))
    raise ConnectionClosed


async def respond_json(call: Call) -> None:
    conn, spec = call.conn, call.spec
    if spec.name in ("midstream_error", "bad_json"):
        body = sc.error_body("Simulated upstream failure.", "server_error", None)
        send_json(conn, 500, body, call.keep_alive)
        return
    answer = sc.completion(
        spec, call.model, prompt=call.prompt, choices=call.choices, top_logprobs=call.top_logprobs
    )
    body = sc.encode(answer)
    headers = [*call.headers("application/json"), ("content-length", str(len(body)))]
    conn.write(head(200, headers, call.keep_alive))
    if spec.name == "slow_first_body":
        await asyncio.sleep(spec.number("delay"))
    if spec.name in ("drop", "stall"):
        conn.write(body[: len(body) // 2])
        if spec.name == "drop":
            await drop(call)
        await conn.closed.wait()
        raise ConnectionClosed
    conn.write(body)


async def run_scenario(call: Call) -> None:
    spec = call.spec
    if spec.name == "error_status":
        status = spec.integer("status")
        extra = sc.retry_after_headers(spec) if status == 429 else []
        extra.append(("x-request-id", f"req_{call.request_id}"))
        send_json(call.conn, status, sc.status_error(status), call.keep_alive, extra)
        return
    if spec.name == "context_length":
        send_json(call.conn, 400, sc.CONTEXT_LENGTH_ERROR, call.keep_alive)
        return
    if spec.name == "slow_first":
        await asyncio.sleep(spec.number("delay"))
    if not call.stream:
        await respond_json(call)
    elif spec.name in sc.FAILING:
        await stream_failing(call)
    elif spec.name == "comments":
        await stream_comments(call)
    elif spec.name == "multibyte":
        await stream_multibyte(call)
    else:
        await stream_normal(call)


# ------------------------------------------------------------ anthropic messages


@dataclass
class MessagesCall:
    """One Anthropic Messages request, decoded."""

    conn: Connection
    spec: sc.Spec
    model: str
    stream: bool
    prompt: int
    request_id: int
    keep_alive: bool

    def stream_head(self) -> bytes:
        headers = [
            ("content-type", "text/event-stream; charset=utf-8"),
            ("request-id", f"req_{self.request_id}"),
            ("transfer-encoding", "chunked"),
            ("cache-control", "no-cache"),
        ]
        return head(200, headers, self.keep_alive)


def send_anthropic_error(
    conn: Connection,
    status: int,
    kind: str,
    message: str,
    keep_alive: bool,
    extra: list[tuple[str, str]] | None = None,
) -> None:
    send_json(conn, status, am.error_body(kind, message), keep_alive, extra)


async def run_messages(call: MessagesCall) -> None:
    conn, spec = call.conn, call.spec
    if spec.name == "error_status":
        status = spec.integer("status")
        extra = am.retry_after(spec) if status == 429 else []
        send_json(conn, status, am.status_error(status), call.keep_alive, extra)
        return
    if spec.name == "prompt_too_long":
        send_anthropic_error(
            conn, 400, "invalid_request_error", am.PROMPT_TOO_LONG, call.keep_alive
        )
        return
    if not call.stream:
        if spec.name in am.FAILING:
            send_anthropic_error(conn, 529, "overloaded_error", "Overloaded", call.keep_alive)
            return
        send_json(conn, 200, am.message(spec, call.model, call.prompt), call.keep_alive)
        return
    events = am.stream_events(spec, call.model, call.prompt)
    conn.write(call.stream_head())
    if spec.name == "multibyte":
        await conn.flushed()
        pieces = sc.multibyte_pieces(b"".join(events))
        await write_events(call, [http_chunk(p) for p in pieces], spec.number("interval"))
    else:
        interval = spec.number("interval") if spec.name == "normal" else 0.0
        await write_events(call, [http_chunk(e) for e in events], interval)
    if spec.name == "overloaded":
        conn.write(http_chunk(am.error_event("overloaded_error", "Overloaded")))
    elif spec.name == "bare_error":
        conn.write(http_chunk(am.bare_error(spec)))
    elif spec.name == "drop":
        await drop(call)
    conn.write(LAST_CHUNK)


# ------------------------------------------------------------------------ app


class App:
    def __init__(self, log_limit: int = 10_000) -> None:
        self.log = Log(limit=log_limit)
        self.open: set[Connection] = set()

    async def handle(self, conn: Connection, request: Request) -> None:
        path = request.path.partition("?")[0]
        if path in CONTROL_PATHS:
            conn.record.control = True
            self.control(conn, request, path)
            return
        entry = self.log.add_request(conn.record, request)
        route = ROUTES.get((request.method, path))
        if route is None:
            known = any(p == path for _, p in ROUTES)
            status = 405 if known else 404
            message = f"{request.method} {path} is not served here."
            error = sc.error_body(message, "invalid_request_error", None)
            send_json(conn, status, error, request.keep_alive)
            return
        await route(self, conn, request, entry)

    def control(self, conn: Connection, request: Request, path: str) -> None:
        if path == "/_log" and request.method == "GET":
            send_json(conn, 200, self.log.snapshot(), request.keep_alive)
        elif path == "/_reset" and request.method == "POST":
            self.log.reset()
            send_json(conn, 200, {"ok": True}, request.keep_alive)
        else:
            send_json(
                conn,
                405,
                sc.error_body("Method not allowed.", "invalid_request_error", None),
                request.keep_alive,
            )

    async def models(self, conn: Connection, request: Request, entry: dict[str, Any]) -> None:
        data = [
            {"id": name, "object": "model", "created": sc.CREATED, "owned_by": "sluice-test"}
            for name in sc.SCENARIOS
        ]
        send_json(conn, 200, {"object": "list", "data": data}, request.keep_alive)

    async def chat(self, conn: Connection, request: Request, entry: dict[str, Any]) -> None:
        keep = request.keep_alive
        body = entry["body"]
        if not isinstance(body, dict):
            message = "The request body must be a JSON object."
            send_json(conn, 400, sc.error_body(message, "invalid_request_error", None), keep)
            return
        model = body.get("model")
        text = request.headers.get(sc.SCENARIO_HEADER) or model
        if not isinstance(text, str) or not text:
            message = "You must provide a model parameter."
            send_json(
                conn, 400, sc.error_body(message, "invalid_request_error", None, "model"), keep
            )
            return
        try:
            spec = sc.parse_spec(text)
        except sc.UnknownScenario:
            message = f"The model `{text}` does not exist (no such test scenario)."
            error = sc.error_body(message, "invalid_request_error", "model_not_found", "model")
            send_json(conn, 404, error, keep)
            return
        except sc.BadScenario as exc:
            send_json(
                conn, 400, sc.error_body(str(exc), "invalid_request_error", None, "model"), keep
            )
            return
        entry["scenario"] = spec.name
        if spec.name == "echo_key":
            key = request.headers.get("authorization", "").removeprefix("Bearer ")
            message = (
                f"Incorrect API key provided: {key}. You can find your API key at"
                " https://platform.openai.com/account/api-keys."
            )
            error = sc.error_body(message, "invalid_request_error", "invalid_api_key")
            if spec.integer("inband") and body.get("stream") is True:
                # 200 and a stream whose first event is the error.
                headers = [("content-type", "text/event-stream"), ("transfer-encoding", "chunked")]
                conn.write(head(200, headers, keep) + http_chunk(sc.sse_event(sc.encode(error))))
                conn.write(LAST_CHUNK)
                return
            send_json(conn, spec.integer("status"), error, keep)
            return
        options = body.get("stream_options")
        n, top = body.get("n"), body.get("top_logprobs")
        call = Call(
            conn=conn,
            spec=spec,
            model=model if isinstance(model, str) else text,
            stream=body.get("stream") is True,
            include_usage=isinstance(options, dict) and options.get("include_usage") is True,
            prompt=sc.prompt_tokens(body.get("messages")),
            request_id=entry["id"],
            keep_alive=keep,
            choices=n if type(n) is int and 1 <= n <= 128 else 1,
            top_logprobs=(top if type(top) is int else 0) if body.get("logprobs") is True else None,
        )
        await run_scenario(call)

    async def embeddings(self, conn: Connection, request: Request, entry: dict[str, Any]) -> None:
        """Deterministic 4-dimensional vectors, one per input; model ``fail`` answers
        500 and ``bad_json`` a body that is not JSON."""
        keep = request.keep_alive
        body = entry["body"]
        model = body.get("model") if isinstance(body, dict) else None
        if model == "fail":
            send_json(conn, 500, sc.error_body("embedding failed", "server_error", None), keep)
            return
        if model == "bad_json":
            conn.write(head(200, json_headers(b"{not json"), keep) + b"{not json")
            return
        items = body.get("input") if isinstance(body, dict) else None
        if isinstance(items, str) or (
            isinstance(items, list) and items and isinstance(items[0], int)
        ):
            items = [items]
        if not isinstance(items, list):
            send_json(conn, 400, sc.error_body("bad input", "invalid_request_error", None), keep)
            return
        data = []
        tokens = 0
        for index, item in enumerate(items):
            text = item if isinstance(item, str) else " ".join(map(str, item))
            tokens += max(1, len(text) // 4)
            seed = sum(text.encode()) % 97
            data.append(
                {
                    "object": "embedding",
                    "index": index,
                    "embedding": [seed / 100, 0.5, -0.25, len(text) / 1000],
                }
            )
        answer = {
            "object": "list",
            "data": data,
            "model": f"{model}-v1",
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        send_json(conn, 200, answer, keep)

    async def responses(self, conn: Connection, request: Request, entry: dict[str, Any]) -> None:
        """``POST /v1/responses``: see ``responses.py``; ``length`` ends incomplete."""
        keep = request.keep_alive
        body = entry["body"] if isinstance(entry["body"], dict) else {}
        model = body.get("model")
        length = model == "length"
        try:
            spec = sc.parse_spec("normal" if length else str(model))
        except (sc.UnknownScenario, sc.BadScenario) as exc:
            send_json(conn, 404, sc.error_body(str(exc), "invalid_request_error", None), keep)
            return
        entry["scenario"] = spec.name
        if spec.name == "error_status":
            status = spec.integer("status")
            send_json(conn, status, sc.status_error(status), keep)
            return
        stream = rs.events(spec, str(model), rs.prompt_of(body), length=length)
        headers = [("content-type", "text/event-stream"), ("transfer-encoding", "chunked")]
        conn.write(head(200, headers, keep))
        if spec.name == "multibyte":
            await conn.flushed()
            pieces = sc.multibyte_pieces(b"".join(rs.sse(event) for event in stream))
            for piece in pieces:
                conn.write(http_chunk(piece))
                await conn.drain()
                await asyncio.sleep(spec.number("interval"))
        for event in stream if spec.name != "multibyte" else ():
            conn.write(http_chunk(rs.sse(event)))
            await conn.drain()
        if spec.name == "drop":
            call = Call(conn, spec, str(model), True, True, 0, entry["id"], keep)
            await drop(call)
        conn.write(LAST_CHUNK)

    async def messages(self, conn: Connection, request: Request, entry: dict[str, Any]) -> None:
        keep = request.keep_alive
        body = entry["body"]
        if not isinstance(body, dict):
            message = "The request body must be a JSON object."
            send_anthropic_error(conn, 400, "invalid_request_error", message, keep)
            return
        model = body.get("model")
        text = request.headers.get(sc.SCENARIO_HEADER) or model
        if not isinstance(text, str) or not text:
            send_anthropic_error(conn, 400, "invalid_request_error", "model: Field required", keep)
            return
        if not isinstance(body.get("max_tokens"), int):
            message = "max_tokens: Field required"
            send_anthropic_error(conn, 400, "invalid_request_error", message, keep)
            return
        try:
            spec = am.parse_spec(text)
        except sc.UnknownScenario:
            send_anthropic_error(conn, 404, "not_found_error", f"model: {text}", keep)
            return
        except sc.BadScenario as exc:
            send_anthropic_error(conn, 400, "invalid_request_error", str(exc), keep)
            return
        entry["scenario"] = spec.name
        call = MessagesCall(
            conn=conn,
            spec=spec,
            model=model if isinstance(model, str) else text,
            stream=body.get("stream") is True,
            prompt=am.input_tokens(body),
            request_id=entry["id"],
            keep_alive=keep,
        )
        await run_messages(call)

    async def count_tokens(self, conn: Connection, request: Request, entry: dict[str, Any]) -> None:
        """``POST /v1/messages/count_tokens``: see ``messages.py``."""
        keep = request.keep_alive
        body = entry["body"]
        model = body.get("model") if isinstance(body, dict) else None
        if not isinstance(body, dict) or not isinstance(model, str) or not model:
            send_anthropic_error(conn, 400, "invalid_request_error", "model: Field required", keep)
            return
        try:
            spec = am.parse_spec(request.headers.get(sc.SCENARIO_HEADER) or model)
        except sc.UnknownScenario:
            send_anthropic_error(conn, 404, "not_found_error", f"model: {model}", keep)
            return
        except sc.BadScenario as exc:
            send_anthropic_error(conn, 400, "invalid_request_error", str(exc), keep)
            return
        entry["scenario"] = spec.name
        if spec.name == "error_status":
            send_json(conn, spec.integer("status"), am.status_error(spec.integer("status")), keep)
        elif spec.name == "prompt_too_long":
            send_anthropic_error(conn, 400, "invalid_request_error", am.PROMPT_TOO_LONG, keep)
        else:
            send_json(conn, 200, {"input_tokens": am.count_tokens(body)}, keep)


Route = Callable[[App, Connection, Request, dict[str, Any]], Coroutine[Any, Any, None]]
ROUTES: dict[tuple[str, str], Route] = {
    ("GET", "/v1/models"): App.models,
    ("POST", "/v1/chat/completions"): App.chat,
    ("POST", "/v1/embeddings"): App.embeddings,
    ("POST", "/v1/responses"): App.responses,
    ("POST", "/v1/messages"): App.messages,
    ("POST", "/v1/messages/count_tokens"): App.count_tokens,
}


# ------------------------------------------------------------------------ main


def write_port_file(path: str, port: int) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(f"{port}\n")
    os.replace(tmp, path)


async def serve(
    host: str, port: int, port_file: str | None, log_limit: int, tls: ssl.SSLContext | None = None
) -> None:
    loop = asyncio.get_running_loop()
    app = App(log_limit)
    server = await loop.create_server(lambda: Connection(app), host, port, backlog=1024, ssl=tls)
    bound = server.sockets[0].getsockname()[1]
    if port_file:
        write_port_file(port_file, bound)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(f"listening on {'https' if tls else 'http'}://{host}:{bound}", flush=True)
    await stop.wait()
    server.close()
    for conn in list(app.open):
        if conn.transport is not None:
            conn.transport.abort()
    await server.wait_closed()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--port-file", default=None, help="also write the bound port here")
    parser.add_argument(
        "--log-limit", type=int, default=10_000, help="requests and connections kept in /_log"
    )
    parser.add_argument("--certfile", help="serve HTTPS with this certificate chain (PEM)")
    parser.add_argument("--keyfile", help="the certificate's private key (PEM)")
    args = parser.parse_args(argv)
    tls = None
    if args.certfile:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(args.certfile, args.keyfile)
    main_task = serve(args.host, args.port, args.port_file, args.log_limit, tls)
    try:
        import uvloop
    except ImportError:
        asyncio.run(main_task)
    else:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(main_task)


if __name__ == "__main__":
    main()
