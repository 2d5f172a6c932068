"""Policies wrap the handler that turns a request into event batches.

A ``Handler`` maps a ``ChatRequest`` (and the per-request ``Call``) to an async
iterator of batches; a ``Policy`` maps a handler to a handler, the way ASGI middleware
maps an app to an app, but over events instead of bytes. The order is decided in one
place, ``pipeline``. Recording is outermost and lives in the app's ``finally``, so
rejections before a request could even be decoded are recorded too.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from dataclasses import dataclass, field

from sluice.config import Deployment
from sluice.events import Batch, ChatRequest, WireFormat
from sluice.store import Record, VirtualKey


@dataclass(slots=True)
class Call:
    """What the gateway knows about one request while it is served."""

    record: Record
    #: Request headers, names lowercased.
    headers: Mapping[str, str] = field(default_factory=dict)
    #: Headers to add to the response (rate-limit state, cache status, ...). Policies
    #: append before the first event; after the head is out they are ignored.
    response_headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    #: The authenticated virtual key, when keys are in use.
    key: VirtualKey | None = None
    #: Served without a key on a route configured public (``auth.public_seed``):
    #: limited per client address (``record.client``) instead of per key.
    public: bool = False
    deployment: Deployment | None = None
    #: The wire format whose bytes what reads the stream writes out as they came,
    #: keeping no events (no cache journal, no stored content): an upstream of that
    #: format may pass its events along as ``Verbatim``. Policies that keep events
    #: clear it.
    verbatim: WireFormat | None = None
    #: Every refusing policy let the request through and an answer is being produced
    #: (the router called an upstream, or a coalesced request follows another's
    #: generation). Only then may keep-alives commit the response head: a refusal
    #: that takes long to decide must still get its own status.
    admitted: bool = False


Handler = Callable[[ChatRequest, Call], AsyncGenerator[Batch, None]]
Policy = Callable[[Handler], Handler]


def pipeline(policies: Sequence[Policy], innermost: Handler) -> Handler:
    """Compose policies, the first listed outermost."""
    handler = innermost
    for policy in reversed(policies):
        handler = policy(handler)
    return handler
