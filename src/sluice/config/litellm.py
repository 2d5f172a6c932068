"""LiteLLM proxy configs: a ``config.yaml`` with ``model_list``, read as Sluice settings.

A LiteLLM user points Sluice at the file they have. ``config.parse`` sends any document
with a top-level ``model_list`` here; it is converted into Sluice's own configuration
and then validated like one, so every error names the LiteLLM key and its line. Keys
Sluice does not honour become warnings (logged once at start-up, with their line); an
unknown key never stops the start. The README lists what is honoured.

- ``model_list[]``: ``model_name`` is the public name; entries sharing one are the
  deployments of that model. ``litellm_params``: ``model`` (``openai/…``, ``azure/…``,
  ``hosted_vllm/…``, ``ollama/…``, ``ollama_chat/…``, ``groq/…``, ``openrouter/…``,
  ``deepseek/…`` — all served by the ``openai`` provider; ``anthropic/…`` and bare
  ``claude…`` names by the ``anthropic`` provider), ``api_base``, ``api_key``
  (``os.environ/NAME``; a literal key works but is warned about), ``api_version``
  (Azure), ``organization``, ``extra_headers``, ``weight``, ``timeout``,
  ``stream_timeout``, and ``rpm``/``tpm``, which become the model's rate limits (the
  sum over its deployments, when each of them has one).
- ``router_settings`` and ``litellm_settings``: ``num_retries``, ``fallbacks``,
  ``context_window_fallbacks``, ``default_fallbacks``, ``routing_strategy``,
  ``cooldown_time``, ``allowed_fails``, ``timeout``/``request_timeout``,
  ``stream_timeout``, ``redis_host``/``redis_port``/``redis_password``/``redis_url``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import yaml

from sluice.config.errors import ConfigError, Keys, key_name
from sluice.config.litellm_reader import ENV_PREFIX, HINTS, Reader
from sluice.config.models import ANTHROPIC_DEFAULT_BASE_URL, OPENAI_DEFAULT_BASE_URL
from sluice.config.settings import Settings, build

AZURE_API_VERSION = "2024-10-21"  # the first GA version with stream_options.include_usage


@dataclasses.dataclass(frozen=True, slots=True)
class Family:
    """A LiteLLM provider prefix and the Sluice provider that serves it."""

    base_url: str | None  # None: ``api_base`` is required
    key_env: str | None = None  # where LiteLLM looks for the key by default
    base_env: str | None = None  # where LiteLLM looks for the base URL by default
    #: Appended to the base URL (Ollama's OpenAI-compatible API lives under /v1).
    suffix: str = ""
    #: The upstream refuses requests without a key (so a missing one is an error here).
    key_required: bool = False
    provider: str = "openai"


FAMILIES: dict[str, Family] = {
    "openai": Family(OPENAI_DEFAULT_BASE_URL),
    "azure": Family(None, "AZURE_API_KEY", "AZURE_API_BASE", key_required=True),
    "hosted_vllm": Family(None, "HOSTED_VLLM_API_KEY", "HOSTED_VLLM_API_BASE"),
    "ollama": Family("http://localhost:11434", None, "OLLAMA_API_BASE", "/v1"),
    "ollama_chat": Family("http://localhost:11434", None, "OLLAMA_API_BASE", "/v1"),
    "groq": Family("https://api.groq.com/openai/v1", "GROQ_API_KEY", key_required=True),
    "openrouter": Family("https://openrouter.ai/api/v1", "OPENROUTER_API_KEY", key_required=True),
    "deepseek": Family("https://api.deepseek.com/v1", "DEEPSEEK_API_KEY", key_required=True),
    # LiteLLM appends /v1/messages to api_base unless it ends with it; so does the wire.
    "anthropic": Family(
        ANTHROPIC_DEFAULT_BASE_URL,
        "ANTHROPIC_API_KEY",
        "ANTHROPIC_API_BASE",
        key_required=True,
        provider="anthropic",
    ),
}
#: Bare model names (no ``provider/``) that LiteLLM sends to OpenAI.
OPENAI_PREFIXES = ("gpt-", "o1", "o3", "o4", "chatgpt-")
#: Bare model names that LiteLLM sends to Anthropic.
ANTHROPIC_PREFIXES = ("claude",)

_ENTRY_KEYS = {"model_name", "litellm_params"}
_PARAM_KEYS = {
    "model",
    "api_base",
    "api_key",
    "api_version",
    "organization",
    "extra_headers",
    "rpm",
    "tpm",
    "weight",
    "timeout",
    "stream_timeout",
}
_FALLBACK_KEYS = {"fallbacks", "context_window_fallbacks", "default_fallbacks"}
_SETTINGS_KEYS = {
    "router_settings": {
        "num_retries",
        "routing_strategy",
        "cooldown_time",
        "allowed_fails",
        "timeout",
        "stream_timeout",
        "redis_host",
        "redis_port",
        "redis_password",
        "redis_url",
        *_FALLBACK_KEYS,
    },
    "litellm_settings": {"num_retries", "request_timeout", *_FALLBACK_KEYS},
}
STRATEGIES = {"simple-shuffle": "weighted", "least-busy": "least-busy"}


class _Converter(Reader):
    def __init__(self, root: yaml.Node | None, env: Mapping[str, str], origin: str) -> None:
        super().__init__(root, env, origin)
        #: Sluice key path → the LiteLLM key path it came from, to find errors' lines.
        self.origins: dict[Keys, Keys] = {}

    # -- the document ----------------------------------------------------------

    def convert(self, loaded: Mapping[Any, Any]) -> dict[str, Any]:
        for key, value in loaded.items():
            if str(key) in {"model_list", *_SETTINGS_KEYS}:
                continue
            if isinstance(value, Mapping) and value and str(key) not in HINTS:
                self.unknown(value, set(), (str(key),))  # name each key of the section
            else:
                self.warn((str(key),))
        router = self.mapping(loaded.get("router_settings"), ("router_settings",))
        general = self.mapping(loaded.get("litellm_settings"), ("litellm_settings",))
        self.unknown(router, _SETTINGS_KEYS["router_settings"], ("router_settings",))
        self.unknown(general, _SETTINGS_KEYS["litellm_settings"], ("litellm_settings",))
        # router_settings wins where both say the same thing, as in LiteLLM's router.
        settings = {("litellm_settings", str(k)): v for k, v in general.items()}
        settings.update({("router_settings", str(k)): v for k, v in router.items()})
        by_key = {at[1]: (at, value) for at, value in settings.items()}
        out: dict[str, Any] = {}
        models, limits = self.model_list(loaded.get("model_list"), by_key)
        out["models"] = models
        if limits:
            out["limits"] = {"models": limits}
        routing = self.routing(by_key)
        if routing:
            out["routing"] = routing
        timeouts: dict[str, float] = {}
        for key, ours in (("request_timeout", ("total",)), ("timeout", ("total",))):
            if key in by_key:
                at, value = by_key[key]
                for name in ours:
                    timeouts[name] = self.number(value, at)
                    self.origins[("timeouts", name)] = at
        if "stream_timeout" in by_key:
            at, value = by_key["stream_timeout"]
            for name in ("first_token", "idle"):
                timeouts[name] = self.number(value, at)
                self.origins[("timeouts", name)] = at
        if timeouts:
            out["timeouts"] = timeouts
        redis = self.redis(by_key)
        if redis is not None:
            out["redis_url"] = redis
        return out

    def routing(self, by_key: Mapping[str, tuple[Keys, Any]]) -> dict[str, Any]:
        routing: dict[str, Any] = {}
        for key, ours in (
            ("num_retries", "retries"),
            ("allowed_fails", "allowed_fails"),
            ("cooldown_time", "cooldown"),
        ):
            if key in by_key:
                at, value = by_key[key]
                routing[ours] = self.number(value, at) if ours == "cooldown" else value
                self.origins[("routing", ours)] = at
        if "routing_strategy" in by_key:
            at, value = by_key["routing_strategy"]
            strategy = STRATEGIES.get(self.text(value, at))
            if strategy is None:
                self.warn(at, f"{value!r} is not supported by Sluice; using simple-shuffle")
            else:
                routing["strategy"] = strategy
        return routing

    def redis(self, by_key: Mapping[str, tuple[Keys, Any]]) -> str | None:
        if "redis_url" in by_key:
            at, value = by_key["redis_url"]
            if isinstance(value, str) and not value.startswith(ENV_PREFIX):
                url = self.text(value, at)
                if "@" in url:
                    self.secret(value, at)  # warns: a password written in the file
                return url
            return self.resolve(value, at)
        if "redis_host" not in by_key:
            return None
        at, value = by_key["redis_host"]
        host = self.resolve(value, at)
        port = "6379"
        if "redis_port" in by_key:
            port = self.resolve(by_key["redis_port"][1], by_key["redis_port"][0])
        auth = ""
        if "redis_password" in by_key:
            at, value = by_key["redis_password"]
            name, literal = self.secret(value, at)
            password = self.env[name] if name else literal.get() if literal else ""
            auth = f":{quote(password, safe='')}@"
        return f"redis://{auth}{host}:{port}"

    def model_list(
        self, value: Any, by_key: Mapping[str, tuple[Keys, Any]]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        at: Keys = ("model_list",)
        if not isinstance(value, list) or not value:
            raise self.fail(at, "expected a non-empty list of models")
        models: dict[str, dict[str, Any]] = {}
        #: Public name → each deployment's (rpm, tpm) and where the first came from.
        quotas: dict[str, list[tuple[int | None, int | None]]] = {}
        quota_at: dict[str, Keys] = {}
        for i, entry in enumerate(value):
            where = (*at, str(i))
            data = self.mapping(entry, where)
            self.unknown(data, _ENTRY_KEYS, where)
            name = self.text(data.get("model_name"), (*where, "model_name"))
            params_at = (*where, "litellm_params")
            params = self.mapping(data.get("litellm_params"), params_at)
            if not params:
                raise self.fail(params_at, "missing: the upstream model and where it is")
            self.unknown(params, _PARAM_KEYS, params_at)
            deployment = self.deployment(name, params, params_at)
            if deployment is None:
                continue
            route = models.setdefault(name, {"deployments": []})
            index = len(route["deployments"])
            route["deployments"].append(deployment)
            ours: Keys = ("models", name, "deployments", str(index))
            self.origins[ours] = params_at
            for key in ("weight", "timeouts", "api_key_env", "base_url"):
                self.origins[(*ours, key)] = (*params_at, _ORIGIN_OF.get(key, key))
            rpm, tpm = (
                self.count(params[k], (*params_at, k)) if params.get(k) is not None else None
                for k in ("rpm", "tpm")
            )
            quotas.setdefault(name, []).append((rpm, tpm))
            if rpm is not None or tpm is not None:
                quota_at.setdefault(name, params_at)
        if not models:
            raise self.fail(at, "no model that Sluice can serve (see the warnings above)")
        self.fallbacks(models, by_key)
        return models, self.limits(quotas, quota_at)

    def deployment(self, name: str, params: Mapping[Any, Any], at: Keys) -> dict[str, Any] | None:
        if "*" in name and name != "*":
            self.warn(
                (*at[:-1], "model_name"),
                "wildcard patterns other than '*' are not supported; entry skipped",
            )
            return None
        target = self.text(params.get("model"), (*at, "model"))
        prefix, slash, upstream = target.partition("/")
        if not slash:
            prefix, upstream = "openai", target
            if target.startswith(ANTHROPIC_PREFIXES):
                prefix = "anthropic"
            elif not target.startswith(OPENAI_PREFIXES):
                self.warn(
                    (*at, "model"),
                    f"cannot tell who serves {target!r}; write provider/model"
                    " (e.g. openai/NAME for any OpenAI-compatible server); entry skipped",
                )
                return None
        family = FAMILIES.get(prefix)
        if family is None:
            served = ", ".join(f"{p}/" for p in FAMILIES)
            self.warn(
                (*at, "model"),
                f"provider {prefix!r} is not supported by Sluice (it serves {served});"
                f" this deployment of {name!r} is skipped",
            )
            return None
        out: dict[str, Any] = {"provider": family.provider}
        if upstream != "*":
            out["model"] = upstream
        base: str | None = None
        if "api_base" in params:
            base = self.resolve(params["api_base"], (*at, "api_base"))
        elif family.base_env and self.env.get(family.base_env):
            base = self.env[family.base_env]
        elif prefix != "openai":  # openai: Sluice's own default (OPENAI_BASE_URL or OpenAI)
            base = family.base_url
            if base is None:
                raise self.fail((*at, "api_base"), f"missing: where the {prefix} server is")
        if base is not None:
            base = base.rstrip("/")
            if family.suffix and not base.endswith(family.suffix):
                base += family.suffix
            if prefix == "azure":
                version = params.get("api_version") or self.env.get("AZURE_API_VERSION")
                version = self.text(version or AZURE_API_VERSION, (*at, "api_version"))
                base = f"{base}/openai/deployments/{upstream}?api-version={version}"
            out["base_url"] = base
        if "api_version" in params and prefix != "azure":
            self.warn((*at, "api_version"), "only used with azure/ models; ignored")
        if "api_key" in params:
            key_env, literal = self.secret(params["api_key"], (*at, "api_key"))
            out["api_key_env" if key_env else "api_key"] = key_env or literal
        elif family.key_env and (family.key_required or self.env.get(family.key_env)):
            # openai/: Sluice sends OPENAI_API_KEY to OpenAI's own URL only, unless named.
            out["api_key_env"] = family.key_env
        headers: dict[str, str] = {}
        if "organization" in params:
            org = self.text(params["organization"], (*at, "organization"))
            headers["OpenAI-Organization"] = org
        extra = self.mapping(params.get("extra_headers"), (*at, "extra_headers"))
        headers.update({str(k): str(v) for k, v in extra.items()})
        if headers:
            out["headers"] = headers
        if "weight" in params:
            out["weight"] = params["weight"]
        timeouts: dict[str, Any] = {}
        if "timeout" in params:
            timeouts["total"] = self.number(params["timeout"], (*at, "timeout"))
        if "stream_timeout" in params:
            seconds = self.number(params["stream_timeout"], (*at, "stream_timeout"))
            timeouts["first_token"] = timeouts["idle"] = seconds
        if timeouts:
            out["timeouts"] = timeouts
        return out

    def fallbacks(
        self, models: dict[str, dict[str, Any]], by_key: Mapping[str, tuple[Keys, Any]]
    ) -> None:
        for key in ("fallbacks", "context_window_fallbacks"):
            if key not in by_key:
                continue
            at, value = by_key[key]
            if not isinstance(value, list):
                raise self.fail(at, 'expected a list like [{"model": ["fallback", ...]}]')
            for i, item in enumerate(value):
                item_at = (*at, str(i))
                if not isinstance(item, Mapping) or len(item) != 1:
                    raise self.fail(item_at, 'expected one {"model": ["fallback", ...]} mapping')
                ((name, names),) = item.items()
                names = [names] if isinstance(names, str) else names
                if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                    raise self.fail((*item_at, str(name)), "expected a list of model names")
                if str(name) not in models:
                    self.warn((*item_at, str(name)), "no such model in model_list; ignored")
                    continue
                models[str(name)][key] = list(names)
                self.origins[("models", str(name), key)] = (*item_at, str(name))
        if "default_fallbacks" in by_key:
            at, value = by_key["default_fallbacks"]
            if not isinstance(value, list) or not all(isinstance(n, str) for n in value):
                raise self.fail(at, "expected a list of model names")
            for name, route in models.items():
                if "fallbacks" not in route:
                    route["fallbacks"] = [n for n in value if n != name]
                    self.origins[("models", name, "fallbacks")] = at

    def limits(
        self, quotas: Mapping[str, list[tuple[int | None, int | None]]], at: Mapping[str, Keys]
    ) -> dict[str, Any]:
        """Each model's rpm and tpm: the sum over its deployments, if each has one."""
        limits: dict[str, Any] = {}
        for name, pairs in quotas.items():
            found: dict[str, int] = {}
            for index, key in enumerate(("rpm", "tpm")):
                values = [pair[index] for pair in pairs]
                if all(v is not None for v in values):
                    found[key] = sum(v for v in values if v is not None)
                elif any(v is not None for v in values):
                    self.warn(
                        (*at[name], key),
                        f"not every deployment of {name!r} has {key}: the model gets no {key}"
                        " limit",
                    )
            if found:
                limits[name] = found
                self.origins[("limits", "models", name)] = at[name]
        return limits


