"""One generation: how every instance describes it (``Info``), the one this process
writes (``Generation``, whose ``tee`` puts its events in its journal), and how a
surface asks for one (``Detached``)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from sluice.errors import NotFound, ServiceUnavailable, SluiceError
from sluice.events import Batch, ChatRequest
from sluice.journal import Abandoned, Cancelled, Journal, size_of
from sluice.journal.codec import copy_error
from sluice.store import VirtualKey

if TYPE_CHECKING:
    from sluice.dialects import Dialect
    from sluice.exchange import Exchange


class GenerationNotFound(NotFound):
    code = "generation_not_found"


class GenerationEvicted(NotFound):
    """The generation existed, but its events are no longer kept."""

    code = "generation_evicted"


class GenerationTooLarge(ServiceUnavailable):
    code = "generation_too_large"


class ShuttingDown(ServiceUnavailable):
    code = "generation_lost"


@dataclass(slots=True)
class Info:
    """A generation as every instance knows it."""

    id: str
    kind: str
    key_id: str | None
    instance: str
    background: bool
    #: What its surface needs to encode its events again (ids, model, ...).
    data: dict[str, Any]
    live: bool = True
    ended_at: float | None = None
    #: Why it failed, when it did.
    error: str | None = None

    def visible_to(self, key: VirtualKey | None) -> bool:
        """A key finds only its own generations; the master key, and anyone while
        authentication is off, every one."""
        return key is None or key.master or key.id == self.key_id

    def dump(self) -> bytes:
        return orjson.dumps(
            {
                "kind": self.kind,
                "key": self.key_id,
                "instance": self.instance,
                "background": self.background,
                "data": self.data,
                "live": self.live,
                "ended_at": self.ended_at,
                "error": self.error,
            }
        )

    @classmethod
    def load(cls, id: str, raw: bytes) -> Info:
        d = orjson.loads(raw)
        return cls(
            id,
            d["kind"],
            d["key"],
            d["instance"],
            d["background"],
            d["data"],
            d["live"],
            d["ended_at"],
            d.get("error"),
        )


#: What a surface appends when its generation is cancelled (None: end it ``Cancelled``).
OnCancel = Callable[[], Batch | None]
Wrap = Callable[[AsyncGenerator[Batch, None]], AsyncGenerator[Batch, None]]


@dataclass(slots=True)
class Detached:
    """How a surface asks to run a request as a generation of its own."""

    id: str
    kind: str
    #: What its surface needs to encode its events again, on any instance.
    data: dict[str, Any]
    background: bool = False
    #: Put around the pipeline's event stream (inside the journal's tee).
    wrap: Wrap | None = None
    on_cancel: OnCancel | None = None


class Detach(Protocol):
    """The app's way to start a request as a generation (``Gateway._detach``)."""

    def __call__(
        self, exchange: Exchange, dialect: Dialect, request: ChatRequest, detached: Detached
    ) -> Awaitable[Generation]: ...


@dataclass(slots=True, eq=False)
class Generation:
    """A generation this process writes."""

    info: Info
    journal: Journal
    on_cancel: OnCancel | None = None
    task: asyncio.Task[None] | None = None
    cancelled: bool = False
    #: Why it was cancelled.
    reason: str = ""
    #: Readers in this process now; since when nobody reads it.
    readers: int = 0
    idle_since: float = field(default_factory=time.monotonic)
    size: int = 0
    max_bytes: int = 0
    #: Whether every refusing policy let it through (``Call.admitted``).
    admitted: Callable[[], bool] = lambda: False
    #: Set once its task ended and its end reached the shared storage.
    done: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def id(self) -> str:
        return self.info.id

    async def admission(self) -> None:
        """Wait until it was admitted, wrote something or ended; raise its error if it
        was refused before writing anything."""
        journal = self.journal
        # ``Call.admitted`` is a plain flag, set by whichever policy lets it through.
        while journal.live and not journal.batches and not self.admitted():  # noqa: ASYNC110
            await asyncio.sleep(0.005)
        if journal.error is not None and not journal.batches:
            raise copy_error(journal.error) from journal.error

    def cancel(self, reason: str = "cancelled on request") -> bool:
        """Stop it now (its upstream read is cancelled); False if it already ended or
        was cancelled."""
        if self.cancelled or not self.journal.live or self.task is None:
            return False
        self.cancelled = True
        self.reason = reason
        self.task.cancel()
        return True

    async def tee(self, stream: AsyncGenerator[Batch, None]) -> AsyncGenerator[Batch, None]:
        """The generation's event stream, each batch written to its journal, which ends
        as the stream does: complete, failed, or cancelled."""
        journal = self.journal
        try:
            async with contextlib.aclosing(stream):
                async for batch in stream:
                    self.size += size_of((batch,))
                    if self.size > self.max_bytes:
                        raise GenerationTooLarge(
                            f"the generation is larger than {self.max_bytes} bytes,"
                            " the most a generation may keep (generations.max_bytes)"
                        )
                    journal.append(batch)
                    yield batch
        except asyncio.CancelledError:
            if self.cancelled:
                final = self.on_cancel() if self.on_cancel is not None else None
                if final is not None:
                    journal.append(final)
                    journal.complete()
                else:
                    journal.fail(Cancelled("the generation was cancelled on request"))
            else:
                journal.fail(Abandoned("the generation was stopped before it ended"))
            raise
        except SluiceError as exc:
            journal.fail(exc)
            raise
        except Exception as exc:
            journal.fail(SluiceError(f"internal error: {type(exc).__name__}"))
            raise
        journal.complete()


Produce = Callable[[Generation], Awaitable[None]]
