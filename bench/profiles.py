"""The four load profiles. Each returns plain data (medians over rounds and the rounds
themselves); comparisons between targets are made by the report."""

from __future__ import annotations

import asyncio
import gc
import os
import statistics
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from tests.upstream import scenarios as sc

from bench import procs
from bench.client import Connection, Expect, Result, Worker, build_request, connect
from bench.targets import Live

HOST = "127.0.0.1"
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass
class Sizes:
    rounds: int = 5
    burst_n: int = 200
    burst_concurrency: int = 50
    burst_streams: int = 2000
    #: A slow target's round ends after this long, whatever it completed.
    burst_seconds: float = 20.0
    single_streams: int = 200
    single_n: int = 20
    paced_n: int = 64
    paced_interval: float = 0.02
    paced_levels: tuple[int, ...] = (100, 500, 1000, 2000, 3000)
    paced_streams_each: int = 3
    paced_rounds: int = 3
    #: Streams per level that are timed chunk by chunk.
    paced_sample: int = 200
    idle_levels: tuple[int, ...] = (1000, 5000, 10000)

    @classmethod
    def quick(cls) -> Sizes:
        return cls(
            rounds=1,
            burst_streams=100,
            single_streams=30,
            paced_levels=(50, 200),
            paced_streams_each=2,
            paced_rounds=1,
            idle_levels=(200,),
        )


@dataclass
class Env:
    """The fixed parts of a run: the upstream's process and base URL."""

    upstream_url: str  # http://127.0.0.1:PORT
    upstream_pid: int

    def upstream_call(self, method: str, path: str) -> Any:
        data = b"" if method == "POST" else None
        req = urllib.request.Request(f"{self.upstream_url}{path}", method=method, data=data)
        with _OPENER.open(req, timeout=30) as response:
            return orjson.loads(response.read())

    def load_cpu(self) -> float:
        """CPU seconds of the load side: this process and the upstream."""
        return procs.own_cpu_seconds(os.getpid()) + procs.cpu_seconds(self.upstream_pid)


def expect_for(kind: Any, n: int) -> Expect:
    return Expect(kind, n, sc.text_of(sc.parse_spec(f"burst:n={n}")))


def request_bytes(live: Live, scenario: str) -> bytes:
    method, path, body, headers = live.target.request(scenario)
    return build_request(method, path, body, headers, HOST, live.port)


