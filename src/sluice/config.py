"""Settings, read once at start-up (YAML file, then environment, then flags) and passed in.

Nothing else in the package reads the environment or a file for settings.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from sluice.pricing import Price

OPENAI_DEFAULT_BASE_URL = "https://api.openai.com/v1"
PROVIDERS = ("openai", "simulator")
#: What uvicorn and ``logging`` both accept.
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


class ConfigError(Exception):
    """The configuration is wrong; the message says what and where."""

    def __init__(self, message: str, path: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        #: The keys from the top of the file down to the offending one, to find its line.
        self.path = path


class Secret:
    """A string that never shows itself in logs, reprs or tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__


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

    def upstream_model(self, public: str) -> str:
        return self.model or public

    @property
    def key(self) -> str:
        """Names this deployment uniquely, the same in every instance with this config."""
        return f"{self.name}#{self.index}"


STRATEGIES = ("weighted", "least-busy")


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


@dataclass(frozen=True, slots=True)
class ModelLimits:
    rpm: int | None = None  # requests per minute
    tpm: int | None = None  # tokens per minute


@dataclass(frozen=True, slots=True)
class LimitSettings:
    """The ``limits:`` section: per-model rate limits and what to do without Redis."""

    #: "open" serves unlimited while the shared state is down; "closed" answers 503.
    fail: str = "open"
    #: Requests per minute per client address on the public ``GET /`` route.
    public_rpm: int | None = None
    #: Public model name (or ``*``, each other model) → its limits, across all keys.
    models: Mapping[str, ModelLimits] = field(default_factory=dict)
    #: Output tokens charged up front when a request sets no ``max_tokens``.
    output_estimate: int = 256


@dataclass(frozen=True, slots=True)
class ModelCache:
    """The ``cache.models.NAME`` overrides."""

    enabled: bool | None = None
    ttl: float | None = None


@dataclass(frozen=True, slots=True)
class CacheSettings:
    """The ``cache:`` section: the response cache and request coalescing."""

    enabled: bool = True
    #: Seconds an entry is served.
    ttl: float = 3600.0
    max_entries: int = 10_000
    max_bytes: int = 256 * 1024 * 1024
    #: Replay a hit at the pace the original arrived.
    paced: bool = False
    #: Identical cacheable requests in flight share one upstream generation.
    coalesce: bool = True
    #: Seconds a coalescing leader's lock lives unless renewed; other instances
    #: presume a leader dead when it lapses.
    lease: float = 10.0
    #: Keep generating (and store the result) after every client of it left.
    finish_abandoned: bool = False
    #: Public model name → overrides.
    models: Mapping[str, ModelCache] = field(default_factory=dict)

    def for_model(self, model: str) -> tuple[bool, float]:
        """Whether requests for ``model`` may be cached, and for how long."""
        override = self.models.get(model) or self.models.get("*") or ModelCache()
        enabled = self.enabled if override.enabled is None else override.enabled
        return enabled and self.enabled, self.ttl if override.ttl is None else override.ttl


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    default_model: str = "gpt-4o-mini"
    #: Public model name → deployment. The key ``*`` catches every other name.
    models: Mapping[str, Deployment] = field(default_factory=dict)
    keepalive_interval: float = 15.0
    max_body_bytes: int = 4 * 1024 * 1024
    db_path: str = "sluice.db"
    store_content: bool = False
    record_batch_size: int = 256
    record_flush_interval: float = 0.5
    log_level: str = "info"
    source: str = "defaults"
    #: ``SLUICE_MASTER_KEY``: admin, and a client key with no limits.
    master_key: Secret | None = None
    #: Serve on a non-loopback address although no key exists (``--insecure``).
    insecure: bool = False
    #: ``GET /`` answers without a key (a browser cannot send one), limited per address.
    public_seed: bool = False
    #: Seconds a key lookup is cached: the bound on how late a revocation takes effect.
    key_cache_ttl: float = 2.0
    #: USD per million tokens, by public or upstream model name, over the defaults.
    pricing: Mapping[str, Price] = field(default_factory=dict)
    #: Redis or Valkey shared by every instance (``redis_url`` or ``SLUICE_REDIS_URL``);
    #: None keeps shared state in this process.
    redis_url: Secret | None = None
    limits: LimitSettings = field(default_factory=LimitSettings)
    cache: CacheSettings = field(default_factory=CacheSettings)

    #: Public model name → its deployments, fallbacks and strategy (``models`` holds
    #: each one's first deployment). The key ``*`` catches every other name.
    routes: Mapping[str, ModelRoute] = field(default_factory=dict)
    routing: Routing = field(default_factory=Routing)
    #: Problems that did not stop the start (e.g. LiteLLM keys Sluice ignores), logged once.
    warnings: tuple[str, ...] = ()

    def resolve(self, model: str) -> Deployment | None:
        found = self.models.get(model)
        if found is None:
            found = self.models.get("*")
        return found

    def route(self, model: str) -> ModelRoute | None:
        """Where requests for ``model`` go: every deployment, retries and fallbacks."""
        found = self.routes.get(model) or self.routes.get("*")
        if found is None and not self.routes:
            deployment = self.resolve(model)
            if deployment is not None:
                strategy, retries = self.routing.strategy, self.routing.retries
                found = ModelRoute(deployment.name, (deployment,), strategy, retries)
        return found

    @property
    def uses_simulator(self) -> bool:
        deployments = [d for r in self.routes.values() for d in r.deployments]
        return any(d.provider == "simulator" for d in [*self.models.values(), *deployments])


