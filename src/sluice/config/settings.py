"""``Settings``, everything the gateway is configured with, and how a document builds it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sluice.config import sections, telemetry
from sluice.config.cors import CorsSettings, cors
from sluice.config.errors import ConfigError, error_at
from sluice.config.generations import GenerationSettings, generations
from sluice.config.models import (
    Deployment,
    ModelRoute,
    Routing,
    Timeouts,
    default_prefixes,
    routes_of,
    routing_of,
    timeouts_of,
)
from sluice.config.proxies import Proxies
from sluice.config.sections import CacheSettings, LimitSettings
from sluice.config.telemetry import MetricsSettings, TraceSettings
from sluice.config.values import Secret, check_keys, flag, integer, mapping, number, string
from sluice.dialects.bounds import MAX_JSON_DEPTH, MAX_MESSAGES
from sluice.pricing import Price

#: What uvicorn and ``logging`` both accept.
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    default_model: str = "gpt-4o-mini"
    #: Public model name → deployment. The key ``*`` catches every other name.
    models: Mapping[str, Deployment] = field(default_factory=dict)
    keepalive_interval: float = 15.0
    #: Seconds streams in flight may run on after SIGTERM before they are stopped
    #: (``shutdown_grace``, ``SLUICE_SHUTDOWN_GRACE``).
    shutdown_grace: float = 30.0
    max_body_bytes: int = 4 * 1024 * 1024
    #: JSON nesting and messages one request body may hold (400 past either).
    max_json_depth: int = MAX_JSON_DEPTH
    max_messages: int = MAX_MESSAGES
    #: The request's header fields together, names and values (431 past it).
    max_header_bytes: int = 32 * 1024
    db_path: str = "sluice.db"
    #: PostgreSQL for records, keys, stored responses and console sign-ins, shared by
    #: every instance (``record.url`` or ``SLUICE_DATABASE_URL``); None: SQLite at
    #: ``db_path``.
    database_url: Secret | None = None
    #: Where records wait while PostgreSQL cannot be written (``record.spill_dir``).
    spill_dir: str = "sluice-spill"
    store_content: bool = False
    record_batch_size: int = 256
    record_flush_interval: float = 0.5
    #: Records held in memory while the database cannot be written; None: the default.
    record_max_pending: int | None = None
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
    #: Refused keys per minute from one client address before its requests get 429
    #: for the rest of the minute (``auth.max_failures``); 0: no limit.
    auth_max_failures: int = 10
    #: USD per million tokens, by public or upstream model name, over the defaults.
    pricing: Mapping[str, Price] = field(default_factory=dict)
    #: Redis or Valkey shared by every instance (``redis_url`` or ``SLUICE_REDIS_URL``);
    #: None keeps shared state in this process.
    redis_url: Secret | None = None
    limits: LimitSettings = field(default_factory=LimitSettings)
    cache: CacheSettings = field(default_factory=CacheSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    traces: TraceSettings = field(default_factory=TraceSettings)
    cors: CorsSettings = field(default_factory=CorsSettings)
    generations: GenerationSettings = field(default_factory=GenerationSettings)

    #: Public model name → its deployments, fallbacks and strategy (``models`` holds
    #: each one's first deployment). The key ``*`` catches every other name.
    routes: Mapping[str, ModelRoute] = field(default_factory=dict)
    routing: Routing = field(default_factory=Routing)
    #: Model name prefix → route, for names that are not in ``routes``; tried before
    #: ``*``. Only the defaults without a ``models`` section fill it.
    prefixes: Mapping[str, ModelRoute] = field(default_factory=dict)
    #: Outbound proxies (``HTTPS_PROXY``, ``HTTP_PROXY``, ``NO_PROXY``).
    proxies: Proxies = field(default_factory=Proxies)
    #: Problems that did not stop the start (e.g. LiteLLM keys Sluice ignores), logged once.
    warnings: tuple[str, ...] = ()

    @property
    def database(self) -> str:
        """The record database: the PostgreSQL URL (password included: never show it;
        ``store.database.describe`` does not) or the SQLite path."""
        return self.database_url.get() if self.database_url else self.db_path

    def resolve(self, model: str) -> Deployment | None:
        found = self.models.get(model)
        if found is None:
            prefixed = self._prefixed(model)
            found = prefixed.deployments[0] if prefixed else self.models.get("*")
        return found

    def _prefixed(self, model: str) -> ModelRoute | None:
        for prefix, route in self.prefixes.items():
            if model.startswith(prefix):
                return route
        return None

    def route(self, model: str) -> ModelRoute | None:
        """Where requests for ``model`` go: every deployment, retries and fallbacks."""
        found = self.routes.get(model) or self._prefixed(model) or self.routes.get("*")
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


_TOP_KEYS = {
    "host",
    "port",
    "workers",
    "default_model",
    "models",
    "keepalive_interval",
    "shutdown_grace",
    "max_body_bytes",
    "max_json_depth",
    "max_messages",
    "max_header_bytes",
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
    "metrics",
    "cors",
    "generations",
}


def build(raw: Mapping[str, Any], env: Mapping[str, str], origin: str) -> Settings:
    """Settings from a loaded Sluice document; errors carry the path of the key at fault."""
    check_keys(raw, _TOP_KEYS, ())
    timeouts = timeouts_of(raw, (), Timeouts())
    record = mapping(raw, "record", ())
    check_keys(
        record,
        {
            "path",
            "url",
            "spill_dir",
            "store_content",
            "batch_size",
            "flush_interval",
            "max_pending",
        },
        ("record",),
    )
    store_content = flag(record, "store_content", ("record",), False)
    routing = routing_of(raw)
    routes = routes_of(raw, env, timeouts, routing)
    models = {name: route.deployments[0] for name, route in routes.items()}
    default_model = string(raw, "default_model", (), None) or env.get(
        "SLUICE_DEFAULT_MODEL", "gpt-4o-mini"
    )
    if "*" not in models and default_model not in models:
        default_model = next(iter(models))
    db_path = string(record, "path", ("record",), None) or env.get("SLUICE_DB", "sluice.db")
    assert db_path is not None
    url = string(record, "url", ("record",), None) or env.get("SLUICE_DATABASE_URL") or None
    if url is not None and url.partition("://")[0].lower() not in ("postgresql", "postgres"):
        # Never the URL itself in the message: it may carry a password.
        if record.get("url"):
            raise error_at(("record", "url"), "expected a postgresql:// URL")
        raise ConfigError("SLUICE_DATABASE_URL: expected a postgresql:// URL")
    spill_dir = string(record, "spill_dir", ("record",), None) or env.get(
        "SLUICE_SPILL_DIR", "sluice-spill"
    )
    assert spill_dir is not None
    max_pending = record.get("max_pending")
    level = (string(raw, "log_level", (), "info") or "info").lower()
    if level not in LOG_LEVELS:
        raise error_at(("log_level",), f"expected one of {', '.join(LOG_LEVELS)}, got {level!r}")
    return Settings(
        host=string(raw, "host", (), "127.0.0.1") or "127.0.0.1",
        port=integer(raw, "port", (), 8000, minimum=0, maximum=65_535),
        workers=integer(raw, "workers", (), 1, minimum=1),
        default_model=default_model,
        models=models,
        routes=routes,
        routing=routing,
        prefixes=default_prefixes(raw, env, timeouts, routing),
        keepalive_interval=number(raw, "keepalive_interval", (), 15.0),
        shutdown_grace=number(raw, "shutdown_grace", (), 30.0),
        max_body_bytes=integer(raw, "max_body_bytes", (), 4 * 1024 * 1024, minimum=1),
        max_json_depth=integer(raw, "max_json_depth", (), MAX_JSON_DEPTH, minimum=2),
        max_messages=integer(raw, "max_messages", (), MAX_MESSAGES, minimum=1),
        max_header_bytes=integer(raw, "max_header_bytes", (), 32 * 1024, minimum=1024),
        db_path=db_path,
        database_url=Secret(url) if url else None,
        spill_dir=spill_dir,
        store_content=store_content,
        record_batch_size=integer(record, "batch_size", ("record",), 256, minimum=1),
        record_flush_interval=number(record, "flush_interval", ("record",), 0.5),
        record_max_pending=None
        if max_pending is None
        else integer(record, "max_pending", ("record",), 1, minimum=1),
        log_level=level,
        source=origin,
        **sections.access(raw, env),
        **sections.shared(raw, env),
        cache=sections.cache(raw),
        metrics=telemetry.metrics(raw, env),
        traces=telemetry.traces(env),
        cors=cors(raw),
        generations=generations(raw),
    )
