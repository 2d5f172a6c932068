"""Many instances for real: a ``redis-server``, N gateway processes sharing it, and an
``nginx`` in front of them, all on loopback, each stopped by its PID.

    with cluster(tmp_path, config, instances=3, env=KEY_ENV) as c:
        c.url           # nginx: http://127.0.0.1:PORT (c.api adds /v1)
        c.gateways      # [RunningGateway, ...], each with its own record database and log
        c.redis.stop()  # and .start(): the same port, empty again (no persistence)
        c.records()     # every instance's records, each with "instance": its index

nginx balances round-robin over keep-alive connections without buffering (streams
pass through as they are written) and sets ``X-Forwarded-For``, which the gateways
trust from loopback: a test can pose as another client address by sending that header.

``run_redis`` and ``run_nginx`` work on their own too; the ``redis_server`` and
``backend`` fixtures in conftest.py build on ``run_redis``.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from tests.gateway import RunningGateway, free_port, run_gateway

REDIS_SERVER = "/usr/bin/redis-server"
REDIS_CLI = "/usr/bin/redis-cli"
NGINX = "/usr/sbin/nginx"


def _stop(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def _wait(ready: Any, what: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 15
    while not ready():
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited at start:\n{log.read_text(errors='replace')}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not become ready:\n{log.read_text(errors='replace')}")
        time.sleep(0.02)


@dataclass
class RedisServer:
    """A ``redis-server`` of this test run: no persistence, loopback only, one port for
    its whole life so that clients reconnect to it after ``stop()`` and ``start()``."""

    workdir: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return self.workdir / "redis.log"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def _pong(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def start(self) -> None:
        assert self.process is None or self.process.poll() is not None, "already running"
        self.workdir.mkdir(parents=True, exist_ok=True)
        cmd = [
            REDIS_SERVER,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--dir", str(self.workdir),
        ]  # fmt: skip
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        _wait(self._pong, "redis-server", self.process, self.log_path)

    def stop(self) -> None:
        if self.process is not None:
            _stop(self.process)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def flush(self) -> None:
        with contextlib.closing(self.client()) as client:
            client.flushall()


@contextlib.contextmanager
def run_redis(workdir: Path) -> Iterator[RedisServer]:
    server = RedisServer(workdir)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@dataclass
class RedisCluster:
    """A Redis Cluster of ``redis-server`` processes on loopback, one primary each."""

    nodes: list[RedisServer]

    @property
    def url(self) -> str:
        """What ``redis_url`` takes: ``redis+cluster://host:port,host:port,…``."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def client(self) -> redis.RedisCluster:
        return redis.RedisCluster(host="127.0.0.1", port=self.nodes[0].port, socket_timeout=5)

    def _ok(self) -> bool:
        with contextlib.closing(self.nodes[0].client()) as client:
            info = client.execute_command("CLUSTER", "INFO")
        text = info.decode() if isinstance(info, bytes) else str(info)
        return "cluster_state:ok" in text


def _cluster_port() -> int:
    """A free port whose cluster bus port (10,000 higher) is free too."""
    for _ in range(200):
        port = free_port()
        if port > 55_535:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10_000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair for a Redis Cluster node")