#: Keys from the top of the document down to one value, e.g. ("models", "gpt", "provider").
Keys = tuple[str, ...]


def _name(at: Keys) -> str:
    return ".".join(at) or "top level"


def _fail(at: Keys, problem: str) -> ConfigError:
    return ConfigError(f"{_name(at)}: {problem}", at)


def _number(raw: Mapping[str, Any], key: str, at: Keys, default: float) -> float:
    value = raw.get(key, default)
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or math.isnan(value)
        or value < 0
    ):
        raise _fail((*at, key), f"expected a non-negative number, got {value!r}")
    return float(value)


def _int(
    raw: Mapping[str, Any],
    key: str,
    at: Keys,
    default: int,
    minimum: int = 0,
    maximum: int | None = None,
) -> int:
    value = raw.get(key, default)
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < minimum
        or (maximum is not None and value > maximum)
    ):
        expected = f"from {minimum} to {maximum}" if maximum is not None else f">= {minimum}"
        raise _fail((*at, key), f"expected an integer {expected}, got {value!r}")
    return value


def _str(raw: Mapping[str, Any], key: str, at: Keys, default: str | None) -> str | None:
    value = raw.get(key, default)
    if value is not None and not isinstance(value, str):
        raise _fail((*at, key), f"expected a string, got {value!r}")
    return value


def _as_mapping(value: Any, at: Keys) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _fail(at, f"expected a mapping, got {type(value).__name__}")
    return value


def _mapping(raw: Mapping[str, Any], key: str, at: Keys) -> Mapping[str, Any]:
    return _as_mapping(raw.get(key), (*at, key))


def _check_keys(raw: Mapping[str, Any], allowed: set[str], at: Keys) -> None:
    # Keys may be ints, null or booleans in YAML: compare and sort them as text.
    unknown = sorted({str(key) for key in raw} - allowed)
    if unknown:
        raise ConfigError(
            f"{_name(at)}: unknown key(s) {', '.join(map(repr, unknown))}; "
            f"known: {', '.join(sorted(allowed))}",
            (*at, unknown[0]),
        )


def _timeouts(raw: Mapping[str, Any], at: Keys, base: Timeouts) -> Timeouts:
    data = _mapping(raw, "timeouts", at)
    at = (*at, "timeouts")
    _check_keys(data, {"connect", "first_token", "idle", "total"}, at)
    return Timeouts(
        connect=_number(data, "connect", at, base.connect),
        first_token=_number(data, "first_token", at, base.first_token),
        idle=_number(data, "idle", at, base.idle),
        total=_number(data, "total", at, base.total),
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
}
#: Keys of a model entry about routing rather than about one deployment.
_ROUTE_KEYS = {"strategy", "retries", "fallbacks", "context_window_fallbacks"}


def _http_url(url: str, at: Keys, name: str = "") -> str:
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"{name or _name(at)}: expected an http(s) URL, got {url!r}", at)
    return url.rstrip("/")


def _env_base_url(env: Mapping[str, str]) -> str:
    url = env.get("OPENAI_BASE_URL") or OPENAI_DEFAULT_BASE_URL
    return _http_url(url, (), name="OPENAI_BASE_URL")


