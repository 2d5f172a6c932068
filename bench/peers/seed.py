"""The seed program as bench peers: a Worker that streams OpenAI output as plain text.

``seed_worker/worker.js`` is a minimal equivalent of Cloudflare's well-known
"stream OpenAI API responses" Worker: on any request it calls the ``openai`` npm
package's ``chat.completions.create({model, messages: [Tell me a story], stream:
true})`` against ``OPENAI_BASE_URL`` and pipes each ``delta.content`` into the
response through a ``TransformStream``. The model is the ``model`` query parameter.

Both peers share one install in ``<cache>/seed-worker``: the files of
``seed_worker/`` copied there, ``npm install`` of its ``package.json`` (``openai``,
``esbuild``, ``workerd``, ``wrangler``, pinned; about 6 s and 215 MB, the
``workerd`` binary ships inside its npm package), then ``esbuild`` bundles
``worker.js`` with ``openai`` into one ES module, ``worker.bundle.js``.

- ``seed-workerd``: ``workerd serve workerd.capnp --socket-addr http=127.0.0.1:PORT``,
  one process. ``OPENAI_BASE_URL`` comes from the environment (``fromEnvironment``
  bindings).
- ``seed-wrangler``: ``wrangler dev --local --ip 127.0.0.1 --port PORT --var
  OPENAI_BASE_URL:...``, with metrics, error reports and the ``Request.cf``
  download turned off and wrangler's own files kept under the install folder. It is a
  tree: node (wrangler's launcher) -> node (wrangler) -> two ``workerd`` processes,
  one of which owns PORT; started in a session of its own so the whole tree can be
  found and ended. wrangler 4.86 is the last release that runs on Node 20.

Kind "text": the body is the story's text, no framing.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Literal
from urllib.parse import quote

from bench.peers import Peer
from bench.peers.steps import npm_env, run_step

__all__ = ["PEERS", "SeedWorkerd", "SeedWrangler"]

SOURCE = Path(__file__).resolve().parent / "seed_worker"
FILES = ("worker.js", "package.json", "workerd.capnp", "wrangler.toml")
BUNDLE = "worker.bundle.js"
NPM_TIMEOUT = 600.0
STEP_TIMEOUT = 120.0
#: wrangler 4.86's engines field.
WRANGLER_NODE = (20, 3)
API_KEY = "sk-fake"


def home(cache: Path) -> Path:
    return cache / "seed-worker"


def _stamp() -> str:
    """Changes whenever a file of ``seed_worker/`` does: then it is installed again."""
    digest = hashlib.sha256()
    for name in FILES:
        digest.update(name.encode() + b"\0" + (SOURCE / name).read_bytes() + b"\0")
    return digest.hexdigest()


def _marked(path: Path, stamp: str) -> bool:
    return path.is_file() and path.read_text().strip() == stamp


def install_worker(cache: Path) -> str | None:
    """The shared install: sources, node_modules, the bundle. None when ready."""
    cache = cache.resolve()  # commands run in other folders
    where = home(cache)
    marker = where / ".sluice-bench-installed"
    stamp = _stamp()
    if _marked(marker, stamp) and (where / BUNDLE).is_file():
        return None
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        return "needs Node.js and npm on PATH"
    where.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        shutil.copyfile(SOURCE / name, where / name)
    log = cache / "seed-worker-install.log"
    log.write_bytes(b"")
    why = _run(
        [npm, "install", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=where,
        log=log,
        timeout=NPM_TIMEOUT,
    )
    if why is not None:
        return f"npm install {why}"
    esbuild = where / "node_modules" / ".bin" / "esbuild"
    bundle = [str(esbuild), "worker.js", "--bundle", "--format=esm", "--platform=neutral"]
    bundle += ["--main-fields=module,main", "--conditions=workerd,worker,browser"]
    bundle += ["--target=es2022", f"--outfile={BUNDLE}", "--log-level=warning"]
    why = _run(bundle, cwd=where, log=log, timeout=STEP_TIMEOUT)
    if why is not None:
        return f"bundling worker.js with esbuild {why}"
    marker.write_text(stamp + "\n")
    return None


def _node_version() -> tuple[int, ...] | None:
    node = shutil.which("node")
    if node is None:
        return None
    try:
        out = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.match(r"v(\d+)\.(\d+)", out.stdout.strip())
    return (int(match[1]), int(match[2])) if match else None


class _Seed:
    name: str
    kind: Literal["sse", "text"] = "text"

    def install(self, cache: Path) -> str | None:
        cache = cache.resolve()  # commands run in other folders
        where = home(cache)
        marker = where / f".sluice-bench-{self.name}"
        stamp = _stamp()
        if _marked(marker, stamp) and (where / BUNDLE).is_file():
            return None
        why = install_worker(cache)
        if why is None:
            why = self.check(where, cache / "seed-worker-install.log")
        if why is not None:
            return f"{self.name}: {why}"
        marker.write_text(stamp + "\n")
        return None

    def check(self, where: Path, log: Path) -> str | None:
        """Does this peer's runtime run here? None, or why not."""
        raise NotImplementedError

    def request(self, scenario: str) -> tuple[str, str, bytes, dict[str, str]]:
        return "GET", f"/?model={quote(scenario, safe='')}", b"", {}


