"""The request record: one row per request that reached the gateway."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

Outcome = Literal["ok", "error", "client_disconnected", "rejected", "cancelled", "shutdown"]


@dataclass(slots=True)
class Record:
    id: str
    started_at: float  # unix seconds
    route: str
    method: str = "GET"
    api: str = ""  # the dialect: text, openai_chat, ...
    model: str | None = None
    upstream: str | None = None  # provider:model@host of the deployment used
    stream: bool = True
    client: str | None = None
    ended_at: float | None = None
    outcome: Outcome = "ok"
    status: int = 200
    ttft_ms: float | None = None
    duration_ms: float | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    usage_source: str | None = None  # reported | estimated | None (unknown)
    chunks: int = 0
    error: str | None = None
    prompt: str | None = None  # only when configured to store content
    response: str | None = None
    key_id: str | None = None  # the virtual key that made the request
    cost_usd: float | None = None
    cache: str | None = None  # hit | miss | coalesced | bypass
    attempts: int = 0  # upstream attempts made (retries and fallbacks included)
    #: When each batch of the stream arrived, encoded by ``store.timeline`` (a few KB).
    timeline: bytes | bytearray | None = None
    operation: str | None = None  # chat | embeddings; None: not a generation
    provider: str | None = None  # the provider of the deployment used (openai, anthropic, ...)
    response_model: str | None = None  # the model name the answer came with
    response_id: str | None = None  # the answer's id as its source gave it
    finish_reasons: str | None = None  # stop, length, ...: one per choice, comma-separated
    error_type: str | None = None  # the error's class (RateLimited, UpstreamTimeout, ...)
    fallbacks: int = 0  # times routing moved on to a fallback model
    resumes: int = 0  # times a client resumed the generation's stream (also after its end)


class RecordStore(Protocol):
    """Where records go. ``add`` never blocks and never raises."""

    async def start(self) -> None: ...

    def add(self, record: Record) -> None: ...

    async def flush(self) -> None: ...

    async def close(self) -> None: ...

    async def recent(self, limit: int) -> list[Record]: ...

    async def resumed(self, record_id: str, resumes: int) -> bool:
        """Raise the ``resumes`` of record ``record_id`` to at least ``resumes`` (a
        generation resumed after its record was made): in place while the record waits
        to be written, else in the database. False when it is not found (not written
        yet, or by another instance that has not written it yet); never raises."""
        ...


@runtime_checkable
class Backlog(Protocol):
    """A record store that can hold records back while its database cannot be written."""

    @property
    def held_back(self) -> int:
        """Records accepted but not yet in the database because writes fail (in memory,
        or spilled to a local file); 0 when writes go through."""
        ...


class StoreError(Exception):
    """The database cannot be used now (unreachable, down, locked, full). The cause is
    kept; the message never holds a password."""


@dataclass(frozen=True, slots=True)
class VirtualKey:
    """A client key the gateway issued. Only its hash is stored; the key itself is
    shown once, when it is created."""

    id: str
    name: str
    #: Public model names this key may use; empty means every model.
    models: tuple[str, ...] = ()
    rpm: int | None = None  # requests per minute
    tpm: int | None = None  # tokens per minute
    budget_usd: float | None = None
    expires_at: float | None = None  # unix seconds
    revoked: bool = False
    created_at: float = 0.0
    #: The master key (``SLUICE_MASTER_KEY``): admin, and a client key with no limits.
    master: bool = False
    #: May sign in to the console (``sluice keys create --admin``), as the master key does.
    admin: bool = False
