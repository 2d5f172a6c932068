"""Upstreams. A *wire* is one upstream format, sans-I/O: the request bytes, a decoder
of response bytes into event batches, and the mapping of error statuses and bodies. A
*provider* is a configured upstream that streams a request as batches: the generic
HTTP loop over a wire (``upstream.HTTPProvider``), or the simulator.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping
from typing import Any, Protocol

from sluice.errors import SluiceError
from sluice.events import Batch, ChatRequest, WireFormat

#: Values of another format's fields that ask for nothing (``logprobs: false``): a wire
#: that cannot carry the field drops them rather than refusing them.
NO_OP: Mapping[str, tuple[Any, ...]] = {
    "logprobs": (False,),
    "top_logprobs": (0,),
    "frequency_penalty": (0,),
    "presence_penalty": (0,),
    "logit_bias": ({},),
    "modalities": (["text"],),
}


class Provider(Protocol):
    """Turns a request into batches of events; raises ``sluice.errors`` exceptions.

    A batch is what one upstream read gave: events that arrived together are written
    to the client together. The first batch opens with a ``Start``. Any failure before
    the first event is raised from the first ``__anext__``; a failure after it from a
    later one. The caller owns the iterator and closes it (``aclose``), which must
    release the upstream connection at once.
    """

    #: Shown as ``owned_by`` in ``/v1/models``.
    owned_by: str
    #: The wire format of what ``stream`` passes along as ``Verbatim``.
    format: WireFormat

    def stream(self, request: ChatRequest, verbatim: bool = False) -> AsyncGenerator[Batch, None]:
        """``verbatim``: the consumer writes ``format`` bytes as they came, so the
        upstream's events may come as ``Verbatim`` instead of being decoded."""
        ...

    async def aclose(self) -> None: ...


class Decoder(Protocol):
    """One response body, fed read by read."""

    #: The upstream said the stream is over (``[DONE]``, ``message_stop``, ...).
    done: bool
    #: A failure the upstream reported in-band: raised after the batch it ended.
    error: SluiceError | None

    def feed(self, data: bytes) -> Batch: ...

    def eof(self) -> Batch:
        """The body ended: the last events (a whole-body format has all of them only
        now); raises if the stream did not finish."""
        ...


class Wire(Protocol):
    format: WireFormat
    #: Appended to the deployment's ``base_url`` (before any query).
    path: str
    #: The same for embeddings requests; None: the format has no embeddings.
    embeddings_path: str | None
    #: Headers every request carries (an API version), key or no key.
    fixed_headers: Mapping[str, str]

    def auth_headers(self, key: str, base_url: str) -> dict[str, str]: ...

    def body(self, request: ChatRequest, model: str) -> bytes:
        """The upstream request; raises ``RequestError`` naming what the format
        cannot carry."""
        ...

    def request_headers(self, request: ChatRequest) -> dict[str, str]:
        """Per-request headers (``anthropic-beta`` from an Anthropic client)."""
        ...

    def decoder(self, request: ChatRequest, verbatim: bool) -> Decoder: ...

    def error(self, status: int, body: bytes, headers: Mapping[str, str]) -> SluiceError: ...
