"""The little HTTP the console needs over ASGI: answers, bodies, cookies, origins."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from http.cookies import CookieError, SimpleCookie
from typing import Any
from urllib.parse import parse_qsl

import orjson

from sluice.exchange import Receive, Scope, Send

Headers = Sequence[tuple[bytes, bytes]]

#: On every console answer: no framing, no sniffing, no referrer off the site, and
#: scripts, styles and connections from the gateway only (the console works offline).
SECURITY: Headers = [
    (
        b"content-security-policy",
        b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
        b" connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
]
NO_STORE: Headers = [(b"cache-control", b"no-store")]
HTML = b"text/html; charset=utf-8"
JSON = b"application/json"


class BodyError(Exception):
    """The request body is too large, or the client left while sending it."""


async def respond(
    send: Send, status: int, content_type: bytes, body: bytes, headers: Headers = ()
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
                *SECURITY,
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def json(send: Send, status: int, value: Any, headers: Headers = ()) -> None:
    await respond(send, status, JSON, orjson.dumps(value), [*NO_STORE, *headers])


async def redirect(send: Send, location: str, headers: Headers = ()) -> None:
    await respond(
        send, 303, b"text/plain; charset=utf-8", b"", [(b"location", location.encode()), *headers]
    )


async def read_body(receive: Receive, limit: int) -> bytes:
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise BodyError("the client left")
        body = message.get("body", b"")
        size += len(body)
        if size > limit:
            raise BodyError(f"the body is larger than {limit} bytes")
        parts.append(body)
        if not message.get("more_body", False):
            return b"".join(parts)


def headers_of(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}


def query_of(scope: Scope) -> dict[str, str]:
    return dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))


def form(body: bytes) -> dict[str, str]:
    return dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))


def cookie(headers: Mapping[str, str], name: str) -> str | None:
    raw = headers.get("cookie")
    if not raw:
        return None
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(raw)
    except CookieError:
        return None
    morsel = jar.get(name)
    return morsel.value if morsel is not None else None


def secure(scope: Scope) -> bool:
    """Whether the request came over HTTPS (behind a proxy: as the server was told)."""
    return scope.get("scheme") == "https"


def own_origin(scope: Scope, headers: Mapping[str, str]) -> str:
    return f"{'https' if secure(scope) else 'http'}://{headers.get('host', '')}"


def same_origin(scope: Scope, headers: Mapping[str, str]) -> bool:
    """The request comes from the console's own pages. Browsers send ``Origin`` with
    every POST and DELETE; one that names another site (or ``null``) is refused.
    Without it (a client that is not a browser), ``Sec-Fetch-Site`` must not say
    another site either; the CSRF token is checked besides."""
    origin = headers.get("origin")
    if origin is not None:
        return origin == own_origin(scope, headers)
    return headers.get("sec-fetch-site", "same-origin") in ("same-origin", "none")
