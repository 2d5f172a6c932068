"""Who is asking: virtual keys, the master key, the public seed route, the safe default.

Authentication is on when ``SLUICE_MASTER_KEY`` is set or any key exists in the store
(revoked and expired ones count: revoking every key must not open the gateway). Then
every route but ``/healthz`` and ``/readyz`` needs ``Authorization: Bearer <key>`` (or,
without that header, ``x-api-key: <key>``), except ``GET /`` when ``auth.public_seed``
is set: a browser cannot send the header, so that route is served without a key and
limited per client address instead; and ``/metrics`` when ``metrics.public`` is set, for
a scraper that sends no key.

The app calls ``Authenticator.check`` for every request before dispatch, so rejections
are recorded like any other; ``model_access`` is the first policy of the pipeline and
refuses a model the key may not use.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import socket
import time
from collections.abc import AsyncGenerator, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from sluice.config import Settings
from sluice.errors import AuthenticationError, PermissionDenied
from sluice.events import Batch, ChatRequest
from sluice.policies import Call, Handler
from sluice.policies.lockout import Lockout
from sluice.store import Record, VirtualKey
from sluice.store.keys import KEY_PREFIX, KeyStore

#: Routes that never need a key: probes for load balancers and orchestrators.
OPEN_ROUTES = frozenset({"/healthz", "/readyz"})
SEED_ROUTE = "/"
METRICS_ROUTE = "/metrics"

MASTER = VirtualKey(id="master", name="master", master=True)


@dataclass(frozen=True, slots=True)
class Access:
    """What a request may do: as ``key``, or as the public (``public``), or, with
    authentication off, as anybody (neither)."""

    key: VirtualKey | None = None
    public: bool = False


ANYBODY = Access()


def bearer(headers: Mapping[str, str]) -> str | None:
    value = headers.get("authorization")
    if value is None:
        # Anthropic's clients send the key as ``x-api-key``.
        return headers.get("x-api-key", "").strip() or None
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).digest()


def _when(unix: float) -> str:
    return datetime.fromtimestamp(unix, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class Authenticator:
    def __init__(self, settings: Settings, keys: KeyStore) -> None:
        self._keys = keys
        self._master = _digest(settings.master_key.get()) if settings.master_key else None
        self._public_seed = settings.public_seed
        self._open = OPEN_ROUTES | ({METRICS_ROUTE} if settings.metrics.public else set())
        self._insecure = settings.insecure
        #: Failed authentication per client address (set once the shared state is open).
        self.lockout: Lockout | None = None

    async def enabled(self) -> bool:
        return self._master is not None or await self._keys.any_keys()

    async def check(
        self,
        method: str,
        path: str,
        headers: Mapping[str, str],
        record: Record,
        server: str | None = None,
    ) -> Access:
        """Who the request is from; raises ``AuthenticationError`` (401) if it may not
        be served, ``RateLimited`` (429) while its address failed too often. The key's
        id goes on the record, refused or not. ``server``: the address the request
        arrived on, which must be loopback while authentication is off."""
        if path in self._open:
            return Access()
        lockout, client = self.lockout, record.client
        if lockout is None or client is None:
            access = await self._check(method, path, headers, record)
        else:
            await lockout.check(client)
            try:
                access = await self._check(method, path, headers, record)
            except AuthenticationError:
                await lockout.failed(client)
                raise
        if access == ANYBODY and server is not None and not self._insecure:
            _refuse_exposed(server)
        return access

    async def _check(
        self, method: str, path: str, headers: Mapping[str, str], record: Record
    ) -> Access:
        token = bearer(headers)
        if token is None:
            if self._public_seed and path == SEED_ROUTE and method == "GET":
                return Access(public=True)
            if not await self.enabled():
                return Access()
            raise AuthenticationError(
                "You didn't provide an API key. Send it in the Authorization header as"
                " 'Authorization: Bearer YOUR_KEY' (or as 'x-api-key: YOUR_KEY').",
                code="missing_api_key",
            )
        if self._master is not None and hmac.compare_digest(_digest(token), self._master):
            record.key_id = MASTER.id
            return Access(MASTER)
        if not await self.enabled():
            # Authentication is off: clients (the openai SDK) send a key anyway; ignore it.
            return Access()
        # Every key the gateway issues has the prefix: anything else is wrong without a
        # look in the database (a flood of made-up keys costs no thread and no query).
        key = await self._keys.lookup(token) if token.startswith(KEY_PREFIX) else None
        if key is None:
            raise AuthenticationError("Incorrect API key provided.")
        record.key_id = key.id
        if key.revoked:
            raise AuthenticationError(
                f"The API key {key.id} ({key.name}) has been revoked.", code="key_revoked"
            )
        if key.expires_at is not None and key.expires_at <= time.time():
            raise AuthenticationError(
                f"The API key {key.id} ({key.name}) expired at {_when(key.expires_at)}.",
                code="key_expired",
            )
        return Access(key)

    async def admin(self, token: str) -> VirtualKey | None:
        """Who ``token`` signs in to the console as: the master key, or a key marked
        admin that is neither revoked nor expired; None for anything else."""
        if self._master is not None and hmac.compare_digest(_digest(token), self._master):
            return MASTER
        key = await self._keys.lookup(token) if token.startswith(KEY_PREFIX) else None
        if key is None or not key.admin or key.revoked:
            return None
        if key.expires_at is not None and key.expires_at <= time.time():
            return None
        return key


def may_use(key: VirtualKey | None, model: str) -> bool:
    return key is None or not key.models or model in key.models


def visible_models(key: VirtualKey | None, names: Iterable[str], wildcard: bool) -> list[str]:
    """The model names to list for ``key``: the configured ones it may use, and with a
    catch-all deployment (``*``) every name the key is allowed."""
    shown = [name for name in names if may_use(key, name)]
    if key is not None and key.models and wildcard:
        shown += [name for name in key.models if name not in shown]
    return shown


def require_model(key: VirtualKey | None, model: str) -> None:
    """A key restricted to some models may use only those (403)."""
    if not may_use(key, model):
        assert key is not None
        raise PermissionDenied(
            f"The API key {key.id} may not use the model '{model}'.",
            param="model",
            code="model_not_allowed",
        )


def model_access(handler: Handler) -> Handler:
    """The first policy: ``require_model``."""

    def handle(request: ChatRequest, call: Call) -> AsyncGenerator[Batch, None]:
        # Not a generator itself: no per-chunk hop, and the refusal comes at once.
        require_model(call.key, request.model)
        return handler(request, call)

    return handle


# -- the safe default -------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    """Whether ``host`` only listens where other machines cannot reach it."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return False
    return bool(infos) and all(
        ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]).is_loopback for info in infos
    )


