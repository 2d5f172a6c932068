"""LiteLLM proxy as a bench peer: its own venv under the cache, one wildcard route.

Installed with ``python -m venv <cache>/litellm-venv`` and ``pip install
'litellm[proxy]==VERSION'`` into it (about a minute and 750 MB; never the project's
environment). Started as ``litellm --config <cache>/litellm-PORT.yaml --host
127.0.0.1 --port PORT --num_workers 1``: one Python process (uvicorn in-process, no
children), listening after about 6-7 s of start-up.

The config routes every model name through ``openai/*`` to the upstream, with no
database, no master key (so no auth work, like ``sluice serve``), no callbacks,
``drop_params`` and the cost map read from the package rather than fetched.

One LiteLLM quirk shapes the routes: a ``model`` containing a comma is taken as a
list of models and fanned out (``abatch_completion``), which fails on a stream. The
fake upstream's scenarios have commas (``paced:n=64,interval=0.02``), so
:meth:`LiteLLM.request` sends them with ``;`` instead, and the config has one
wildcard route per number of separators (``*;*`` -> ``openai/*,*``, and so on) that
puts the commas back: the upstream sees the scenario name unchanged. LiteLLM
matches a requested model against its wildcard routes anyway; these are a few
more patterns of the same kind.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from bench.peers import Peer
from bench.peers.steps import run_step

__all__ = ["PEERS", "LiteLLM", "config_text", "model_name"]

#: The version the config below was checked against; bump both together.
REQUIREMENT = "litellm[proxy]==1.108.7"
VENV_TIMEOUT = 120.0
PIP_TIMEOUT = 900.0
PROMPT = "Tell me a story"
#: Stands for "," in model names (a comma makes LiteLLM fan a request out).
SEPARATOR = ";"
#: Routes for scenario names of up to this many comma-separated parts.
MAX_PARTS = 8


def config_text(upstream_base: str, settings: Mapping[str, Any] | None = None) -> str:
    """The proxy config: any model name, passed through to ``upstream_base``.

    ``*``, ``*;*``, ``*;*;*``, ... route to ``openai/*``, ``openai/*,*``, ...: the
    ``;`` of a requested model become the commas of the upstream's scenario name.
    ``settings`` go into ``litellm_settings`` besides the bench's own.
    Written as JSON, which is YAML too, so no YAML library is needed here.
    """
    routes = [
        {
            "model_name": SEPARATOR.join(["*"] * parts),
            "litellm_params": {
                "model": "openai/" + ",".join(["*"] * parts),
                "api_base": upstream_base,
                "api_key": "sk-fake",
            },
        }
        for parts in range(1, MAX_PARTS + 1)
    ]
    config = {
        "model_list": routes,
        "litellm_settings": {"drop_params": True, "telemetry": False, **(settings or {})},
        # No master key: requests are not authenticated, as with `sluice serve`.
        "general_settings": {"dangerously_permit_weak_or_unset_master_key": True},
    }
    return json.dumps(config, indent=2) + "\n"


def model_name(scenario: str) -> str:
    """The model to ask LiteLLM for so that the upstream is asked for ``scenario``."""
    if SEPARATOR in scenario or scenario.count(",") >= MAX_PARTS:
        raise ValueError(f"litellm: can't route scenario {scenario!r}")
    return scenario.replace(",", SEPARATOR)


class LiteLLM:
    name = "litellm"
    kind: Literal["sse", "text"] = "sse"

    def __init__(self, settings: Mapping[str, Any] | None = None) -> None:
        #: More ``litellm_settings`` for the proxy's config.
        self.settings = dict(settings or {})

    @staticmethod
    def venv(cache: Path) -> Path:
        return cache / "litellm-venv"

    def _marker(self, cache: Path) -> Path:
        return self.venv(cache) / ".sluice-bench-installed"

    def installed(self, cache: Path) -> bool:
        marker = self._marker(cache)
        return (
            marker.is_file()
            and marker.read_text().strip() == REQUIREMENT
            and (self.venv(cache) / "bin" / "litellm").is_file()
        )

    def install(self, cache: Path) -> str | None:
        cache = cache.resolve()  # commands run in other folders
        if self.installed(cache):
            return None
        cache.mkdir(parents=True, exist_ok=True)
        venv = self.venv(cache)
        log = cache / "litellm-install.log"
        log.write_bytes(b"")
        if not (venv / "bin" / "python").is_file():
            venv_argv = [sys.executable, "-m", "venv", str(venv)]
            why = run_step(venv_argv, cwd=cache, log=log, timeout=VENV_TIMEOUT, summary=_last_error)
            if why is not None:
                return f"litellm: creating its venv failed: {why}"
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
        pip += ["--disable-pip-version-check", REQUIREMENT]
        why = run_step(pip, cwd=cache, log=log, timeout=PIP_TIMEOUT, summary=_last_error)
        if why is not None:
            return f"litellm: pip install {REQUIREMENT!r} {why}"
        if not (venv / "bin" / "litellm").is_file():
            return f"litellm: {REQUIREMENT} installed no `litellm` command (log: {log})"
        self._marker(cache).write_text(REQUIREMENT + "\n")
        return None

    def start(self, upstream_base: str, port: int, cache: Path) -> subprocess.Popen[bytes]:
        cache = cache.resolve()  # commands run in other folders
        config = cache / f"litellm-{port}.yaml"
        config.write_text(config_text(upstream_base, self.settings))
        argv = [str(self.venv(cache) / "bin" / "litellm"), "--config", str(config)]
        argv += ["--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"]
        env = {k: v for k, v in os.environ.items() if not _foreign(k)}
        env.update(
            LITELLM_LOG="ERROR",
            # The cost map ships in the package; don't try to fetch a newer one.
            LITELLM_LOCAL_MODEL_COST_MAP="True",
            LITELLM_DONT_SHOW_FEEDBACK_BOX="true",
            DISABLE_ADMIN_UI="True",
            PYTHONUNBUFFERED="1",
        )
        with (cache / f"litellm-{port}.log").open("wb") as log:
            return subprocess.Popen(
                argv,
                cwd=cache,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def request(self, scenario: str) -> tuple[str, str, bytes, dict[str, str]]:
        body = {
            "model": model_name(scenario),
            "messages": [{"role": "user", "content": PROMPT}],
            "stream": True,
        }
        headers = {"content-type": "application/json", "accept": "text/event-stream"}
        return "POST", "/v1/chat/completions", json.dumps(body).encode(), headers


def _foreign(key: str) -> bool:
    """Environment that would change what LiteLLM does: a database, keys, its own settings."""
    return (
        key in {"DATABASE_URL", "DIRECT_URL", "REDIS_URL", "REDIS_HOST", "STORE_MODEL_IN_DB"}
        or key.startswith(("LITELLM_", "OPENAI_", "PROXY_", "UI_"))
        or key.endswith("_API_KEY")
    )


def _last_error(log: Path) -> str:
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines()]
    lines = [line for line in lines if line and not line.startswith("WARNING:")]
    errors = [line for line in lines if line.startswith("ERROR")]
    last = (errors or lines or ["no output"])[-1]
    return last[:200]


PEERS: list[Peer] = [LiteLLM()]
