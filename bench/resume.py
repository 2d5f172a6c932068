"""What resuming costs: generations that outlive their connection, measured on real
gateway processes (``python -m sluice serve``) with the offline simulator upstream.

``python -m bench.resume [--quick]``

- **Time to the first resumed event**: a background response streams (the simulator at
  50 tokens/s); ``GET /v1/responses/{id}?stream=true&starting_after=N`` is sent and
  timed until its first event arrives, 30 times; next to it the time to the first
  event of a fresh streamed ``POST /v1/responses`` (the simulator's ``ttft`` is 0).
  Memory backend on one instance; Redis on the writing instance and on another one.
- **One generation, 100 readers**: one background response of 2,000 words at 400
  words/s, followed by 100 concurrent readers (``?stream=true``): the gateway's CPU
  (utime + stime from ``/proc``) per chunk a reader received, next to the CPU per chunk
  of one plain stream of the same answer. With Redis, the readers are on the other
  instance (which reads the Redis Stream) and the CPU is that instance's.
- **Memory per 1,000 live background generations**: 1,000 background responses whose
  simulator waits 600 s before its first token, so all are live at once; the
  gateway's RSS after, less its RSS before, per 1,000.

The table is printed and written to ``bench/results/resume.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from tests.cluster import run_redis
from tests.gateway import RunningGateway, run_gateway

from bench.procs import memory, own_cpu_seconds

RESULTS = Path(__file__).parent / "results"
BODY = {"model": "story", "input": "Tell me a long story"}


def config(tokens_per_second: float, max_tokens: int, ttft: float = 0.0, **extra: Any) -> Any:
    return {
        "default_model": "story",
        "models": {
            "*": {
                "provider": "simulator",
                "ttft": ttft,
                "tokens_per_second": tokens_per_second,
                "max_tokens": max_tokens,
            }
        },
        "generations": {"per_key": 5000, "window": 600},
        "keepalive_interval": 30,
        **extra,
    }


@contextlib.contextmanager
def gateways(
    workdir: Path, cfg: dict[str, Any], redis_url: str | None, count: int
) -> Iterator[list[RunningGateway]]:
    shared = {**cfg, "redis_url": redis_url} if redis_url else dict(cfg)
    # One record database for every instance (SQLite in WAL mode takes several
    # processes): a stored response is found on any of them.
    shared["record"] = {"path": str(workdir / "records.db"), "flush_interval": 0.1}
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(run_gateway(workdir / f"gw{i}", shared)) for i in range(count)]


async def first_event(client: httpx.AsyncClient, method: str, url: str, **kw: Any) -> float:
    """Seconds until the first SSE event's bytes arrive (the stream is then dropped)."""
    t0 = time.perf_counter()
    async with client.stream(method, url, **kw) as response:
        async for piece in response.aiter_raw():
            if b"data:" in piece:
                return time.perf_counter() - t0
    raise RuntimeError(f"no event from {url}")


async def start_background(client: httpx.AsyncClient, base: str) -> str:
    answer = await client.post(f"{base}/v1/responses", json={**BODY, "background": True})
    answer.raise_for_status()
    return str(answer.json()["id"])


async def resume_latency(writer: str, reader: str, rounds: int) -> tuple[list[float], list[float]]:
    resumed: list[float] = []
    fresh: list[float] = []
    async with httpx.AsyncClient(timeout=30) as client:
        for _ in range(rounds):
            response_id = await start_background(client, writer)
            await asyncio.sleep(0.2)  # a few events out
            url = f"{reader}/v1/responses/{response_id}?stream=true&starting_after=3"
            resumed.append(await first_event(client, "GET", url))
            await client.post(f"{writer}/v1/responses/{response_id}/cancel")
            fresh.append(
                await first_event(
                    client, "POST", f"{writer}/v1/responses", json={**BODY, "stream": True}
                )
            )
    return resumed, fresh


async def read_all(client: httpx.AsyncClient, method: str, url: str, **kw: Any) -> int:
    chunks = 0
    async with client.stream(method, url, **kw) as response:
        async for line in response.aiter_lines():
            if line.startswith("event: response.output_text.delta"):
                chunks += 1
    return chunks


async def fan_out(writer: RunningGateway, reader: RunningGateway, readers: int) -> dict[str, float]:
    limits = httpx.Limits(max_connections=readers + 10)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        # One plain stream of the same answer: the CPU per chunk of serving it once.
        before = own_cpu_seconds(writer.process.pid)
        plain = await read_all(
            client, "POST", f"{writer.url}/v1/responses", json={**BODY, "stream": True}
        )
        plain_cpu = own_cpu_seconds(writer.process.pid) - before
        response_id = await start_background(client, writer.url)
        url = f"{reader.url}/v1/responses/{response_id}?stream=true"
        before = own_cpu_seconds(reader.process.pid)
        counts = await asyncio.gather(*(read_all(client, "GET", url) for _ in range(readers)))
        fan_cpu = own_cpu_seconds(reader.process.pid) - before
    total = sum(counts)
    return {
        "readers": readers,
        "reader_chunks": total,
        "cpu_us_per_reader_chunk": fan_cpu / total * 1e6,
        "plain_chunks": plain,
        "cpu_us_per_plain_chunk": plain_cpu / plain * 1e6,
    }


