"""Request bodies sent with a ``Content-Encoding`` (RFC 9110 §8.4): sans-I/O decoders
that never hold more than a size limit of decoded bytes, so a small compressed body that
expands to gigabytes (a zip bomb) costs no more than the limit.

``decoder(header, limit)`` gives one object with ``feed(bytes) -> bytes`` and
``flush() -> bytes`` for the whole header value: codings are listed in the order they
were applied, so they are undone from the last one back. The same decoders read an
upstream's body that came compressed (``subject`` names it in the errors; for a stream,
``per_feed`` bounds what one read may expand to instead of the whole body).
"""

from __future__ import annotations

import zlib
from typing import Protocol

from sluice.errors import BodyTooLarge, RequestError, UnsupportedMediaType

#: What ``Accept-Encoding`` answers a body we cannot decode with.
SUPPORTED = "gzip, deflate"


class Decoder(Protocol):
    def feed(self, data: bytes) -> bytes: ...

    def flush(self) -> bytes: ...


class _Identity:
    def feed(self, data: bytes) -> bytes:
        return data

    def flush(self) -> bytes:
        return b""


class _Zlib:
    """gzip (``wbits`` 31) or deflate. HTTP's "deflate" is the zlib format (RFC 1950),
    but some clients send a raw deflate stream (RFC 1951): like browsers, the first
    bytes decide which one it is."""

    def __init__(self, coding: str, limit: int, subject: str, per_feed: bool) -> None:
        self._coding = coding
        self._wbits = 31 if coding == "gzip" else 15
        self._z = zlib.decompressobj(self._wbits)
        self._limit = limit
        self._size = 0
        self._started = False
        self._subject = subject
        self._per_feed = per_feed

    def feed(self, data: bytes) -> bytes:
        if self._per_feed:
            self._size = 0
        parts: list[bytes] = []
        while data:
            try:
                # At most one byte past the limit: enough to know the body is too large.
                out = self._z.decompress(data, self._limit - self._size + 1)
            except zlib.error as exc:
                if self._coding == "deflate" and self._wbits == 15 and not self._started:
                    self._wbits = -15
                    self._z = zlib.decompressobj(self._wbits)
                    continue
                raise self._invalid(f"is not {self._coding} data") from exc
            self._started = True
            self._size += len(out)
            if self._size > self._limit:
                raise BodyTooLarge(f"{self._subject} is larger than {self._limit} bytes decoded")
            parts.append(out)
            data = b""
            if self._z.eof and self._z.unused_data:
                if self._coding != "gzip":
                    raise self._invalid("has bytes after its end")
                # A gzip file may hold several members, one after the other (RFC 1952).
                data = self._z.unused_data
                self._z = zlib.decompressobj(self._wbits)
        return b"".join(parts)

    def flush(self) -> bytes:
        if not self._z.eof:
            raise self._invalid(f"its {self._coding} data ends early")
        return b""

    def _invalid(self, why: str) -> RequestError:
        return RequestError(
            f"{self._subject} is declared 'Content-Encoding: {self._coding}' but {why}",
            param="Content-Encoding",
        )


class _Chain:
    def __init__(self, decoders: list[Decoder]) -> None:
        self._decoders = decoders

    def feed(self, data: bytes) -> bytes:
        for decoder in self._decoders:
            data = decoder.feed(data)
        return data

    def flush(self) -> bytes:
        data = b""
        for decoder in self._decoders:
            data = decoder.feed(data) + decoder.flush()
        return data


def decoder(
    header: str | None,
    limit: int,
    subject: str = "the request body",
    per_feed: bool = False,
) -> Decoder:
    """The decoder for a ``Content-Encoding`` value; ``UnsupportedMediaType`` (415) for
    a coding we do not know."""
    codings = [c.strip().lower() for c in (header or "").split(",")]
    decoders: list[Decoder] = []
    for coding in reversed(codings):
        if coding in ("", "identity"):
            continue
        if coding in ("gzip", "x-gzip"):
            decoders.append(_Zlib("gzip", limit, subject, per_feed))
        elif coding == "deflate":
            decoders.append(_Zlib("deflate", limit, subject, per_feed))
        else:
            raise UnsupportedMediaType(
                f"{subject}'s Content-Encoding {coding!r} is not supported;"
                f" use {SUPPORTED} or none",
                param="Content-Encoding",
                headers={"Accept-Encoding": SUPPORTED},
            )
    if not decoders:
        return _Identity()
    return decoders[0] if len(decoders) == 1 else _Chain(decoders)