def _deployment(
    name: str,
    spec: Any,
    env: Mapping[str, str],
    timeouts: Timeouts,
    at: Keys | None = None,
    index: int = 0,
) -> Deployment:
    at = ("models", name) if at is None else at
    data = _as_mapping(spec, at)
    _check_keys(data, _DEPLOYMENT_KEYS, at)
    provider = _str(data, "provider", at, "openai")
    if provider not in PROVIDERS:
        raise _fail(
            (*at, "provider"), f"unknown provider {provider!r}; known: {', '.join(PROVIDERS)}"
        )
    assert provider is not None
    url = _str(data, "base_url", at, None)
    base_url = _env_base_url(env) if url is None else _http_url(url, (*at, "base_url"))
    # OPENAI_API_KEY goes with OPENAI_BASE_URL, as in the SDK: it is never sent to a
    # base URL written here unless that is OpenAI's own, or the entry names it.
    default_key_env = None
    if provider == "openai" and (url is None or base_url == OPENAI_DEFAULT_BASE_URL):
        default_key_env = "OPENAI_API_KEY"
    api_key: Secret | None = None
    key_env = _str(data, "api_key_env", at, default_key_env)
    literal = data.get("api_key")
    if isinstance(literal, Secret):  # only a converted LiteLLM config holds one
        api_key, key_env = literal, None
    elif literal is not None:
        raise _fail(
            (*at, "api_key"),
            "keys do not belong in config files: put it in an environment variable"
            " and name that with api_key_env",
        )
    if key_env:
        value = env.get(key_env, "")
        if value:
            api_key = Secret(value)
        elif "api_key_env" in data:
            raise _fail((*at, "api_key_env"), f"environment variable {key_env} is not set")
    headers = _mapping(data, "headers", at)
    base = SimulatorSettings()
    sim = SimulatorSettings(
        seed=_int(data, "seed", at, base.seed),
        ttft=_number(data, "ttft", at, base.ttft),
        tokens_per_second=_number(data, "tokens_per_second", at, base.tokens_per_second),
        max_tokens=_int(data, "max_tokens", at, base.max_tokens, minimum=1),
    )
    return Deployment(
        name=name,
        provider=provider,
        model=_str(data, "model", at, None),
        base_url=base_url,
        api_key=api_key,
        timeouts=_timeouts(data, at, timeouts),
        simulator=sim,
        headers={str(k): str(v) for k, v in headers.items()},
        weight=_weight(data, at),
        index=index,
    )


def _weight(data: Mapping[str, Any], at: Keys) -> float:
    weight = _number(data, "weight", at, 1.0)
    if weight <= 0:
        raise _fail((*at, "weight"), f"expected a number above 0, got {data['weight']!r}")
    return weight


def _names(data: Mapping[str, Any], key: str, at: Keys) -> tuple[str, ...]:
    value = data.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise _fail((*at, key), f"expected a list of model names, got {value!r}")
    return tuple(value)


def _routing(raw: Mapping[str, Any]) -> Routing:
    """The top-level ``routing`` section: defaults for every model."""
    at: Keys = ("routing",)
    data = _mapping(raw, "routing", ())
    _check_keys(data, {"strategy", "retries", "backoff", "allowed_fails", "cooldown"}, at)
    backoff = _mapping(data, "backoff", at)
    _check_keys(backoff, {"base", "max"}, (*at, "backoff"))
    base = Routing()
    return Routing(
        strategy=_strategy(data, at, base.strategy),
        retries=_int(data, "retries", at, base.retries, maximum=10),
        backoff_base=_number(backoff, "base", (*at, "backoff"), base.backoff_base),
        backoff_max=_number(backoff, "max", (*at, "backoff"), base.backoff_max),
        allowed_fails=_int(data, "allowed_fails", at, base.allowed_fails),
        cooldown=_number(data, "cooldown", at, base.cooldown),
    )


def _strategy(data: Mapping[str, Any], at: Keys, default: str) -> str:
    strategy = _str(data, "strategy", at, default)
    if strategy not in STRATEGIES:
        raise _fail((*at, "strategy"), f"expected one of {', '.join(STRATEGIES)}, got {strategy!r}")
    return strategy


