"""Client-facing APIs. A dialect decodes a request into a ``ChatRequest``, encodes event
batches into bytes for the client, and renders errors in its API's shape: before the
first byte as an HTTP status with a body, after it as an in-band error, then a close.
"""

from __future__ import annotations

from typing import Protocol

from sluice.errors import SluiceError
from sluice.events import ChatRequest
from sluice.providers import Batch

Headers = list[tuple[bytes, bytes]]

#: Headers that keep proxies (nginx: X-Accel-Buffering) and browsers from buffering
#: or sniffing a stream.
STREAM_HEADERS: Headers = [
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
    (b"x-content-type-options", b"nosniff"),
]


class Encoder(Protocol):
    """Per-response state: turns event batches into the client's bytes."""

    #: Streams send the head with the first batch; others send everything at the end.
    streaming: bool
    content_type: bytes
    #: Bytes to send while waiting for the first token, or None if the format has none.
    keepalive: bytes | None
    #: Forward upstream payloads that ride on events (``raw``) unchanged. Set once the
    #: router has picked the deployment, before the first batch is encoded.
    passthrough: bool
    #: Writes a ``Chunks`` event's bytes as they are (with ``passthrough``): only then
    #: is it worth leaving plain upstream chunks undecoded.
    takes_chunks: bool

    def encode(self, batch: Batch) -> bytes: ...

    def end(self) -> bytes: ...

    def error(self, exc: SluiceError) -> bytes: ...


class Dialect(Protocol):
    name: str

    def error_response(self, exc: SluiceError) -> tuple[int, Headers, bytes]: ...

    def encoder(self, request: ChatRequest, response_id: str) -> Encoder: ...
