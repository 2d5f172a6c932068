"""The ``models`` and ``routing`` sections: deployments, model routes and their defaults."""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sluice.config.errors import Keys, error_at
from sluice.config.values import (
    Secret,
    as_mapping,
    check_keys,
    http_url,
    integer,
    mapping,
    number,
    string,
)

OPENAI_DEFAULT_BASE_URL = "https://api.openai.com/v1"
#: As the Anthropic SDK takes it: the wire appends ``/v1/messages``.
ANTHROPIC_DEFAULT_BASE_URL = "https://api.anthropic.com"
#: With no ``models`` section and both keys set, names starting with this go to
#: Anthropic and every other name to OpenAI.
ANTHROPIC_NAME_PREFIX = "claude"
PROVIDERS = ("openai", "openai-responses", "anthropic", "simulator")
STRATEGIES = ("weighted", "least-busy")


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float = 10.0
    first_token: float = 120.0
    idle: float = 120.0
    total: float = 900.0


@dataclass(frozen=True, slots=True)
class SimulatorSettings:
    seed: int = 0
    ttft: float = 0.2
    tokens_per_second: float = 40.0
    max_tokens: int = 300


@dataclass(frozen=True, slots=True)
class Deployment:
    """Where a public model name goes."""

    name: str
    provider: str
    #: The model name sent upstream; ``None`` passes the public name through.
    model: str | None = None
    base_url: str = OPENAI_DEFAULT_BASE_URL
    api_key: Secret | None = None
    timeouts: Timeouts = field(default_factory=Timeouts)
    simulator: SimulatorSettings = field(default_factory=SimulatorSettings)
    headers: Mapping[str, str] = field(default_factory=dict)
    #: Share of the model's requests under the ``weighted`` strategy.
    weight: float = 1.0
    #: Position among the model's deployments.
    index: int = 0
    #: ``max_tokens`` for a request without one, where the upstream requires it (Anthropic).
    max_tokens_default: int = 4096
    #: CA certificates (PEM) trusted for this upstream besides the system's
    #: (``SSL_CERT_FILE``, ``SSL_CERT_DIR`` and the default store).
    ca_file: str | None = None

    def upstream_model(self, public: str) -> str:
        return self.model or public

    @property
    def key(self) -> str:
        """Names this deployment uniquely, the same in every instance with this config."""
        return f"{self.name}#{self.index}"


@dataclass(frozen=True, slots=True)
class Routing:
    """How requests are spread, retried and cooled down: the defaults for every model."""

    strategy: str = "weighted"
    #: Attempts after the first one within a model, before its fallbacks.
    retries: int = 2
    #: Seconds: the n-th retry of a deployment waits up to base * 2**n (full jitter).
    backoff_base: float = 0.25
    backoff_max: float = 5.0
    #: Consecutive failures after which a deployment cools down (0: never).
    allowed_fails: int = 3
    #: Seconds a deployment is skipped once it cooled down.
    cooldown: float = 30.0


@dataclass(frozen=True, slots=True)
class ModelRoute:
    """A public model name: its deployments and what to do when they fail."""

    name: str
    deployments: tuple[Deployment, ...]
    strategy: str = "weighted"
    retries: int = 2
    #: Other public models to try, in order, when every attempt here failed.
    fallbacks: tuple[str, ...] = ()
    #: The same after a context-window error (by default the same list).
    context_window_fallbacks: tuple[str, ...] = ()


def timeouts_of(raw: Mapping[str, Any], at: Keys, base: Timeouts) -> Timeouts:
    """The ``timeouts`` key of ``raw``, over ``base``."""
    data = mapping(raw, "timeouts", at)
    at = (*at, "timeouts")
    check_keys(data, {"connect", "first_token", "idle", "total"}, at)
    return Timeouts(
        connect=number(data, "connect", at, base.connect),
        first_token=number(data, "first_token", at, base.first_token),
        idle=number(data, "idle", at, base.idle),
        total=number(data, "total", at, base.total),
    )


_DEPLOYMENT_KEYS = {
    "provider",
    "model",
    "base_url",
    "api_key_env",
    "timeouts",
    "headers",
    "seed",
    "ttft",
    "tokens_per_second",
    "max_tokens",
    "weight",
    "api_key",
    "max_tokens_default",
    "ca_file",
}
#: Keys of a model entry about routing rather than about one deployment.
_ROUTE_KEYS = {"strategy", "retries", "fallbacks", "context_window_fallbacks"}


def _env_base_url(env: Mapping[str, str], provider: str = "openai") -> str:
    if provider == "anthropic":
        url = env.get("ANTHROPIC_BASE_URL") or ANTHROPIC_DEFAULT_BASE_URL
        return http_url(url, (), name="ANTHROPIC_BASE_URL")
    url = env.get("OPENAI_BASE_URL") or OPENAI_DEFAULT_BASE_URL
    return http_url(url, (), name="OPENAI_BASE_URL")


