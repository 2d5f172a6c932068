"""A stream's token timeline: when each batch arrived, in a few KB at most.

The relay marks every batch it pulls (one upstream read) with the milliseconds since the
previous mark (the first: since the request started) and how many output deltas the
batch carried. After a version byte, a mark is the unsigned LEB128 varint of
``gap << 1 | (count != 1)``, followed by the varint of ``count`` when that bit is set:
a batch of one delta less than 64 ms after the previous one (the common case) is one
byte, which the relay appends inline; everything else goes through ``append``, which
tells the relay how many more one-byte marks fit.

The size is bounded. Once the marks pass ``MAX_BYTES`` they are merged at a coarser
grain, doubled until they fit in half of it: a mark only once ``grain`` ms passed since
the previous one, carrying every delta since (the marks up to the first delta
excepted). The relay then marks at that grain too (a batch sooner than that is left for
the next mark), so a long stream keeps its whole span, the first token and every stall
longer than the grain, and costs less per batch, not more. The deltas after the last
mark of a stream cut short are lost.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["MAX_BYTES", "VERSION", "append", "coarsen", "decode", "encode", "new"]

VERSION = 1
#: Past this many bytes the marks are merged two by two.
MAX_BYTES = 4096


def new() -> bytearray:
    return bytearray((VERSION,))


def _varint(out: bytearray, value: int) -> None:
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def _mark(out: bytearray, gap: int, count: int) -> None:
    gap = max(gap, 0)
    if count == 1:
        _varint(out, gap << 1)
    else:
        _varint(out, gap << 1 | 1)
        _varint(out, max(count, 0))


def append(out: bytearray, gap_ms: int, count: int, grain: int, chunks: int) -> tuple[int, int]:
    """Add one mark (coarsening past ``MAX_BYTES``); the grain to mark at from now on,
    and up to which count of ``chunks`` one-byte marks still fit."""
    _mark(out, gap_ms, count)
    if len(out) > MAX_BYTES:
        grain = coarsen(out, grain)
    return grain, chunks + MAX_BYTES - len(out)


def _gaps(data: bytes | bytearray) -> list[tuple[int, int]]:
    values: list[int] = []
    value = shift = 0
    for byte in memoryview(data)[1:]:
        value |= (byte & 0x7F) << shift
        if byte & 0x80:
            shift += 7
        else:
            values.append(value)
            value = shift = 0
    marks = []
    i = 0
    while i < len(values):
        head = values[i]
        if head & 1:
            count = values[i + 1] if i + 1 < len(values) else 0
            i += 2
        else:
            count = 1
            i += 1
        marks.append((head >> 1, count))
    return marks


def _rebin(marks: list[tuple[int, int]], grain: int) -> list[tuple[int, int]]:
    """The marks as the relay would have made them at ``grain``: a mark only once
    ``grain`` ms passed since the previous one, carrying the deltas since. The marks up
    to the first delta are kept as they are: the time to first token stays exact."""
    head = next((i for i, (_, count) in enumerate(marks) if count), 0)
    merged = marks[: head + 1 if head < 16 else 1]
    gap = count = 0
    for g, c in marks[len(merged) :]:
        gap += g
        count += c
        if gap >= grain:
            merged.append((gap, count))
            gap = count = 0
    if gap or count:
        merged.append((gap, count))
    return merged


def coarsen(out: bytearray, grain: int) -> int:
    """Double the grain until the marks fit in half of ``MAX_BYTES``; rewrite them in
    place and return the new grain. A stream coarsens a few times in its life (after
    each, the marks fill up at most half as fast), not per batch."""
    marks = _gaps(out)
    while True:
        grain = max(1, grain * 2)
        marks = _rebin(marks, grain)
        encoded = encode(marks)
        if len(encoded) <= MAX_BYTES // 2:
            break
    out[:] = encoded
    return grain


def encode(marks: Iterable[tuple[int, int]]) -> bytearray:
    """(milliseconds since the previous mark, deltas) pairs, encoded."""
    out = new()
    for gap, count in marks:
        _mark(out, gap, count)
    return out


def decode(data: bytes | bytearray | None) -> list[tuple[int, int]]:
    """(milliseconds since the request started, deltas) for each mark; [] for nothing or
    a version this code does not know."""
    if not data or data[0] != VERSION:
        return []
    at = 0
    marks = []
    for gap, count in _gaps(data):
        at += gap
        marks.append((at, count))
    return marks