def _route(
    name: str, spec: Any, env: Mapping[str, str], timeouts: Timeouts, routing: Routing
) -> ModelRoute:
    """One entry of ``models``: a single deployment, or ``deployments: [...]``."""
    at: Keys = ("models", name)
    data = _as_mapping(spec, at)
    if "deployments" in data:
        _check_keys(data, {"deployments", "timeouts", *_ROUTE_KEYS}, at)
        items = data["deployments"]
        if not isinstance(items, list) or not items:
            raise _fail((*at, "deployments"), f"expected a non-empty list, got {items!r}")
        base = _timeouts(data, at, timeouts)
        deployments = tuple(
            _deployment(name, item, env, base, (*at, "deployments", str(i)), i)
            for i, item in enumerate(items)
        )
    else:
        _check_keys(data, _DEPLOYMENT_KEYS | _ROUTE_KEYS, at)
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
        retries=_int(data, "retries", at, routing.retries, maximum=10),
        fallbacks=fallbacks,
        context_window_fallbacks=context_fallbacks,
    )


def _check_fallbacks(routes: Mapping[str, ModelRoute]) -> None:
    for name, route in routes.items():
        for key in ("fallbacks", "context_window_fallbacks"):
            for other in getattr(route, key):
                if other == name:
                    raise _fail(("models", name, key), f"{name!r} cannot fall back to itself")
                if other not in routes and "*" not in routes:
                    raise _fail(
                        ("models", name, key),
                        f"falls back to {other!r}, which is not a configured model",
                    )


_TOP_KEYS = {
    "host",
    "port",
    "workers",
    "default_model",
    "models",
    "keepalive_interval",
    "max_body_bytes",
    "timeouts",
    "record",
    "log_level",
    "insecure",
    "auth",
    "pricing",
    "redis_url",
    "limits",
    "routing",
    "cache",
}


def _line_of(node: yaml.Node | None, path: Keys) -> int | None:
    """The line of the deepest key on ``path`` that the document has (1-based)."""
    line = None
    for key in path:
        if isinstance(node, yaml.SequenceNode) and key.isdigit() and int(key) < len(node.value):
            node = node.value[int(key)]
            mark = node.start_mark
            line = mark.line + 1 if mark is not None else line
            continue
        if not isinstance(node, yaml.MappingNode):
            break
        found = None
        # The last match wins, as in the loaded data (merge keys come before own keys).
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.value == key:
                found = key_node, value_node
        if found is None:
            break
        mark = found[0].start_mark
        line = mark.line + 1 if mark is not None else line
        node = found[1]
    return line


def parse(text: str, env: Mapping[str, str], origin: str = "<config>") -> Settings:
    """Build settings from YAML text and the environment."""
    loader = yaml.SafeLoader(text)
    try:
        # Compose, then construct, so that errors can point at a key's line.
        root = loader.get_single_node()
        loaded = loader.construct_document(root) if root is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{origin}: not valid YAML{at}: {problem}") from exc
    finally:
        loader.dispose()
    if loaded is None:
        loaded = {}
    if not isinstance(loaded, Mapping):
        raise ConfigError(f"{origin}: expected a mapping at the top, got {type(loaded).__name__}")
    if "model_list" in loaded:
        from sluice.config_litellm import parse_litellm

        return parse_litellm(loaded, root, env, origin)
    try:
        return _settings(loaded, env, origin)
    except ConfigError as exc:
        line = _line_of(root, exc.path)
        raise ConfigError(f"{origin}{f' line {line}' if line else ''}: {exc}", exc.path) from None


