"""Portkey's AI gateway (Node) as a bench peer, from npm into ``<cache>/portkey``.

Installed with ``npm install @portkey-ai/gateway@1.15.2 @hono/node-server@1.13.5``
(a few seconds, about 25 MB); the copy of ``@hono/node-server`` nested inside the
gateway's own ``node_modules`` is then removed, because the gateway's streaming only
works with the 1.13.5 one beside it. Started as ``node build/start-server.js
--port=PORT --headless``: one Node process, listening within a second.

The gateway has no start-up setting for where to send requests: every request
names the provider and its base URL in headers (``x-portkey-provider: openai``,
``x-portkey-custom-host: <upstream base>``). So :meth:`Portkey.start` remembers
the upstream base it was given and :meth:`Portkey.request` sends it.
Loopback custom hosts are allowed by default (``TRUSTED_CUSTOM_HOSTS`` unset).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Literal

from bench.peers import Peer
from bench.peers.steps import npm_env, run_step

__all__ = ["PEERS", "Portkey"]

PACKAGES = ("@portkey-ai/gateway@1.15.2", "@hono/node-server@1.13.5")
NPM_TIMEOUT = 600.0
PROMPT = "Tell me a story"
GATEWAY = Path("node_modules", "@portkey-ai", "gateway")
ENTRY = GATEWAY / "build" / "start-server.js"
NESTED_NODE_SERVER = GATEWAY / "node_modules" / "@hono" / "node-server"


class Portkey:
    name = "portkey"
    kind: Literal["sse", "text"] = "sse"

    def __init__(self) -> None:
        #: Set by :meth:`start`; the gateway learns its upstream from each request.
        self.upstream_base: str | None = None

    @staticmethod
    def home(cache: Path) -> Path:
        return cache / "portkey"

    def _marker(self, cache: Path) -> Path:
        return self.home(cache) / ".sluice-bench-installed"

    def installed(self, cache: Path) -> bool:
        home = self.home(cache)
        marker = self._marker(cache)
        return (
            marker.is_file()
            and marker.read_text().split() == list(PACKAGES)
            and (home / ENTRY).is_file()
            and not (home / NESTED_NODE_SERVER).exists()
        )

    def install(self, cache: Path) -> str | None:
        cache = cache.resolve()  # commands run in other folders
        if self.installed(cache):
            return None
        node, npm = shutil.which("node"), shutil.which("npm")
        if node is None or npm is None:
            return "portkey: needs Node.js and npm on PATH"
        home = self.home(cache)
        home.mkdir(parents=True, exist_ok=True)
        # A package.json of its own, so npm installs here and not in a parent folder.
        manifest = {"name": "sluice-bench-portkey", "private": True}
        (home / "package.json").write_text(json.dumps(manifest, indent=2) + "\n")
        log = cache / "portkey-install.log"
        log.write_bytes(b"")
        argv = [npm, "install", "--no-audit", "--no-fund", "--loglevel=error", *PACKAGES]
        why = run_step(argv, cwd=home, log=log, timeout=NPM_TIMEOUT, env=npm_env())
        if why is not None:
            return f"portkey: npm install {' '.join(PACKAGES)} {why}"
        if not (home / ENTRY).is_file():
            return f"portkey: the gateway package has no {ENTRY.name} (log: {log})"
        # Its streaming needs the top-level @hono/node-server 1.13.5, not its own copy.
        shutil.rmtree(home / NESTED_NODE_SERVER, ignore_errors=True)
        self._marker(cache).write_text("\n".join(PACKAGES) + "\n")
        return None

    def start(self, upstream_base: str, port: int, cache: Path) -> subprocess.Popen[bytes]:
        cache = cache.resolve()  # commands run in other folders
        self.upstream_base = upstream_base
        home = self.home(cache)
        node = shutil.which("node") or "node"
        argv = [node, str(home / ENTRY), f"--port={port}", "--headless"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("PORTKEY_")}
        env.pop("TRUSTED_CUSTOM_HOSTS", None)
        with (cache / f"portkey-{port}.log").open("wb") as log:
            return subprocess.Popen(
                argv,
                cwd=home,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def request(self, scenario: str) -> tuple[str, str, bytes, dict[str, str]]:
        if self.upstream_base is None:
            raise RuntimeError("portkey: start() names the upstream before request() can")
        body = {
            "model": scenario,
            "messages": [{"role": "user", "content": PROMPT}],
            "stream": True,
        }
        headers = {
            # The gateway rejects bodies without a JSON content type.
            "content-type": "application/json",
            "accept": "text/event-stream",
            "x-portkey-provider": "openai",
            "x-portkey-custom-host": self.upstream_base,
            "authorization": "Bearer sk-fake",
        }
        return "POST", "/v1/chat/completions", json.dumps(body).encode(), headers


PEERS: list[Peer] = [Portkey()]
