"""The routes of the OpenAI Responses API and the conversation state behind them.

``POST /v1/responses`` decodes the request, prepends the conversation a
``previous_response_id`` names, and serves it like any other request; with ``store``
(the default, as at OpenAI) the response is stored once it ended and before its last
event reaches the client, so the client may continue at once, on any instance sharing
the database. ``GET`` and ``DELETE /v1/responses/{id}`` and
``GET /v1/responses/{id}/input_items`` read the store.

With ``background`` (which needs ``store``) the response runs as a generation of its
own (``sluice.generations``): ``POST`` answers at once (``queued`` or ``in_progress``;
its events when ``stream`` is asked), and the response is stored at its start, when its
first event came and at its end. ``GET /v1/responses/{id}?stream=true`` replays its
events from the first, or those after ``starting_after``, then follows it live, on any
instance; ``POST /v1/responses/{id}/cancel`` stops it (and again answers the same
final response). A response whose instance went away before its end is ``failed``.

Which responses are stored: those the client saw the id of. A stream is stored once
its first event went out, whatever happens next: ``completed``, ``incomplete`` (token
limit, content filter), ``failed`` (an error after the first byte), or ``cancelled``
when the client went away, because the gateway then stops the upstream at once instead
of finishing the answer (OpenAI keeps generating): what was generated until then is
kept, unfinished items marked ``incomplete``. A JSON answer is stored when it is
answered. Failures answered with an HTTP error status are not stored.

A key reads, continues and deletes only the responses it made; the master key, and
anyone while authentication is off, any response. Another key's response is answered
404, as an unknown one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any, Protocol

import orjson

from sluice.dialects import Dialect, Encoder
from sluice.dialects.bounds import DEFAULT_BOUNDS, Bounds
from sluice.dialects.openai_responses import ID_PREFIX, OpenAIResponsesDialect, StreamEncoder
from sluice.dialects.responses_items import messages_of
from sluice.dialects.responses_request import ResponsesRequest, decode_responses
from sluice.dialects.responses_stream import ResponseBuilder
from sluice.errors import NotFound, RequestError, ServiceUnavailable, SluiceError, Unsupported
from sluice.events import Batch, ChatRequest
from sluice.exchange import Exchange
from sluice.generations import Detach, Detached, Generation, Generations, Info, ShuttingDown
from sluice.journal import Cancelled, WriterGone
from sluice.resume import Skipping, follow_to
from sluice.store import VirtualKey
from sluice.store.responses import ResponseStore, StoredResponse

log = logging.getLogger("sluice.responses")

JSON = [(b"content-type", b"application/json")]
PREFIX = "/v1/responses/"
INPUT_ITEMS = "/input_items"
CANCEL = "/cancel"
#: Statuses of a response that has not ended.
RUNNING = ("queued", "in_progress")
#: Seconds a cancel waits for the response to end.
CANCEL_WAIT = 3.0
#: The most responses one conversation may chain through ``previous_response_id``.
MAX_CONVERSATION = 1000

Wrap = Callable[[AsyncGenerator[Batch, None]], AsyncGenerator[Batch, None]]


class Serve(Protocol):
    """The app's way to serve a canonical request: its pipeline, relayed through
    ``encoder``, the event stream passed through ``wrap`` first."""

    def __call__(
        self,
        exchange: Exchange,
        dialect: Dialect,
        request: ChatRequest,
        encoder: Encoder | None = None,
        wrap: Wrap | None = None,
    ) -> Awaitable[None]: ...


_ITEM_PREFIX = {"message": "msg", "function_call": "fc", "function_call_output": "fco"}


def with_ids(items: list[dict[str, Any]], response_id: str) -> list[dict[str, Any]]:
    """The input items, each with an id (derived from the response's where none was given)."""
    stem = response_id.removeprefix(ID_PREFIX)
    out = []
    for n, item in enumerate(items):
        if "id" not in item:
            prefix = _ITEM_PREFIX.get(item.get("type", ""), "item")
            item = {"id": f"{prefix}_{stem}_in{n}", **item}
        out.append(item)
    return out


def visible(stored: StoredResponse, key: VirtualKey | None) -> bool:
    return key is None or key.master or stored.key_id == key.id


def lost(response: dict[str, Any], message: str) -> dict[str, Any]:
    """A response that never ended, ``failed`` (its unfinished items ``incomplete``)."""
    output = [
        {**item, "status": "incomplete"} if item.get("status") == "in_progress" else item
        for item in response.get("output") or []
    ]
    error = {"code": "server_error", "message": message}
    return {**response, "status": "failed", "error": error, "output": output}


class ResponsesAPI:
    def __init__(
        self,
        store: ResponseStore,
        serve: Serve,
        max_body_bytes: int,
        detach: Detach,
        generations: Callable[[], Generations],
        keepalive_interval: float,
        bounds: Bounds = DEFAULT_BOUNDS,
    ) -> None:
        self.dialect = OpenAIResponsesDialect(bounds)
        self._store = store
        self._serve = serve
        self._max_body = max_body_bytes
        self._detach = detach
        self._generations = generations
        self._keepalive = keepalive_interval

    # -- POST /v1/responses ------------------------------------------------------------

    async def create(self, exchange: Exchange, dialect: Dialect) -> None:
        body = await exchange.read_body(self._max_body)
        decoded = decode_responses(body, self.dialect.bounds)
        record = exchange.record
        if decoded.previous_response_id is not None:
            await self._continue(decoded, exchange.key)
        response_id = f"{ID_PREFIX}{record.id}"
        if decoded.background:
            await self._background(exchange, dialect, decoded, response_id)
            return
        encoder = self.dialect.encoder_for(decoded, response_id, int(record.started_at))
        builder = encoder.builder
        stored = False
        items = with_ids(decoded.items, response_id)
        key_id = exchange.key.id if exchange.key is not None else None

        async def put(response: dict[str, Any]) -> None:
            nonlocal stored
            try:
                await self._store.put(StoredResponse(response, items, key_id))
            except ServiceUnavailable as exc:
                log.error("response %s was not stored: %s", response_id, exc.message)
                return
            stored = True

        async def storing(stream: AsyncGenerator[Batch, None]) -> AsyncGenerator[Batch, None]:
            async with contextlib.aclosing(stream):
                try:
                    async for batch in stream:
                        yield batch
                except SluiceError as exc:
                    if exchange.started:  # the client saw the id: the failure goes in-band
                        await put(builder.fail(exc))
                    raise
            # Before the last event is written: a client that continues at once finds it.
            await put(builder.settle())

        try:
            await self._serve(
                exchange, dialect, decoded.request, encoder, storing if decoded.store else None
            )
        except Unsupported as exc:
            builtin = decoded.request.extra.get("builtin_tools")
            if exc.param != "builtin_tools" or not builtin:
                raise
            names = ", ".join(sorted({str(t.get("type")) for t in builtin}))
            raise Unsupported(
                f"built-in tools ({names}) cannot be used with this model: {exc.message}",
                param="tools",
            ) from exc
        if decoded.store and not stored and exchange.started and exchange.disconnected:
            await put(builder.cancel())

    async def _continue(self, decoded: ResponsesRequest, key: VirtualKey | None) -> None:
        """Put the conversation ``previous_response_id`` names before the request's input."""
        previous = decoded.previous_response_id
        assert previous is not None
        chain = await self._store.chain(previous, MAX_CONVERSATION)
        if not chain or not visible(chain[0], key):
            raise NotFound(
                f"Previous response with id '{previous}' not found.",
                param="previous_response_id",
            )
        missing = chain[-1].previous_response_id
        if missing is not None:
            if len(chain) >= MAX_CONVERSATION:
                raise RequestError(
                    f"the conversation of '{previous}' is longer than {MAX_CONVERSATION}"
                    " responses; start a new one with the items it needs as 'input'",
                    param="previous_response_id",
                )
            raise NotFound(
                f"Response '{missing}', earlier in the conversation of '{previous}', no"
                " longer exists.",
                param="previous_response_id",
            )
        items: list[dict[str, Any]] = []
        for stored in reversed(chain):
            items.extend(stored.input_items)
            items.extend(stored.response.get("output") or [])
        items.extend(decoded.items)
        decoded.request.messages = messages_of(items)

    # -- the stored responses ----------------------------------------------------------

    async def _find(self, exchange: Exchange, suffix: str = "") -> StoredResponse:
        exchange.record.api = self.dialect.name
        path: str = exchange.scope["path"]
        response_id = path[len(PREFIX) : len(path) - len(suffix)]
        stored = await self._store.get(response_id)
        if stored is None or not visible(stored, exchange.key):
            raise NotFound(f"Response with id '{response_id}' not found.")
        return stored

    async def retrieve(self, exchange: Exchange, dialect: Dialect) -> None:
        stream = exchange.query.get("stream", "false").lower() not in ("false", "0", "")
        after = -1
        if stream:
            text = exchange.query.get("starting_after", "")
            if text and not (text.isdigit() or text == "-1"):
                raise RequestError(
                    "'starting_after' must be a sequence number (an integer >= -1)",
                    param="starting_after",
                )
            after = int(text) if text else -1
        stored = await self._check(await self._find(exchange))
        if stream:
            await self._stream(exchange, stored, after)
            return
        await exchange.respond(200, JSON, orjson.dumps(stored.response))

    async def cancel(self, exchange: Exchange, dialect: Dialect) -> None:
        stored = await self._find(exchange, CANCEL)
        if not stored.response.get("background"):
            raise RequestError(
                f"Only responses created with background=true can be cancelled; '{stored.id}'"
                " was not.",
                param="response_id",
            )
        generations = self._generations()
        info = await generations.find(stored.id)
        if info is not None and info.live:
            await generations.cancel(info)
            await generations.wait(info.id, CANCEL_WAIT)
            stored = await self._find(exchange, CANCEL)
        stored = await self._check(stored)
        await exchange.respond(200, JSON, orjson.dumps(stored.response))

    # -- background mode ---------------------------------------------------------------

    async def _background(
        self, exchange: Exchange, dialect: Dialect, decoded: ResponsesRequest, response_id: str
    ) -> None:
        request = decoded.request
        created = int(exchange.record.started_at)
        echo = {**decoded.echo, "background": True}
        model, summaries = request.model, decoded.summaries
        builder = ResponseBuilder(response_id, created, model, echo, summaries, False)
        items = with_ids(decoded.items, response_id)
        key_id = exchange.key.id if exchange.key is not None else None
        store = self._store
        running: Generation | None = None

        async def put(response: dict[str, Any]) -> None:
            try:
                await store.put(StoredResponse(response, items, key_id))
            except ServiceUnavailable as exc:
                log.error("response %s was not stored: %s", response_id, exc.message)

        async def storing(stream: AsyncGenerator[Batch, None]) -> AsyncGenerator[Batch, None]:
            started = False
            try:
                async with contextlib.aclosing(stream):
                    async for batch in stream:
                        builder.feed(batch)
                        if not started:
                            started = True
                            await put(builder.response("in_progress"))
                        yield batch
            except asyncio.CancelledError:
                if running is not None and running.cancelled:
                    await put(builder.cancel())
                else:
                    await put(builder.fail(ShuttingDown("the gateway shut down")))
                raise
            except SluiceError as exc:
                await put(builder.fail(exc))
                raise
            await put(builder.settle())

        # Stored first: whoever gets its id finds it, on any instance.
        await store.put(StoredResponse(builder.response("queued"), items, key_id))
        data = {
            "model": request.model,
            "created_at": created,
            "echo": echo,
            "summaries": decoded.summaries,
        }
        detached = Detached(response_id, "responses", data, background=True, wrap=storing)
        try:
            running = await self._detach(exchange, dialect, request, detached)
            await running.admission()
        except SluiceError:
            # Refused at once (a limit, a model the key may not use): a status, not a response.
            with contextlib.suppress(ServiceUnavailable):
                await store.delete(response_id)
            raise
        if request.stream:
            info = running.info
            await self._follow(exchange, info, self._generations().follow(info), -1)
            return
        status = "in_progress" if running.journal.batches else "queued"
        await exchange.respond(200, JSON, orjson.dumps(builder.response(status)))

    async def _check(self, stored: StoredResponse) -> StoredResponse:
        """A running response whose instance went away is stored ``failed``."""
        if stored.response.get("status") not in RUNNING:
            return stored
        generations = self._generations()
        info = await generations.find(stored.id)
        if info is not None and info.live and await generations.writer_alive(info):
            return stored
        message = "the instance running this response went away"
        if info is not None and not info.live:
            # It ended, and its end was not stored (that happens before it ends).
            message = info.error or "the response ended before it was stored"
        response = lost(stored.response, message)
        fresh = StoredResponse(response, stored.input_items, stored.key_id)
        await self._store.put(fresh)
        return fresh

    async def _stream(self, exchange: Exchange, stored: StoredResponse, after: int) -> None:
        generations = self._generations()
        info = await generations.find(stored.id)
        if info is None:
            if not stored.response.get("background"):
                raise RequestError(
                    f"Response '{stored.id}' was not created with background=true: only"
                    " background responses can be streamed again; retrieve it without"
                    " 'stream'",
                    param="stream",
                )
            raise NotFound(
                f"the events of response '{stored.id}' are no longer kept; retrieve it"
                " without 'stream' for the response as it ended",
                code="response_events_evicted",
            )
        if not info.visible_to(exchange.key):
            raise NotFound(f"Response with id '{stored.id}' not found.")
        stream = generations.follow(info)
        await generations.resumed(info.id)
        await self._follow(exchange, info, stream, after)

    async def _follow(
        self,
        exchange: Exchange,
        info: Info,
        stream: AsyncGenerator[Batch, None],
        after: int,
    ) -> None:
        """The response's events (those after sequence number ``after``) to the client."""
        data = info.data
        builder = ResponseBuilder(
            info.id, data["created_at"], data["model"], data["echo"], data["summaries"], True
        )
        encoder = StreamEncoder(builder)
        record = exchange.record
        record.api = self.dialect.name
        record.model = data["model"]
        failure: list[SluiceError] = []

        def on_error(exc: SluiceError) -> bytes | None:
            failure.append(exc)
            return b"" if isinstance(exc, Cancelled) else None

        await follow_to(
            exchange,
            stream,
            Skipping(encoder, after + 1) if after >= 0 else encoder,
            self._keepalive,
            on_error=on_error,
        )
        if failure and isinstance(failure[0], WriterGone):
            stored = await self._store.get(info.id)
            if stored is not None and stored.response.get("status") in RUNNING:
                response = lost(builder.fail(failure[0]), failure[0].message)
                await self._store.put(StoredResponse(response, stored.input_items, stored.key_id))

    async def delete(self, exchange: Exchange, dialect: Dialect) -> None:
        stored = await self._find(exchange)
        await self._store.delete(stored.id)
        body = {"id": stored.id, "object": "response.deleted", "deleted": True}
        await exchange.respond(200, JSON, orjson.dumps(body))

    async def input_items(self, exchange: Exchange, dialect: Dialect) -> None:
        query = exchange.query
        limit_text = query.get("limit", "20")
        if not limit_text.isdigit() or not 1 <= int(limit_text) <= 100:
            raise RequestError("'limit' must be an integer from 1 to 100", param="limit")
        limit = int(limit_text)
        order = query.get("order", "desc")
        if order not in ("asc", "desc"):
            raise RequestError("'order' must be 'asc' or 'desc'", param="order")
        stored = await self._find(exchange, INPUT_ITEMS)
        items = stored.input_items if order == "asc" else stored.input_items[::-1]
        start = 0
        after = query.get("after")
        if after:
            ids = [item.get("id") for item in items]
            if after not in ids:
                raise RequestError(f"no input item with id '{after}'", param="after")
            start = ids.index(after) + 1
        page = items[start : start + limit]
        body = {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": start + limit < len(items),
        }
        await exchange.respond(200, JSON, orjson.dumps(body))
