"""Interleaved rounds for a few targets: per-chunk cost side by side on a shared machine.

``python -m bench.compare --only floor,sluice,sluice-granian [--level 300] [--repeat 5]
[--no-burst]``; ``sluice@REV`` is the ``sluice`` target run from git revision ``REV``
(``bench/telemetry_target.py``).

``bench.run`` measures one target after the other, so work that starts elsewhere on the
machine halfway through lands on some targets and not others. Here every target is
started once (all on the gateway's core, idle when not measured), then measured in
turns: each repetition runs one paced round (``--level`` streams) and one burst round
on each target, in a rotated order, after waiting for the machine to be quiet. A round
during which other processes used more than ``--quiet-pct`` of a core is kept in the
JSON but left out of the medians.

Per target: gateway CPU per relayed chunk in the paced round (µs: the process tree's CPU
÷ the upstream's writes, ``n + 2`` per stream: the role chunk, the content chunks, then
the finish chunk with usage and ``[DONE]``), context switches per chunk (every thread of
the tree), p99 gap and TTFT p50 of that round, and the burst round's CPU per 1,000
chunks and throughput. Writes ``bench/.cache/compare.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
from pathlib import Path
from typing import Any

import orjson

from bench import procs
from bench.profiles import Env, Sizes, _paced_round, burst, expect_for, request_bytes, warmup
from bench.run import start_upstream
from bench.targets import CACHE, Live, all_targets, start, stop
from bench.telemetry_target import revision_target

OUT = CACHE / "compare.json"


def context_switches(root: int) -> int:
    """Voluntary and involuntary context switches of every thread of the tree."""
    total = 0
    for pid in procs.tree(root):
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                text = Path(f"/proc/{pid}/task/{tid}/status").read_text()
            except OSError:
                continue
            for line in text.splitlines():
                if "ctxt_switches" in line:
                    total += int(line.split()[1])
    return total


async def paced_round(live: Live, env: Env, sizes: Sizes, level: int) -> dict[str, Any]:
    n = sizes.paced_n
    data = request_bytes(live, f"paced:n={n},interval={sizes.paced_interval:g}")
    assert live.pid is not None
    switches = context_switches(live.pid)
    r = await _paced_round(live, env, sizes, level, data, expect_for(live.target.kind, n))
    writes = r["streams"] * (n + 2)
    cpu = (r["gateway_cpu_pct"] or 0.0) / 100 * r["wall_s"]
    return {
        "us_per_chunk": cpu / writes * 1e6 if writes else None,
        "switches_per_chunk": (context_switches(live.pid) - switches) / writes if writes else None,
        "gap_p99_ms": r["gap_p99_ms"],
        "ttft_p50_ms": r["ttft_p50_ms"],
        "failed": r["failed"],
        "gateway_cpu_pct": r["gateway_cpu_pct"],
        "other_cpu_pct": r["other_cpu_pct"],
    }


async def burst_round(live: Live, env: Env) -> dict[str, Any]:
    b = await burst(live, env, Sizes(rounds=1))
    return {
        "cpu_ms_per_1k_chunks": b["cpu_ms_per_1k_chunks"],
        "chunks_per_s": b["chunks_per_s"],
        "failed": b["failed"],
        "other_cpu_pct": b["other_cpu_pct"],
    }


def median(rounds: list[dict[str, Any]], key: str, quiet: float) -> float | None:
    values = [r[key] for r in rounds if r[key] is not None and r["other_cpu_pct"] <= quiet]
    return statistics.median(values) if values else None


async def compare(args: argparse.Namespace) -> dict[str, Any]:
    cores = sorted(os.sched_getaffinity(0))
    gateway_core, load_core = {cores[0]}, {cores[-1]}
    os.sched_setaffinity(0, load_core)
    procs.raise_fd_limit()
    logs = CACHE / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    names = args.only.split(",")
    known = {t.name: t for t in all_targets(gateway_core, set(cores), logs)}
    upstream, base_url = start_upstream("bench", load_core, logs)
    env = Env(base_url, upstream.pid)
    lives: dict[str, Live] = {}
    out: dict[str, Any] = {"level": args.level, "quiet_pct": args.quiet_pct, "targets": {}}
    try:
        for name in names:
            target = known.get(name) or revision_target(name, gateway_core, logs)
            if target is None:
                raise SystemExit(f"unknown target {name!r}")
            why = await asyncio.to_thread(target.install)
            live = await start(target, f"{base_url}/v1") if why is None else why
            if isinstance(live, str):
                print(f"{name}: skipped: {live}")
                continue
            failed = await warmup(live, env)
            if failed is not None:
                print(f"{name}: skipped: warm-up: {failed}")
                await stop(live)
                continue
            lives[name] = live
            out["targets"][name] = {"paced": [], "burst": []}
        sizes = Sizes()
        order = list(lives)
        for rep in range(args.repeat):
            for name in order[rep % len(order) :] + order[: rep % len(order)]:
                ours = [os.getpid(), *(lv.pid for lv in lives.values() if lv.pid)]
                await asyncio.to_thread(procs.wait_quiet, ours, 10.0, args.wait_quiet)
                entry = out["targets"][name]
                p = await paced_round(lives[name], env, sizes, args.level)
                entry["paced"].append(p)
                line = (
                    f"{rep + 1} {name}: paced {p['us_per_chunk']:.1f} µs/chunk,"
                    f" {p['switches_per_chunk']:.2f} switches/chunk, gap p99"
                    f" {p['gap_p99_ms']:.1f} ms, ttft p50 {p['ttft_p50_ms']:.1f} ms,"
                    f" others {p['other_cpu_pct']:.0f} %"
                )
                if args.burst:
                    b = await burst_round(lives[name], env)
                    entry["burst"].append(b)
                    line += (
                        f"; burst {b['cpu_ms_per_1k_chunks']:.2f} ms/1k,"
                        f" {b['chunks_per_s']:,.0f} chunks/s, others {b['other_cpu_pct']:.0f} %"
                    )
                print(line, flush=True)
    finally:
        for live in lives.values():
            await stop(live)
        procs.stop(upstream)
    for entry in out["targets"].values():
        q = args.quiet_pct
        entry["median"] = {
            "paced_us_per_chunk": median(entry["paced"], "us_per_chunk", q),
            "paced_switches_per_chunk": median(entry["paced"], "switches_per_chunk", q),
            "paced_gap_p99_ms": median(entry["paced"], "gap_p99_ms", q),
            "paced_ttft_p50_ms": median(entry["paced"], "ttft_p50_ms", q),
            "paced_quiet_rounds": sum(r["other_cpu_pct"] <= q for r in entry["paced"]),
            "burst_ms_per_1k": median(entry["burst"], "cpu_ms_per_1k_chunks", q),
            "burst_chunks_per_s": median(entry["burst"], "chunks_per_s", q),
            "burst_quiet_rounds": sum(r["other_cpu_pct"] <= q for r in entry["burst"]),
            "failed": sum(r["failed"] for r in entry["paced"] + entry["burst"]),
        }
    return out


def table(out: dict[str, Any]) -> str:
    cols = [
        ("paced_us_per_chunk", "paced µs/chunk", 1),
        ("paced_switches_per_chunk", "switches/chunk", 2),
        ("paced_gap_p99_ms", "gap p99 ms", 1),
        ("paced_ttft_p50_ms", "TTFT p50 ms", 1),
        ("paced_quiet_rounds", "quiet", 0),
        ("burst_ms_per_1k", "burst ms/1k", 2),
        ("burst_chunks_per_s", "burst chunks/s", 0),
        ("burst_quiet_rounds", "quiet", 0),
        ("failed", "failed", 0),
    ]
    lines = [
        f"paced level {out['level']}; medians of rounds with others' CPU ≤ {out['quiet_pct']:g} %",
        f"{'target':<16}" + "".join(f"{title:>16}" for _, title, _ in cols),
    ]
    for name, entry in out["targets"].items():
        cells = []
        for key, _, digits in cols:
            value = entry["median"][key]
            cells.append("-" if value is None else f"{value:,.{digits}f}")
        lines.append(f"{name:<16}" + "".join(f"{c:>16}" for c in cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__)
    parser.add_argument("--only", required=True, help="comma-separated target names")
    parser.add_argument("--level", type=int, default=300, help="paced streams per round")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--no-burst", dest="burst", action="store_false")
    parser.add_argument("--quiet-pct", type=float, default=10.0)
    parser.add_argument("--wait-quiet", type=float, default=60.0)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        out = runner.run(compare(args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(orjson.dumps(out, option=orjson.OPT_INDENT_2) + b"\n")
    print(table(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
