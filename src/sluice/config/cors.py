"""The ``cors:`` section: which web origins may call the API from a browser."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from sluice.config.errors import Keys, error_at
from sluice.config.values import check_keys, integer, mapping

#: Request headers the OpenAI and Anthropic SDKs and the AI SDK send from a browser
#: (``x-stainless-*`` are allowed as a family: each SDK release adds some).
SDK_HEADERS = (
    "authorization",
    "content-type",
    "x-api-key",
    "anthropic-version",
    "anthropic-beta",
    "anthropic-dangerous-direct-browser-access",
    "openai-organization",
    "openai-project",
    "idempotency-key",
    "x-stainless-*",
)


@dataclass(frozen=True, slots=True)
class CorsSettings:
    """Off (no origin) by default: no ``Access-Control-*`` header is ever sent."""

    #: Exact origins (``https://app.example.com``), or ``*`` for any.
    origins: tuple[str, ...] = ()
    #: Request headers a browser may send besides the SDKs' ones.
    headers: tuple[str, ...] = ()
    #: Seconds a browser may cache a preflight's answer.
    max_age: int = 600


def _strings(data: Mapping[str, Any], key: str, at: Keys) -> tuple[str, ...]:
    value = data.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise error_at((*at, key), f"expected a list of strings, got {value!r}")
    return tuple(value)


def cors(raw: Mapping[str, Any]) -> CorsSettings:
    at: Keys = ("cors",)
    data = mapping(raw, "cors", ())
    check_keys(data, {"origins", "headers", "max_age"}, at)
    origins = _strings(data, "origins", at)
    for origin in origins:
        parts = urlsplit(origin)
        if origin != "*" and (
            parts.scheme not in ("http", "https")
            or not parts.hostname
            or f"{parts.scheme}://{parts.netloc}" != origin
        ):
            raise error_at(
                (*at, "origins"),
                f"expected origins such as https://app.example.com (scheme, host, port;"
                f" no path) or *, got {origin!r}",
            )
    return CorsSettings(
        origins=origins,
        headers=tuple(h.lower() for h in _strings(data, "headers", at)),
        max_age=integer(data, "max_age", at, 600),
    )
