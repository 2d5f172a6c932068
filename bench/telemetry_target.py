"""What metrics and traces cost end to end: targets measured only when named.

``sluice-traced``
    The ``sluice`` target with tracing on: each request's span and its attempt's span
    exported over OTLP/HTTP by the SDK's batch processor (its default delays) to a sink
    that answers 200 and keeps nothing. The sink is a thread of the bench process, on the
    load core: the gateway pays for making, batching, encoding and sending spans, not
    for receiving them.
``sluice@REV``
    The ``sluice`` target run from the source of git revision ``REV`` (``git archive``
    into ``bench/.cache/src-REV``, put first on ``PYTHONPATH``): the same config, the
    code before a change.

``python -m bench.compare --only sluice@3d1b1db,sluice,sluice-traced``
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from bench.targets import CACHE, ROOT, Target, openai_request, sluice_config, sluice_env

REVISION_PREFIX = "sluice@"
Launch = Callable[[str, int], subprocess.Popen[bytes]]


class Sink:
    """An OTLP/HTTP endpoint that accepts everything; started on first use, its thread
    on the cores the bench had when the sink was made (the load core)."""

    def __init__(self) -> None:
        self._cores = os.sched_getaffinity(0)
        self._server: ThreadingHTTPServer | None = None
        self.requests = 0
        self.bytes = 0

    @property
    def endpoint(self) -> str:
        if self._server is None:
            self._start()
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def _start(self) -> None:
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                size = int(self.headers.get("content-length", "0"))
                self.rfile.read(size)
                sink.requests += 1
                sink.bytes += size
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._server = server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        cores = self._cores

        def serve() -> None:
            os.sched_setaffinity(0, cores)  # this thread only
            server.serve_forever()

        threading.Thread(target=serve, name="otlp-sink", daemon=True).start()


def _launch(name: str, logs: Path, env: dict[str, str]) -> Launch:
    def launch(upstream_base: str, port: int) -> subprocess.Popen[bytes]:
        run = logs / f"{name}-{port}"
        path = sluice_config(run, upstream_base, port)
        argv = [sys.executable, "-m", "sluice", "serve", "--config", str(path)]
        argv += ["--log-level", "warning"]
        with open(run / "gateway.log", "wb") as log:
            full = {**sluice_env(), **env}
            return subprocess.Popen(argv, cwd=run, env=full, stdout=log, stderr=log)

    return launch


def traced_target(gateway: set[int], logs: Path) -> Target:
    sink = Sink()

    def launch(upstream_base: str, port: int) -> subprocess.Popen[bytes]:
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": sink.endpoint, "OTEL_SERVICE_NAME": "sluice-bench"}
        return _launch("sluice-traced", logs, env)(upstream_base, port)

    return Target(
        "sluice-traced",
        "sluice, traces exported over OTLP/HTTP",
        "sse",
        openai_request,
        launch,
        gateway,
        default=False,
    )


def source_at(revision: str) -> Path:
    """The ``src`` directory of ``revision``, extracted once into the bench cache."""
    dest = CACHE / f"src-{revision}"
    if not (dest / "src" / "sluice").is_dir():
        dest.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(
            ["git", "archive", revision, "src"], cwd=ROOT, capture_output=True, check=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest / "src"


def revision_target(name: str, gateway: set[int], logs: Path) -> Target | None:
    """``sluice@REV``; None for any other name."""
    if not name.startswith(REVISION_PREFIX):
        return None
    revision = name.removeprefix(REVISION_PREFIX)

    def launch(upstream_base: str, port: int) -> subprocess.Popen[bytes]:
        env = {"PYTHONPATH": str(source_at(revision))}
        return _launch(f"sluice-{revision}", logs, env)(upstream_base, port)

    return Target(name, f"sluice at {revision}", "sse", openai_request, launch, gateway)
