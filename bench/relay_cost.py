"""What the relay loop costs per batch, without sockets.

``python -m bench.relay_cost [--batches 1000] [--streams 20] [--rounds 7]``

A fake upstream yields ``--batches`` one-chunk batches per stream as fast as it can, and
a fake ASGI ``send`` returns at once; each row drains ``--streams`` streams through
``sluice.relay.relay`` and reports nanoseconds of this process's CPU time per batch (best
of ``--rounds``; the rows alternate round by round, so a busy moment on a shared machine
hits them alike):

- ``verbatim``: the fast path, upstream chunks written as they came (what ``bench.run``
  measures for ``sluice``);
- ``encoded``: text deltas the dialect encodes.

``--against OLD/relay.py`` measures that file's ``relay`` too, in the same process and
in the same rounds (it must fit this checkout's other modules): what a change to the
loop costs, with the machine's noise shared by both.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import time
from collections.abc import AsyncGenerator, Callable
from pathlib import Path
from typing import Any

from sluice.dialects.openai_chat import StreamEncoder
from sluice.events import Batch, ChatRequest, Finish, Message, TextDelta, TextPart, Usage, Verbatim
from sluice.exchange import Exchange
from sluice.relay import relay as this_relay
from sluice.store import Record

Upstream = Callable[[int], AsyncGenerator[Batch, None]]
Relay = Callable[..., Any]


async def verbatim(count: int) -> AsyncGenerator[Batch, None]:
    for i in range(count):
        data = b'data: {"choices":[{"index":0,"delta":{"content":" word%d"}}]}\n\n' % i
        yield [Verbatim("openai_chat", data, 1)]
    yield [Verbatim("openai_chat", b"data: [DONE]\n\n", 1, events=[Usage(10, count)])]


async def encoded(count: int) -> AsyncGenerator[Batch, None]:
    for i in range(count):
        yield [TextDelta(f" word{i}")]
    yield [Finish("stop")]
    yield [Usage(10, count)]


async def _send(message: Any) -> None:
    return None


async def _receive() -> dict[str, Any]:
    await asyncio.sleep(3600)
    return {"type": "http.disconnect"}


async def run(relay: Relay, upstream: Upstream, count: int, streams: int) -> float:
    """Nanoseconds per batch for ``streams`` streams of ``count`` batches."""
    request = ChatRequest("m", [Message("user", [TextPart("hi")])])
    elapsed = 0
    for _ in range(streams):
        record = Record(id="bench", started_at=time.time(), route="/v1/chat/completions")
        scope = {"type": "http", "headers": [], "method": "POST", "path": record.route}
        exchange = Exchange(scope, _receive, _send, record)
        encoder = StreamEncoder(request, "chatcmpl-bench")
        t0 = time.process_time_ns()
        await relay(exchange, upstream(count), encoder, 0)
        elapsed += time.process_time_ns() - t0
    return elapsed / (streams * (count + 1))


def load(path: Path) -> Relay:
    spec = importlib.util.spec_from_file_location("bench_relay_against", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    relay: Relay = module.relay
    return relay


async def measure(
    relays: dict[str, Relay], count: int, streams: int, rounds: int
) -> dict[str, float]:
    upstreams: dict[str, Upstream] = {"verbatim": verbatim, "encoded": encoded}
    rows: dict[str, list[float]] = {}
    for _ in range(rounds):
        for path, upstream in upstreams.items():
            for label, relay in relays.items():
                times = rows.setdefault(f"{path:9} {label}", [])
                times.append(await run(relay, upstream, count, streams))
    return {name: min(times) for name, times in rows.items()}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.relay_cost")
    parser.add_argument("--batches", type=int, default=1000)
    parser.add_argument("--streams", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--against", type=Path, help="another relay.py to measure alongside")
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    relays = {"this": this_relay}
    if args.against:
        relays["against"] = load(args.against)
    results = asyncio.run(measure(relays, args.batches, args.streams, args.rounds))
    for name, ns in results.items():
        print(f"{name:18} {ns:8.0f} ns per batch")


if __name__ == "__main__":
    main()
