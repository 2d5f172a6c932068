"""The bench's fake upstream: an OpenAI-compatible server that costs next to nothing,
which also answers ``POST /v1/messages`` as Anthropic does (``burst`` and ``normal``).

It shares its load core with the load generator, so everything a stream sends is
encoded once and cached, and nothing runs per chunk but a ``transport.write``. Model
names pick the scenario exactly as in the test upstream (``tests/upstream/
scenarios.py``: ``NAME:k=v,...``, the same bytes for the same name), so a gateway under
test passes the name through and the bench chooses what the upstream does:

``burst`` (n=200)
    The whole body, ``n`` distinct content chunks, written in one call.
``paced`` (n=10, interval=0.05)
    The role chunk at once, then each content chunk and the finish chunk ``interval``
    seconds apart; the usage chunk and ``[DONE]`` right with the finish chunk, as a
    model server sends them. One timer per stream (no coroutine per stream): 3,000
    paced streams cost the upstream little.
``slow_first_body`` (n=10, delay=1.0)
    Headers at once, the body after ``delay`` seconds.
``hold`` (n=10, max=300)
    Headers at once, then nothing until ``POST /_release`` (or ``max`` seconds):
    the idle profile holds thousands of streams open and ends them all at once.
``normal`` (n=10)
    As burst.

``POST /v1/messages`` streams the same content in Anthropic's SSE format, the test
upstream's bytes for its ``normal:n=N`` scenario (``tests/upstream/messages.py``):
``message_start`` (with usage), ``ping``, ``content_block_start``, ``n`` text deltas
``word0``, `` word1``, ..., ``content_block_stop``, ``message_delta`` (stop reason and
usage), ``message_stop``; encoded once per (model, prompt) and written in one call, as
for ``burst`` above. Other scenarios are not served there (a 404 in Anthropic's error
shape).

``GET /_stats`` answers ``{"active": streams in progress, "held": streams held,
"served": streams served}``; ``POST /_release`` ends every held stream and answers
how many. Run ``python -m bench.upstream --port 0``; it prints ``listening on
http://127.0.0.1:PORT`` and stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import socket
from functools import lru_cache
from typing import Any, cast

import httptools
import orjson
from tests.upstream import messages as am
from tests.upstream import scenarios as sc

LAST_CHUNK = b"0\r\n\r\n"
SCENARIOS: dict[str, dict[str, sc.ParamValue]] = {
    "burst": {"n": 200},
    "normal": {"n": 10},
    "paced": {"n": 10, "interval": 0.05},
    "slow_first_body": {"n": 10, "delay": 1.0},
    "hold": {"n": 10, "max": 300.0},
}


def http_chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


def head(status: int, headers: list[tuple[bytes, bytes]], keep_alive: bool) -> bytes:
    reason = {200: b"OK", 400: b"Bad Request", 404: b"Not Found"}.get(status, b"Error")
    lines = [b"HTTP/1.1 %d %s" % (status, reason)]
    lines += [name + b": " + value for name, value in headers]
    lines.append(b"connection: keep-alive" if keep_alive else b"connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n"


STREAM_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"transfer-encoding", b"chunked"),
    (b"cache-control", b"no-cache"),
]


@lru_cache(maxsize=64)
def stream_heads() -> tuple[bytes, bytes]:
    return head(200, STREAM_HEADERS, True), head(200, STREAM_HEADERS, False)


def parse(model: str) -> tuple[str, dict[str, sc.ParamValue]]:
    name, _, rest = model.strip().partition(":")
    if name not in SCENARIOS:
        raise LookupError(name)
    params = dict(SCENARIOS[name])
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, _, raw = item.partition("=")
        default = params.get(key.strip())
        if default is None:
            raise ValueError(f"scenario {name!r} has no parameter {key!r}")
        params[key.strip()] = type(default)(raw)
    return name, params


@lru_cache(maxsize=256)
def events(model: str, include_usage: bool, prompt: int) -> tuple[bytes, ...]:
    """Every HTTP chunk of the stream (one SSE event each), [DONE] last: the test
    upstream's bytes for ``burst:n=N`` with this model name."""
    _, params = parse(model)
    spec = sc.parse_spec(f"burst:n={params['n']}")
    chunks = sc.stream_chunks(spec, model, include_usage=include_usage, prompt=prompt)
    encoded = [sc.sse_event(sc.encode(c)) for c in chunks] + [sc.sse_event(sc.DONE)]
    return tuple(http_chunk(e) for e in encoded)


@lru_cache(maxsize=256)
def body(model: str, include_usage: bool, prompt: int) -> bytes:
    return b"".join(events(model, include_usage, prompt)) + LAST_CHUNK


#: The scenarios ``POST /v1/messages`` streams: everything written at once.
MESSAGES_SCENARIOS = frozenset({"burst", "normal"})


@lru_cache(maxsize=256)
def messages_body(model: str, prompt: int) -> bytes:
    """The whole chunked body of an Anthropic stream of ``model``'s content chunks."""
    _, params = parse(model)
    spec = am.parse_spec(f"normal:n={params['n']}")
    encoded = am.stream_events(spec, model, prompt)
    return b"".join(http_chunk(e) for e in encoded) + LAST_CHUNK


def anthropic_error(kind: str, message: str) -> bytes:
    return orjson.dumps({"type": "error", "error": {"type": kind, "message": message}})


class Server:
    def __init__(self) -> None:
        self.active = 0
        self.served = 0
        self.held: set[Connection] = set()
        self.open: set[Connection] = set()

    def stats(self) -> dict[str, int]:
        return {"active": self.active, "held": len(self.held), "served": self.served}

    def release(self) -> int:
        held = list(self.held)
        self.held.clear()
        for conn in held:
            conn.finish_held()
        return len(held)


