"""The console's JSON, under ``/ui/api/``: the reads the pages draw, and key changes.

Only reached with a live session (and, for changes, its CSRF token): see console.py.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import orjson

from sluice.exchange import Receive, Scope, Send
from sluice.keys_cli import Invalid, parse_expiry
from sluice.store.keys import KeyRow, KeyStore, shown
from sluice.store.queries import WINDOWS, Filters, RecordQueries
from sluice.web.http import BodyError, json, query_of, read_body

OUTCOMES = ("ok", "error", "rejected", "client_disconnected", "cancelled")
PAGE = 50
MAX_PAGE = 500


class BadRequest(Exception):
    pass


def _number(query: dict[str, str], name: str) -> float | None:
    raw = query.get(name, "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise BadRequest(f"{name}: expected a number, got {raw!r}") from None
    if not math.isfinite(value):
        raise BadRequest(f"{name}: expected a finite number")
    return value


def _cursor(query: dict[str, str], name: str) -> tuple[float, int] | None:
    raw = query.get(name, "").strip()
    if not raw:
        return None
    at, _, rowid = raw.partition(",")
    try:
        return float(at), int(rowid)
    except ValueError:
        raise BadRequest(f"{name}: expected started_at,rowid, got {raw!r}") from None


def filters_of(query: dict[str, str]) -> Filters:
    outcome = query.get("outcome") or None
    if outcome is not None and outcome not in OUTCOMES:
        raise BadRequest(f"outcome: expected one of {', '.join(OUTCOMES)}")
    status = query.get("status", "").strip().lower().removesuffix("xx") or None
    code: int | None = None
    if status is not None:
        if not status.isdigit() or not (len(status) == 1 or 100 <= int(status) <= 599):
            raise BadRequest("status: expected a status (429) or a class (4xx)")
        code = int(status)
    return Filters(
        model=query.get("model") or None,
        key_id=query.get("key") or None,
        outcome=outcome,
        status=code,
        since=_number(query, "since"),
        until=_number(query, "until"),
        probes=query.get("probes") == "1",
    )


class API:
    def __init__(
        self,
        queries: RecordQueries,
        keys: KeyStore,
        models: Callable[[], list[str]],
        default_model: str,
    ) -> None:
        self.queries = queries
        self.keys = keys
        self._models = models
        self._default_model = default_model

    async def serve(
        self, scope: Scope, receive: Receive, send: Send, path: str, method: str
    ) -> None:
        query = query_of(scope)
        try:
            status, value = await self._route(receive, path, method, query)
        except BadRequest as exc:
            status, value = 400, {"error": str(exc)}
        except Invalid as exc:
            status, value = 400, {"error": str(exc)}
        await json(send, status, value)

    async def _route(
        self, receive: Receive, path: str, method: str, query: dict[str, str]
    ) -> tuple[int, Any]:
        if method == "GET":
            if path == "overview":
                window = query.get("window", "hour")
                by = query.get("by", "model")
                if window not in WINDOWS or by not in ("model", "key"):
                    raise BadRequest("window: hour, day or week; by: model or key")
                return 200, await self.queries.overview(window, by)
            if path == "requests":
                return 200, await self._page(query)
            if path.startswith("requests/"):
                record = await self.queries.record(path.removeprefix("requests/"))
                if record is None:
                    return 404, {"error": "no such request"}
                return 200, record
            if path == "facets":
                return 200, await self.queries.facets(time.time() - WINDOWS["week"][0])
            if path == "keys":
                rows = await self.keys.rows()
                return 200, {"keys": [row.as_dict() for row in reversed(rows)]}
            if path == "models":
                return 200, {"models": self._models(), "default": self._default_model}
        elif method == "POST" and path == "keys":
            return 201, await self._create(receive)
        elif method == "POST" and path.startswith("keys/"):
            return await self._set_limits(receive, path.removeprefix("keys/"))
        elif method == "DELETE" and path.startswith("keys/"):
            key_id = path.removeprefix("keys/")
            if await self.keys.get(key_id) is None:
                return 404, {"error": f"no key with id {key_id!r}"}
            key = await self.keys.revoke(key_id)
            assert key is not None
            return 200, {"id": key.id, "revoked": key.revoked}
        return 404, {"error": f"no such console URL: {method} /ui/api/{path}"}

    async def _page(self, query: dict[str, str]) -> dict[str, Any]:
        filters = filters_of(query)
        raw_limit = _number(query, "limit")
        limit = PAGE if raw_limit is None else max(1, min(MAX_PAGE, int(raw_limit)))
        return await self.queries.page(
            filters, limit, before=_cursor(query, "before"), after=_cursor(query, "after")
        )

    async def _create(self, receive: Receive) -> dict[str, Any]:
        body = await _object(receive)
        name = str(body.get("name") or "").strip()
        if not name:
            raise BadRequest("name: expected a name")
        models, rpm, tpm, budget = _limits(body)
        expires = str(body.get("expires") or "").strip()
        expires_at = parse_expiry(expires, time.time()) if expires else None
        admin = body.get("admin") is True
        secret, key = await self.keys.create(
            name,
            models=models,
            rpm=rpm,
            tpm=tpm,
            budget_usd=budget,
            expires_at=expires_at,
            admin=admin,
        )
        return {"key": secret, **KeyRow(key, shown(secret), None, 0.0).as_dict()}

    async def _set_limits(self, receive: Receive, key_id: str) -> tuple[int, Any]:
        models, rpm, tpm, budget = _limits(await _object(receive))
        key = await self.keys.set_limits(key_id, models=models, rpm=rpm, tpm=tpm, budget_usd=budget)
        if key is None:
            return 404, {"error": f"no key with id {key_id!r}"}
        row = next(row for row in await self.keys.rows() if row.key.id == key_id)
        return 200, row.as_dict()


async def _object(receive: Receive) -> dict[str, Any]:
    try:
        body = orjson.loads(await read_body(receive, 64 * 1024))
    except orjson.JSONDecodeError:
        raise BadRequest("expected a JSON object") from None
    except BodyError as exc:
        raise BadRequest(str(exc)) from None
    if not isinstance(body, dict):
        raise BadRequest("expected a JSON object")
    return body


def _limits(body: dict[str, Any]) -> tuple[list[str], int | None, int | None, float | None]:
    """A key's models and limits from a JSON body: names, rpm, tpm, budget (USD)."""
    raw = body.get("models") or []
    if isinstance(raw, str):
        raw = raw.split(",")
    if not isinstance(raw, list):
        raise BadRequest("models: expected a list of model names")
    models = list(dict.fromkeys(str(m).strip() for m in raw if str(m).strip()))
    budget = body.get("budget_usd")
    if budget in (None, ""):
        budget = None
    elif (
        not isinstance(budget, int | float)
        or isinstance(budget, bool)
        or not math.isfinite(budget)
        or budget < 0
    ):
        raise BadRequest("budget_usd: expected a non-negative amount")
    return (
        models,
        _positive(body, "rpm"),
        _positive(body, "tpm"),
        None if budget is None else float(budget),
    )


def _positive(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value in (None, ""):
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BadRequest(f"{name}: expected a positive whole number")
    return value