#: Sluice deployment key → the ``litellm_params`` key it comes from.
_ORIGIN_OF = {"timeouts": "timeout", "api_key_env": "api_key", "base_url": "api_base"}


def parse_litellm(
    loaded: Mapping[Any, Any], root: yaml.Node | None, env: Mapping[str, str], origin: str
) -> Settings:
    """Settings from a LiteLLM proxy config; its warnings ride on ``Settings.warnings``."""
    converter = _Converter(root, env, origin)
    raw = converter.convert(loaded)
    try:
        settings = build(raw, env, origin)
    except ConfigError as exc:
        # Name the LiteLLM key the offending value came from, and its line.
        path = exc.path
        source = next(
            (
                converter.origins[path[:n]]
                for n in range(len(path), 0, -1)
                if path[:n] in converter.origins
            ),
            None,
        )
        if source is None:
            raise ConfigError(f"{origin}: {exc}", path) from None
        message = str(exc)
        ours = key_name(path)
        problem = message.split(": ", 1)[1] if message.startswith(f"{ours}: ") else message
        raise ConfigError(f"{converter.where(source)}: {problem}", source) from None
    warnings = [message for _, message in sorted(converter.warnings, key=lambda w: w[0])]
    return dataclasses.replace(settings, warnings=(*settings.warnings, *warnings))
