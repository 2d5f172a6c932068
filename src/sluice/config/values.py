"""The ``Secret`` type, and the small typed readers every section is parsed with.

Each reader takes the mapping, the key and the path to the mapping, so that an error
names the key and finds its line.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from sluice.config.errors import ConfigError, Keys, error_at, key_name


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


def number(raw: Mapping[str, Any], key: str, at: Keys, default: float) -> float:
    value = raw.get(key, default)
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or math.isnan(value)
        or value < 0
    ):
        raise error_at((*at, key), f"expected a non-negative number, got {value!r}")
    return float(value)


def integer(
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
        raise error_at((*at, key), f"expected an integer {expected}, got {value!r}")
    return value


def optional_int(raw: Mapping[str, Any], key: str, at: Keys) -> int | None:
    return integer(raw, key, at, 0, minimum=1) if raw.get(key) is not None else None


def string(raw: Mapping[str, Any], key: str, at: Keys, default: str | None) -> str | None:
    value = raw.get(key, default)
    if value is not None and not isinstance(value, str):
        raise error_at((*at, key), f"expected a string, got {value!r}")
    return value


def flag(raw: Mapping[str, Any], key: str, at: Keys, default: bool) -> bool:
    value = raw.get(key, default)
    if not isinstance(value, bool):
        raise error_at((*at, key), f"expected true or false, got {value!r}")
    return value


def as_mapping(value: Any, at: Keys) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise error_at(at, f"expected a mapping, got {type(value).__name__}")
    return value


def mapping(raw: Mapping[str, Any], key: str, at: Keys) -> Mapping[str, Any]:
    return as_mapping(raw.get(key), (*at, key))


def check_keys(raw: Mapping[str, Any], allowed: set[str], at: Keys) -> None:
    # Keys may be ints, null or booleans in YAML: compare and sort them as text.
    unknown = sorted({str(key) for key in raw} - allowed)
    if unknown:
        raise ConfigError(
            f"{key_name(at)}: unknown key(s) {', '.join(map(repr, unknown))}; "
            f"known: {', '.join(sorted(allowed))}",
            (*at, unknown[0]),
        )


def http_url(url: str, at: Keys, name: str = "") -> str:
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"{name or key_name(at)}: expected an http(s) URL, got {url!r}", at)
    return url.rstrip("/")
