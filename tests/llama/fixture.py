"""Run llama-cpp-python's OpenAI-compatible server on the tiny test model.

Usage::

    with start_llama_server(tmp_path) as base_url:  # "http://127.0.0.1:PORT/v1"
        client = openai.OpenAI(base_url=base_url, api_key="unused")
        ...

The model is served under the name ``tiny`` (``LLAMA_MODEL``).  When ``llama_cpp`` is not
importable the calling test is skipped, except in CI (``CI`` set to a true value), where it
fails: CI must install ``llama-cpp-python[server]``.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.llama.make_gguf import write_tiny_model

LLAMA_MODEL = "tiny"
N_CTX = 512
STARTUP_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def require_llama_cpp() -> None:
    """Skip (locally) or fail (in CI) when llama-cpp-python's server is not installed."""
    missing = [
        name
        for name in ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "starlette_context")
        if importlib.util.find_spec(name) is None
    ]
    if not missing:
        return
    reason = (
        f"llama-cpp-python server not importable (missing: {', '.join(missing)}); "
        "install with: pip install 'llama-cpp-python[server]'"
    )
    if _in_ci():
        pytest.fail(f"{reason} -- it is required in CI", pytrace=False)
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _log_tail(log_path: Path, n_chars: int = 4000) -> str:
    try:
        return log_path.read_text(errors="replace")[-n_chars:]
    except OSError:
        return "<no log>"


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """End the server we started, by its PID: SIGTERM, then SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=STOP_TIMEOUT_S)


@contextmanager
def start_llama_server(
    tmp_dir: Path, *, startup_timeout: float = STARTUP_TIMEOUT_S
) -> Iterator[str]:
    """Write the tiny model into ``tmp_dir``, serve it, yield ``http://127.0.0.1:PORT/v1``.

    The server runs with one thread for generation and for prompt processing (identical
    float results request after request, so greedy output is reproducible) and with
    ``interrupt_requests`` off: by default llama-cpp-python ends an in-flight stream (with
    ``data: [DONE]`` and no finish chunk) as soon as another request arrives; off, requests
    queue on the server's single model lock instead.
    """
    require_llama_cpp()
    tmp_dir.mkdir(parents=True, exist_ok=True)
    model_path = tmp_dir / "tiny.gguf"
    write_tiny_model(model_path)
    log_path = tmp_dir / "llama-server.log"
    port = _free_port()
    cmd = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(model_path),
        "--model_alias",
        LLAMA_MODEL,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_ctx",
        str(N_CTX),
        "--n_threads",
        "1",
        "--n_threads_batch",
        "1",
        "--seed",
        "1234",
        "--use_mlock",
        "false",
        "--interrupt_requests",
        "false",
    ]
    base_url = f"http://127.0.0.1:{port}/v1"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_dir
        )
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"llama server exited with code {proc.returncode} before answering:\n"
                    f"{_log_tail(log_path)}"
                )
            try:
                r = httpx.get(f"{base_url}/models", timeout=2.0, trust_env=False)
                if r.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"llama server did not answer GET /v1/models within {startup_timeout}s:\n"
                    f"{_log_tail(log_path)}"
                )
            time.sleep(0.1)
        yield base_url
    finally:
        _stop(proc)
