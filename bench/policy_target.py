"""The policy-heavy Sluice target, ``sluice-policies``: keys, rate limits and the cache
on, their shared state in a real Redis.

Every request carries a virtual key (``Authorization: Bearer``), is counted against the
key's and the model's requests and tokens per minute (limits far above what the bench
can reach: nothing is ever refused) and checked against the key's budget, all in Redis.
Every request also says ``x-sluice-cache: refresh``, with coalescing off: identical
requests are neither answered from the cache nor shared, so every stream is generated
upstream and takes the cache's write path — each chunk appended to a journal, the
complete answer written to Redis at the end. That is the most a policy does per chunk;
a hit or a coalesced stream would measure the cache's replay instead of the relay.

The gateway's root process is a small supervisor (``python -m bench.policy_target``)
that starts ``redis-server``, then ``sluice serve``, and stops both by PID when it is
told to stop (or when the gateway exits). Redis is thus in the measured process tree:
its CPU is counted with the gateway's, on the gateway's core.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import orjson

from bench import procs
from bench.targets import Request, Target, openai_request

REDIS_SERVER = "/usr/bin/redis-server"
#: Far above anything the bench reaches: limits are checked on every request, never hit.
KEY_LIMITS = ["--rpm", "100000000", "--tpm", "100000000000", "--budget-usd", "1000000"]
MODEL_LIMITS = {"rpm": 100_000_000, "tpm": 100_000_000_000}


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "SLUICE_"))}


class PolicyTarget:
    """Launches the supervisor; knows the key the requests must carry."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.key: str | None = None

    def request(self, scenario: str) -> Request:
        method, path, body, headers = openai_request(scenario)
        if self.key is None:
            raise RuntimeError("sluice-policies: no key yet (the target was not started)")
        headers = {
            **headers,
            "authorization": f"Bearer {self.key}",
            "x-sluice-cache": "refresh",
        }
        return method, path, body, headers

    def launch(self, upstream_base: str, port: int) -> subprocess.Popen[bytes]:
        run = self.logs / f"sluice-policies-{port}"
        run.mkdir(parents=True, exist_ok=True)
        db = run / "records.db"
        redis_port = procs.free_port()
        config = {
            "host": "127.0.0.1",
            "port": port,
            "workers": 1,
            "record": {"path": str(db)},
            "redis_url": f"redis://127.0.0.1:{redis_port}/0",
            "limits": {"fail": "closed", "models": {"*": MODEL_LIMITS}},
            "cache": {"enabled": True, "coalesce": False},
            "models": {"*": {"provider": "openai", "base_url": upstream_base}},
        }
        (run / "sluice.json").write_bytes(orjson.dumps(config))  # JSON is YAML
        argv = [sys.executable, "-m", "sluice", "keys", "create", "--name", "bench"]
        argv += [*KEY_LIMITS, "--json", "--db", str(db)]
        done = subprocess.run(argv, cwd=run, env=_env(), capture_output=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"sluice keys create: {done.stderr.decode()[-500:]}")
        self.key = str(orjson.loads(done.stdout)["key"])
        argv = [sys.executable, "-m", "bench.policy_target", str(run), str(redis_port)]
        root = Path(__file__).resolve().parent.parent
        with open(run / "supervisor.log", "wb") as log:
            return subprocess.Popen(argv, cwd=root, env=_env(), stdout=log, stderr=log)


def policy_target(gateway: set[int], logs: Path) -> Target:
    policies = PolicyTarget(logs)
    return Target(
        "sluice-policies",
        "sluice, keys + limits + cache on Redis",
        "sse",
        policies.request,
        policies.launch,
        gateway,
        frozenset({"burst", "single"}),
    )


# ------------------------------------------------------------------ the supervisor


def _redis_stats(port: int) -> str:
    """What Redis did meanwhile: proof the policies used it."""
    try:
        import redis

        client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=2)
        stats = client.info("stats")
        keys = client.dbsize()
        client.close()
    except Exception as exc:  # the figures are a courtesy; stopping matters more
        return f"redis stats unavailable: {exc!r}"
    return (
        f"redis: {stats.get('total_commands_processed')} commands,"
        f" {stats.get('total_connections_received')} connections, {keys} keys"
    )


def supervise(run: Path, redis_port: int) -> int:
    """Start Redis, then the gateway; stop both by PID on SIGTERM or when the gateway ends."""

    def stop_now(signum: int, frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop_now)
    redis_argv = [REDIS_SERVER, "--port", str(redis_port), "--bind", "127.0.0.1"]
    redis_argv += ["--save", "", "--appendonly", "no", "--dir", str(run)]
    gateway: subprocess.Popen[bytes] | None = None
    with open(run / "redis.log", "wb") as redis_log:
        redis = subprocess.Popen(redis_argv, cwd=run, stdout=redis_log, stderr=redis_log)
    status = 1
    try:
        why = procs.wait_port(redis_port, redis, 30.0)
        if why is not None:
            print(f"redis-server: {why}", file=sys.stderr, flush=True)
            return 1
        argv = [sys.executable, "-m", "sluice", "serve", "--config", str(run / "sluice.json")]
        argv += ["--log-level", "warning"]
        with open(run / "gateway.log", "wb") as log:
            gateway = subprocess.Popen(argv, cwd=run, env=_env(), stdout=log, stderr=log)
        status = gateway.wait()
        print(f"sluice serve exited with status {status}", file=sys.stderr, flush=True)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # stopping already
        if gateway is not None:
            procs.stop(gateway)
        with contextlib.suppress(Exception):
            print(_redis_stats(redis_port), file=sys.stderr, flush=True)
        procs.stop(redis)
    return status


if __name__ == "__main__":
    sys.exit(supervise(Path(sys.argv[1]), int(sys.argv[2])))
