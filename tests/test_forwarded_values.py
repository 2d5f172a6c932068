"""What the gateway forwards cannot carry a line break, and a request whose length is
ambiguous is refused, through the ASGI server in use.

- A model name, a ``user``, a ``metadata`` key or value holding CR or LF (or NUL) is a
  400 naming the parameter, in the API's error shape; the upstream is never called.
- ``Content-Length`` beside ``Transfer-Encoding``, or two ``Content-Length`` that
  differ, sent over a raw socket: ``sluice serve`` runs uvicorn with httptools, whose
  parser (llhttp) answers 400 and closes before the app sees anything; under h11
  (``uvicorn --http h11``), which lets ``Transfer-Encoding`` win, the gateway refuses
  them itself (400, ``Connection: close``). A line break inside a header value
  (bare CR, obs-fold) is refused by llhttp too.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import StartGateway, upstream_config
from tests.gateway import RunningGateway, free_port

KEY_ENV = {"TEST_UPSTREAM_KEY": "sk-test"}
HI = [{"role": "user", "content": "hi"}]

#: (route, body, parameter named, error shape)
CASES: list[tuple[str, dict[str, Any], str, str]] = [
    ("/v1/chat/completions", {"model": "normal\r\nX-Evil: 1", "messages": HI}, "model", "openai"),
    ("/v1/chat/completions", {"model": "normal", "messages": HI, "user": "u\n1"}, "user", "openai"),
    (
        "/v1/chat/completions",
        {"model": "normal", "messages": HI, "metadata": {"k": "a\rb"}},
        "metadata.k",
        "openai",
    ),
    (
        "/v1/chat/completions",
        {"model": "normal", "messages": HI, "metadata": {"k\n": "v"}},
        "metadata",
        "openai",
    ),
    ("/v1/embeddings", {"model": "normal\n", "input": "hi"}, "model", "openai"),
    ("/v1/responses", {"model": "nor\nmal", "input": "hi"}, "model", "openai"),
    (
        "/v1/responses",
        {"model": "normal", "input": "hi", "metadata": {"k": "line\nbreak"}},
        "metadata.k",
        "openai",
    ),
    ("/v1/responses", {"model": "normal", "input": "hi", "user": "\r"}, "user", "openai"),
    ("/v1/messages", {"model": "normal\n", "max_tokens": 5, "messages": HI}, "model", "anthropic"),
    (
        "/v1/messages",
        {"model": "normal", "max_tokens": 5, "messages": HI, "metadata": {"user_id": "a\nb"}},
        "metadata.user_id",
        "anthropic",
    ),
    ("/v1/messages/count_tokens", {"model": "x\r", "messages": HI}, "model", "anthropic"),
    (
        "/api/chat",
        {
            "model": "normal\n",
            "messages": [{"id": "1", "role": "user", "parts": [{"type": "text", "text": "hi"}]}],
        },
        "model",
        "openai",
    ),
]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, upstream: Any) -> Iterator[RunningGateway]:
    from tests.gateway import run_gateway

    config = upstream_config(upstream.url)
    with run_gateway(tmp_path_factory.mktemp("breaks"), config, KEY_ENV) as running:
        yield running


def upstream_calls(upstream: Any) -> int:
    return len(upstream.log()["requests"])


@pytest.mark.parametrize(("path", "body", "param", "shape"), CASES)
def test_a_line_break_in_a_forwarded_value_is_refused(
    gateway: RunningGateway, upstream: Any, path: str, body: dict[str, Any], param: str, shape: str
) -> None:
    before = upstream_calls(upstream)
    response = httpx.post(
        f"{gateway.url}{path}", json=body, headers={"anthropic-version": "2023-06-01"}, timeout=20
    )
    assert response.status_code == 400, response.text
    if shape == "anthropic":
        error = response.json()["error"]
        assert error["type"] == "invalid_request_error"
    else:
        error = response.json()["error"]
        assert (error["param"], error["code"]) == (param, "invalid_value")
    assert f"'{param}' holds a line break" in error["message"]
    assert upstream_calls(upstream) == before


# -- the request head, over a raw socket --------------------------------------------------

BODY = json.dumps({"model": "normal", "messages": HI}).encode()
CHUNKED = b"%x\r\n" % len(BODY) + BODY + b"\r\n0\r\n\r\n"
HEAD = b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
AMBIGUOUS = {
    "content-length-and-chunked": HEAD
    + b"Content-Length: %d\r\nTransfer-Encoding: chunked\r\n\r\n" % len(BODY)
    + CHUNKED,
    "chunked-and-content-length": HEAD
    + b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n"
    + CHUNKED,
    "two-content-lengths": HEAD
    + b"Content-Length: %d\r\nContent-Length: 4\r\n\r\n" % len(BODY)
    + BODY,
}
HEADER_BREAKS = {
    "bare-cr": b"anthropic-beta: a\rX-Evil: 1\r\n",
    "obs-fold": b"anthropic-beta: a\r\n X-Evil: 1\r\n",
}


def exchange(url: str, data: bytes) -> bytes:
    """Send ``data`` on a new connection; everything read until the server closes it
    (a timeout fails the test: the connection must not stay open)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(data)
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
    return out


