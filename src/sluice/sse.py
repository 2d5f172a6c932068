"""Server-sent events, sans-I/O: ``feed(bytes) -> events``, ``flush()``, and encoders.

The decoder follows the WHATWG HTML "event stream interpretation" to the letter where
it bites: a line ends only at CR, LF or CRLF (never at U+2028/U+2029, which
``str.splitlines()`` and line iterators built on it also split on), a CR at the end of
one read may be the first half of a CRLF in the next, lines starting with ``:`` are
comments, ``data`` fields of one event are joined with LF, an event is dispatched at a
blank line, and one leading UTF-8 BOM is ignored. It works on bytes: CR and LF never
occur inside a multi-byte UTF-8 sequence, so a character split across reads is
reassembled with its line, and the payload reaches JSON decoding without an extra
decode/encode round trip.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: The most bytes of one unfinished event a decoder holds (``max_event``): a peer that
#: sends a longer line or event gets ``EventTooLarge`` instead of our memory.
MAX_EVENT = 4 * 1024 * 1024

_LF = 0x0A
_CR = 0x0D
_BOM = b"\xef\xbb\xbf"


@dataclass(slots=True)
class ServerSentEvent:
    data: bytes
    event: str = "message"
    id: str | None = None
    retry: int | None = None


class EventTooLarge(ValueError):
    """An event (or one line of it) is longer than the decoder's ``max_event``."""


class SSEDecoder:
    """Incremental decoder. Feed it reads of any size; it returns complete events. It
    holds at most ``max_event`` bytes of an unfinished event (``EventTooLarge`` past it)."""

    __slots__ = (
        "_buffer",
        "_data",
        "_data_size",
        "_event",
        "_id",
        "_max",
        "_pending_cr",
        "_retry",
        "_started",
    )

    def __init__(self, max_event: int = MAX_EVENT) -> None:
        self._max = max_event
        self._data_size = 0
        self._buffer = b""
        self._pending_cr = False
        self._started = False
        self._data: list[bytes] = []
        self._event: str | None = None
        self._id: str | None = None
        self._retry: int | None = None

    @property
    def at_boundary(self) -> bool:
        """Nothing of an unfinished event is held: the next read starts a new event,
        so a reader may take a read of whole events without this decoder."""
        return (
            self._started
            and not self._buffer
            and not self._pending_cr
            and not self._data
            and self._event is None
            and self._retry is None
        )

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        out: list[ServerSentEvent] = []
        self._feed(chunk, out, False)
        return out

    def feed_data(self, chunk: bytes) -> list[bytes]:
        """Like ``feed``, but only each event's data: for readers that ignore event
        names and ids (OpenAI-compatible streams). It builds no object per event."""
        out: list[bytes] = []
        self._feed(chunk, out, True)
        return out

    def _feed(self, chunk: bytes, out: list[Any], data_only: bool) -> None:
        if not chunk:
            # An empty read must not forget a pending CR: its LF may be in the next one.
            return
        if self._pending_cr:
            self._pending_cr = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        buffer = self._buffer + chunk if self._buffer else chunk
        if not self._started:
            # "One leading U+FEFF BYTE ORDER MARK character must be ignored if any are
            # present." Only one: a second BOM belongs to the first field name.
            if _BOM.startswith(buffer):
                self._buffer = buffer
                return
            self._started = True
            if buffer.startswith(_BOM):
                buffer = buffer[len(_BOM) :]
        events: list[ServerSentEvent] = []
        if not self._data and self._event is None and self._retry is None and b"\r" not in buffer:
            # Fast path for the common framing (LF only, one ``data: `` line per event):
            # split whole events in C; anything else in a block takes the line-by-line path.
            blocks = buffer.split(b"\n\n")
            buffer = blocks.pop()
            for block in blocks:
                if block[:6] == b"data: " and b"\n" not in block:
                    out.append(
                        block[6:] if data_only else ServerSentEvent(block[6:], "message", self._id)
                    )
                else:
                    for line in block.split(b"\n"):
                        self._line(line, events)
                    self._line(b"", events)
                    if events:
                        out.extend([e.data for e in events] if data_only else events)
                        events = []
        start = 0
        end = len(buffer)
        find = buffer.find
        while start < end:
            lf = find(b"\n", start)
            cr = find(b"\r", start, lf if lf >= 0 else end)
            if cr >= 0:
                stop, nxt = cr, cr + 1
                if nxt < end:
                    if buffer[nxt] == _LF:
                        nxt += 1
                else:
                    # A CR as the last byte: its LF, if any, comes with the next read.
                    self._pending_cr = True
            elif lf >= 0:
                stop, nxt = lf, lf + 1
            else:
                break
            self._line(buffer[start:stop], events)
            start = nxt
        self._buffer = buffer[start:] if start < end else b""
        if len(self._buffer) > self._max:
            raise EventTooLarge(f"an event line longer than {self._max} bytes")
        if events:
            out.extend([e.data for e in events] if data_only else events)

    def flush(self) -> list[ServerSentEvent]:
        """End of stream. Per the spec an unterminated event is discarded."""
        self._buffer = b""
        self._data = []
        self._data_size = 0
        self._event = None
        self._pending_cr = False
        self._started = False
        return []

    def _line(self, line: bytes, events: list[ServerSentEvent]) -> None:
        if not line:
            if self._data:
                data = self._data[0] if len(self._data) == 1 else b"\n".join(self._data)
                events.append(
                    ServerSentEvent(data, self._event or "message", self._id, self._retry)
                )
            self._data = []
            self._data_size = 0
            self._event = None
            self._retry = None
            return
        if line[:6] == b"data: ":
            self._add_data(line[6:])
            return
        if line[0] == 0x3A:  # ":" comment
            return
        colon = line.find(b":")
        if colon < 0:
            name, value = line, b""
        else:
            name, value = line[:colon], line[colon + 1 :]
            if value[:1] == b" ":
                value = value[1:]
        if name == b"data":
            self._add_data(value)
        elif name == b"event":
            self._event = value.decode("utf-8", "replace")
        elif name == b"id":
            if b"\0" not in value:
                self._id = value.decode("utf-8", "replace")
        elif name == b"retry" and value.isdigit():
            self._retry = int(value)

    def _add_data(self, value: bytes) -> None:
        self._data_size += len(value) + 1
        if self._data_size > self._max:
            raise EventTooLarge(f"an event longer than {self._max} bytes")
        self._data.append(value)


def encode_data(payload: bytes) -> bytes:
    """One ``data:`` event. The payload must hold no CR or LF (compact JSON never does)."""
    return b"data: " + payload + b"\n\n"


def _lines(text: bytes) -> list[bytes]:
    return text.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")


def encode_event(data: bytes | str, event: str | None = None) -> bytes:
    """A general event; multi-line data is split on CR, LF and CRLF, as readers will."""
    if isinstance(data, str):
        data = data.encode()
    if event and ("\r" in event or "\n" in event):
        # It would end the field early and let the rest read as other fields.
        raise ValueError(f"an SSE event name cannot hold CR or LF: {event!r}")
    head = b"event: " + event.encode() + b"\n" if event else b""
    return head + b"".join(b"data: " + line + b"\n" for line in _lines(data)) + b"\n"


def encode_comment(text: str = "") -> bytes:
    """A comment (a keep-alive); each line of ``text`` becomes its own comment line."""
    if not text:
        return b":\n\n"
    return b"".join(b": " + line + b"\n" for line in _lines(text.encode())) + b"\n"


DONE = b"data: [DONE]\n\n"