@contextlib.contextmanager
def run_redis_cluster(workdir: Path, size: int = 3) -> Iterator[RedisCluster]:
    """``size`` nodes started with ``--cluster-enabled yes``, joined by ``redis-cli
    --cluster create``; each stopped by its PID at the end."""
    nodes = [RedisServer(workdir / f"node{i}", _cluster_port()) for i in range(size)]
    with contextlib.ExitStack() as stack:
        for node in nodes:
            node.workdir.mkdir(parents=True, exist_ok=True)
            cmd = [
                REDIS_SERVER,
                "--port", str(node.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--cluster-enabled", "yes",
                "--cluster-config-file", str(node.workdir / "nodes.conf"),
                "--cluster-node-timeout", "2000",
                "--dir", str(node.workdir),
            ]  # fmt: skip
            with open(node.log_path, "ab") as log:
                node.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
            stack.callback(node.stop)
            _wait(node._pong, "redis-server (cluster node)", node.process, node.log_path)
        addresses = [f"127.0.0.1:{node.port}" for node in nodes]
        subprocess.run(
            [REDIS_CLI, "--cluster", "create", *addresses, "--cluster-replicas", "0",
             "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=30,
        )  # fmt: skip
        cluster = RedisCluster(nodes)
        deadline = time.monotonic() + 15
        while not cluster._ok():
            if time.monotonic() > deadline:
                raise RuntimeError("the Redis Cluster did not reach cluster_state:ok")
            time.sleep(0.1)
        yield cluster


@dataclass
class Nginx:
    url: str
    workdir: Path
    process: subprocess.Popen[bytes]

    def error_log(self) -> str:
        return (self.workdir / "error.log").read_text(errors="replace")


def nginx_config(workdir: Path, port: int, upstreams: list[str]) -> str:
    servers = "\n".join(f"        server {address};" for address in upstreams)
    temp = "\n".join(
        f"    {name}_temp_path {workdir / name};"
        for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""daemon off;
worker_processes 1;
pid {workdir / "nginx.pid"};
error_log {workdir / "error.log"} warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
{temp}
    # Bodies stay in memory: workers may run as another user than the temp directory's.
    client_body_buffer_size 4m;
    client_max_body_size 8m;
    upstream sluice {{
{servers}
        keepalive 32;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://sluice;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_buffering off;
            proxy_read_timeout 300s;
        }}
    }}
}}
"""


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@contextlib.contextmanager
def run_nginx(workdir: Path, upstreams: list[str]) -> Iterator[Nginx]:
    """nginx in the foreground (``daemon off``) in front of ``upstreams`` (host:port)."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = workdir / "nginx.conf"
    conf.write_text(nginx_config(workdir, port, upstreams))
    log = workdir / "error.log"
    cmd = [NGINX, "-p", str(workdir), "-c", str(conf), "-e", str(log)]
    with open(workdir / "nginx.out", "wb") as out:
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    server = Nginx(f"http://127.0.0.1:{port}", workdir, process)
    try:
        _wait(lambda: _http_ok(f"{server.url}/readyz"), "nginx", process, workdir / "nginx.out")
        yield server
    finally:
        _stop(process)


@dataclass
class Cluster:
    nginx: Nginx
    gateways: list[RunningGateway]
    redis: RedisServer

    @property
    def url(self) -> str:
        return self.nginx.url

    @property
    def api(self) -> str:
        return f"{self.nginx.url}/v1"

    def records(self) -> list[dict[str, Any]]:
        """Every instance's records, oldest first, each with ``instance``: its index."""
        rows = [
            {**row, "instance": index}
            for index, gateway in enumerate(self.gateways)
            for row in gateway.records()
        ]
        return sorted(rows, key=lambda row: row["started_at"])

    def wait_records(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            rows = self.records()
            if len(rows) >= count or time.monotonic() > deadline:
                return rows
            time.sleep(0.05)

    def served_by(self, request_id: str) -> int | None:
        """The index of the instance that recorded ``request_id`` (``x-request-id``)."""
        for row in self.records():
            if row["id"] == request_id:
                return int(row["instance"])
        return None

    def logs(self) -> list[str]:
        return [gateway.log() for gateway in self.gateways]


@contextlib.contextmanager
def cluster(
    workdir: Path,
    config: Mapping[str, Any],
    instances: int = 3,
    env: Mapping[str, str] | None = None,
) -> Iterator[Cluster]:
    """Redis, ``instances`` gateways with ``config`` plus its ``redis_url``, and nginx."""
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(run_redis(workdir / "redis"))
        shared = {**config, "redis_url": server.url}
        gateways = [
            stack.enter_context(run_gateway(workdir / f"gw{index}", shared, env))
            for index in range(instances)
        ]
        upstreams = [gateway.url.removeprefix("http://") for gateway in gateways]
        proxy = stack.enter_context(run_nginx(workdir / "nginx", upstreams))
        yield Cluster(proxy, gateways, server)