@contextlib.contextmanager
def h11_gateway(workdir: Path, config: dict[str, Any]) -> Iterator[str]:
    """The app under ``uvicorn --http h11`` (the factory reads the same settings)."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "sluice.yaml"
    path.write_text(yaml.safe_dump({**config, "record": {"path": str(workdir / "r.db")}}))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLUICE_", "OPENAI_"))}
    env.update(KEY_ENV, SLUICE_CONFIG=str(path))
    command = [sys.executable, "-m", "uvicorn", "sluice.app:create_app", "--factory"]
    command += ["--http", "h11", "--port", str(port), "--log-level", "warning"]
    log = open(workdir / "uvicorn.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(command, env=env, cwd=workdir, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            assert process.poll() is None, (workdir / "uvicorn.log").read_text()
            assert time.monotonic() < deadline, "the gateway did not become ready"
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=15)
        log.close()


@pytest.mark.parametrize("case", sorted(AMBIGUOUS))
def test_an_ambiguous_length_is_refused_by_httptools(
    start_gateway: StartGateway, upstream: Any, case: str
) -> None:
    gateway = start_gateway(upstream_config(upstream.url), env=KEY_ENV)
    before = upstream_calls(upstream)
    answer = exchange(gateway.url, AMBIGUOUS[case])
    assert answer.startswith(b"HTTP/1.1 400 "), answer
    assert answer.count(b"HTTP/1.1 ") == 1  # nothing after it is read as a request
    assert upstream_calls(upstream) == before
    # llhttp refused it before the app: nothing was served, so nothing is recorded.
    assert gateway.wait_records(1, timeout=0.5) == []


@pytest.mark.parametrize("case", sorted(HEADER_BREAKS))
def test_a_line_break_in_a_header_is_refused_by_httptools(
    start_gateway: StartGateway, upstream: Any, case: str
) -> None:
    gateway = start_gateway(upstream_config(upstream.url), env=KEY_ENV)
    head = b"POST /v1/messages HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
    body = json.dumps({"model": "normal", "max_tokens": 5, "messages": HI}).encode()
    data = head + HEADER_BREAKS[case] + b"Content-Length: %d\r\n\r\n" % len(body) + body
    answer = exchange(gateway.url, data)
    assert answer.startswith(b"HTTP/1.1 400 "), answer


@pytest.mark.parametrize("case", sorted(AMBIGUOUS))
def test_an_ambiguous_length_is_refused_by_the_gateway_under_h11(
    tmp_path: Path, upstream: Any, case: str
) -> None:
    with h11_gateway(tmp_path, upstream_config(upstream.url)) as url:
        before = upstream_calls(upstream)
        answer = exchange(url, AMBIGUOUS[case])
    assert answer.startswith(b"HTTP/1.1 400 "), answer
    assert answer.count(b"HTTP/1.1 ") == 1
    assert upstream_calls(upstream) == before
