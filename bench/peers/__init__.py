"""Third-party gateways the bench measures beside Sluice.

Each peer module (``litellm.py``, ``portkey.py``, ``seed.py``) exposes one or more
objects satisfying :class:`Peer`, listed in a module-level ``PEERS: list[Peer]``.
A peer installs itself under ``cache`` (its own venv or node_modules, never the
project's environment), then is started against the bench's fake upstream. The
harness owns the process: it puts it on the gateway core with ``taskset``, raises
its fd limit, reads its CPU and RSS from ``/proc`` for its whole process tree and
ends it by PID.
"""

from __future__ import annotations

import importlib
import subprocess
from pathlib import Path
from typing import Literal, Protocol

__all__ = ["Peer", "peers"]


class Peer(Protocol):
    # "litellm", "portkey", "seed-workerd", "seed-wrangler"
    name: str
    # How the response body is framed: "sse" (OpenAI chat.completion.chunk events,
    # one chunk per ``data:`` event, ends with ``data: [DONE]``) or "text" (plain
    # text, the seed's format: the client counts bytes of content, not events).
    kind: Literal["sse", "text"]

    def install(self, cache: Path) -> str | None:
        """Install into ``cache``; None when ready, else a one-line reason it can't be.

        The harness prints ``skipped: <reason>`` and goes on without this peer.
        Must be idempotent and quick when already installed.
        """
        ...

    def start(self, upstream_base: str, port: int, cache: Path) -> subprocess.Popen[bytes]:
        """Start the gateway listening on 127.0.0.1:``port``, relaying to ``upstream_base``.

        ``upstream_base`` looks like ``http://127.0.0.1:PORT/v1``. The returned
        process is the root of the gateway's process tree; the harness waits (up to
        120 s) for the port to accept connections, and ends the tree by PID. It calls
        ``start`` from a thread pinned to the gateway's cores, with the open-file limit
        already raised: the process inherits both, so don't change either. Use
        ``argv`` lists, not a shell. Write logs to a file under ``cache``, not to a
        pipe nobody reads.
        """
        ...

    def request(self, scenario: str) -> tuple[str, str, bytes, dict[str, str]]:
        """(method, path, body, headers) asking the peer to stream upstream model ``scenario``.

        ``scenario`` is the upstream model name, e.g. ``burst:n=200``; the peer must
        pass it through unchanged so the fake upstream picks the scenario.
        """
        ...


_MODULES = ("litellm", "portkey", "seed")


def peers() -> list[Peer]:
    """Every peer whose module exists, in a stable order; missing modules are skipped."""
    found: list[Peer] = []
    for name in _MODULES:
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
            continue
        found.extend(module.PEERS)
    return found