def _refuse_exposed(server: str) -> None:
    """The start-up check (``exposure_problem``) saw the configured host; an ASGI server
    may have been told another one. A request that arrived on a non-loopback address
    while no key exists is refused, whatever the configuration said."""
    try:
        loopback = ipaddress.ip_address(server.split("%", 1)[0]).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise PermissionDenied(
            f"this gateway has no API key and no master key, so it serves only on"
            f" loopback; this request arrived on {server}. Create a key (sluice keys"
            " create), set SLUICE_MASTER_KEY, or set insecure: true to serve anyway.",
            code="no_authentication",
        )


async def exposure_problem(settings: Settings, keys: KeyStore) -> str | None:
    """Why the gateway must not start as configured, or None.

    Without a master key and without any key, anyone who reaches the gateway uses its
    upstream keys: that is only allowed on loopback, or when told ``insecure``."""
    if settings.insecure or settings.master_key or is_loopback(settings.host):
        return None
    if await keys.count() > 0:
        return None
    return (
        f"refusing to serve on {settings.host}, a non-loopback address, without"
        " authentication: no API key exists and SLUICE_MASTER_KEY is not set, so anyone"
        " who can reach it could use the upstream keys. Create a key (sluice keys create"
        " --name NAME), set SLUICE_MASTER_KEY, serve on 127.0.0.1, or pass --insecure"
        " (config: insecure: true) to serve without keys anyway."
    )
