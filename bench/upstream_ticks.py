"""A variant of the fake upstream (``bench/upstream.py``) for checking the harness: paced
chunks are due at fixed times from the stream's start (``start + k * interval``) and
sent from one timer per millisecond of due chunks, instead of one ``call_later`` per
stream after each write.

Two things differ from ``bench.upstream``, nothing else (same bytes, same scenarios):

- **No drift.** ``bench.upstream`` schedules the next chunk ``interval`` after the
  previous one was actually written, so any lateness of its own event loop (which shares
  the load core with the load generator) is added to every following gap, and a busy
  load core stretches the gaps of direct itself. Here a late chunk does not delay the
  next one, as a model server's next token does not wait for the previous one's write.
- **Fewer timers.** Streams due in the same millisecond share one timer (libuv's timers
  have millisecond resolution anyway).

``python -m bench.harness_check --upstream ticks`` compares it with ``bench.upstream``.
Run alone: ``python -m bench.upstream_ticks --port 0``.
"""

from __future__ import annotations

import math

from bench import upstream as base


class Wheel:
    """Connections due to send, bucketed by millisecond; one loop timer per bucket."""

    def __init__(self) -> None:
        self.buckets: dict[int, list[tuple[Connection, int]]] = {}

    def add(self, conn: Connection, due: float) -> None:
        key = math.ceil(due * 1000)
        bucket = self.buckets.get(key)
        if bucket is None:
            bucket = self.buckets[key] = []
            conn.loop.call_at(key / 1000, self.fire, key)
        bucket.append((conn, conn.token))

    def fire(self, key: int) -> None:
        for conn, token in self.buckets.pop(key, ()):
            if conn.token == token:
                conn.send_due()


WHEEL = Wheel()


class Connection(base.Connection):
    def __init__(self, server: base.Server) -> None:
        super().__init__(server)
        #: Bumped when the stream stops or moves on: entries still in the wheel are void.
        self.token = 0
        self.due = 0.0

    def _tick(self) -> None:
        if not self.interval:  # slow_first_body and hold: as bench.upstream
            super()._tick()
            return
        self.due = self.loop.time()
        self.send_due()

    def send_due(self) -> None:
        self.token += 1
        event = self.pending[self.index]
        self.index += 1
        if self.index < self.last:
            self.write(event)
            self.due += self.interval
            WHEEL.add(self, self.due)
            return
        self.write(b"".join(self.pending[self.index - 1 :]) + base.LAST_CHUNK)
        self.pending = ()
        self._done()

    def _stop(self) -> None:
        self.token += 1
        super()._stop()


def main(argv: list[str] | None = None) -> None:
    base.Connection = Connection  # type: ignore[misc]  # serve() makes connections by this name
    base.main(argv)


if __name__ == "__main__":
    main()