async def live_memory(gateway: RunningGateway, count: int) -> dict[str, float]:
    pid = gateway.process.pid
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=60)) as client:
        for _ in range(20):  # warm up the paths that allocate once
            await client.post(f"{gateway.url}/v1/responses", json={**BODY, "background": True})
        await asyncio.sleep(1.0)
        rss0, _ = memory(pid)
        sem = asyncio.Semaphore(50)

        async def one() -> None:
            async with sem:
                answer = await client.post(
                    f"{gateway.url}/v1/responses", json={**BODY, "background": True}
                )
                answer.raise_for_status()

        await asyncio.gather(*(one() for _ in range(count)))
        await asyncio.sleep(2.0)
        rss1, _ = memory(pid)
    return {"generations": count, "rss_bytes_per_1000": (rss1 - rss0) / count * 1000}


def quantiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50_ms": statistics.median(ordered) * 1000,
        "p95_ms": ordered[int(0.95 * (len(ordered) - 1))] * 1000,
    }


def run(quick: bool) -> dict[str, Any]:
    rounds, readers, live = (8, 20, 200) if quick else (30, 100, 1000)
    out: dict[str, Any] = {"quick": quick, "machine": platform.machine(), "latency": {}}
    with tempfile.TemporaryDirectory() as tmp, run_redis(Path(tmp) / "redis") as redis:
        work = Path(tmp)
        streaming = config(50, 400)
        with gateways(work / "mem", streaming, None, 1) as (one,):
            out["latency"]["memory"] = asyncio.run(resume_latency(one.url, one.url, rounds))
        with gateways(work / "redis", streaming, redis.url, 2) as (a, b):
            out["latency"]["redis, same instance"] = asyncio.run(
                resume_latency(a.url, a.url, rounds)
            )
            out["latency"]["redis, other instance"] = asyncio.run(
                resume_latency(a.url, b.url, rounds)
            )
        fast = config(400, 2000)
        with gateways(work / "fan-mem", fast, None, 1) as (one,):
            out["fan_out_memory"] = asyncio.run(fan_out(one, one, readers))
        redis.flush()
        with gateways(work / "fan-redis", fast, redis.url, 2) as (a, b):
            out["fan_out_redis"] = asyncio.run(fan_out(a, b, readers))
        waiting = config(1, 10, ttft=600)
        with gateways(work / "live", waiting, None, 1) as (one,):
            out["live_memory"] = asyncio.run(live_memory(one, live))
        redis.flush()
        with gateways(work / "live-redis", waiting, redis.url, 1) as (one,):
            out["live_redis"] = asyncio.run(live_memory(one, live))
    return out


def table(out: dict[str, Any]) -> str:
    lines = [
        "| time to the first event | p50 ms | p95 ms | resumed / fresh (p50) |",
        "|---|---|---|---|",
    ]
    for name, (resumed, fresh) in out["latency"].items():
        r, f = quantiles(resumed), quantiles(fresh)
        ratio = r["p50_ms"] / f["p50_ms"]
        lines.append(f"| resumed, {name} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {ratio:.2f}x |")
        lines.append(f"| fresh request, {name} | {f['p50_ms']:.1f} | {f['p95_ms']:.1f} | |")
    lines += [
        "",
        "| one generation, many readers | readers | reader chunks | CPU µs per reader chunk"
        " | CPU µs per chunk, one plain stream | ratio |",
        "|---|---|---|---|---|---|",
    ]
    for name, key in (("memory", "fan_out_memory"), ("redis, other instance", "fan_out_redis")):
        f = out[key]
        ratio = f["cpu_us_per_reader_chunk"] / f["cpu_us_per_plain_chunk"]
        lines.append(
            f"| {name} | {f['readers']} | {f['reader_chunks']} |"
            f" {f['cpu_us_per_reader_chunk']:.1f} | {f['cpu_us_per_plain_chunk']:.1f} |"
            f" {ratio:.2f}x |"
        )
    lines += ["", "| live background generations | count | RSS per 1,000 |", "|---|---|---|"]
    for name, key in (("memory", "live_memory"), ("redis", "live_redis")):
        m = out[key]
        per = m["rss_bytes_per_1000"] / 1024 / 1024
        lines.append(f"| {name} | {m['generations']} | {per:.1f} MiB |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds, readers, generations")
    args = parser.parse_args()
    out = run(args.quick)
    text = table(out)
    print(text)
    if not args.quick:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "resume.md").write_text(
            "# bench.resume\n\n`python -m bench.resume` on "
            f"{platform.node() or 'this machine'} ({out['machine']}, 2 cores shared)\n\n" + text
        )
        (RESULTS / "resume.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
