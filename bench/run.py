"""Run the side-by-side benchmark: ``python -m bench.run [--quick] [--rounds N]
[--profiles burst,paced,single,idle] [--only direct,sluice,...] [--out DIR]``.

The fake upstream, the load generator (this process) and the gateway under test run
on separate cores: the gateway alone on the first, the rest on the second. Results go
to stdout as a table and to ``bench/results/latest.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import orjson

from bench import procs, report
from bench.profiles import Env, Sizes, burst, idle, paced, single, warmup
from bench.targets import CACHE, ROOT, Live, Target, all_targets, fmt_cores, start, stop

RESULTS = ROOT / "bench" / "results"
#: Written after each target, so a run that dies still leaves what it measured.
PARTIAL = CACHE / "partial.json"
PROFILES = ("single", "burst", "paced", "idle")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes: seconds, not minutes")
    parser.add_argument("--rounds", type=int, help="rounds per profile (medians are reported)")
    parser.add_argument("--profiles", default=",".join(PROFILES), help="comma-separated")
    parser.add_argument("--only", help="comma-separated target names (default: all)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where latest.* go")
    parser.add_argument("--no-chart", action="store_true", help="do not draw latest.png")
    parser.add_argument("--paced-levels", help="comma-separated concurrencies for the paced ramp")
    parser.add_argument("--idle-levels", help="comma-separated open-stream counts")
    parser.add_argument("--burst-streams", type=int, help="streams per burst round")
    parser.add_argument(
        "--nice",
        type=int,
        default=-5,
        help="scheduling priority for the bench and everything it starts (default -5, when"
        " allowed: other work on a shared machine disturbs the figures less)",
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=120.0,
        help="before each target, wait up to this many seconds for other processes to"
        " use under 10%% of a core (default 120; 0: just measure them)",
    )
    parser.add_argument(
        "--upstream",
        choices=("bench", "tests"),
        default="bench",
        help="bench/upstream.py (default) or tests/upstream/server.py (no idle profile)",
    )
    return parser.parse_args(argv)


def sizes_from(args: argparse.Namespace) -> Sizes:
    sizes = Sizes.quick() if args.quick else Sizes()
    if args.rounds:
        sizes.rounds = args.rounds
        sizes.paced_rounds = min(args.rounds, sizes.paced_rounds) if not args.quick else 1
    if args.paced_levels:
        sizes.paced_levels = tuple(int(v) for v in args.paced_levels.split(","))
    if args.idle_levels:
        sizes.idle_levels = tuple(int(v) for v in args.idle_levels.split(","))
    if args.burst_streams:
        sizes.burst_streams = args.burst_streams
    return sizes


#: The fake upstreams: the bench's own, the test suite's, and the one-timer-per-tick one.
UPSTREAMS = {
    "bench": "bench.upstream",
    "tests": "tests.upstream.server",
    "ticks": "bench.upstream_ticks",
}


def start_upstream(which: str, cores: set[int], logs: Path) -> tuple[subprocess.Popen[bytes], str]:
    argv = [sys.executable, "-m", UPSTREAMS[which], "--port", "0"]
    if which == "tests":
        argv += ["--log-limit", "100"]
    with procs.affinity(cores), open(logs / "upstream.log", "wb") as err:
        process = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=err)
    assert process.stdout is not None
    line = process.stdout.readline().decode().strip()
    if not line.startswith("listening on "):
        procs.stop(process)
        raise RuntimeError(f"the upstream did not start: {line!r}")
    return process, line.removeprefix("listening on ")


def sluice_commit() -> str:
    """The commit Sluice's source is at, ``+dirty`` when ``src/`` has changes."""
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "src"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    return head + ("+dirty" if dirty else "")


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "commit": commit,
    }


async def run_target(
    target: Target, env: Env, base: str, sizes: Sizes, wanted: list[str], out: dict[str, Any]
) -> None:
    entry: dict[str, Any] = out["targets"].setdefault(
        target.name,
        {"label": target.label, "kind": target.kind, "cores": fmt_cores(target.cores)},
    )
    entry["profiles"] = {}
    steady = [p for p in wanted if p in ("single", "burst", "paced") and p in target.profiles]
    if steady:
        live = await start(target, base)
        if isinstance(live, str):
            entry["status"], entry["reason"] = "failed", live
            log(f"{target.name}: failed to start: {live}")
            return
        try:
            why = await warmup(live, env)
            if why is not None:
                entry["status"], entry["reason"] = "failed", f"warm-up: {why}"
                log(f"{target.name}: warm-up failed: {why}")
                return
            for profile in steady:
                log(f"{target.name}: {profile}")
                entry["profiles"][profile] = await run_profile(profile, live, env, sizes, out)
                summary = report.one_line(profile, entry["profiles"][profile])
                log(f"{target.name}: {profile}: {summary}")
        finally:
            await stop(live)
    if "idle" in wanted and "idle" in target.profiles:
        levels = []
        for count in sizes.idle_levels:
            # A fresh process per level: memory freed by a previous level would hide cost.
            live = await start(target, base)
            if isinstance(live, str):
                levels.append({"open": count, "error": live})
                break
            try:
                why = await warmup(live, env, streams=8)
                if why is not None:
                    levels.append({"open": count, "error": f"warm-up: {why}"})
                    break
                level = await idle(live, env, count, log)
                levels.append(level)
                log(f"{target.name}: idle: {report.one_line('idle', {'levels': [level]})}")
            finally:
                await stop(live)
            if level["failed"] * 2 > count:
                break
        entry["profiles"]["idle"] = {"scenario": "hold:n=10", "levels": levels}
    entry.setdefault("status", "ok")


