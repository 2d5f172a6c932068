"""The routes of the Vercel AI SDK's chat transport (``DefaultChatTransport``).

``POST /api/chat`` answers a chat's messages with the UI message stream; ``GET
/api/chat/{id}/stream`` resumes the chat's answer (replayed from its ``start``, under
the same message id, then live), or says 204 when there is none, as ``resumeStream``
expects; ``POST /api/chat/{id}/stop`` stops it (``{"id", "stopped"}``).

An answer to a chat (a body with an ``id``) runs as a generation of its own
(``sluice.generations``): it goes on when its client leaves (for ``generations.window``
seconds unless somebody reads it), and any instance resumes or stops it. A chat's
answer is resumable while it runs, and after its end until a client read it whole
(within ``generations.retention``): a client cut off near the end still gets it. A key
finds only its own chats.

The message id of an answer is ``msg-`` and its record's id, except when the last
message sent is the assistant's (a turn that goes on after the client ran its tools):
then the answer continues that message, under its id, as the SDK's own server does
(``getResponseUIMessageId``); a new id would show the message twice.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Protocol

import orjson

from sluice.dialects import Dialect, Encoder
from sluice.dialects.bounds import DEFAULT_BOUNDS, Bounds
from sluice.dialects.ui_stream import HEADER, STOPPED, StreamEncoder, UIStreamDialect
from sluice.errors import SluiceError
from sluice.events import Batch, ChatRequest, StreamError
from sluice.exchange import Exchange
from sluice.generations import Detach, Detached, GenerationEvicted, Generations, Info
from sluice.resume import follow_to
from sluice.store import VirtualKey

PREFIX = "/api/chat/"
JSON = [(b"content-type", b"application/json")]
KIND = "ui"

Wrap = Callable[[AsyncGenerator[Batch, None]], AsyncGenerator[Batch, None]]


class Serve(Protocol):
    """The app's way to serve a canonical request through its pipeline."""

    def __call__(
        self,
        exchange: Exchange,
        dialect: Dialect,
        request: ChatRequest,
        encoder: Encoder | None = None,
        wrap: Wrap | None = None,
    ) -> Awaitable[None]: ...


def _chat_id(exchange: Exchange, suffix: str) -> str:
    path: str = exchange.scope["path"]
    return path[len(PREFIX) : len(path) - len(suffix)]


def _name(key: VirtualKey | None, chat_id: str) -> str:
    return f"ui:{key.id if key is not None else '-'}:{chat_id}"


def _stopped() -> Batch:
    return [StreamError("the answer was stopped on request", code=STOPPED)]


class UIChatAPI:
    def __init__(
        self,
        serve: Serve,
        max_body_bytes: int,
        default_model: str,
        keepalive_interval: float,
        detach: Detach,
        generations: Callable[[], Generations],
        bounds: Bounds = DEFAULT_BOUNDS,
    ) -> None:
        self.dialect = UIStreamDialect(bounds)
        self._serve = serve
        self._max_body = max_body_bytes
        self._default_model = default_model
        self._keepalive = keepalive_interval
        self._detach = detach
        self._generations = generations

    async def create(self, exchange: Exchange, dialect: Dialect) -> None:
        body = await exchange.read_body(self._max_body)
        chat = self.dialect.decode_chat(body, self._default_model)
        request = chat.request
        message_id = chat.continues or f"{self.dialect.id_prefix}{exchange.record.id}"
        encoder = StreamEncoder(message_id, request.model)
        exchange.response_headers.append(HEADER)
        try:
            if chat.chat_id is None:  # nothing to resume it by: served as any request
                await self._serve(exchange, dialect, request, encoder)
                return
            generations = self._generations()
            generation_id = f"gen_{exchange.record.id}"
            data = {"model": request.model, "message_id": message_id}
            detached = Detached(generation_id, KIND, data, on_cancel=_stopped)
            generation = await self._detach(exchange, dialect, request, detached)
            await generations.name(_name(exchange.key, chat.chat_id), generation_id)
            stream = generations.follow(generation.info)
            try:
                await follow_to(
                    exchange,
                    stream,
                    encoder,
                    self._keepalive,
                    on_end=self._delivered(generation_id),
                )
            except SluiceError:
                # Refused before its first byte: the client has the whole answer (an
                # error status); a resume finds nothing to resume.
                await generations.delivered(generation_id)
                raise
        except SluiceError:
            if not exchange.started:  # answered as a JSON error: not a stream
                exchange.response_headers.remove(HEADER)
            raise

    def _delivered(self, generation_id: str) -> Callable[[], Awaitable[None]]:
        async def delivered() -> None:
            await self._generations().delivered(generation_id)

        return delivered

    async def _find(self, exchange: Exchange, suffix: str) -> Info | None:
        exchange.record.api = self.dialect.name
        info = await self._generations().named(_name(exchange.key, _chat_id(exchange, suffix)))
        if info is None or info.kind != KIND or not info.visible_to(exchange.key):
            return None
        return info

    async def resume(self, exchange: Exchange, dialect: Dialect) -> None:
        generations = self._generations()
        info = await self._find(exchange, "/stream")
        stream = None
        if info is not None and (info.live or not await generations.was_delivered(info.id)):
            try:
                stream = generations.follow(info)
            except GenerationEvicted:
                stream = None
        if info is None or stream is None:
            await exchange.respond(204, [], b"")
            return
        await generations.resumed(info.id)
        data = info.data
        exchange.record.model = data["model"]
        encoder = StreamEncoder(data["message_id"], data["model"])
        exchange.response_headers.append(HEADER)
        try:
            await follow_to(
                exchange, stream, encoder, self._keepalive, on_end=self._delivered(info.id)
            )
        except SluiceError:
            if not exchange.started:
                exchange.response_headers.remove(HEADER)
            raise

    async def stop(self, exchange: Exchange, dialect: Dialect) -> None:
        info = await self._find(exchange, "/stop")
        stopped = info is not None and info.live and await self._generations().cancel(info)
        body = {"id": _chat_id(exchange, "/stop"), "stopped": stopped}
        await exchange.respond(200, JSON, orjson.dumps(body))