def _deployment(
    name: str,
    spec: Any,
    env: Mapping[str, str],
    timeouts: Timeouts,
    at: Keys | None = None,
    index: int = 0,
) -> Deployment:
    at = ("models", name) if at is None else at
    data = as_mapping(spec, at)
    check_keys(data, _DEPLOYMENT_KEYS, at)
    provider = string(data, "provider", at, "openai")
    if provider not in PROVIDERS:
        raise error_at(
            (*at, "provider"), f"unknown provider {provider!r}; known: {', '.join(PROVIDERS)}"
        )
    assert provider is not None
    url = string(data, "base_url", at, None)
    base_url = _env_base_url(env, provider) if url is None else http_url(url, (*at, "base_url"))
    # OPENAI_API_KEY goes with OPENAI_BASE_URL, as in the SDK: it is never sent to a
    # base URL written here unless that is OpenAI's own, or the entry names it. The
    # same for ANTHROPIC_API_KEY and ANTHROPIC_BASE_URL.
    default_key_env = None
    openai_family = provider in ("openai", "openai-responses")
    if openai_family and (url is None or base_url == OPENAI_DEFAULT_BASE_URL):
        default_key_env = "OPENAI_API_KEY"
    if provider == "anthropic" and (url is None or base_url == ANTHROPIC_DEFAULT_BASE_URL):
        default_key_env = "ANTHROPIC_API_KEY"
    api_key: Secret | None = None
    key_env = string(data, "api_key_env", at, default_key_env)
    literal = data.get("api_key")
    if isinstance(literal, Secret):  # only a converted LiteLLM config holds one
        api_key, key_env = literal, None
    elif literal is not None:
        raise error_at(
            (*at, "api_key"),
            "keys do not belong in config files: put it in an environment variable"
            " and name that with api_key_env",
        )
    if key_env:
        value = env.get(key_env, "")
        if any(c in value for c in "\r\n\0"):
            # It goes into a header line: refused here, never shown.
            raise error_at(
                (*at, "api_key_env"), f"environment variable {key_env} holds a line break"
            )
        if value:
            api_key = Secret(value)
        elif "api_key_env" in data:
            raise error_at((*at, "api_key_env"), f"environment variable {key_env} is not set")
    headers = mapping(data, "headers", at)
    for header, header_value in headers.items():
        if any(c in f"{header}{header_value}" for c in "\r\n\0") or not str(header).strip():
            raise error_at((*at, "headers", str(header)), "a header holds a line break or is empty")
    base = SimulatorSettings()
    sim = SimulatorSettings(
        seed=integer(data, "seed", at, base.seed),
        ttft=number(data, "ttft", at, base.ttft),
        tokens_per_second=number(data, "tokens_per_second", at, base.tokens_per_second),
        max_tokens=integer(data, "max_tokens", at, base.max_tokens, minimum=1),
    )
    return Deployment(
        name=name,
        provider=provider,
        model=string(data, "model", at, None),
        base_url=base_url,
        api_key=api_key,
        timeouts=timeouts_of(data, at, timeouts),
        simulator=sim,
        headers={str(k): str(v) for k, v in headers.items()},
        weight=_weight(data, at),
        index=index,
        max_tokens_default=integer(data, "max_tokens_default", at, 4096, minimum=1),
        ca_file=_ca_file(data, at),
    )


def _ca_file(data: Mapping[str, Any], at: Keys) -> str | None:
    """A readable PEM file of CA certificates, as an absolute path."""
    path = string(data, "ca_file", at, None)
    if path is None:
        return None
    try:
        ssl.create_default_context(cafile=path)
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        message = f"cannot load CA certificates from {path}: {reason}"
        raise error_at((*at, "ca_file"), message) from None
    return os.path.abspath(path)


def _weight(data: Mapping[str, Any], at: Keys) -> float:
    weight = number(data, "weight", at, 1.0)
    if weight <= 0:
        raise error_at((*at, "weight"), f"expected a number above 0, got {data['weight']!r}")
    return weight


def _names(data: Mapping[str, Any], key: str, at: Keys) -> tuple[str, ...]:
    value = data.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise error_at((*at, key), f"expected a list of model names, got {value!r}")
    return tuple(value)


def routing_of(raw: Mapping[str, Any]) -> Routing:
    """The top-level ``routing`` section: defaults for every model."""
    at: Keys = ("routing",)
    data = mapping(raw, "routing", ())
    check_keys(data, {"strategy", "retries", "backoff", "allowed_fails", "cooldown"}, at)
    backoff = mapping(data, "backoff", at)
    check_keys(backoff, {"base", "max"}, (*at, "backoff"))
    base = Routing()
    return Routing(
        strategy=_strategy(data, at, base.strategy),
        retries=integer(data, "retries", at, base.retries, maximum=10),
        backoff_base=number(backoff, "base", (*at, "backoff"), base.backoff_base),
        backoff_max=number(backoff, "max", (*at, "backoff"), base.backoff_max),
        allowed_fails=integer(data, "allowed_fails", at, base.allowed_fails),
        cooldown=number(data, "cooldown", at, base.cooldown),
    )


