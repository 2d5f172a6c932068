"""The policy sections: ``auth``, ``pricing``, ``redis_url``, ``limits`` and ``cache``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sluice.config.errors import ConfigError, Keys, error_at
from sluice.config.values import (
    Secret,
    as_mapping,
    check_keys,
    flag,
    integer,
    mapping,
    number,
    optional_int,
    string,
)
from sluice.pricing import Price


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


#: ``cache.scope`` values.
CACHE_SCOPES = ("key", "global")


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
    #: Who shares entries and generations: ``key`` (each virtual key its own) or
    #: ``global`` (every caller of the gateway).
    scope: str = "key"
    #: Public model name → overrides.
    models: Mapping[str, ModelCache] = field(default_factory=dict)

    def for_model(self, model: str) -> tuple[bool, float]:
        """Whether requests for ``model`` may be cached, and for how long."""
        override = self.models.get(model) or self.models.get("*") or ModelCache()
        enabled = self.enabled if override.enabled is None else override.enabled
        return enabled and self.enabled, self.ttl if override.ttl is None else override.ttl


def access(raw: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    """Keys, authentication and prices: the ``insecure``, ``auth`` and ``pricing`` keys."""
    insecure = raw.get("insecure", False)
    if not isinstance(insecure, bool):
        raise error_at(("insecure",), f"expected true or false, got {insecure!r}")
    auth = mapping(raw, "auth", ())
    check_keys(auth, {"public_seed", "cache_ttl", "max_failures"}, ("auth",))
    public_seed = auth.get("public_seed", False)
    if not isinstance(public_seed, bool):
        raise error_at(("auth", "public_seed"), f"expected true or false, got {public_seed!r}")
    pricing: dict[str, Price] = {}
    for model, spec in mapping(raw, "pricing", ()).items():
        at = ("pricing", str(model))
        data = as_mapping(spec, at)
        check_keys(data, {"input", "output"}, at)
        for part in ("input", "output"):
            if part not in data:
                raise error_at((*at, part), "missing: USD per million tokens")
        pricing[str(model)] = Price(
            input=number(data, "input", at, 0.0), output=number(data, "output", at, 0.0)
        )
    master = env.get("SLUICE_MASTER_KEY", "")
    return {
        "master_key": Secret(master) if master else None,
        "insecure": insecure,
        "public_seed": public_seed,
        "key_cache_ttl": number(auth, "cache_ttl", ("auth",), 2.0),
        "auth_max_failures": integer(auth, "max_failures", ("auth",), 10),
        "pricing": pricing,
    }


#: ``redis_url`` schemes: one server (or a primary), or a Redis Cluster.
REDIS_SCHEMES = ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster")


def shared(raw: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    """Shared state and rate limits: the ``redis_url`` and ``limits`` keys."""
    url = string(raw, "redis_url", (), None) or env.get("SLUICE_REDIS_URL") or None
    if url is not None and url.split("://", 1)[0] not in REDIS_SCHEMES:
        # Never the URL itself in the message: it may carry a password.
        url_at: Keys = ("redis_url",) if raw.get("redis_url") else ()
        name = "redis_url" if url_at else "SLUICE_REDIS_URL"
        raise ConfigError(
            f"{name}: expected a redis://, rediss://, unix:// or redis+cluster:// URL", url_at
        )
    at: Keys = ("limits",)
    data = mapping(raw, "limits", ())
    check_keys(data, {"fail", "public_rpm", "models", "output_estimate"}, at)
    fail = string(data, "fail", at, "open")
    if fail not in ("open", "closed"):
        raise error_at((*at, "fail"), f"expected open or closed, got {fail!r}")
    models: dict[str, ModelLimits] = {}
    for name, spec in mapping(data, "models", at).items():
        where = (*at, "models", str(name))
        limits = as_mapping(spec, where)
        check_keys(limits, {"rpm", "tpm"}, where)
        models[str(name)] = ModelLimits(
            rpm=optional_int(limits, "rpm", where), tpm=optional_int(limits, "tpm", where)
        )
    return {
        "redis_url": Secret(url) if url else None,
        "limits": LimitSettings(
            fail=fail or "open",
            public_rpm=optional_int(data, "public_rpm", at),
            models=models,
            output_estimate=integer(data, "output_estimate", at, 256, minimum=1),
        ),
    }


def cache(raw: Mapping[str, Any]) -> CacheSettings:
    """The ``cache`` key: the response cache and coalescing."""
    at: Keys = ("cache",)
    data = mapping(raw, "cache", ())
    check_keys(
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
            "scope",
            "models",
        },
        at,
    )
    replay = mapping(data, "replay", at)
    check_keys(replay, {"paced"}, (*at, "replay"))
    models: dict[str, ModelCache] = {}
    for name, spec in mapping(data, "models", at).items():
        where = (*at, "models", str(name))
        override = as_mapping(spec, where)
        check_keys(override, {"enabled", "ttl"}, where)
        models[str(name)] = ModelCache(
            enabled=flag(override, "enabled", where, True) if "enabled" in override else None,
            ttl=number(override, "ttl", where, 0.0) if "ttl" in override else None,
        )
    base = CacheSettings()
    scope = data.get("scope", base.scope)
    if scope not in CACHE_SCOPES:
        raise error_at((*at, "scope"), f"expected one of {', '.join(CACHE_SCOPES)}, got {scope!r}")
    lease = number(data, "lease", at, base.lease)
    if lease <= 0:
        raise error_at((*at, "lease"), f"expected a number above 0, got {lease!r}")
    return CacheSettings(
        enabled=flag(data, "enabled", at, base.enabled),
        ttl=number(data, "ttl", at, base.ttl),
        max_entries=integer(data, "max_entries", at, base.max_entries),
        max_bytes=integer(data, "max_bytes", at, base.max_bytes),
        paced=flag(replay, "paced", (*at, "replay"), base.paced),
        coalesce=flag(data, "coalesce", at, base.coalesce),
        scope=scope,
        lease=lease,
        finish_abandoned=flag(data, "finish_abandoned", at, base.finish_abandoned),
        models=models,
    )
