"""The same Sluice app under other servers, and the floor: what the ASGI server costs.

``sluice`` is ``sluice serve``: uvicorn with httptools and uvloop. These targets run on
the gateway's core, one process each (granian: its supervisor and one worker):

``floor``
    ``bench/floor.py``: no ASGI and no Sluice, a bare relay with one read and one write
    per chunk. What any Python relay costs at least.
``sluice-granian``
    The very same app (``sluice.app:create_app``, with the config the ``sluice`` target
    gets, through ``SLUICE_CONFIG``) under granian (Rust HTTP server), ``--interface
    asgi --loop uvloop``, one worker. Its options that matter here:
    ``--runtime-threads 1`` (its Rust I/O runtime gets one thread: there is one core),
    ``--blocking-threads 1`` (the only value ASGI accepts: one Python thread runs the
    event loop), ``--backpressure 20000`` and ``--backlog 4096``: by default granian
    admits only backlog ÷ workers = 1,024 requests at once per worker and queues the
    rest, which would cap the paced and idle profiles at 1,024 streams instead of
    measuring them. ``--http 1`` (no HTTP/2 sniffing), ``--no-ws``, no access log.
    Installed with ``pip install --target`` into ``bench/.cache/granian-lib`` and put
    on ``PYTHONPATH``: it runs with the project's interpreter and packages without
    being one of the project's dependencies.

Only when named with ``--only``:

``sluice-h11``
    uvicorn as ``sluice serve`` runs it, but with ``--http h11`` (the pure-Python HTTP
    parser) instead of httptools: the contrast.
``floor-uvicorn``, ``floor-granian``
    ``bench/floor_asgi.py``: the floor's relay as the least an ASGI app can be, under
    uvicorn (``sluice serve``'s options) and under granian (the options above). Beside
    ``floor``, what each ASGI server adds per chunk, with no Sluice in the way.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from bench.peers.steps import run_step
from bench.targets import (
    CACHE,
    ROOT,
    Target,
    openai_request,
    sluice_config,
    sluice_env,
)

GRANIAN = "granian==2.8.7"
GRANIAN_LIB = CACHE / "granian-lib"
PIP_TIMEOUT = 600.0
Launch = Callable[[str, int], subprocess.Popen[bytes]]


def granian_argv(port: int, app: str = "sluice.app:create_app", factory: bool = True) -> list[str]:
    return [
        sys.executable,
        "-m",
        "granian",
        "--interface",
        "asgi",
        "--loop",
        "uvloop",
        "--workers",
        "1",
        "--runtime-threads",
        "1",
        "--blocking-threads",
        "1",
        "--backlog",
        "4096",
        "--backpressure",
        "20000",
        "--http",
        "1",
        "--no-ws",
        "--no-access-log",
        "--log-level",
        "warning",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *(["--factory"] if factory else []),
        app,
    ]


def uvicorn_argv(port: int, app: str, http: str = "httptools", factory: bool = False) -> list[str]:
    """``sluice serve``'s uvicorn options for ``app``."""
    return [
        sys.executable,
        "-m",
        "uvicorn",
        *(["--factory"] if factory else []),
        app,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--loop",
        "uvloop",
        "--http",
        http,
        "--ws",
        "none",
        "--lifespan",
        "on",
        "--no-access-log",
        "--log-level",
        "warning",
        "--timeout-graceful-shutdown",
        "5",
    ]


def uvicorn_h11_argv(port: int) -> list[str]:
    """``sluice serve``'s uvicorn options, with h11 for httptools."""
    return uvicorn_argv(port, "sluice.app:create_app", http="h11", factory=True)


def install_granian() -> str | None:
    marker = GRANIAN_LIB / ".sluice-bench-installed"
    if marker.is_file() and marker.read_text().strip() == GRANIAN:
        return None
    GRANIAN_LIB.mkdir(parents=True, exist_ok=True)
    log = CACHE / "granian-install.log"
    argv = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    argv += ["--upgrade", "--target", str(GRANIAN_LIB), GRANIAN]
    why = run_step(argv, cwd=CACHE, log=log, timeout=PIP_TIMEOUT)
    if why is not None:
        return f"granian: pip install {GRANIAN!r} {why}"
    marker.write_text(GRANIAN + "\n")
    return None


def _with_granian(env: dict[str, str]) -> dict[str, str]:
    env["PYTHONPATH"] = os.pathsep.join([str(GRANIAN_LIB), *filter(None, [env.get("PYTHONPATH")])])
    return env


def sluice_under(name: str, argv: Callable[[int], list[str]], logs: Path) -> Launch:
    def launch(upstream_base: str, port: int) -> subprocess.Popen[bytes]:
        run = logs / f"{name}-{port}"
        env = sluice_env()
        env["SLUICE_CONFIG"] = str(sluice_config(run, upstream_base, port))
        if "granian" in name:
            env = _with_granian(env)
        with open(run / "gateway.log", "wb") as log:
            return subprocess.Popen(argv(port), cwd=run, env=env, stdout=log, stderr=log)

    return launch


def floor_launch(logs: Path) -> Launch:
    def launch(upstream_base: str, port: int) -> subprocess.Popen[bytes]:
        argv = [sys.executable, "-m", "bench.floor", "--port", str(port)]
        argv += ["--upstream", upstream_base]
        with open(logs / f"floor-{port}.log", "wb") as log:
            return subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=log)

    return launch


def floor_asgi_launch(name: str, argv: Callable[[int], list[str]], logs: Path) -> Launch:
    def launch(upstream_base: str, port: int) -> subprocess.Popen[bytes]:
        env = dict(os.environ, BENCH_FLOOR_UPSTREAM=upstream_base)
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
        if "granian" in name:
            env = _with_granian(env)
        with open(logs / f"{name}-{port}.log", "wb") as log:
            return subprocess.Popen(argv(port), cwd=ROOT, env=env, stdout=log, stderr=log)

    return launch


FLOOR_APP = "bench.floor_asgi:app"


def server_targets(gateway: set[int], logs: Path) -> list[Target]:
    """``floor`` and ``sluice-granian`` run by default; the rest only when named."""
    return [
        Target(
            "floor",
            "floor: a bare uvloop relay (bench/floor.py)",
            "sse",
            openai_request,
            floor_launch(logs),
            gateway,
        ),
        Target(
            "sluice-granian",
            "sluice under granian (asgi, uvloop)",
            "sse",
            openai_request,
            sluice_under("sluice-granian", granian_argv, logs),
            gateway,
            install=install_granian,
        ),
        Target(
            "sluice-h11",
            "sluice under uvicorn with h11",
            "sse",
            openai_request,
            sluice_under("sluice-h11", uvicorn_h11_argv, logs),
            gateway,
            default=False,
        ),
        Target(
            "floor-uvicorn",
            "the floor as an ASGI app under uvicorn (httptools, uvloop)",
            "sse",
            openai_request,
            floor_asgi_launch("floor-uvicorn", lambda port: uvicorn_argv(port, FLOOR_APP), logs),
            gateway,
            default=False,
        ),
        Target(
            "floor-granian",
            "the floor as an ASGI app under granian",
            "sse",
            openai_request,
            floor_asgi_launch(
                "floor-granian", lambda port: granian_argv(port, FLOOR_APP, factory=False), logs
            ),
            gateway,
            default=False,
            install=install_granian,
        ),
    ]