class SeedWorkerd(_Seed):
    name = "seed-workerd"

    @staticmethod
    def workerd(where: Path) -> Path:
        return where / "node_modules" / ".bin" / "workerd"

    def check(self, where: Path, log: Path) -> str | None:
        why = _run([str(self.workerd(where)), "--version"], cwd=where, log=log, timeout=60)
        return None if why is None else f"workerd --version {why}"

    def start(self, upstream_base: str, port: int, cache: Path) -> subprocess.Popen[bytes]:
        cache = cache.resolve()  # commands run in other folders
        where = home(cache)
        argv = [str(self.workerd(where)), "serve", "workerd.capnp"]
        argv += ["--socket-addr", f"http=127.0.0.1:{port}"]
        env = dict(os.environ, OPENAI_BASE_URL=upstream_base, OPENAI_API_KEY=API_KEY)
        return _spawn(argv, where, env, cache / f"seed-workerd-{port}.log")


class SeedWrangler(_Seed):
    name = "seed-wrangler"

    @staticmethod
    def wrangler(where: Path) -> Path:
        return where / "node_modules" / "wrangler" / "bin" / "wrangler.js"

    def check(self, where: Path, log: Path) -> str | None:
        version = _node_version()
        if version is None or version < WRANGLER_NODE:
            need = ".".join(map(str, WRANGLER_NODE))
            return f"wrangler 4.86 needs Node.js >= {need}, found {version or 'none'}"
        argv = [shutil.which("node") or "node", str(self.wrangler(where)), "--version"]
        why = _run(argv, cwd=where, log=log, timeout=60, env=_wrangler_env(where))
        return None if why is None else f"wrangler --version {why}"

    def start(self, upstream_base: str, port: int, cache: Path) -> subprocess.Popen[bytes]:
        cache = cache.resolve()  # commands run in other folders
        where = home(cache)
        argv = [shutil.which("node") or "node", str(self.wrangler(where)), "dev", "--local"]
        argv += ["--ip", "127.0.0.1", "--port", str(port)]
        argv += ["--var", f"OPENAI_BASE_URL:{upstream_base}", "--var", f"OPENAI_API_KEY:{API_KEY}"]
        argv += ["--show-interactive-dev-session=false"]
        return _spawn(argv, where, _wrangler_env(where), cache / f"seed-wrangler-{port}.log")


def _wrangler_env(where: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLOUDFLARE_", "WRANGLER_"))}
    env.update(
        WRANGLER_SEND_METRICS="false",
        WRANGLER_SEND_ERROR_REPORTS="false",
        # Otherwise it fetches a Request.cf sample from Cloudflare at every start.
        CLOUDFLARE_CF_FETCH_ENABLED="false",
        # Its config, cache and logs stay in the install folder, not in ~/.config.
        XDG_CONFIG_HOME=str(where / ".config"),
        WRANGLER_LOG_PATH=str(where / "logs"),
        NO_COLOR="1",
    )
    return env


def _spawn(argv: list[str], cwd: Path, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _run(
    argv: list[str],
    *,
    cwd: Path,
    log: Path,
    timeout: float,
    env: dict[str, str] | None = None,
) -> str | None:
    return run_step(argv, cwd=cwd, log=log, timeout=timeout, env=npm_env(env))


PEERS: list[Peer] = [SeedWorkerd(), SeedWrangler()]
