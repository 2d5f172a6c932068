"""Outbound proxies from ``HTTPS_PROXY``, ``HTTP_PROXY``, ``ALL_PROXY`` (for both, when
the other is not set) and ``NO_PROXY``, or their lower-case forms, which win, as curl and
httpx read them; read once at start-up.

``NO_PROXY`` is a comma-separated list: ``*`` (no proxy at all), a host name (that host
and its subdomains; a leading ``.`` or ``*.`` means the same), an IP address, a CIDR
block (``10.0.0.0/8``), each optionally with ``:port``.
"""

from __future__ import annotations

import base64
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from sluice.config.errors import ConfigError
from sluice.config.values import Secret


@dataclass(frozen=True, slots=True)
class Proxy:
    """An HTTP proxy: where to connect, and the ``Proxy-Authorization`` to send."""

    host: str
    port: int
    authorization: Secret | None = None

    @property
    def address(self) -> str:
        """``host:port``, without credentials: safe to show."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Proxies:
    http: Proxy | None = None
    https: Proxy | None = None
    #: ``NO_PROXY`` entries, lower-case: (host or network, port or None).
    bypass: tuple[tuple[str, int | None], ...] = ()
    bypass_all: bool = False

    def for_origin(self, scheme: str, host: str, port: int) -> Proxy | None:
        """The proxy a request to ``scheme://host:port`` goes through, or None."""
        proxy = self.https if scheme == "https" else self.http
        if proxy is None or self.bypass_all or self._bypassed(host.lower().strip("[]"), port):
            return None
        return proxy

    def _bypassed(self, host: str, port: int) -> bool:
        try:
            address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(
                host
            )
        except ValueError:
            address = None
        for entry, entry_port in self.bypass:
            if entry_port is not None and entry_port != port:
                continue
            if address is None:
                if host == entry or host.endswith(f".{entry}"):
                    return True
                continue
            try:
                if address in ipaddress.ip_network(entry, strict=False):
                    return True
            except ValueError:
                continue  # a host name: never an IP address's
        return False


def _proxy(name: str, value: str) -> Proxy:
    url = value if "://" in value else f"http://{value}"
    parts = urlsplit(url)
    if parts.scheme.lower() != "http":
        # Never the value itself in the message: it may carry a password.
        raise ConfigError(
            f"{name}: only http:// proxies are supported (TLS to the upstream goes"
            f" through them with CONNECT), not {parts.scheme}://"
        )
    try:
        port = parts.port or 80
    except ValueError:
        raise ConfigError(f"{name}: the proxy's port is not a number") from None
    if not parts.hostname:
        raise ConfigError(f"{name}: expected http://HOST:PORT")
    authorization = None
    if parts.username is not None:
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        authorization = Secret("Basic " + base64.b64encode(pair.encode()).decode("ascii"))
    return Proxy(parts.hostname, port, authorization)


def _variable(env: Mapping[str, str], name: str) -> tuple[str, str] | None:
    for key in (name.lower(), name.upper()):
        value = env.get(key, "").strip()
        if value:
            return key, value
    return None


def proxies_from(env: Mapping[str, str]) -> Proxies:
    """The proxies the environment names; no variable, no proxy."""
    every = _variable(env, "ALL_PROXY")
    found = {name: _variable(env, name) or every for name in ("HTTP_PROXY", "HTTPS_PROXY")}
    http = _proxy(*found["HTTP_PROXY"]) if found["HTTP_PROXY"] else None
    https = _proxy(*found["HTTPS_PROXY"]) if found["HTTPS_PROXY"] else None
    no_proxy = _variable(env, "NO_PROXY")
    entries: list[tuple[str, int | None]] = []
    bypass_all = False
    for item in (no_proxy[1] if no_proxy else "").split(","):
        item = item.strip().lower()
        if not item:
            continue
        if item == "*":
            bypass_all = True
            continue
        item = item.removeprefix("*.").lstrip(".")
        host, port = item, None
        if item.startswith("["):  # [::1]:8080
            host, _, rest = item[1:].partition("]")
            port = int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else None
        elif item.count(":") == 1:
            name, _, number = item.partition(":")
            if number.isdigit():
                host, port = name, int(number)
        entries.append((host, port))
    return Proxies(http, https, tuple(entries), bypass_all)
