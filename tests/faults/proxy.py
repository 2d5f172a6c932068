"""A small HTTP proxy for tests, in its own process: ``CONNECT host:port`` tunnels (what
clients use for ``https://`` through ``HTTPS_PROXY``) and absolute-form requests
(``POST http://host:port/path``, what ``HTTP_PROXY`` gets), each forwarded once with
``Connection: close``. Every request line it takes is appended to ``--log``;
``--auth user:password`` makes it demand that ``Proxy-Authorization`` (407 otherwise).

Run ``python -m tests.faults.proxy --log PATH [--auth U:P]``: it prints
``listening on http://127.0.0.1:PORT`` once ready and stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import signal
from urllib.parse import urlsplit


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


class Proxy:
    def __init__(self, log: str, auth: str | None) -> None:
        self.log = log
        self.expected = (
            None if auth is None else "Basic " + base64.b64encode(auth.encode()).decode()
        )

    def note(self, line: str) -> None:
        with open(self.log, "a") as out:
            out.write(line + "\n")

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            writer.close()
            return
        line, *header_lines = head.decode("latin-1").split("\r\n")
        headers = [h for h in header_lines if h]
        self.note(line)
        given = next(
            (
                h.split(":", 1)[1].strip()
                for h in headers
                if h.lower().startswith("proxy-authorization:")
            ),
            None,
        )
        if self.expected is not None and given != self.expected:
            writer.write(
                b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                b'Proxy-Authenticate: Basic realm="test"\r\nContent-Length: 0\r\n'
                b"Connection: close\r\n\r\n"
            )
            await writer.drain()
            writer.close()
            return
        method, target, version = line.split(" ", 2)
        if method == "CONNECT":
            host, _, port = target.rpartition(":")
            try:
                up_reader, up_writer = await asyncio.open_connection(host.strip("[]"), int(port))
            except OSError:
                writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
                writer.close()
                return
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await writer.drain()
        else:
            url = urlsplit(target)
            path = url.path or "/"
            if url.query:
                path += f"?{url.query}"
            try:
                up_reader, up_writer = await asyncio.open_connection(url.hostname, url.port or 80)
            except OSError:
                writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
                writer.close()
                return
            kept = [
                h
                for h in headers
                if not h.lower().startswith(("proxy-authorization:", "connection:"))
            ]
            forwarded = "\r\n".join([f"{method} {path} {version}", *kept, "Connection: close"])
            up_writer.write(forwarded.encode("latin-1") + b"\r\n\r\n")
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))


async def serve(log: str, auth: str | None) -> None:
    proxy = Proxy(log, auth)
    server = await asyncio.start_server(proxy.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(f"listening on http://127.0.0.1:{port}", flush=True)
    await stop.wait()
    server.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--log", required=True)
    parser.add_argument("--auth", default=None)
    args = parser.parse_args()
    asyncio.run(serve(args.log, args.auth))


if __name__ == "__main__":
    main()