def _settings(raw: Mapping[str, Any], env: Mapping[str, str], origin: str) -> Settings:
    _check_keys(raw, _TOP_KEYS, ())
    timeouts = _timeouts(raw, (), Timeouts())
    record = _mapping(raw, "record", ())
    _check_keys(record, {"path", "store_content", "batch_size", "flush_interval"}, ("record",))
    store_content = record.get("store_content", False)
    if not isinstance(store_content, bool):
        raise _fail(("record", "store_content"), f"expected true or false, got {store_content!r}")
    routing = _routing(raw)
    routes = {
        str(name): _route(str(name), spec, env, timeouts, routing)
        for name, spec in _mapping(raw, "models", ()).items()
    }
    _check_fallbacks(routes)
    if not routes:
        routes = {
            name: ModelRoute(name, (deployment,), routing.strategy, routing.retries)
            for name, deployment in default_models(env, timeouts).items()
        }
    models = {name: route.deployments[0] for name, route in routes.items()}
    default_model = _str(raw, "default_model", (), None) or env.get(
        "SLUICE_DEFAULT_MODEL", "gpt-4o-mini"
    )
    if "*" not in models and default_model not in models:
        default_model = next(iter(models))
    db_path = _str(record, "path", ("record",), None) or env.get("SLUICE_DB", "sluice.db")
    assert db_path is not None
    level = (_str(raw, "log_level", (), "info") or "info").lower()
    if level not in LOG_LEVELS:
        raise _fail(("log_level",), f"expected one of {', '.join(LOG_LEVELS)}, got {level!r}")
    return Settings(
        host=_str(raw, "host", (), "127.0.0.1") or "127.0.0.1",
        port=_int(raw, "port", (), 8000, minimum=0, maximum=65_535),
        workers=_int(raw, "workers", (), 1, minimum=1),
        default_model=default_model,
        models=models,
        routes=routes,
        routing=routing,
        keepalive_interval=_number(raw, "keepalive_interval", (), 15.0),
        max_body_bytes=_int(raw, "max_body_bytes", (), 4 * 1024 * 1024, minimum=1),
        db_path=db_path,
        store_content=store_content,
        record_batch_size=_int(record, "batch_size", ("record",), 256, minimum=1),
        record_flush_interval=_number(record, "flush_interval", ("record",), 0.5),
        log_level=level,
        source=origin,
        **_access(raw, env),
        **_shared(raw, env),
        cache=_cache(raw),
    )