async def run_profile(
    profile: str, live: Live, env: Env, sizes: Sizes, out: dict[str, Any]
) -> dict[str, Any]:
    if profile == "burst":
        return await burst(live, env, sizes)
    if profile == "single":
        return await single(live, env, sizes)
    reference = out["targets"].get("direct", {}).get("profiles", {}).get("paced")
    return await paced(live, env, sizes, reference, log)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    sizes = sizes_from(args)
    wanted = [p for p in PROFILES if p in args.profiles.split(",")]
    if args.upstream == "tests" and "idle" in wanted:
        wanted.remove("idle")
        log("idle skipped: it needs the bench upstream's held streams")
    cores = sorted(os.sched_getaffinity(0))
    gateway_core, load_core = {cores[0]}, {cores[-1]}
    both = set(cores)
    os.sched_setaffinity(0, load_core)
    if args.nice:
        try:
            os.setpriority(os.PRIO_PROCESS, 0, args.nice)  # inherited by what we start
        except OSError as exc:
            log(f"cannot set priority {args.nice}: {exc}")
    fds = procs.raise_fd_limit()
    # Each open stream holds two sockets in a gateway (client and upstream side).
    cap = (fds - 256) // 2
    if any(level > cap for level in sizes.idle_levels):
        log(f"idle: open streams capped at {cap:,}: the open-file limit is {fds:,}")
        sizes.idle_levels = tuple(sorted({min(level, cap) for level in sizes.idle_levels}))
    logs = CACHE / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    targets = all_targets(gateway_core, both, logs)
    if args.only:
        names = args.only.split(",")
        unknown = set(names) - {t.name for t in targets}
        for name in sorted(unknown):
            log(f"{name}: skipped: no such target (is its peer module there?)")
        targets = [t for t in targets if t.name in names or t.name == "direct"]
    else:
        targets = [t for t in targets if t.default]
    out: dict[str, Any] = {
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "placement": {
            "gateway": fmt_cores(gateway_core),
            "load": fmt_cores(load_core),
            "note": "load = the load generator and the fake upstream",
        },
        "fd_limit": fds,
        "nice": os.getpriority(os.PRIO_PROCESS, 0),
        "quick": args.quick,
        "upstream": args.upstream,
        "sizes": sizes.__dict__,
        "profiles": wanted,
        "targets": {},
    }
    upstream, base_url = start_upstream(args.upstream, load_core, logs)
    env = Env(base_url, upstream.pid)
    base = f"{base_url}/v1"
    log(
        f"upstream {base_url} ({args.upstream}); gateway on core {fmt_cores(gateway_core)},"
        f" load on core {fmt_cores(load_core)}; fd limit {fds}"
    )
    try:
        for target in targets:
            why = await asyncio.to_thread(target.install)
            if why is not None:
                log(f"{target.name}: skipped: {why}")
                out["targets"][target.name] = {
                    "label": target.label,
                    "kind": target.kind,
                    "status": "skipped",
                    "reason": why,
                    "profiles": {},
                }
                continue
            other, waited = await asyncio.to_thread(
                procs.wait_quiet, [os.getpid()], 10.0, args.wait_quiet
            )
            if other >= 10.0:
                log(f"{target.name}: the machine is busy: other processes use {other:.0f} %")
            elif waited > 2:
                log(f"{target.name}: waited {waited:.0f} s for the machine to be quiet")
            t0 = time.monotonic()
            try:
                await run_target(target, env, base, sizes, wanted, out)
            except Exception as exc:
                # A harness bug or a target gone wrong costs that target, not the run.
                log(f"{target.name}: harness error:\n{traceback.format_exc()}")
                entry = out["targets"].setdefault(target.name, {"label": target.label})
                entry["status"] = "failed"
                entry["reason"] = f"harness error: {type(exc).__name__}: {exc}"
            entry = out["targets"][target.name]
            entry["background_cpu_pct"] = round(other, 1)
            entry["sluice_commit"] = sluice_commit()
            PARTIAL.write_bytes(orjson.dumps(out, option=orjson.OPT_INDENT_2))
            entry["seconds"] = round(time.monotonic() - t0, 1)
    finally:
        procs.stop(upstream)
    out["finished"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        import uvloop
    except ImportError:
        out = asyncio.run(main_async(args))
    else:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            out = runner.run(main_async(args))
    report.add_comparisons(out)
    args.out.mkdir(parents=True, exist_ok=True)
    json_path = args.out / "latest.json"
    json_path.write_bytes(orjson.dumps(out, option=orjson.OPT_INDENT_2) + b"\n")
    markdown = report.markdown(out)
    (args.out / "latest.md").write_text(markdown)
    print(report.table(out))
    if not args.no_chart:
        why = report.chart(json_path, args.out / "latest.png", create_env=not args.quick)
        if why is not None:
            log(f"chart skipped: {why}")
    failed = sum(report.failed_streams(t) for t in out["targets"].values())
    log(
        f"wrote {json_path}, latest.md{'' if args.no_chart else ', latest.png'}; "
        f"failed streams in total: {failed}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
