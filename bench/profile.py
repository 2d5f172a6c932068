"""Profile Sluice's hot path under the burst profile with py-spy.

``python -m bench.profile [--seconds 20] [--rate 400] [--native] [--scenario burst:n=200]
[--concurrency 50]`` starts the fake upstream and ``sluice serve`` (gateway alone on the
first core), drives streams at it from this process on the other core, and has py-spy
(from the bench venv, ``bench/.cache/venv``) sample the gateway. It writes the raw
collapsed stacks and a flame graph under ``bench/.cache/profile/`` and prints where the
samples went: by function (self and inclusive), and by layer of the hot path.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from bench import procs
from bench.client import Worker, build_request
from bench.profiles import expect_for
from bench.report import bench_python
from bench.run import start_upstream
from bench.targets import CACHE, Target, openai_request, sluice_launch, start, stop

#: Layers of the hot path, matched in order against each frame (file:function); a
#: sample is charged to the innermost frame that matches a layer.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("garbage collector (gc_collect_main)", ("gc_collect",)),
    ("libc: socket syscalls, malloc", ("(libc.so",)),
    ("JSON decode (msgspec / orjson)", ("msgspec", "orjson")),
    ("SSE decode (sluice/sse.py)", ("sluice/sse.py",)),
    ("chunk check / chunk -> events (wire)", ("providers/openai_chat.py", "_events")),
    ("encode (sluice/dialects/)", ("sluice/dialects/",)),
    ("relay loop (sluice/relay.py)", ("sluice/relay.py",)),
    ("upstream read (providers/http.py)", ("sluice/providers/http.py",)),
    ("client write (uvicorn send, httptools)", ("uvicorn/", "httptools")),
    ("provider stream (sluice/providers/)", ("sluice/providers/",)),
    ("policies, routing (sluice/policies/)", ("sluice/policies/",)),
    ("journal (sluice/journal/)", ("sluice/journal/",)),
    ("record store (sluice/store/)", ("sluice/store/",)),
    ("app / exchange", ("sluice/app.py", "sluice/exchange.py")),
    ("event loop (uvloop, asyncio)", ("asyncio/", "uvloop", "loop.c", "core.c", "<frozen")),
]


def layer_of(frames: list[str]) -> str:
    for frame in reversed(frames):
        for name, needles in LAYERS:
            if any(n in frame for n in needles):
                return name
    return "other"


def summarise(raw: Path, top: int = 30) -> str:
    """Percentages of samples from py-spy's raw (collapsed) output."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    layers: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
        layers[layer_of(frames)] += count
    if not total:
        return "no samples"
    lines = [f"{total} samples", "", "by layer (innermost matching frame):"]
    lines += [f"  {100 * c / total:5.1f} %  {name}" for name, c in layers.most_common()]
    lines += ["", f"self time, top {top}:"]
    lines += [f"  {100 * c / total:5.1f} %  {frame}" for frame, c in own.most_common(top)]
    lines += ["", f"inclusive time, top {top}:"]
    lines += [f"  {100 * c / total:5.1f} %  {frame}" for frame, c in inclusive.most_common(top)]
    return "\n".join(lines)


def spawn_spy(spy: Path, raw: Path, options: list[str], cores: set[int]) -> subprocess.Popen[bytes]:
    # py-spy on the load core too: it must not steal the gateway's.
    with procs.affinity(cores), open(raw.with_suffix(".log"), "wb") as log:
        return subprocess.Popen(
            [str(spy), "record", "--format", "raw", "-o", str(raw), *options],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )


async def drive(port: int, scenario: str, n: int, concurrency: int, seconds: float) -> int:
    method, path, body, headers = openai_request(scenario)
    data = build_request(method, path, body, headers, "127.0.0.1", port)
    deadline = time.monotonic() + seconds

    def more() -> bool:
        return time.monotonic() < deadline

    workers = [Worker("127.0.0.1", port, data, expect_for("sse", n)) for _ in range(concurrency)]
    await asyncio.gather(*(w.run(more) for w in workers))
    results = [r for w in workers for r in w.results]
    failed = sum(not r.ok for r in results)
    print(f"{len(results)} streams, {failed} failed", file=sys.stderr)
    return sum(r.chunks for r in results)


async def main_async(args: argparse.Namespace) -> int:
    python = bench_python(create=True)
    if isinstance(python, str):
        print(f"cannot profile: {python}", file=sys.stderr)
        return 1
    spy = Path(python).parent / "py-spy"
    cores = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cores[-1]})
    out = CACHE / "profile"
    out.mkdir(parents=True, exist_ok=True)
    upstream, base_url = start_upstream("bench", {cores[-1]}, out)
    target = Target("sluice", "sluice", "sse", openai_request, sluice_launch(1, out), {cores[0]})
    found = re.search(r"\bn=(\d+)", args.scenario)
    n = int(found.group(1)) if found else 10
    try:
        live = await start(target, f"{base_url}/v1")
        if isinstance(live, str):
            print(f"sluice did not start: {live}", file=sys.stderr)
            return 1
        try:
            assert live.pid is not None
            await drive(live.port, args.scenario, n, args.concurrency, 3.0)  # warm
            raw = out / "sluice.txt"
            common = ["--pid", str(live.pid), "--rate", str(args.rate)]
            common += ["--duration", str(int(args.seconds))]
            # Only the thread holding the GIL: idle threads (the record store's pool
            # waiting for work) would otherwise count as busy.
            common.append("--gil")
            if args.native:
                common.append("--native")
            record = await asyncio.to_thread(spawn_spy, spy, raw, common, {cores[-1]})
            cpu0 = procs.cpu_seconds(live.pid)
            t0 = time.perf_counter()
            chunks = await drive(live.port, args.scenario, n, args.concurrency, args.seconds + 1.0)
            wall = time.perf_counter() - t0
            cpu = procs.cpu_seconds(live.pid) - cpu0
            await asyncio.to_thread(record.wait, 60)
            print(
                f"{chunks / wall:,.0f} chunks/s, {cpu / chunks * 1e6:.2f} ms gateway CPU"
                f" per 1,000 chunks (under py-spy at {args.rate} Hz)"
            )
            print(summarise(raw))
            print(f"\nraw stacks: {raw}")
        finally:
            await stop(live)
    finally:
        procs.stop(upstream)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rate", type=int, default=400, help="py-spy samples per second")
    parser.add_argument("--native", action="store_true", help="include C frames")
    parser.add_argument("--scenario", default="burst:n=200")
    parser.add_argument("--concurrency", type=int, default=50)
    args = parser.parse_args(argv)
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
