"""Cross-origin requests from browsers (CORS), answered for the origins ``cors.origins``
lists and for no other.

With no origin configured (the default) the gateway sends no ``Access-Control-*``
header at all, and a preflight (``OPTIONS`` with ``Access-Control-Request-Method``)
is not answered as allowed: a browser then refuses the page's call. For a listed
origin a preflight is answered ``204`` before authentication (it carries no key),
naming the methods the API has and the request headers asked for, when each is one
the SDKs send (``config.cors.SDK_HEADERS``) or ``cors.headers`` adds; every response
to that origin, errors included, carries ``Access-Control-Allow-Origin`` and exposes
the headers clients read (request id, rate limits, retry hints). Credentials
(cookies) are never allowed: keys travel in headers.
"""

from __future__ import annotations

from collections.abc import Mapping

from sluice.config.cors import SDK_HEADERS, CorsSettings

METHODS = b"GET, POST, DELETE, OPTIONS"
EXPOSED = b", ".join(
    [
        b"x-request-id",
        b"retry-after",
        b"retry-after-ms",
        b"x-should-retry",
        b"x-ratelimit-limit-requests",
        b"x-ratelimit-remaining-requests",
        b"x-ratelimit-reset-requests",
        b"x-ratelimit-limit-tokens",
        b"x-ratelimit-remaining-tokens",
        b"x-ratelimit-reset-tokens",
        b"x-vercel-ai-ui-message-stream",
    ]
)
Headers = list[tuple[bytes, bytes]]


class Cors:
    def __init__(self, settings: CorsSettings) -> None:
        self._any = "*" in settings.origins
        self._origins = frozenset(settings.origins)
        names = [*SDK_HEADERS, *settings.headers]
        self._headers = frozenset(n for n in names if not n.endswith("*"))
        self._prefixes = tuple(n[:-1] for n in names if n.endswith("*"))
        self._max_age = str(settings.max_age).encode()

    @property
    def enabled(self) -> bool:
        return bool(self._origins)

    def allows(self, origin: str) -> bool:
        return self._any or origin in self._origins

    def _header_allowed(self, name: str) -> bool:
        return name in self._headers or name.startswith(self._prefixes)

    def response_headers(self, origin: str) -> Headers:
        """For a response to an allowed ``origin``."""
        return [
            (b"access-control-allow-origin", b"*" if self._any else origin.encode("latin-1")),
            (b"access-control-expose-headers", EXPOSED),
            (b"vary", b"Origin"),
        ]

    def preflight(self, origin: str, headers: Mapping[str, str]) -> Headers | None:
        """The answer to a preflight from an allowed ``origin``, or None when what it
        asks for is not allowed (then it is answered as any other request)."""
        method = headers.get("access-control-request-method", "").strip().upper()
        if method.encode() not in METHODS.split(b", "):
            return None
        asked = [
            name.strip().lower()
            for name in headers.get("access-control-request-headers", "").split(",")
            if name.strip()
        ]
        if not all(self._header_allowed(name) for name in asked):
            return None
        out = [
            (b"access-control-allow-origin", b"*" if self._any else origin.encode("latin-1")),
            (b"access-control-allow-methods", METHODS),
            (b"access-control-max-age", self._max_age),
            (b"vary", b"Origin, Access-Control-Request-Method, Access-Control-Request-Headers"),
        ]
        if asked:
            out.append((b"access-control-allow-headers", ", ".join(asked).encode("latin-1")))
        return out
