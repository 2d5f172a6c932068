"""The upstream HTTP client against real servers on loopback: the test upstream, and a
deliberately odd raw server (``rawhttp.py``) in its own process."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from sluice.providers.http import (
    ConnectError,
    Pool,
    ProtocolError,
    Response,
    split_url,
)
from tests.conftest import upstream_config
from tests.upstream.fixture import ROOT, read_ready_line, stop_process

BODY = b"hello from the raw server"


@contextlib.contextmanager
def raw_server(mode: str) -> Iterator[str]:
    command = [sys.executable, "-m", "tests.providers.rawhttp", mode]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        line = read_ready_line(process, 10.0)
        yield line.removeprefix("listening on ").strip()
    finally:
        stop_process(process)


def request_bytes(url: str, body: bytes = b"{}") -> bytes:
    origin, target = split_url(url)
    head = f"POST {target} HTTP/1.1\r\nHost: {origin.authority}\r\n"
    return head.encode() + b"Content-Length: %d\r\n\r\n" % len(body) + body


async def read_body(response: Response) -> tuple[bytes, int]:
    parts: list[bytes] = []
    while piece := await response.read():
        parts.append(piece)
    return b"".join(parts), len(parts)


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 20))


def test_split_url() -> None:
    origin, target = split_url("https://example.openai.azure.com/openai/x?api-version=1")
    assert (origin.scheme, origin.host, origin.port) == ("https", "example.openai.azure.com", 443)
    assert origin.authority == "example.openai.azure.com"
    assert target == "/openai/x?api-version=1"
    origin, target = split_url("http://[::1]:8080")
    assert origin.authority == "[::1]:8080" and target == "/"
    with pytest.raises(ValueError):
        split_url("ftp://example.com/")


def test_body_delimited_by_close() -> None:
    async def main() -> bytes:
        with raw_server("eof") as url:
            pool = Pool()
            origin, _ = split_url(url)
            response = await pool.request(origin, request_bytes(url), 5)
            assert response.status == 200
            body, _ = await read_body(response)
            response.release()
            await pool.close()
            return body

    assert run(main()) == BODY


def test_many_http_chunks_of_one_read_arrive_as_few_pieces() -> None:
    async def main() -> tuple[bytes, int]:
        with raw_server("chunks") as url:
            pool = Pool()
            origin, _ = split_url(url)
            response = await pool.request(origin, request_bytes(url), 5)
            result = await read_body(response)
            response.release()
            await pool.close()
            return result

    body, reads = run(main())
    assert body == b"".join(b"piece%d;" % i for i in range(500))
    assert reads < 50  # 500 HTTP chunks, handed over per socket read


def test_stale_keepalive_connection_is_replaced_once() -> None:
    """The upstream closes a kept-alive connection as our next request crosses it."""

    async def main() -> list[bytes]:
        with raw_server("once") as url:
            pool = Pool()
            origin, _ = split_url(url)
            bodies = []
            for _ in range(3):
                response = await pool.request(origin, request_bytes(url), 5)
                bodies.append((await read_body(response))[0])
                response.release()
            await pool.close()
            return bodies

    assert run(main()) == [BODY] * 3


def test_an_idle_connection_that_speaks_unasked_is_not_reused() -> None:
    async def main() -> list[bytes]:
        with raw_server("unasked") as url:
            pool = Pool()
            origin, _ = split_url(url)
            bodies = []
            for _ in range(2):
                request = pool.request(origin, request_bytes(url), 5)
                response = await asyncio.wait_for(request, 3)
                bodies.append((await read_body(response))[0])
                response.release()
                await asyncio.sleep(0.3)  # the unasked 408 arrives meanwhile
            await pool.close()
            return bodies

    assert run(main()) == [BODY, BODY]


def test_not_http_is_a_protocol_error() -> None:
    async def main() -> None:
        with raw_server("garbage") as url:
            pool = Pool()
            origin, _ = split_url(url)
            with pytest.raises(ProtocolError):
                await pool.request(origin, request_bytes(url), 5)
            await pool.close()

    run(main())


def test_refused() -> None:
    async def main() -> None:
        pool = Pool()
        with socket_closed_port() as port:
            origin, _ = split_url(f"http://127.0.0.1:{port}")
            with pytest.raises(ConnectError):
                await pool.request(origin, request_bytes(f"http://127.0.0.1:{port}"), 5)
        await pool.close()

    run(main())


@contextlib.contextmanager
def socket_closed_port() -> Iterator[int]:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]  # bound, not listening: connections are refused


def test_gateway_reuses_upstream_connections(upstream: Any, start_gateway: Any) -> None:
    """Sequential requests through the gateway share one kept-alive upstream connection;
    an abandoned stream's connection is closed, never reused."""
    gateway = start_gateway(upstream_config(upstream.url), env={"TEST_UPSTREAM_KEY": "sk-test"})
    upstream.reset()
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)
    for _ in range(3):
        text = "".join(
            chunk.choices[0].delta.content or ""
            for chunk in client.chat.completions.create(
                model="normal:n=5", messages=[{"role": "user", "content": "hi"}], stream=True
            )
            if chunk.choices
        )
        assert text == "word0 word1 word2 word3 word4"
    log = upstream.log()
    used = {r["connection"] for r in log["requests"]}
    assert len(used) == 1, log["connections"]

    stream = client.chat.completions.create(
        model="paced:n=50,interval=0.05", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    next(iter(stream))
    stream.close()
    log = upstream.wait_log(
        lambda log: any(
            c["closed_at"] is not None
            for c in log["connections"]
            if c["id"] == log["requests"][-1]["connection"]
        )
    )
    last = log["requests"][-1]["connection"]
    closed = [c for c in log["connections"] if c["id"] == last]
    assert closed and closed[0]["closed_at"] is not None
