"""Client-facing APIs. A dialect is one entry of the app's route table: it decodes a
request into a ``ChatRequest``, makes the encoder that turns event batches into the
client's bytes, and renders errors in its API's shape: before the first byte as an HTTP
status with a body, after it as an in-band error, then a close.

Passthrough is the encoder's decision: a ``Verbatim`` of its own wire format is written
as it came (one write per upstream read); anything else is encoded from events.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from sluice.errors import SluiceError
from sluice.events import Batch, ChatRequest, WireFormat

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
    #: The wire format whose ``Verbatim`` bytes this encoder writes as they came (None:
    #: it encodes every event). Only then is it worth leaving upstream events unread.
    verbatim: WireFormat | None

    def encode(self, batch: Batch) -> bytes: ...

    def end(self) -> bytes: ...

    def error(self, exc: SluiceError) -> bytes: ...


class Dialect(Protocol):
    #: Recorded as the request's ``api``.
    name: str
    #: Starts the id of a response the gateway names itself (the record id follows).
    id_prefix: str

    def decode(
        self, body: bytes, query: Mapping[str, str], headers: Mapping[str, str], default_model: str
    ) -> ChatRequest: ...

    def error_response(self, exc: SluiceError) -> tuple[int, Headers, bytes]: ...

    def encoder(self, request: ChatRequest, response_id: str) -> Encoder: ...


def error_headers(content_type: bytes, exc: SluiceError) -> Headers:
    headers: Headers = [(b"content-type", content_type)]
    headers.extend((k.lower().encode(), v.encode()) for k, v in exc.headers.items())
    return headers