def pct(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def med(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def ms(value: float | None) -> float | None:
    return None if value is None else value * 1000


def failures(results: Sequence[Result]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in results:
        if not r.ok:
            key = (r.error or "?")[:160]
            counts[key] = counts.get(key, 0) + 1
    return counts


def counter(total: int, seconds: float = 600.0) -> Callable[[], bool]:
    """True ``total`` times, or until ``seconds`` passed: every loop is bounded."""
    left = total
    deadline = time.monotonic() + seconds

    def more() -> bool:
        nonlocal left
        if left <= 0 or time.monotonic() > deadline:
            return False
        left -= 1
        return True

    return more


class Meter:
    """Wall time, gateway CPU and load CPU over a block."""

    def __init__(self, live: Live, env: Env) -> None:
        self.live = live
        self.env = env

    def __enter__(self) -> Meter:
        gc.collect()
        gc.disable()
        pid = self.live.pid
        self.cpu0 = procs.cpu_seconds(pid) if pid else 0.0
        self.each0 = procs.cpu_by_process(pid) if pid else {}
        self.load0 = self.env.load_cpu()
        self.busy0 = procs.busy_seconds()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.t0
        pid = self.live.pid
        self.cpu = (procs.cpu_seconds(pid) - self.cpu0) if pid else None
        each = procs.cpu_by_process(pid) if pid else {}
        #: Per process of the tree, in % of one core: shows how workers share the load.
        self.each_pct = sorted(
            (round(100 * (cpu - self.each0.get(p, 0.0)) / self.wall, 1) for p, cpu in each.items()),
            reverse=True,
        )
        self.load = self.env.load_cpu() - self.load0
        busy = procs.busy_seconds() - self.busy0
        # What the rest of the machine used meanwhile: a busy machine is shown, not hidden.
        self.other_pct = max(0.0, 100 * (busy - (self.cpu or 0.0) - self.load) / self.wall)
        gc.enable()


async def warmup(live: Live, env: Env, streams: int = 40) -> str | None:
    """A few small streams; None if most worked, else the first failure."""
    data = request_bytes(live, "burst:n=20")
    workers = [Worker(HOST, live.port, data, expect_for(live.target.kind, 20)) for _ in range(4)]
    more = counter(streams)
    await asyncio.gather(*(w.run(more, verify_first=True) for w in workers))
    results = [r for w in workers for r in w.results]
    bad = [r for r in results if not r.ok]
    if len(bad) > len(results) // 2 or not results:
        return bad[0].error if bad else "no stream ran"
    return None


# -------------------------------------------------------------------------- burst


async def burst(live: Live, env: Env, sizes: Sizes) -> dict[str, Any]:
    n = sizes.burst_n
    data = request_bytes(live, f"burst:n={n}")
    expect = expect_for(live.target.kind, n)
    # An untimed round first: connections, caches and allocators warm.
    warm = [
        Worker(HOST, live.port, data, expect, stream_timeout=30)
        for _ in range(sizes.burst_concurrency)
    ]
    more = counter(sizes.burst_concurrency * 2, sizes.burst_seconds / 4)
    await asyncio.gather(*(w.run(more) for w in warm))
    rounds = []
    for _ in range(sizes.rounds):
        # A stream still running 30 s after the round's deadline is counted as failed.
        workers = [
            Worker(HOST, live.port, data, expect, stream_timeout=30)
            for _ in range(sizes.burst_concurrency)
        ]
        more = counter(sizes.burst_streams, sizes.burst_seconds)
        with Meter(live, env) as meter:
            await asyncio.gather(*(w.run(more, verify_first=i == 0) for i, w in enumerate(workers)))
        results = [r for w in workers for r in w.results]
        chunks = sum(r.chunks for r in results)
        rounds.append(
            {
                "streams": len(results),
                "failed": sum(not r.ok for r in results),
                "failures": failures(results),
                "chunks": chunks,
                "wall_s": meter.wall,
                "gateway_cpu_s": meter.cpu,
                "load_cpu_s": meter.load,
                "cpu_ms_per_1k_chunks": (
                    meter.cpu / chunks * 1e6 if meter.cpu is not None and chunks else None
                ),
                "chunks_per_s": chunks / meter.wall,
                "gateway_cpu_pct": 100 * meter.cpu / meter.wall if meter.cpu is not None else None,
                "load_cpu_pct": 100 * meter.load / meter.wall,
                "other_cpu_pct": meter.other_pct,
                "gateway_cpu_pct_by_process": meter.each_pct,
            }
        )
    return {
        "scenario": f"burst:n={n}",
        "concurrency": sizes.burst_concurrency,
        "streams_per_round": sizes.burst_streams,
        "cpu_ms_per_1k_chunks": med([r["cpu_ms_per_1k_chunks"] for r in rounds]),
        "chunks_per_s": med([r["chunks_per_s"] for r in rounds]),
        "gateway_cpu_pct": med([r["gateway_cpu_pct"] for r in rounds]),
        "load_cpu_pct": med([r["load_cpu_pct"] for r in rounds]),
        "other_cpu_pct": max(r["other_cpu_pct"] for r in rounds),
        "streams": sum(r["streams"] for r in rounds),
        "failed": sum(r["failed"] for r in rounds),
        "rounds": rounds,
    }


# ------------------------------------------------------------------------- single


async def single(live: Live, env: Env, sizes: Sizes) -> dict[str, Any]:
    n = sizes.single_n
    data = request_bytes(live, f"burst:n={n}")
    expect = expect_for(live.target.kind, n)
    rounds = []
    for _ in range(sizes.rounds):
        worker = Worker(HOST, live.port, data, expect)
        # One stream first to open the connection: TTFT is measured on a warm one.
        await worker.run(counter(1))
        worker.results.clear()
        gc.collect()
        gc.disable()
        try:
            await worker.run(counter(sizes.single_streams, 60), verify_first=True)
        finally:
            gc.enable()
        results = worker.results
        ttfts = [r.ttft for r in results if r.ok and r.ttft is not None]
        rounds.append(
            {
                "streams": len(results),
                "failed": sum(not r.ok for r in results),
                "failures": failures(results),
                "ttft_p50_ms": ms(pct(ttfts, 50)),
                "ttft_p99_ms": ms(pct(ttfts, 99)),
            }
        )
    return {
        "scenario": f"burst:n={n}",
        "ttft_p50_ms": med([r["ttft_p50_ms"] for r in rounds]),
        "ttft_p99_ms": med([r["ttft_p99_ms"] for r in rounds]),
        "streams": sum(r["streams"] for r in rounds),
        "failed": sum(r["failed"] for r in rounds),
        "rounds": rounds,
    }


# -------------------------------------------------------------------------- paced


async def _paced_round(
    live: Live, env: Env, sizes: Sizes, concurrency: int, data: bytes, expect: Expect
) -> dict[str, Any]:
    each = sizes.paced_streams_each
    stagger = min(1.0, concurrency / 2000)
    # Only a sample of the streams is read as it arrives and timed; the others are
    # read once they should have ended, so the load core's cost per chunk does not
    # grow with the concurrency (the gateway's work is the same either way).
    step = max(1, concurrency // sizes.paced_sample)
    lazy = (sizes.paced_n + 3) * sizes.paced_interval
    workers = [
        Worker(
            HOST,
            live.port,
            data,
            expect,
            timed=i % step == 0,
            lazy=0.0 if i % step == 0 else lazy,
            stream_timeout=60,
        )
        for i in range(concurrency)
    ]

    async def run(index: int, worker: Worker) -> None:
        await asyncio.sleep(stagger * index / concurrency)
        await worker.run(counter(each), verify_first=index == 0)

    with Meter(live, env) as meter:
        await asyncio.gather(*(run(i, w) for i, w in enumerate(workers)))
    results = [r for w in workers for r in w.results]
    # TTFT on warm connections only (each worker's first stream also opened it).
    timed = [w for w in workers if w.timed]
    ttfts = [r.ttft for w in timed for r in w.results[1:] if r.ok and r.ttft is not None]
    if each == 1:
        ttfts = [r.ttft for w in timed for r in w.results if r.ok and r.ttft is not None]
    gaps = [g for w in timed for r in w.results if r.ok for g in r.gaps]
    return {
        "streams": len(results),
        "failed": sum(not r.ok for r in results),
        "failures": failures(results),
        "ttft_p50_ms": ms(pct(ttfts, 50)),
        "ttft_p99_ms": ms(pct(ttfts, 99)),
        "gap_p50_ms": ms(pct(gaps, 50)),
        "gap_p99_ms": ms(pct(gaps, 99)),
        "timed_streams": sum(len(w.results) for w in timed),
        "gateway_cpu_pct": 100 * meter.cpu / meter.wall if meter.cpu is not None else None,
        "load_cpu_pct": 100 * meter.load / meter.wall,
        "other_cpu_pct": meter.other_pct,
        "wall_s": meter.wall,
    }


async def paced(
    live: Live,
    env: Env,
    sizes: Sizes,
    reference: dict[str, Any] | None,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Ramp concurrency; stop once the target is well past the limit (p99 gap beyond
    direct's by more than 100 ms, or half its streams failing): every run stays bounded."""
    n, interval = sizes.paced_n, sizes.paced_interval
    scenario = f"paced:n={n},interval={interval:g}"
    data = request_bytes(live, scenario)
    expect = expect_for(live.target.kind, n)
    levels = []
    ref_levels = {lv["concurrency"]: lv for lv in (reference or {}).get("levels", [])}
    for concurrency in sizes.paced_levels:
        rounds = [
            await _paced_round(live, env, sizes, concurrency, data, expect)
            for _ in range(sizes.paced_rounds)
        ]
        level: dict[str, Any] = {"concurrency": concurrency}
        for key in ("ttft_p50_ms", "ttft_p99_ms", "gap_p50_ms", "gap_p99_ms"):
            level[key] = med([r[key] for r in rounds])
        for key in ("gateway_cpu_pct", "load_cpu_pct"):
            level[key] = med([r[key] for r in rounds])
        level["other_cpu_pct"] = max(r["other_cpu_pct"] for r in rounds)
        level["streams"] = sum(r["streams"] for r in rounds)
        level["failed"] = sum(r["failed"] for r in rounds)
        level["rounds"] = rounds
        levels.append(level)
        log(
            f"  paced {concurrency:>5}: gap p99 {fmt(level['gap_p99_ms'])} ms, "
            f"ttft p50 {fmt(level['ttft_p50_ms'])} ms, failed {level['failed']}"
            f"/{level['streams']}, gateway cpu {fmt(level['gateway_cpu_pct'])} %,"
            f" load cpu {fmt(level['load_cpu_pct'])} %"
        )
        ref = ref_levels.get(concurrency)
        if level["failed"] * 2 > level["streams"]:
            log("  paced: stopping the ramp, half the streams failed")
            break
        added = _added(level["gap_p99_ms"], ref["gap_p99_ms"] if ref else None)
        if added is not None and added > 100:
            log("  paced: stopping the ramp, p99 gap is 100 ms beyond direct's")
            break
    return {"scenario": scenario, "streams_each": sizes.paced_streams_each, "levels": levels}


def _added(value: float | None, reference: float | None) -> float | None:
    return None if value is None or reference is None else value - reference


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


# --------------------------------------------------------------------------- idle


async def idle(
    live: Live, env: Env, open_streams: int, log: Callable[[str], None]
) -> dict[str, Any]:
    """Hold ``open_streams`` streams open, waiting for a first token the upstream holds
    back; read the gateway's memory; then release them all and check each completes."""
    n = 10
    data = request_bytes(live, f"hold:n={n},max=300")
    expect = expect_for(live.target.kind, n)
    pid = live.pid
    gc.collect()
    await asyncio.sleep(1.0)
    before = procs.memory(pid) if pid else None
    connects = asyncio.Semaphore(256)
    conns: list[Connection] = []
    futures: list[asyncio.Future[Result]] = []
    failed_early: list[Result] = []

    async def open_one() -> None:
        async with connects:
            try:
                conn = await connect(HOST, live.port)
            except (OSError, TimeoutError) as exc:
                failed_early.append(Result(False, 0, f"connect failed: {exc!r}"))
                return
        conns.append(conn)
        futures.append(conn.request(data, expect))

    t0 = time.perf_counter()
    await asyncio.gather(*(open_one() for _ in range(open_streams)))
    opened_s = time.perf_counter() - t0
    # Wait until the upstream holds every stream that has not already failed.
    held = 0
    deadline = time.monotonic() + 120
    last_change, last_held = time.monotonic(), -1
    while time.monotonic() < deadline:
        held = (await asyncio.to_thread(env.upstream_call, "GET", "/_stats"))["held"]
        done = sum(f.done() for f in futures) + len(failed_early)
        if held + done >= open_streams:
            break
        if held != last_held:
            last_change, last_held = time.monotonic(), held
        elif time.monotonic() - last_change > 15:
            break
        await asyncio.sleep(0.2)
    settle_s = time.perf_counter() - t0
    await asyncio.sleep(2.0)
    during = procs.memory(pid) if pid else None
    log(f"  idle {open_streams}: {held} held upstream after {settle_s:.1f} s")
    released = (await asyncio.to_thread(env.upstream_call, "POST", "/_release"))["released"]
    results: list[Result] = list(failed_early)
    if futures:
        await asyncio.wait(futures, timeout=120)
    lost = Result(False, 0, "no end 120 s after the release")
    results += [f.result() if f.done() else lost for f in futures]
    for conn in conns:
        conn.close()
    out: dict[str, Any] = {
        "open": open_streams,
        "held_upstream": held,
        "released": released,
        "open_s": opened_s,
        "settle_s": settle_s,
        "failed": sum(not r.ok for r in results),
        "failures": failures(results),
    }
    if before is not None and during is not None:
        out["rss_before_mb"] = before[0] / 2**20
        out["rss_open_mb"] = during[0] / 2**20
        out["pss_before_mb"] = before[1] / 2**20
        out["pss_open_mb"] = during[1] / 2**20
        out["kb_per_stream"] = (during[1] - before[1]) / 1024 / open_streams
        out["rss_kb_per_stream"] = (during[0] - before[0]) / 1024 / open_streams
    return out
