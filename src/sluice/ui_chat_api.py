"""The routes of the Vercel AI SDK's chat transport (``DefaultChatTransport``).

``POST /api/chat`` answers a chat's messages with the UI message stream; ``GET
/api/chat/{id}/stream`` resumes the chat's answer in flight (replayed from its start,
then live), or says 204 when there is none, as ``resumeStream`` expects; ``POST
/api/chat/{id}/stop`` stops it (``{"id", "stopped"}``). Which answers are in flight is
``ui_chats``' business.

The message id of an answer is ``msg-`` and its record's id, except when the last
message sent is the assistant's (a turn that goes on after the client ran its tools):
then the answer continues that message, under its id, as the SDK's own server does
(``getResponseUIMessageId``); a new id would show the message twice.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Protocol

import orjson

from sluice.dialects import Dialect, Encoder
from sluice.dialects.bounds import DEFAULT_BOUNDS, Bounds
from sluice.dialects.ui_stream import HEADER, StreamEncoder, UIStreamDialect
from sluice.errors import SluiceError
from sluice.events import Batch, ChatRequest
from sluice.exchange import Exchange
from sluice.relay import relay
from sluice.ui_chats import UIChats

PREFIX = "/api/chat/"
JSON = [(b"content-type", b"application/json")]

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


class UIChatAPI:
    def __init__(
        self,
        serve: Serve,
        max_body_bytes: int,
        default_model: str,
        keepalive_interval: float,
        bounds: Bounds = DEFAULT_BOUNDS,
    ) -> None:
        self.dialect = UIStreamDialect(bounds)
        self.chats = UIChats()
        self._serve = serve
        self._max_body = max_body_bytes
        self._default_model = default_model
        self._keepalive = keepalive_interval

    async def create(self, exchange: Exchange, dialect: Dialect) -> None:
        body = await exchange.read_body(self._max_body)
        chat = self.dialect.decode_chat(body, self._default_model)
        request = chat.request
        message_id = chat.continues or f"{self.dialect.id_prefix}{exchange.record.id}"
        encoder = StreamEncoder(message_id, request.model)
        generation = None
        if chat.chat_id is not None:
            key_id = exchange.key.id if exchange.key is not None else None
            generation = self.chats.generation(chat.chat_id, message_id, request.model, key_id)
        exchange.response_headers.append(HEADER)
        try:
            await self._serve(
                exchange, dialect, request, encoder, generation.tee if generation else None
            )
        except SluiceError:
            if not exchange.started:  # answered as a JSON error: not a stream
                exchange.response_headers.remove(HEADER)
            raise
        if generation is not None and generation.stopped:
            exchange.record.error = "stopped on request"

    async def resume(self, exchange: Exchange, dialect: Dialect) -> None:
        record = exchange.record
        record.api = dialect.name
        generation = self.chats.find(_chat_id(exchange, "/stream"), exchange.key)
        if generation is None:
            await exchange.respond(204, [], b"")
            return
        record.model = generation.model
        encoder = StreamEncoder(generation.message_id, generation.model)
        exchange.response_headers.append(HEADER)
        task = asyncio.current_task()
        assert task is not None
        watcher = exchange.watch_disconnect(task)
        stream = generation.journal.follow()
        try:
            async with contextlib.aclosing(stream):
                await relay(exchange, stream, encoder, self._keepalive)
        except asyncio.CancelledError:
            if not exchange.disconnected:
                raise
            task.uncancel()
            record.outcome = "client_disconnected"
        except SluiceError as exc:
            if not exchange.started:
                exchange.response_headers.remove(HEADER)
                raise
            record.outcome = "error"
            record.error = exc.message
            with contextlib.suppress(OSError):
                await exchange.write(encoder.error(exc), more=False)
        finally:
            watcher.cancel()

    async def stop(self, exchange: Exchange, dialect: Dialect) -> None:
        exchange.record.api = dialect.name
        chat_id = _chat_id(exchange, "/stop")
        generation = self.chats.find(chat_id, exchange.key)
        if generation is not None:
            generation.stop()
        body = {"id": chat_id, "stopped": generation is not None}
        await exchange.respond(200, JSON, orjson.dumps(body))
