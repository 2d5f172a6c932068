"""What the journal and the cache policy cost per batch, without sockets.

``python -m bench.journal_cost [--batches 20000] [--redis redis://127.0.0.1:6379/0]``

A fake upstream handler yields ``--batches`` one-event batches as fast as it can; each
row drains them through one path and reports nanoseconds per batch (best of five):

- ``direct``: the handler itself (the floor);
- ``journal.append``: the writer's share alone (append, clock read, wake check);
- ``cache miss, memory``: the policy's leader path: the generation runs in its own task
  and writes the journal, the client reads it (one task switch per batch);
- ``cache hit, memory``: a kept entry replayed;
- with ``--redis``: the same two over Redis (the miss mirrors every batch to a stream
  through the flusher task; the hit reads the entry with one script call).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import AsyncGenerator, Callable, Coroutine
from typing import Any

from sluice.config import CacheSettings
from sluice.events import ChatRequest, Finish, TextDelta, Usage
from sluice.journal import Journal, journals_for
from sluice.policies import Call, Handler
from sluice.policies.cache import Cache
from sluice.providers import Batch
from sluice.state import open_state
from sluice.store import Record


def upstream(count: int) -> Handler:
    async def handler(request: ChatRequest, call: Call) -> AsyncGenerator[Batch, None]:
        for i in range(count):
            yield [TextDelta(f" word{i}")]
        yield [Finish("stop")]
        yield [Usage(10, count)]

    return handler


async def drain(stream: AsyncGenerator[Batch, None]) -> int:
    n = 0
    async for _ in stream:
        n += 1
    return n


def _call() -> Call:
    return Call(record=Record(id="bench", started_at=time.time(), route="/v1/chat/completions"))


async def best(run: Callable[[int], Coroutine[Any, Any, int]], rounds: int = 5) -> float:
    times = []
    for i in range(rounds):
        t0 = time.perf_counter_ns()
        batches = await run(i)
        times.append((time.perf_counter_ns() - t0) / batches)
    return min(times)


async def measure(count: int, redis_url: str | None) -> list[tuple[str, float]]:
    rows: list[tuple[str, float]] = []
    inner = upstream(count)

    async def direct(_: int) -> int:
        return await drain(inner(ChatRequest("m", []), _call()))

    rows.append(("direct", await best(direct)))

    async def append(_: int) -> int:
        journal = Journal("bench")
        batch: Batch = [TextDelta("x")]
        for _ in range(count):
            journal.append(batch)
        return count

    rows.append(("journal.append", await best(append)))
    backends: list[tuple[str, str | None]] = [("memory", None)]
    if redis_url:
        backends.append(("redis", redis_url))
    for name, url in backends:
        state = open_state(url)
        await state.start()
        settings = CacheSettings()
        cache = Cache(settings, journals_for(state, 1000, 1 << 30), state)
        handler = cache(inner)

        def request(i: int) -> ChatRequest:
            return ChatRequest("m", [{"role": "user", "content": f"p{i}"}], options={"seed": 1})

        async def miss(i: int, handler: Handler = handler, tag: str = name) -> int:
            return await drain(handler(request(i + 100 * len(tag)), _call()))

        async def hit(i: int, handler: Handler = handler, tag: str = name) -> int:
            return await drain(handler(request(i + 100 * len(tag)), _call()))

        rows.append((f"cache miss, {name}", await best(miss)))
        await asyncio.sleep(0.5)  # the last entry is kept in the background
        rows.append((f"cache hit, {name}", await best(hit)))
        await cache.close()
        await state.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=20_000)
    parser.add_argument("--redis", default=None, help="redis:// URL of a scratch server")
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    for name, ns in asyncio.run(measure(args.batches, args.redis)):
        print(f"{name:24} {ns / 1000:8.2f} µs/batch")


if __name__ == "__main__":
    main()