class Connection(asyncio.Protocol):
    """One client connection; requests are served one at a time, in order."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.body = bytearray()
        self.keep_alive = True
        self.timer: asyncio.TimerHandle | None = None
        self.pending: tuple[bytes, ...] = ()
        self.index = 0
        self.interval = 0.0
        self.last = 0
        self.loop = asyncio.get_running_loop()

    # asyncio callbacks ----------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.open.add(self)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.respond(400, b'{"error":{"message":"malformed request"}}', keep_alive=False)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.open.discard(self)
        self._stop()
        self.transport = None

    # httptools callbacks --------------------------------------------------------
    def on_message_begin(self) -> None:
        self.url = b""
        self.body.clear()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.keep_alive = bool(self.parser.should_keep_alive())
        method = self.parser.get_method()
        path = self.url.partition(b"?")[0]
        if path == b"/v1/chat/completions" and method == b"POST":
            self.chat()
        elif path == b"/v1/messages" and method == b"POST":
            self.messages()
        elif path == b"/_stats":
            self.respond(200, orjson.dumps(self.server.stats()))
        elif path == b"/_release" and method == b"POST":
            self.respond(200, orjson.dumps({"released": self.server.release()}))
        elif path == b"/v1/models":
            data = [{"id": n, "object": "model", "created": sc.CREATED} for n in SCENARIOS]
            self.respond(200, orjson.dumps({"object": "list", "data": data}))
        else:
            self.respond(404, b'{"error":{"message":"not found","code":"not_found"}}')

    # serving --------------------------------------------------------------------
    def respond(self, status: int, payload: bytes, keep_alive: bool | None = None) -> None:
        keep = self.keep_alive if keep_alive is None else keep_alive
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", b"%d" % len(payload)),
        ]
        self.write(head(status, headers, keep) + payload)
        if not keep and self.transport is not None:
            self.transport.close()

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def chat(self) -> None:
        try:
            request: Any = orjson.loads(self.body)
            model = request["model"]
            name, params = parse(model)
        except (orjson.JSONDecodeError, KeyError, TypeError):
            self.respond(400, b'{"error":{"message":"bad request body"}}')
            return
        except (LookupError, ValueError) as exc:
            error = {"error": {"message": f"no scenario {exc}", "code": "model_not_found"}}
            self.respond(404, orjson.dumps(error))
            return
        if request.get("stream") is not True:
            self.respond(400, b'{"error":{"message":"the bench upstream only streams"}}')
            return
        options = request.get("stream_options")
        usage = isinstance(options, dict) and options.get("include_usage") is True
        prompt = sc.prompt_tokens(request.get("messages"))
        keep_head, close_head = stream_heads()
        stream_head = keep_head if self.keep_alive else close_head
        self.server.active += 1
        if name in ("burst", "normal"):
            self.write(stream_head + body(model, usage, prompt))
            self._done()
            return
        self.write(stream_head)
        self.pending = events(model, usage, prompt)
        self.index = 0
        if name == "paced":
            self.interval = float(params["interval"])
            # Paced: the role chunk, then each content chunk and the finish chunk
            # ``interval`` apart; usage and [DONE] go with the finish chunk.
            self.last = 2 + int(params["n"])
            self._tick()
        elif name == "slow_first_body":
            self.interval = 0.0
            self.timer = self.loop.call_later(float(params["delay"]), self._tick)
        else:  # hold
            self.interval = 0.0
            self.server.held.add(self)
            self.timer = self.loop.call_later(float(params["max"]), self.finish_held)

    def messages(self) -> None:
        try:
            request: Any = orjson.loads(self.body)
            model = request["model"]
            name, _ = parse(model)
        except (orjson.JSONDecodeError, KeyError, TypeError):
            error = anthropic_error("invalid_request_error", "bad request body")
            self.respond(400, error)
            return
        except (LookupError, ValueError) as exc:
            self.respond(404, anthropic_error("not_found_error", f"no scenario {exc}"))
            return
        if name not in MESSAGES_SCENARIOS or request.get("stream") is not True:
            error = anthropic_error(
                "invalid_request_error", "the bench upstream streams burst and normal only"
            )
            self.respond(400, error)
            return
        keep_head, close_head = stream_heads()
        self.server.active += 1
        prompt = am.input_tokens(request)
        self.write((keep_head if self.keep_alive else close_head) + messages_body(model, prompt))
        self._done()

    def finish_held(self) -> None:
        self.server.held.discard(self)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.pending:
            self._tick()

    def _tick(self) -> None:
        self.timer = None
        if self.interval:
            event = self.pending[self.index]
            self.index += 1
            if self.index < self.last:
                self.write(event)
                self.timer = self.loop.call_later(self.interval, self._tick)
                return
            # The finish chunk, then the usage chunk and [DONE] at once, as a model
            # server sends them: they are not tokens, nothing paces them.
            self.write(b"".join(self.pending[self.index - 1 :]) + LAST_CHUNK)
        else:
            self.write(b"".join(self.pending[self.index :]) + LAST_CHUNK)
        self.pending = ()
        self._done()

    def _done(self) -> None:
        self.server.active -= 1
        self.server.served += 1
        if not self.keep_alive and self.transport is not None:
            self.transport.close()

    def _stop(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.pending:
            self.pending = ()
            self.server.active -= 1
        self.server.held.discard(self)


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = Server()
    listener = await loop.create_server(lambda: Connection(server), host, port, backlog=4096)
    bound = listener.sockets[0].getsockname()[1]
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(f"listening on http://{host}:{bound}", flush=True)
    await stop.wait()
    listener.close()
    for conn in list(server.open):
        if conn.transport is not None:
            conn.transport.abort()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="The bench's fake upstream.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
