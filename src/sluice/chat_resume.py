"""Resumable chat completions, an opt-in extension of the OpenAI chat API.

A streamed ``POST /v1/chat/completions`` sent with ``x-sluice-resumable: true`` runs as
a generation of its own (``sluice.generations``): the answer carries
``x-sluice-generation-id``, goes on when the client leaves (for ``generations.window``
seconds unless somebody reads it), and ``GET /v1/chat/completions/{id}/stream?after=N``
sends its chunks after the N-th (every one without ``after``), then follows it live,
from any instance. The chunks are the same bytes the first client got (same id, same
``created``). No SSE ``id:`` field is ever written: the openai SDK fails on a comment
that follows one, and keep-alives are comments.
"""

from __future__ import annotations

from collections.abc import Callable

from sluice.dialects import Dialect
from sluice.dialects.openai_chat import StreamEncoder
from sluice.errors import NotFound, RequestError
from sluice.events import ChatRequest
from sluice.exchange import Exchange
from sluice.generations import Detach, Detached, Generations
from sluice.resume import Skipping, follow_to

HEADER = "x-sluice-resumable"
ID_HEADER = b"x-sluice-generation-id"
PREFIX = "/v1/chat/completions/"
SUFFIX = "/stream"
KIND = "chat"


def wants_resume(headers: dict[str, str]) -> bool:
    return headers.get(HEADER, "").strip().lower() in ("true", "1")


class ResumableChat:
    def __init__(
        self, detach: Detach, generations: Callable[[], Generations], keepalive_interval: float
    ) -> None:
        self._detach = detach
        self._generations = generations
        self._keepalive = keepalive_interval

    async def create(self, exchange: Exchange, dialect: Dialect, request: ChatRequest) -> None:
        if not request.stream:
            raise RequestError(
                f"only streams can be resumed: send 'stream': true with {HEADER}, or leave"
                " the header out",
                param="stream",
            )
        record = exchange.record
        generation_id = f"gen_{record.id}"
        response_id = f"{dialect.id_prefix}{record.id}"
        created = int(record.started_at)
        data = {
            "model": request.model,
            "response_id": response_id,
            "created": created,
            "include_usage": request.include_usage,
        }
        encoder = StreamEncoder(request, response_id, created)
        generations = self._generations()
        generation = await self._detach(
            exchange, dialect, request, Detached(generation_id, KIND, data)
        )
        exchange.response_headers.append((ID_HEADER, generation_id.encode()))

        async def delivered() -> None:
            await generations.delivered(generation_id)

        stream = generations.follow(generation.info)
        await follow_to(exchange, stream, encoder, self._keepalive, on_end=delivered)

    async def resume(self, exchange: Exchange, dialect: Dialect) -> None:
        record = exchange.record
        record.api = dialect.name
        path: str = exchange.scope["path"]
        generation_id = path[len(PREFIX) : len(path) - len(SUFFIX)]
        text = exchange.query.get("after", "0") or "0"
        if not text.isdigit():
            raise RequestError(
                "'after' must be a number of chunks (an integer >= 0)", param="after"
            )
        generations = self._generations()
        info = await generations.find(generation_id)
        if info is None or info.kind != KIND or not info.visible_to(exchange.key):
            raise NotFound(
                f"No resumable chat completion with id '{generation_id}' (unknown, or made by"
                " another key)",
                code="generation_not_found",
            )
        data = info.data
        record.model = data["model"]
        stream = generations.follow(info)
        await generations.resumed(generation_id)
        request = ChatRequest(model=data["model"], messages=[], include_usage=data["include_usage"])
        encoder = StreamEncoder(request, data["response_id"], data["created"])

        async def delivered() -> None:
            await generations.delivered(generation_id)

        await follow_to(
            exchange, stream, Skipping(encoder, int(text)), self._keepalive, on_end=delivered
        )
