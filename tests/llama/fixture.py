"""Run llama.cpp's own server, ``llama-server``, on the tiny test model.

Usage::

    with start_llama_server(tmp_path) as base_url:  # "http://127.0.0.1:PORT/v1"
        client = openai.OpenAI(base_url=base_url, api_key="unused")
        ...

The model is served under the name ``tiny`` (``LLAMA_MODEL``), for chat and embeddings
alike.  Streamed responses end with the server closing the connection (see
``NO_KEEPALIVE``).  The binary is
``$SLUICE_LLAMA_SERVER`` when set, else ``.cache/llama/llama-server``, which
``scripts/build-llama-server`` (run by ``scripts/test``) builds.  When it is missing the
calling test is skipped, except in CI (``CI`` set to a true value), where it fails.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
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
BINARY_ENV = "SLUICE_LLAMA_SERVER"
DEFAULT_BINARY = Path(__file__).resolve().parents[2] / ".cache" / "llama" / "llama-server"
#: llama-server closes the connection right after every streamed response, yet announces
#: keep-alive: a client that reuses the connection races the close and may fail with
#: "Server disconnected without sending a response". Clients of the raw server in tests
#: therefore open a connection per request.
NO_KEEPALIVE = httpx.Limits(max_keepalive_connections=0)


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def llama_server_binary() -> Path | None:
    """The llama-server to run: ``$SLUICE_LLAMA_SERVER`` (a path or a name on PATH), else
    the one scripts/build-llama-server built; None when neither is an executable."""
    configured = os.environ.get(BINARY_ENV, "").strip()
    if configured:
        found = shutil.which(configured)
        return Path(found) if found else None
    return DEFAULT_BINARY if os.access(DEFAULT_BINARY, os.X_OK) else None


def require_llama_server() -> Path:
    """The binary, or skip (locally) / fail (in CI) when there is none."""
    binary = llama_server_binary()
    if binary is not None:
        return binary
    where = os.environ.get(BINARY_ENV) or str(DEFAULT_BINARY)
    reason = f"llama-server not found at {where}; build it with: scripts/build-llama-server"
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
    tmp_dir: Path, *, startup_timeout: float = STARTUP_TIMEOUT_S, embeddings: bool = True
) -> Iterator[str]:
    """Write the tiny model into ``tmp_dir``, serve it, yield ``http://127.0.0.1:PORT/v1``.

    One slot (``--parallel 1``): overlapping requests queue instead of being batched
    together, and one thread for generation and for prompt processing, so every request
    computes the same floats and greedy output is reproducible.  ``embeddings`` (the
    default) adds ``--embeddings --pooling mean``: ``/v1/embeddings`` answers only then
    (the tiny model names no pooling type, and the OpenAI shape needs one); chat output
    is the same either way.
    """
    binary = require_llama_server()
    tmp_dir.mkdir(parents=True, exist_ok=True)
    model_path = tmp_dir / "tiny.gguf"
    write_tiny_model(model_path)
    log_path = tmp_dir / "llama-server.log"
    port = _free_port()
    cmd = [
        str(binary),
        "--model",
        str(model_path),
        "--alias",
        LLAMA_MODEL,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--ctx-size",
        str(N_CTX),
        "--parallel",
        "1",
        "--threads",
        "1",
        "--threads-batch",
        "1",
        "--seed",
        "1234",
        "--no-webui",
        "--no-warmup",
    ]
    if embeddings:
        cmd += ["--embeddings", "--pooling", "mean"]
    # llama-server reads LLAMA_ARG_* variables as options: only the command line counts.
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLAMA_ARG_")}
    base_url = f"http://127.0.0.1:{port}/v1"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=tmp_dir,
            env=env,
        )
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"llama-server exited with code {proc.returncode} before answering:\n"
                    f"{_log_tail(log_path)}"
                )
            try:
                # 503 while the model loads, 200 once it can serve.
                r = httpx.get(f"{base_url}/health", timeout=2.0, trust_env=False)
                if r.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"llama-server did not answer GET /v1/health within {startup_timeout}s:\n"
                    f"{_log_tail(log_path)}"
                )
            time.sleep(0.1)
        yield base_url
    finally:
        _stop(proc)
