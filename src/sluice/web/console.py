"""The console at ``/ui/``: who may see it, and what answers each of its URLs.

Sign-in takes the master key or a key created with ``--admin``, and gives an HttpOnly,
SameSite=Strict session cookie (Secure over HTTPS) scoped to ``/ui``; the session lives
in the record database (``store/sessions.py``) for ``SESSION_SECONDS``. Every change
(POST, DELETE) must carry the session's CSRF token in ``X-CSRF-Token`` and come from the
console's own origin. Without a session, pages redirect to the sign-in page and
everything else (JSON, assets, the playground) answers 401; only the sign-in page and
its stylesheet are served to anybody.

A gateway that is open (no key exists and no master key is set: it only serves
loopback unless ``--insecure``) has nobody to sign in: the console is open too, with a
session made on the first page, so changes still need its CSRF token. It then answers
only requests addressed to a loopback name or the configured host, so that a web page
elsewhere cannot reach it by pointing its own name at 127.0.0.1. The first key created
closes the gateway, and the console with it.

The console's own requests are not recorded; what the playground sends is, as the
requests of the signed-in key.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable
from urllib.parse import quote

from sluice.config import Settings
from sluice.exchange import Receive, Scope, Send
from sluice.policies.auth import MASTER, Access, Authenticator
from sluice.store.keys import KeyStore
from sluice.store.queries import RecordQueries
from sluice.store.sessions import Session, SessionStore
from sluice.web import api, assets
from sluice.web.http import (
    HTML,
    NO_STORE,
    BodyError,
    cookie,
    form,
    headers_of,
    json,
    query_of,
    read_body,
    redirect,
    respond,
    same_origin,
    secure,
)

log = logging.getLogger("sluice.console")

PREFIX = "/ui"
COOKIE = "sluice_console"
SESSION_SECONDS = 12 * 3600
#: Failed sign-ins allowed per client address per minute.
MAX_FAILURES = 10
#: Pages of the console (the same shell; the script draws each).
PAGES = ("/ui/", "/ui/requests", "/ui/keys", "/ui/playground")
#: What the sign-in page may load without a session.
PUBLIC_ASSETS = frozenset({"signin.css"})
#: Client APIs the playground may call, through the signed-in identity.
PLAYGROUND = frozenset({"/v1/chat/completions", "/v1/responses", "/v1/messages"})

Play = Callable[[Scope, Receive, Send, Access], Awaitable[None]]


def is_console(path: str) -> bool:
    return path == PREFIX or path.startswith(PREFIX + "/")


class Console:
    def __init__(
        self,
        settings: Settings,
        auth: Authenticator,
        keys: KeyStore,
        sessions: SessionStore,
        queries: RecordQueries,
        models: Callable[[], list[str]],
        play: Play,
    ) -> None:
        self._settings = settings
        self._auth = auth
        self._sessions = sessions
        self._queries = queries
        self._play = play
        master = settings.master_key.get() if settings.master_key else None
        # Names which master key a session was opened with; never the key itself.
        self._master = (
            hashlib.sha256(b"sluice-console\0" + master.encode()).hexdigest() if master else None
        )
        self._assets = assets.load()
        self._api = api.API(self._queries, keys, models, settings.default_model)
        self._failures: dict[str, list[float]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        method: str = scope["method"]
        headers = headers_of(scope)
        try:
            await self._dispatch(scope, receive, send, path, method, headers)
        except BodyError:
            await json(send, 400, {"error": "the request body is too large or incomplete"})

    async def _dispatch(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        path: str,
        method: str,
        headers: dict[str, str],
    ) -> None:
        if path == PREFIX:
            await redirect(send, PREFIX + "/")
            return
        open_ = not await self._auth.enabled()
        if open_ and not self._trusted_host(headers):
            await respond(
                send,
                421,
                b"text/plain; charset=utf-8",
                b"This console answers only on a loopback address while the gateway has no keys.\n",
            )
            return
        if path == "/ui/login":
            await self._login(scope, receive, send, method, headers, open_)
            return
        name = path.removeprefix("/ui/assets/")
        if name != path and name in PUBLIC_ASSETS and method == "GET":
            await self._asset(send, name, headers)
            return
        token = cookie(headers, COOKIE)
        session = await self._session(token, open_)
        page = method == "GET" and (path in PAGES or path.startswith("/ui/requests/"))
        set_cookie: list[tuple[bytes, bytes]] = []
        if session is None and open_ and page:
            token, session = await self._sessions.create("open", None, SESSION_SECONDS)
            set_cookie = [self._cookie(scope, token, SESSION_SECONDS)]
        if session is None:
            if page:
                await redirect(send, "/ui/login?next=" + quote(path, safe="/"))
            else:
                await json(send, 401, {"error": "sign in to the console first"})
            return
        if method not in ("GET", "HEAD") and not self._csrf_ok(scope, headers, session):
            await json(send, 403, {"error": "missing or wrong CSRF token, or another origin"})
            return
        if page:
            await self._shell(send, session, open_, set_cookie)
        elif path.startswith("/ui/assets/") and method == "GET":
            await self._asset(send, name, headers)
        elif path == "/ui/logout" and method == "POST":
            assert token is not None
            await self._sessions.delete(token)
            await redirect(send, "/ui/login", [self._cookie(scope, "", 0)])
        elif path.startswith("/ui/play/") and method == "POST":
            target = path.removeprefix("/ui/play")
            if target not in PLAYGROUND:
                await json(send, 404, {"error": f"the playground cannot call {target}"})
                return
            access = await self._access(session)
            if access is None:
                await json(send, 401, {"error": "sign in to the console first"})
                return
            inner = dict(scope, path=target, raw_path=target.encode())
            await self._play(inner, receive, send, access)
        elif path.startswith("/ui/api/"):
            await self._api.serve(scope, receive, send, path.removeprefix("/ui/api/"), method)
        else:
            await json(send, 404, {"error": f"no such console URL: {method} {path}"})

    # -- sessions ----------------------------------------------------------------------

    async def _session(self, token: str | None, open_: bool) -> Session | None:
        if not token:
            return None
        session = await self._sessions.get(token, self._master)
        if session is not None and session.who == "open" and not open_:
            return None  # the gateway has keys now: sign in with one
        return session

    def _cookie(self, scope: Scope, token: str, max_age: int) -> tuple[bytes, bytes]:
        value = f"{COOKIE}={token}; Path={PREFIX}; Max-Age={max_age}; HttpOnly; SameSite=Strict"
        if secure(scope):
            value += "; Secure"
        return (b"set-cookie", value.encode())

    @staticmethod
    def _csrf_ok(scope: Scope, headers: dict[str, str], session: Session) -> bool:
        sent = headers.get("x-csrf-token", "")
        return same_origin(scope, headers) and hmac.compare_digest(
            sent.encode(), session.csrf.encode()
        )

    def _trusted_host(self, headers: dict[str, str]) -> bool:
        """The request names this machine: a loopback address, ``localhost`` or the
        configured host. Names are compared, never resolved (resolving is what a
        rebinding attack controls)."""
        host = headers.get("host", "")
        name = host[1:].partition("]")[0] if host.startswith("[") else host.rpartition(":")[0]
        name = name or host
        if name in ("localhost", self._settings.host):
            return True
        try:
            return ipaddress.ip_address(name).is_loopback
        except ValueError:
            return False

    async def _access(self, session: Session) -> Access | None:
        """Who the playground's requests are made as: the signed-in key."""
        if session.who == "open":
            return Access()
        if session.who == MASTER.id:
            return Access(MASTER)
        key = await self._api.keys.get(session.who)
        return None if key is None else Access(key)

    # -- sign-in ------------------------------------------------------------------------

    async def _login(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        method: str,
        headers: dict[str, str],
        open_: bool,
    ) -> None:
        query = query_of(scope)
        if open_:
            await redirect(send, PREFIX + "/")
            return
        if method == "GET":
            token = cookie(headers, COOKIE)
            if token and await self._session(token, open_) is not None:
                await redirect(send, PREFIX + "/")
                return
            await self._signin_page(send, 200, _next(query.get("next", "")), "")
            return
        if method != "POST":
            await json(send, 405, {"error": "use GET or POST"}, [(b"allow", b"GET, POST")])
            return
        client = (scope.get("client") or ("?",))[0]
        body = form(await read_body(receive, 16 * 1024))
        target = _next(body.get("next", ""))
        if not same_origin(scope, headers):
            await self._signin_page(send, 403, target, "Sign in from this page.")
            return
        if self._throttled(client):
            await self._signin_page(
                send, 429, target, "Too many failed attempts; wait a minute and try again."
            )
            return
        secret = body.get("key", "").strip()
        who = await self._auth.admin(secret) if secret else None
        if who is None:
            self._failed(client)
            log.warning("console: refused a sign-in from %s", client)
            await self._signin_page(
                send, 401, target, "That is not the master key or an admin key."
            )
            return
        master = self._master if who.master else None
        token, _ = await self._sessions.create(who.id, master, SESSION_SECONDS)
        log.info("console: %s signed in from %s", who.id, client)
        await redirect(send, target, [self._cookie(scope, token, SESSION_SECONDS)])

    def _throttled(self, client: str) -> bool:
        now = time.monotonic()
        recent = [t for t in self._failures.get(client, ()) if t > now - 60]
        if recent:
            self._failures[client] = recent
        else:
            self._failures.pop(client, None)
        return len(recent) >= MAX_FAILURES

    def _failed(self, client: str) -> None:
        if len(self._failures) > 10_000:
            self._failures.clear()
        self._failures.setdefault(client, []).append(time.monotonic())

    async def _signin_page(self, send: Send, status: int, target: str, error: str) -> None:
        page = self._assets["signin.html"].body.decode()
        page = page.replace("{{next}}", html.escape(target))
        page = page.replace("{{error}}", html.escape(error))
        page = page.replace("{{error_hidden}}", "" if error else "hidden")
        await respond(send, status, HTML, page.encode(), NO_STORE)

    # -- pages and files ----------------------------------------------------------------

    async def _shell(
        self, send: Send, session: Session, open_: bool, extra: list[tuple[bytes, bytes]]
    ) -> None:
        page = self._assets["index.html"].body.decode()
        page = page.replace("{{csrf}}", html.escape(session.csrf))
        page = page.replace("{{who}}", html.escape(session.who))
        page = page.replace("{{open}}", "true" if open_ else "false")
        await respond(send, 200, HTML, page.encode(), [*NO_STORE, *extra])

    async def _asset(self, send: Send, name: str, headers: dict[str, str]) -> None:
        asset = self._assets.get(name)
        if asset is None or name.endswith(".html"):
            await json(send, 404, {"error": f"no such file: {name}"})
            return
        cache = [(b"etag", asset.etag), (b"cache-control", b"private, no-cache")]
        if headers.get("if-none-match", "").encode() == asset.etag:
            await respond(send, 304, asset.content_type, b"", cache)
            return
        await respond(send, 200, asset.content_type, asset.body, cache)


def _next(target: str) -> str:
    """Where to go after signing in: a console page, never another site."""
    if not target.startswith("/ui/") or "\\" in target or "//" in target:
        return PREFIX + "/"
    return target
