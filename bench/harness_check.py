"""Can the load core drive the paced profile? Direct paced levels, with the load core's
CPU split between the fake upstream and the load generator.

``python -m bench.harness_check [--levels 1000,2000,3000] [--upstream bench|ticks]
[--rounds 1]``

It runs the paced profile's own rounds (``profiles._paced_round``) against the upstream
itself, everything on the load core (the last core) as in ``bench.run``, and prints per
level: direct's gap p50/p99 and TTFT p50, the CPU of the upstream and of this process
(the load generator) in % of one core, and what the rest of the machine used.
``--upstream ticks`` uses ``bench/upstream_ticks.py`` (one timer per millisecond of due
chunks instead of one per stream) to see what the upstream's timers cost.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path

from bench import procs
from bench.profiles import Env, Sizes, _paced_round, expect_for, request_bytes
from bench.run import start_upstream
from bench.targets import CACHE, Live, Target, openai_request

UPSTREAMS = ("bench", "ticks")


def core_busy() -> dict[int, float]:
    """CPU seconds each core spent busy, from ``/proc/stat``."""
    out = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit():
            user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[:8])
            busy = user + nice + system + irq + softirq + steal
            out[int(name[3:])] = busy / procs.TICKS
    return out


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


async def check(args: argparse.Namespace) -> None:
    load_core = {sorted(os.sched_getaffinity(0))[-1]}
    os.sched_setaffinity(0, load_core)
    procs.raise_fd_limit()
    logs = CACHE / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    upstream, base = start_upstream(args.upstream, load_core, logs)
    try:
        env = Env(base, upstream.pid)
        port = int(base.rsplit(":", 1)[1])
        direct = Target("direct", "direct", "sse", openai_request, None, set())
        live = Live(direct, port, None)
        sizes = Sizes(paced_streams_each=args.streams_each)
        data = request_bytes(live, f"paced:n={sizes.paced_n},interval={sizes.paced_interval:g}")
        expect = expect_for("sse", sizes.paced_n)
        print(
            f"upstream {args.upstream}; load core {sorted(load_core)}; "
            f"{sizes.paced_n} chunks every {sizes.paced_interval * 1000:g} ms",
            flush=True,
        )
        print(
            "level  round  gap p50  gap p99  ttft p50  failed  upstream %  client %"
            "  others %  load core busy %",
            flush=True,
        )
        for level in (int(v) for v in args.levels.split(",")):
            for index in range(args.rounds):
                await asyncio.to_thread(procs.wait_quiet, [os.getpid()], 10.0, args.wait_quiet)
                core = next(iter(load_core))
                busy0 = core_busy()[core]
                up0 = procs.cpu_seconds(upstream.pid)
                me0 = procs.own_cpu_seconds(os.getpid())
                r = await _paced_round(live, env, sizes, level, data, expect)
                up = 100 * (procs.cpu_seconds(upstream.pid) - up0) / r["wall_s"]
                me = 100 * (procs.own_cpu_seconds(os.getpid()) - me0) / r["wall_s"]
                busy = 100 * (core_busy()[core] - busy0) / r["wall_s"]
                print(
                    f"{level:>5}  {index + 1:>5}  {fmt(r['gap_p50_ms']):>7}  "
                    f"{fmt(r['gap_p99_ms']):>7}  {fmt(r['ttft_p50_ms']):>8}  "
                    f"{r['failed']:>6}  {up:>10.0f}  {me:>8.0f}  {r['other_cpu_pct']:>8.0f}"
                    f"  {busy:>16.0f}",
                    flush=True,
                )
    finally:
        procs.stop(upstream)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.harness_check", description=__doc__)
    parser.add_argument("--levels", default="1000,2000,3000")
    parser.add_argument("--upstream", choices=UPSTREAMS, default="bench")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--streams-each", type=int, default=3)
    parser.add_argument("--wait-quiet", type=float, default=60.0, help="as in bench.run")
    args = parser.parse_args(argv)
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(check(args))


if __name__ == "__main__":
    main()
