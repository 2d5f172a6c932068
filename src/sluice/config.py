"""Settings, read once at start-up (YAML file, then environment, then flags) and passed in.

Nothing else in the package reads the environment or a file for settings.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

OPENAI_DEFAULT_BASE_URL = "https://api.openai.com/v1"
PROVIDERS = ("openai", "simulator")


class ConfigError(Exception):
    """The configuration is wrong; the message says what and where."""


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

    def upstream_model(self, public: str) -> str:
        return self.model or public


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

    def resolve(self, model: str) -> Deployment | None:
        found = self.models.get(model)
        if found is None:
            found = self.models.get("*")
        return found

    @property
    def uses_simulator(self) -> bool:
        return any(d.provider == "simulator" for d in self.models.values())


def _where(path: str, key: str) -> str:
    return f"{path}: {key}" if path else key


def _number(raw: Mapping[str, Any], key: str, where: str, default: float) -> float:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ConfigError(f"{_where(where, key)}: expected a non-negative number, got {value!r}")
    return float(value)


def _int(raw: Mapping[str, Any], key: str, where: str, default: int, minimum: int = 0) -> int:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{_where(where, key)}: expected an integer >= {minimum}, got {value!r}")
    return value


def _str(raw: Mapping[str, Any], key: str, where: str, default: str | None) -> str | None:
    value = raw.get(key, default)
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"{_where(where, key)}: expected a string, got {value!r}")
    return value


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
    return value


def _check_keys(raw: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; "
            f"known: {', '.join(sorted(allowed))}"
        )


def _timeouts(raw: Any, where: str, base: Timeouts) -> Timeouts:
    data = _mapping(raw, where)
    _check_keys(data, {"connect", "first_token", "idle", "total"}, where)
    return Timeouts(
        connect=_number(data, "connect", where, base.connect),
        first_token=_number(data, "first_token", where, base.first_token),
        idle=_number(data, "idle", where, base.idle),
        total=_number(data, "total", where, base.total),
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
}


def _deployment(
    name: str, raw: Any, env: Mapping[str, str], timeouts: Timeouts, where: str
) -> Deployment:
    data = _mapping(raw, where)
    _check_keys(data, _DEPLOYMENT_KEYS, where)
    provider = _str(data, "provider", where, "openai")
    if provider not in PROVIDERS:
        raise ConfigError(f"{where}: provider: unknown provider {provider!r}; known: {PROVIDERS}")
    assert provider is not None
    api_key: Secret | None = None
    key_env = _str(data, "api_key_env", where, "OPENAI_API_KEY" if provider == "openai" else None)
    if key_env:
        value = env.get(key_env, "")
        if value:
            api_key = Secret(value)
        elif "api_key_env" in data:
            raise ConfigError(f"{where}: api_key_env: environment variable {key_env} is not set")
    base_url = _str(data, "base_url", where, env.get("OPENAI_BASE_URL") or OPENAI_DEFAULT_BASE_URL)
    assert base_url is not None
    if not base_url.startswith(("http://", "https://")):
        raise ConfigError(f"{where}: base_url: expected an http(s) URL, got {base_url!r}")
    headers = _mapping(data.get("headers"), _where(where, "headers"))
    base = SimulatorSettings()
    sim = SimulatorSettings(
        seed=_int(data, "seed", where, base.seed),
        ttft=_number(data, "ttft", where, base.ttft),
        tokens_per_second=_number(data, "tokens_per_second", where, base.tokens_per_second),
        max_tokens=_int(data, "max_tokens", where, base.max_tokens, minimum=1),
    )
    return Deployment(
        name=name,
        provider=provider,
        model=_str(data, "model", where, None),
        base_url=base_url.rstrip("/"),
        api_key=api_key,
        timeouts=_timeouts(data.get("timeouts"), _where(where, "timeouts"), timeouts),
        simulator=sim,
        headers={str(k): str(v) for k, v in headers.items()},
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
}


def _line_of(text: str, key: str) -> str:
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith(f"{key}:"):
            return f"line {number}"
    return ""


def parse(text: str, env: Mapping[str, str], origin: str = "<config>") -> Settings:
    """Build settings from YAML text and the environment."""
    try:
        loaded = yaml.safe_load(text) if text.strip() else {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{origin}: not valid YAML{at}: {problem}") from exc
    raw = _mapping(loaded, origin)
    try:
        return _settings(raw, env, origin)
    except ConfigError as exc:
        # Point at the line of the top-level key the message starts with, when we can.
        first = str(exc).split(":", 1)[0].split(".")[0]
        line = _line_of(text, first) if first in _TOP_KEYS else ""
        raise ConfigError(f"{origin}{' ' + line if line else ''}: {exc}") from None


def _settings(raw: Mapping[str, Any], env: Mapping[str, str], origin: str) -> Settings:
    _check_keys(raw, _TOP_KEYS, "top level")
    timeouts = _timeouts(raw.get("timeouts"), "timeouts", Timeouts())
    record = _mapping(raw.get("record"), "record")
    _check_keys(record, {"path", "store_content", "batch_size", "flush_interval"}, "record")
    store_content = record.get("store_content", False)
    if not isinstance(store_content, bool):
        raise ConfigError(f"record: store_content: expected true or false, got {store_content!r}")
    models_raw = _mapping(raw.get("models"), "models")
    models = {
        str(name): _deployment(str(name), spec, env, timeouts, f"models.{name}")
        for name, spec in models_raw.items()
    }
    if not models:
        models = default_models(env, timeouts)
    default_model = _str(raw, "default_model", "", None) or env.get(
        "SLUICE_DEFAULT_MODEL", "gpt-4o-mini"
    )
    if "*" not in models and default_model not in models:
        default_model = next(iter(models))
    db_path = _str(record, "path", "record", None) or env.get("SLUICE_DB", "sluice.db")
    assert db_path is not None
    level = _str(raw, "log_level", "", "info") or "info"
    return Settings(
        host=_str(raw, "host", "", "127.0.0.1") or "127.0.0.1",
        port=_int(raw, "port", "", 8000, minimum=0),
        workers=_int(raw, "workers", "", 1, minimum=1),
        default_model=default_model,
        models=models,
        keepalive_interval=_number(raw, "keepalive_interval", "", 15.0),
        max_body_bytes=_int(raw, "max_body_bytes", "", 4 * 1024 * 1024, minimum=1),
        db_path=db_path,
        store_content=store_content,
        record_batch_size=_int(record, "batch_size", "record", 256, minimum=1),
        record_flush_interval=_number(record, "flush_interval", "record", 0.5),
        log_level=level,
        source=origin,
    )


def default_models(env: Mapping[str, str], timeouts: Timeouts | None = None) -> dict[str, Deployment]:
    """No ``models:`` section: pass every name to OpenAI if a key is set, else simulate."""
    timeouts = timeouts or Timeouts()
    key = env.get("OPENAI_API_KEY", "")
    if key:
        base = (env.get("OPENAI_BASE_URL") or OPENAI_DEFAULT_BASE_URL).rstrip("/")
        return {
            "*": Deployment(
                name="*", provider="openai", base_url=base, api_key=Secret(key), timeouts=timeouts
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
        settings = parse(text, env, origin=path)
    else:
        settings = parse("", env, origin="defaults")
    for key in ("host", "port", "workers"):
        name = f"SLUICE_{key.upper()}"
        if name in env and key not in overrides:
            value: Any = env[name]
            if key != "host":
                try:
                    value = int(value)
                except ValueError:
                    raise ConfigError(f"{name}: expected an integer, got {value!r}") from None
            overrides[key] = value
    flags = {k: v for k, v in overrides.items() if v is not None}
    return replace(settings, **flags) if flags else settings
