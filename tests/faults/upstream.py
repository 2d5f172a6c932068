"""An OpenAI-compatible upstream that fails on purpose, in its own process.

``python -m tests.faults.upstream --log PATH`` prints ``listening on
http://127.0.0.1:PORT blackhole BPORT reset RPORT`` once ready and stops on SIGTERM.
BPORT is a port whose accept queue is full: a connection to it never completes (the
connect stalls). RPORT resets every connection the moment it is accepted.
Every request is appended to ``--log`` as a JSON line: its connection's number, how many
requests that connection served before, the model and the request headers.

``POST /v1/chat/completions``: the request's ``model``, ``NAME`` or ``NAME:k=v,…``,
picks what happens. Content chunks say ``w0``, `` w1``, … (``text(n)``).
``POST /v1/messages`` (Anthropic's Messages API) serves ``ok``, ``bad_utf8``,
``huge_line`` and ``gzip`` the same way, as Anthropic events.

``ok`` (n=5, interval=0)            a stream of ``n`` chunks, then ``[DONE]``; keep-alive
``reset`` (phase)                   a TCP reset: ``headers`` (in the middle of the head),
                                    ``first_chunk`` (after the head), ``mid`` (after 2 chunks)
``stall`` (phase)                   nothing more, until the peer leaves: ``headers``,
                                    ``first_chunk``, ``mid`` (after 2 chunks)
``huge_line`` (size=10485760)       2 chunks, then one ``data:`` line of ``size`` bytes
``not_http``                        bytes that are not HTTP, then a close
``bad_utf8``                        2 chunks, then one whose content holds bytes that are
                                    not UTF-8 (``\\xff\\xfe``), then ``[DONE]``
``gzip`` (n=5)                      ``Content-Encoding: gzip`` whatever was asked, each
                                    event flushed
``chunk_ext`` (n=5)                 chunk extensions on every chunk, trailers at the end
``close_idle`` (n=2, after=0.2, rst=0)  a whole answer, then the idle connection is
                                    closed (FIN, or a reset) ``after`` seconds later
``late_end`` (n=5, delay=0.2)       a whole stream, but the body's last chunk (``0``)
                                    ``delay`` seconds after ``[DONE]``; keep-alive
``drop_reused`` (n=2)               on a connection that served a request before: closed
                                    when this request arrives, nothing answered; on a new
                                    connection: a whole answer
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import socket
import struct
import zlib
from typing import Any

DEFAULTS: dict[str, dict[str, Any]] = {
    "ok": {"n": 5, "interval": 0.0},
    "reset": {"phase": "mid"},
    "stall": {"phase": "mid"},
    "huge_line": {"size": 10 * 1024 * 1024},
    "not_http": {},
    "bad_utf8": {},
    "gzip": {"n": 5},
    "chunk_ext": {"n": 5},
    "close_idle": {"n": 2, "after": 0.2, "rst": 0},
    "drop_reused": {"n": 2},
    "late_end": {"n": 5, "delay": 0.2},
}


def parse(model: str) -> tuple[str, dict[str, Any]]:
    name, _, rest = model.partition(":")
    params = dict(DEFAULTS[name])
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        default = params[key]
        params[key] = type(default)(value) if not isinstance(default, str) else value
    return name, params


def text(n: int) -> str:
    return "".join(f"{' ' if i else ''}w{i}" for i in range(n))


def chunk(content: str | None = None, finish: str | None = None) -> bytes:
    delta = {} if content is None else {"content": content}
    body = {
        "id": "chatcmpl-fault",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": "fault",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def events(n: int) -> list[bytes]:
    words = [f"{' ' if i else ''}w{i}" for i in range(n)]
    return [chunk(w) for w in words] + [chunk(finish="stop"), b"data: [DONE]\n\n"]


def _event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + json.dumps(data).encode() + b"\n\n"


def framed(data: bytes, extension: bytes = b"") -> bytes:
    return b"%x%s\r\n%s\r\n" % (len(data), extension, data)


HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
    b"transfer-encoding: chunked\r\nconnection: keep-alive\r\n"
)


def reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class Server:
    def __init__(self, log: str) -> None:
        self.log = log
        self.connections = 0

    def note(self, entry: dict[str, Any]) -> None:
        with open(self.log, "a") as out:
            out.write(json.dumps(entry) + "\n")

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number, served = self.connections, 0
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        name, _, value = line.partition(":")
                        headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                model = json.loads(body).get("model", "ok") if body else "ok"
                path = lines[0].split(" ")[1] if lines[0].count(" ") >= 2 else ""
                self.note(
                    {"connection": number, "served": served, "model": model, "headers": headers}
                )
                try:
                    if path.endswith("/messages"):
                        keep = await self.messages(model, writer)
                    else:
                        keep = await self.answer(model, served, reader, writer)
                except ConnectionError:
                    return  # the gateway left, as it should when it gives up
                served += 1
                if not keep:
                    return
        finally:
            if not writer.transport.is_closing():
                writer.close()

    async def messages(self, model: str, writer: asyncio.StreamWriter) -> bool:
        """An Anthropic Messages stream of 5 text deltas, or its fault after 2."""
        name, p = parse(model)
        start = {
            "type": "message_start",
            "message": {
                "id": "msg_fault",
                "type": "message",
                "role": "assistant",
                "model": "fault",
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": 4, "output_tokens": 0},
            },
        }
        block = {
            "type": "content_block_start",
            "index": 0,
            "content_block": {"type": "text", "text": ""},
        }
        head = [_event("message_start", start), _event("content_block_start", block)]
        deltas = [
            _event(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": word},
                },
            )
            for word in (f"{' ' if i else ''}w{i}" for i in range(5))
        ]
        stop = {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {"output_tokens": 5},
        }
        tail = [
            _event("content_block_stop", {"type": "content_block_stop", "index": 0}),
            _event("message_delta", stop),
            _event("message_stop", {"type": "message_stop"}),
        ]
        whole = [*head, *deltas, *tail]
        if name == "bad_utf8":
            whole = [
                *head,
                *deltas[:2],
                deltas[2].replace(b" w2", b"b\xff\xfed"),
                *deltas[3:],
                *tail,
            ]
        if name == "gzip":
            writer.write(HEAD + b"content-encoding: gzip\r\n\r\n")
            z = zlib.compressobj(wbits=31)
            for event in whole:
                writer.write(framed(z.compress(event) + z.flush(zlib.Z_SYNC_FLUSH)))
            writer.write(framed(z.flush()) + b"0\r\n\r\n")
            return True
        writer.write(HEAD + b"\r\n")
        if name == "huge_line":
            # What comes before the fault, in a read of its own: the client has it.
            for event in [*head, *deltas[:2]]:
                writer.write(framed(event))
            await writer.drain()
            await asyncio.sleep(0.1)
            whole = whole[len(head) + 2 :]
        if name == "huge_line":
            writer.write(framed(b'event: content_block_delta\ndata: {"text": "'))
            piece = b"x" * 65536
            for _ in range(p["size"] // len(piece)):
                writer.write(framed(piece))
                await writer.drain()
            writer.write(framed(b'"}\n\n') + b"0\r\n\r\n")
            return True
        for event in whole:
            writer.write(framed(event))
        writer.write(b"0\r\n\r\n")
        return True

    async def answer(
        self,
        model: str,
        served: int,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> bool:
        """Serve one request; False when the connection is done with."""
        name, p = parse(model)
        if name == "ok":
            writer.write(HEAD + b"\r\n")
            for event in events(p["n"]):
                writer.write(framed(event))
                await writer.drain()
                if p["interval"]:
                    await asyncio.sleep(p["interval"])
            writer.write(b"0\r\n\r\n")
            return True
        if name == "reset":
            phase = p["phase"]
            if phase == "headers":
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-ty")
            elif phase in ("first_chunk", "mid"):
                writer.write(HEAD + b"\r\n")
                if phase == "mid":
                    for event in events(5)[:2]:
                        writer.write(framed(event))
            await writer.drain()
            await asyncio.sleep(0.05)
            reset(writer)
            return False
        if name == "stall":
            phase = p["phase"]
            if phase in ("first_chunk", "mid"):
                writer.write(HEAD + b"\r\n")
                if phase == "mid":
                    for event in events(5)[:2]:
                        writer.write(framed(event))
                await writer.drain()
            await reader.read()  # until the peer leaves
            return False
        if name == "huge_line":
            writer.write(HEAD + b"\r\n")
            for event in events(5)[:2]:
                writer.write(framed(event))
            piece = b"x" * 65536
            writer.write(framed(b'data: {"choices":[{"index":0,"delta":{"content":"'))
            for _ in range(p["size"] // len(piece)):
                writer.write(framed(piece))
                await writer.drain()
            writer.write(framed(b'"}}]}\n\n') + b"0\r\n\r\n")
            await writer.drain()
            return True
        if name == "not_http":
            writer.write(b"SSH-2.0-OpenSSH_9.6 this is not http\r\n\r\n")
            await writer.drain()
            return False
        if name == "bad_utf8":
            writer.write(HEAD + b"\r\n")
            good = events(5)
            bad = chunk("BAD").replace(b"BAD", b"b\xff\xfed")
            for event in [*good[:2], bad, *good[-2:]]:
                writer.write(framed(event))
            writer.write(b"0\r\n\r\n")
            return True
        if name == "gzip":
            writer.write(HEAD + b"content-encoding: gzip\r\n\r\n")
            z = zlib.compressobj(wbits=31)
            for event in events(p["n"]):
                writer.write(framed(z.compress(event) + z.flush(zlib.Z_SYNC_FLUSH)))
                await writer.drain()
            writer.write(framed(z.flush()) + b"0\r\n\r\n")
            return True
        if name == "chunk_ext":
            writer.write(HEAD + b"trailer: x-checksum\r\n\r\n")
            for event in events(p["n"]):
                writer.write(framed(event, b';name=value;flag;q="quoted;str"'))
                await writer.drain()
            writer.write(b"0;last=1\r\nx-checksum: abc\r\nx-other: 1\r\n\r\n")
            return True
        if name == "close_idle":
            writer.write(HEAD + b"\r\n")
            for event in events(p["n"]):
                writer.write(framed(event))
            writer.write(b"0\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(p["after"])
            if p["rst"]:
                reset(writer)
            else:
                writer.close()
            return False
        if name == "late_end":
            writer.write(HEAD + b"\r\n")
            for event in events(p["n"]):
                writer.write(framed(event))
            await writer.drain()
            await asyncio.sleep(p["delay"])
            writer.write(b"0\r\n\r\n")
            return True
        if name == "drop_reused":
            if served:
                writer.close()
                return False
            writer.write(HEAD + b"\r\n")
            for event in events(p["n"]):
                writer.write(framed(event))
            writer.write(b"0\r\n\r\n")
            return True
        raise AssertionError(name)


def blackhole() -> tuple[socket.socket, list[socket.socket]]:
    """A listening socket whose accept queue is full: connects to it stall."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(("127.0.0.1", port))
        fillers.append(filler)
    return listener, fillers


async def serve(log: str) -> None:
    server_state = Server(log)
    server = await asyncio.start_server(server_state.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    hole, fillers = blackhole()

    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        reset(writer)

    resetter = await asyncio.start_server(refuse, "127.0.0.1", 0)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    ports = f"blackhole {hole.getsockname()[1]} reset {resetter.sockets[0].getsockname()[1]}"
    print(f"listening on http://127.0.0.1:{port} {ports}", flush=True)
    await stop.wait()
    server.close()
    resetter.close()
    for sock in (hole, *fillers):
        sock.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--log", required=True)
    asyncio.run(serve(parser.parse_args().log))


if __name__ == "__main__":
    main()