def _strategy(data: Mapping[str, Any], at: Keys, default: str) -> str:
    strategy = string(data, "strategy", at, default)
    if strategy not in STRATEGIES:
        raise error_at(
            (*at, "strategy"), f"expected one of {', '.join(STRATEGIES)}, got {strategy!r}"
        )
    return strategy


def _route(
    name: str, spec: Any, env: Mapping[str, str], timeouts: Timeouts, routing: Routing
) -> ModelRoute:
    """One entry of ``models``: a single deployment, or ``deployments: [...]``."""
    at: Keys = ("models", name)
    data = as_mapping(spec, at)
    if "deployments" in data:
        check_keys(data, {"deployments", "timeouts", *_ROUTE_KEYS}, at)
        items = data["deployments"]
        if not isinstance(items, list) or not items:
            raise error_at((*at, "deployments"), f"expected a non-empty list, got {items!r}")
        base = timeouts_of(data, at, timeouts)
        deployments = tuple(
            _deployment(name, item, env, base, (*at, "deployments", str(i)), i)
            for i, item in enumerate(items)
        )
    else:
        check_keys(data, _DEPLOYMENT_KEYS | _ROUTE_KEYS, at)
        single = {k: v for k, v in data.items() if k not in _ROUTE_KEYS}
        deployments = (_deployment(name, single, env, timeouts, at),)
    fallbacks = _names(data, "fallbacks", at)
    if "context_window_fallbacks" in data:
        context_fallbacks = _names(data, "context_window_fallbacks", at)
    else:
        context_fallbacks = fallbacks
    return ModelRoute(
        name=name,
        deployments=deployments,
        strategy=_strategy(data, at, routing.strategy),
        retries=integer(data, "retries", at, routing.retries, maximum=10),
        fallbacks=fallbacks,
        context_window_fallbacks=context_fallbacks,
    )


def _check_fallbacks(routes: Mapping[str, ModelRoute]) -> None:
    for name, route in routes.items():
        for key in ("fallbacks", "context_window_fallbacks"):
            for other in getattr(route, key):
                if other == name:
                    raise error_at(("models", name, key), f"{name!r} cannot fall back to itself")
                if other not in routes and "*" not in routes:
                    raise error_at(
                        ("models", name, key),
                        f"falls back to {other!r}, which is not a configured model",
                    )


def routes_of(
    raw: Mapping[str, Any], env: Mapping[str, str], timeouts: Timeouts, routing: Routing
) -> dict[str, ModelRoute]:
    """The ``models`` section; without one, :func:`default_models` under ``routing``."""
    routes = {
        str(name): _route(str(name), spec, env, timeouts, routing)
        for name, spec in mapping(raw, "models", ()).items()
    }
    _check_fallbacks(routes)
    if not routes:
        routes = {
            name: ModelRoute(name, (deployment,), routing.strategy, routing.retries)
            for name, deployment in default_models(env, timeouts).items()
        }
    return routes


def _env_deployment(
    name: str, provider: str, env: Mapping[str, str], timeouts: Timeouts
) -> Deployment:
    key = env.get("ANTHROPIC_API_KEY" if provider == "anthropic" else "OPENAI_API_KEY", "")
    return Deployment(
        name=name,
        provider=provider,
        base_url=_env_base_url(env, provider),
        api_key=Secret(key),
        timeouts=timeouts,
    )


def default_models(
    env: Mapping[str, str], timeouts: Timeouts | None = None
) -> dict[str, Deployment]:
    """No ``models:`` section: pass every name to OpenAI if its key is set, else to
    Anthropic if its key is set, else simulate (see :func:`default_prefixes` for both)."""
    timeouts = timeouts or Timeouts()
    if env.get("OPENAI_API_KEY", ""):
        return {"*": _env_deployment("*", "openai", env, timeouts)}
    if env.get("ANTHROPIC_API_KEY", ""):
        return {"*": _env_deployment("*", "anthropic", env, timeouts)}
    return {"*": Deployment(name="*", provider="simulator", timeouts=timeouts)}


def default_prefixes(
    raw: Mapping[str, Any], env: Mapping[str, str], timeouts: Timeouts, routing: Routing
) -> dict[str, ModelRoute]:
    """No ``models:`` section and both ``OPENAI_API_KEY`` and ``ANTHROPIC_API_KEY``:
    names starting with ``claude`` go to Anthropic (every other one to OpenAI)."""
    if mapping(raw, "models", ()) or not env.get("OPENAI_API_KEY", ""):
        return {}
    if not env.get("ANTHROPIC_API_KEY", ""):
        return {}
    name = f"{ANTHROPIC_NAME_PREFIX}*"
    deployment = _env_deployment(name, "anthropic", env, timeouts)
    return {
        ANTHROPIC_NAME_PREFIX: ModelRoute(name, (deployment,), routing.strategy, routing.retries)
    }
