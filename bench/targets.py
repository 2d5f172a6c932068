"""What the bench measures: direct-to-upstream, Sluice in its configurations, the peers.

A target knows how to start (or not: direct is the upstream itself), on which cores,
and how to ask for a stream of a given upstream scenario.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from bench import procs
from bench.client import Kind
from bench.peers import Peer

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "bench" / ".cache"
Request = tuple[str, str, bytes, dict[str, str]]
ALL_PROFILES = frozenset({"burst", "paced", "single", "idle"})


def openai_request(scenario: str) -> Request:
    body = {
        "model": scenario,
        "messages": [{"role": "user", "content": "Tell me a story"}],
        "stream": True,
    }
    return "POST", "/v1/chat/completions", orjson.dumps(body), {"accept": "text/event-stream"}


@dataclass
class Target:
    name: str
    label: str
    kind: Kind
    request: Callable[[str], Request]
    #: (upstream base URL, port) -> the gateway's root process; None for direct.
    launch: Callable[[str, int], subprocess.Popen[bytes]] | None
    cores: set[int]
    profiles: frozenset[str] = ALL_PROFILES
    #: False: measured only when named with ``--only`` (a contrast, not a headline).
    default: bool = True
    #: Set once installed and checked; then the target is skipped with this reason.
    skipped: str | None = None
    install: Callable[[], str | None] = field(default=lambda: None)


@dataclass
class Live:
    """A started target: where to send requests and which process tree to watch."""

    target: Target
    port: int
    process: subprocess.Popen[bytes] | None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None


def sluice_config(
    run: Path, upstream_base: str, port: int, workers: int = 1, provider: str = "openai"
) -> Path:
    """Write the bench's Sluice config into ``run`` (made if needed); its path.

    ``upstream_base`` is the fake upstream's OpenAI base URL (``http://HOST:PORT/v1``);
    an ``anthropic`` deployment gets its root, as Anthropic's base URL has no ``/v1``.
    """
    run.mkdir(parents=True, exist_ok=True)
    if provider == "anthropic":
        upstream_base = upstream_base.removesuffix("/v1")
    config = {
        "host": "127.0.0.1",
        "port": port,
        "workers": workers,
        "record": {"path": str(run / "records.db")},
        "models": {"*": {"provider": provider, "base_url": upstream_base}},
    }
    path = run / "sluice.json"  # JSON is YAML
    path.write_bytes(orjson.dumps(config))
    return path


def sluice_env() -> dict[str, str]:
    """This environment without the variables Sluice reads its settings from, with this
    checkout's ``src`` first on ``PYTHONPATH``: the gateway measured is the code here,
    whichever checkout the interpreter's environment has installed."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OPENAI_", "ANTHROPIC_", "SLUICE_"))
    }
    paths = [str(ROOT / "src"), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env


def sluice_launch(
    workers: int, logs: Path, provider: str = "openai"
) -> Callable[[str, int], subprocess.Popen[bytes]]:
    def launch(upstream_base: str, port: int) -> subprocess.Popen[bytes]:
        run = logs / f"sluice-w{workers}-{port}"
        path = sluice_config(run, upstream_base, port, workers, provider)
        env = sluice_env()
        argv = [sys.executable, "-m", "sluice", "serve", "--config", str(path)]
        argv += ["--log-level", "warning"]
        with open(run / "gateway.log", "wb") as log:
            return subprocess.Popen(argv, cwd=run, env=env, stdout=log, stderr=log)

    return launch


def peer_target(peer: Peer, cores: set[int], cache: Path) -> Target:
    return Target(
        name=peer.name,
        label=peer.name,
        kind=peer.kind,
        request=peer.request,
        launch=lambda base, port: peer.start(base, port, cache),
        cores=cores,
        install=lambda: peer.install(cache),
    )


def all_targets(gateway: set[int], both: set[int], logs: Path) -> list[Target]:
    from bench.peers import peers
    from bench.policy_target import policy_target
    from bench.servers import server_targets
    from bench.telemetry_target import traced_target

    targets = [
        Target("direct", "direct (the upstream itself)", "sse", openai_request, None, set()),
        Target("sluice", "sluice", "sse", openai_request, sluice_launch(1, logs), gateway),
        *server_targets(gateway, logs),
        policy_target(gateway, logs),
        Target(
            "sluice-w2",
            f"sluice --workers 2 (cores {fmt_cores(both)})",
            "sse",
            openai_request,
            sluice_launch(2, logs),
            both,
            frozenset({"burst"}),
        ),
        Target(
            "sluice-w1-shared",
            f"sluice, 1 worker (cores {fmt_cores(both)})",
            "sse",
            openai_request,
            sluice_launch(1, logs),
            both,
            frozenset({"burst"}),
        ),
    ]
    targets.append(traced_target(gateway, logs))
    targets += [peer_target(p, gateway, CACHE) for p in peers()]
    return targets


def fmt_cores(cores: set[int]) -> str:
    return ",".join(str(c) for c in sorted(cores))


async def start(target: Target, upstream_base: str) -> Live | str:
    """Start the target on its cores; a Live, or why it could not start."""
    if target.launch is None:
        port = int(upstream_base.rsplit(":", 1)[1].split("/")[0])
        return Live(target, port, None)
    launch = target.launch
    port = procs.free_port()

    def spawn() -> subprocess.Popen[bytes]:
        # Children inherit the affinity of the thread that forks them.
        with procs.affinity(target.cores):
            return launch(upstream_base, port)

    try:
        process = await asyncio.to_thread(spawn)
    except Exception as exc:
        return f"could not start: {type(exc).__name__}: {exc}"
    why = await asyncio.to_thread(procs.wait_port, port, process, 120.0)
    if why is not None:
        await asyncio.to_thread(procs.stop, process)
        return why
    procs.pin(process.pid, target.cores)
    return Live(target, port, process)


async def stop(live: Live) -> None:
    if live.process is not None:
        await asyncio.to_thread(procs.stop, live.process)
