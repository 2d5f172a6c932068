"""A thousand clients reading one byte a second: the gateway's memory stays bounded and
backpressure reaches the upstream (it writes only what the buffers on the way hold).
Real processes: ``sluice serve``, a test upstream of its own, raw client sockets."""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import StartGateway, upstream_config
from tests.upstream.fixture import Upstream, start_upstream

CLIENTS = 1000
#: Most clients ask for 256 KiB, which the sockets on the way can hold whole; every
#: fiftieth for 50 MiB, which they cannot: its upstream must be held back.
SMALL, SMALL_BYTES = "large:n=4,size=65536", 4 * 65536
LARGE, LARGE_BYTES = "large:n=800,size=65536", 800 * 65536
SECONDS = 4


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _written(pid: int) -> int:
    """Bytes the process wrote (files and sockets alike): ``wchar`` of /proc/PID/io."""
    with open(f"/proc/{pid}/io") as io:
        for line in io:
            if line.startswith("wchar:"):
                return int(line.split()[1])
    raise AssertionError("no wchar")


@pytest.fixture
def own_upstream() -> Iterator[Upstream]:
    with start_upstream() as upstream:
        yield upstream


def _open(port: int, body: bytes) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: the window
    sock.connect(("127.0.0.1", port))
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    sock.setblocking(False)
    return sock


def test_a_thousand_clients_reading_a_byte_a_second(
    start_gateway: StartGateway, own_upstream: Upstream, tmp_path: Path
) -> None:
    config = upstream_config(own_upstream.url, routing={"retries": 0}, keepalive_interval=0)
    gateway = start_gateway(config, env={"TEST_UPSTREAM_KEY": "sk-test"})
    port = int(gateway.url.rsplit(":", 1)[1])

    def body(model: str) -> bytes:
        messages = [{"role": "user", "content": "hi"}]
        return json.dumps({"model": model, "messages": messages, "stream": True}).encode()

    # Warm-up: one whole stream, so that what stays in memory anyway is counted before.
    warm = _open(port, body(SMALL))
    warm.setblocking(True)
    while warm.recv(1 << 20):
        pass
    warm.close()
    rss_before = _rss_kib(gateway.process.pid)
    written_before = _written(own_upstream.process.pid)

    sockets: list[socket.socket] = []
    try:
        for n in range(CLIENTS):
            sockets.append(_open(port, body(LARGE if n % 50 == 0 else SMALL)))
        got: dict[socket.socket, int] = dict.fromkeys(sockets, 0)
        for _ in range(SECONDS):
            time.sleep(1)
            for sock in sockets:  # one byte a second each
                with contextlib.suppress(BlockingIOError):
                    got[sock] += len(sock.recv(1))
        time.sleep(1)  # let every buffer on the way fill up
        rss = _rss_kib(gateway.process.pid) - rss_before
        written = _written(own_upstream.process.pid) - written_before
        reading = sum(1 for n in got.values() if n)
    finally:
        for sock in sockets:
            sock.close()
    large = CLIENTS // 50
    full = (CLIENTS - large) * SMALL_BYTES + large * LARGE_BYTES  # 1.2 GiB
    print(f"{CLIENTS} clients: gateway RSS +{rss} KiB, upstream wrote {written >> 20} MiB")
    assert reading >= CLIENTS * 0.95  # they were served, a byte a second
    # A stream holds at most 64 KiB of unread upstream pieces and one write in the
    # server's buffer (measured: about 125 KiB a client, connection and request
    # included): bounded whatever the streams carry (1.2 GiB here).
    assert rss < CLIENTS * 256, f"gateway RSS grew by {rss} KiB"
    # The upstream wrote what the sockets on the way hold, not the 50 MiB streams whole.
    assert written < full / 2, f"the upstream wrote {written >> 20} MiB of {full >> 20} MiB"
    # And the gateway is still there to serve the next one.
    last = _open(port, body(SMALL))
    last.setblocking(True)
    assert last.recv(64).startswith(b"HTTP/1.1 200")
    last.close()