def _access(raw: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    """Keys, authentication and prices: the ``insecure``, ``auth`` and ``pricing`` keys."""
    insecure = raw.get("insecure", False)
    if not isinstance(insecure, bool):
        raise _fail(("insecure",), f"expected true or false, got {insecure!r}")
    auth = _mapping(raw, "auth", ())
    _check_keys(auth, {"public_seed", "cache_ttl"}, ("auth",))
    public_seed = auth.get("public_seed", False)
    if not isinstance(public_seed, bool):
        raise _fail(("auth", "public_seed"), f"expected true or false, got {public_seed!r}")
    pricing: dict[str, Price] = {}
    for model, spec in _mapping(raw, "pricing", ()).items():
        at = ("pricing", str(model))
        data = _as_mapping(spec, at)
        _check_keys(data, {"input", "output"}, at)
        for part in ("input", "output"):
            if part not in data:
                raise _fail((*at, part), "missing: USD per million tokens")
        pricing[str(model)] = Price(
            input=_number(data, "input", at, 0.0), output=_number(data, "output", at, 0.0)
        )
    master = env.get("SLUICE_MASTER_KEY", "")
    return {
        "master_key": Secret(master) if master else None,
        "insecure": insecure,
        "public_seed": public_seed,
        "key_cache_ttl": _number(auth, "cache_ttl", ("auth",), 2.0),
        "pricing": pricing,
    }


def _optional_int(raw: Mapping[str, Any], key: str, at: Keys) -> int | None:
    return _int(raw, key, at, 0, minimum=1) if raw.get(key) is not None else None


def _shared(raw: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    """Shared state and rate limits: the ``redis_url`` and ``limits`` keys."""
    url = _str(raw, "redis_url", (), None) or env.get("SLUICE_REDIS_URL") or None
    if url is not None and url.split("://", 1)[0] not in ("redis", "rediss", "unix"):
        # Never the URL itself in the message: it may carry a password.
        url_at: Keys = ("redis_url",) if raw.get("redis_url") else ()
        name = "redis_url" if url_at else "SLUICE_REDIS_URL"
        raise ConfigError(f"{name}: expected a redis://, rediss:// or unix:// URL", url_at)
    at: Keys = ("limits",)
    data = _mapping(raw, "limits", ())
    _check_keys(data, {"fail", "public_rpm", "models", "output_estimate"}, at)
    fail = _str(data, "fail", at, "open")
    if fail not in ("open", "closed"):
        raise _fail((*at, "fail"), f"expected open or closed, got {fail!r}")
    models: dict[str, ModelLimits] = {}
    for name, spec in _mapping(data, "models", at).items():
        where = (*at, "models", str(name))
        limits = _as_mapping(spec, where)
        _check_keys(limits, {"rpm", "tpm"}, where)
        models[str(name)] = ModelLimits(
            rpm=_optional_int(limits, "rpm", where), tpm=_optional_int(limits, "tpm", where)
        )
    return {
        "redis_url": Secret(url) if url else None,
        "limits": LimitSettings(
            fail=fail or "open",
            public_rpm=_optional_int(data, "public_rpm", at),
            models=models,
            output_estimate=_int(data, "output_estimate", at, 256, minimum=1),
        ),
    }


def _flag(raw: Mapping[str, Any], key: str, at: Keys, default: bool) -> bool:
    value = raw.get(key, default)
    if not isinstance(value, bool):
        raise _fail((*at, key), f"expected true or false, got {value!r}")
    return value


def _cache(raw: Mapping[str, Any]) -> CacheSettings:
    """The ``cache`` key: the response cache and coalescing."""
    at: Keys = ("cache",)
    data = _mapping(raw, "cache", ())
    _check_keys(
        data,
        {
            "enabled",
            "ttl",
            "max_entries",
            "max_bytes",
            "replay",
            "coalesce",
            "lease",
            "finish_abandoned",
            "models",
        },
        at,
    )
    replay = _mapping(data, "replay", at)
    _check_keys(replay, {"paced"}, (*at, "replay"))
    models: dict[str, ModelCache] = {}
    for name, spec in _mapping(data, "models", at).items():
        where = (*at, "models", str(name))
        override = _as_mapping(spec, where)
        _check_keys(override, {"enabled", "ttl"}, where)
        models[str(name)] = ModelCache(
            enabled=_flag(override, "enabled", where, True) if "enabled" in override else None,
            ttl=_number(override, "ttl", where, 0.0) if "ttl" in override else None,
        )
    base = CacheSettings()
    lease = _number(data, "lease", at, base.lease)
    if lease <= 0:
        raise _fail((*at, "lease"), f"expected a number above 0, got {lease!r}")
    return CacheSettings(
        enabled=_flag(data, "enabled", at, base.enabled),
        ttl=_number(data, "ttl", at, base.ttl),
        max_entries=_int(data, "max_entries", at, base.max_entries),
        max_bytes=_int(data, "max_bytes", at, base.max_bytes),
        paced=_flag(replay, "paced", (*at, "replay"), base.paced),
        coalesce=_flag(data, "coalesce", at, base.coalesce),
        lease=lease,
        finish_abandoned=_flag(data, "finish_abandoned", at, base.finish_abandoned),
        models=models,
    )


def default_models(
    env: Mapping[str, str], timeouts: Timeouts | None = None
) -> dict[str, Deployment]:
    """No ``models:`` section: pass every name to OpenAI if a key is set, else simulate."""
    timeouts = timeouts or Timeouts()
    key = env.get("OPENAI_API_KEY", "")
    if key:
        return {
            "*": Deployment(
                name="*",
                provider="openai",
                base_url=_env_base_url(env),
                api_key=Secret(key),
                timeouts=timeouts,
            )
        }
    return {"*": Deployment(name="*", provider="simulator", timeouts=timeouts)}


def load(
    path: str | None = None,
    env: Mapping[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    """Read the YAML file (``path`` or ``SLUICE_CONFIG``), the environment, then flags."""
    env = dict(os.environ) if env is None else env
    path = path or env.get("SLUICE_CONFIG") or None
    if path:
        file = Path(path)
        try:
            text = file.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read the config file: {exc.strerror}") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: the config file is not UTF-8 text: {exc}") from exc
        settings = parse(text, env, origin=path)
    else:
        settings = parse("", env, origin="defaults")
    # A flag left unset arrives as None: the environment, then the file, decide.
    flags = {key: value for key, value in overrides.items() if value is not None}
    if "SLUICE_HOST" in env and "host" not in flags:
        flags["host"] = env["SLUICE_HOST"]
    for key, minimum, maximum in (("port", 0, 65_535), ("workers", 1, None)):
        name = f"SLUICE_{key.upper()}"
        if key not in flags and name in env:
            try:
                number = int(env[name])
            except ValueError:
                raise ConfigError(f"{name}: expected an integer, got {env[name]!r}") from None
            flags[key] = _int({name: number}, name, (), 0, minimum, maximum)
        elif key in flags:
            flags[key] = _int(flags, key, (), 0, minimum, maximum)
    return replace(settings, **flags) if flags else settings
