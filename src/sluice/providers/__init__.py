"""Upstream families. Each provider owns one upstream wire format."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Protocol

from sluice.events import ChatRequest, StreamEvent

Batch = list[StreamEvent]


class Provider(Protocol):
    """Turns a request into batches of events; raises ``sluice.errors`` exceptions.

    A batch is what one upstream read gave: events that arrived together are written
    to the client together. Any failure before the first event is raised from the
    first ``__anext__``; a failure after it from a later one. The caller owns the
    iterator and closes it (``aclose``), which must release the upstream connection
    at once.
    """

    #: Shown as ``owned_by`` in ``/v1/models``.
    owned_by: str

    def stream(self, request: ChatRequest, undecoded: bool = False) -> AsyncGenerator[Batch, None]:
        """``undecoded``: the consumer forwards OpenAI chunks as they came, so a run of
        plain content chunks may come as one ``Chunks`` event instead of events."""
        ...

    async def aclose(self) -> None: ...
