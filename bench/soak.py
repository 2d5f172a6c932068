"""The soak: many streams over minutes, mixed APIs and policies, on Redis; does anything leak?

``python -m bench.soak [--streams 10000] [--minutes 10] [--concurrency 48] [--out DIR]``

One ``sluice serve`` (one process) with Redis for its shared state and SQLite for its
records, in front of the bench's fake upstream (``bench/upstream.py``, its own process),
gets ``--streams`` streams spread evenly over ``--minutes``, at most ``--concurrency``
at once, in a fixed mix (``MIX``) of

- client APIs: OpenAI chat completions, Anthropic Messages (to an Anthropic-format
  upstream), OpenAI Responses and the AI SDK UI message stream (``/api/chat``);
- policies: virtual keys on every request; paced upstream streams; cacheable requests
  from a small set of prompts (hits); bursts of identical requests at once (coalesced);
  a key with a low ``rpm`` (refusals); a key with a small budget on a priced model
  (refusals once spent, with holds for requests in flight).

Every stream is read to its end and judged: complete (the API's end marker, content
and no in-band error), an expected refusal (429 from the rate limit or the budget of
the two keys that have them), or failed (anything else; the fake upstream fails no
stream, so none may fail). The gateway process is sampled every ``--sample`` seconds:
RSS (``/proc/PID/smaps_rollup``) and open file descriptors (``/proc/PID/fd``). The
first ``--warmup`` fraction of the streams warms up (imports, pools, caches, the
allocator's arenas); then the load pauses until the gateway is idle and the baseline is
taken; at the end, idle again, the final sample. Judged:

- RSS growth from the baseline to the end under 5 %;
- open file descriptors flat (the end within 8 of the baseline, idle to idle);
- every request recorded: rows in the record database equal requests sent;
- no failed stream, and no traceback in the gateway's log.

Writes ``soak.json`` (every sample) and ``soak.md`` (the table it prints) to ``--out``
(``bench/results/`` by default). Exits 1 when a judgement fails.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from bench import procs
from bench.run import RESULTS, machine, sluice_commit

ROOT = Path(__file__).resolve().parent.parent
#: RSS may grow this much from the warmed-up baseline to the end.
RSS_LIMIT = 0.05
#: Open file descriptors may differ this much, idle to idle.
FD_LIMIT = 8
#: Upstream scenarios: paced so that streams overlap, coalesce and hold connections.
PACED = "paced:n=20,interval=0.02"
#: A small set of prompts asked with temperature 0 again and again: cache hits.
CACHED_PROMPTS = 40
#: Identical requests sent at once by a ``coalesce`` item.
BURST = 4

#: (kind, weight): what each stream is. Weights are per 100 streams.
MIX = [
    ("chat", 30),
    ("messages", 12),
    ("responses", 12),
    ("ui", 10),
    ("cached", 16),
    ("coalesce", 8),  # BURST streams each
    ("limited", 6),
    ("budget", 6),
]
#: End markers of a complete stream, per API.
DONE = {
    "chat": b"data: [DONE]",
    "messages": b"event: message_stop",
    "responses": b"event: response.completed",
    "ui": b"data: [DONE]",
}
ERRORS = {
    "chat": (b'{"error"',),
    "messages": (b"event: error",),
    "responses": (b"event: error", b"event: response.failed"),
    "ui": (b'"type":"error"',),
}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class Tally:
    sent: int = 0
    complete: Counter[str] = field(default_factory=Counter)
    refused: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)
    cache: Counter[str] = field(default_factory=Counter)


@dataclass
class Sample:
    t: float
    phase: str
    rss: int
    fds: int
    done: int


def fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Rss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


# -- the processes -------------------------------------------------------------------


def sluice(*args: str, env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "sluice", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout


def clean_env() -> dict[str, str]:
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OPENAI_", "ANTHROPIC_", "SLUICE_", "OTEL_", "PROMETHEUS_"))
    }


@dataclass
class Setup:
    url: str
    db: Path
    gateway: subprocess.Popen[bytes]
    keys: dict[str, str]
    log: Path


@contextlib.contextmanager
def running(workdir: Path) -> Iterator[Setup]:
    """Redis, the fake upstream and the gateway, each stopped by its PID at the end."""
    from tests.cluster import run_redis

    logs = workdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = clean_env()
    with contextlib.ExitStack() as stack:
        redis = stack.enter_context(run_redis(workdir / "redis"))
        up_port = procs.free_port()
        with open(logs / "upstream.log", "wb") as out:
            upstream = subprocess.Popen(
                [sys.executable, "-m", "bench.upstream", "--port", str(up_port)],
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        stack.callback(procs.stop, upstream)
        why = procs.wait_port(up_port, upstream, 20)
        if why is not None:
            raise RuntimeError(f"the fake upstream: {why}")
        base = f"http://127.0.0.1:{up_port}"
        db = workdir / "records.db"
        keys = {}
        for name, options in (
            ("plain", ()),
            ("limited", ("--rpm", "5")),
            ("budget", ("--budget-usd", "0.01")),
        ):
            created = json.loads(
                sluice(
                    "keys", "create", "--name", name, "--json", "--db", str(db), *options, env=env
                )
            )
            keys[name] = created["key"]
        config = {
            "host": "127.0.0.1",
            "default_model": PACED,
            "redis_url": redis.url,
            "keepalive_interval": 5,
            "record": {"path": str(db), "flush_interval": 0.2},
            "models": {
                "*": {"provider": "openai", "base_url": f"{base}/v1", "api_key_env": "SOAK_KEY"},
                "claude-soak": {
                    "provider": "anthropic",
                    "base_url": base,
                    "api_key_env": "SOAK_KEY",
                    "model": "normal:n=20",
                },
                "priced": {
                    "provider": "openai",
                    "base_url": f"{base}/v1",
                    "api_key_env": "SOAK_KEY",
                    "model": PACED,
                },
            },
            # About $0.002 a request: the budget key spends its $0.01 in a few.
            "pricing": {"priced": {"input": 20, "output": 60}},
            "limits": {"output_estimate": 30},
        }
        path = workdir / "sluice.yaml"
        path.write_text(yaml.safe_dump(config))
        port = procs.free_port()
        with open(logs / "gateway.log", "wb") as out:
            gateway = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "sluice",
                    "serve",
                    "--config",
                    str(path),
                    "--port",
                    str(port),
                ],
                cwd=workdir,
                env={**env, "SOAK_KEY": "sk-soak"},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        stack.callback(procs.stop, gateway)
        why = procs.wait_port(port, gateway, 30)
        if why is not None:
            raise RuntimeError(f"the gateway: {why}\n{(logs / 'gateway.log').read_text()}")
        yield Setup(f"http://127.0.0.1:{port}", db, gateway, keys, logs / "gateway.log")


# -- the requests ----------------------------------------------------------------------


def request(kind: str, prompt: str) -> tuple[str, str, dict[str, Any]]:
    """(API, path, body) of one stream of ``kind``."""
    messages = [{"role": "user", "content": prompt}]
    if kind == "messages":
        body = {"model": "claude-soak", "max_tokens": 256, "messages": messages, "stream": True}
        return "messages", "/v1/messages", body
    if kind == "responses":
        body = {"model": PACED, "input": prompt, "stream": True, "store": False}
        return "responses", "/v1/responses", body
    if kind == "ui":
        text = {"type": "text", "text": prompt}
        message = {"id": uuid.uuid4().hex, "role": "user", "parts": [text]}
        body = {"id": uuid.uuid4().hex, "messages": [message], "model": PACED}
        return "ui", "/api/chat", body
    chat: dict[str, Any] = {"model": PACED, "messages": messages, "stream": True}
    if kind in ("cached", "coalesce"):
        chat["temperature"] = 0
    if kind == "budget":
        chat["model"] = "priced"
    return "chat", "/v1/chat/completions", chat


async def one(
    client: httpx.AsyncClient, setup: Setup, kind: str, prompt: str, tally: Tally
) -> None:
    api, path, body = request(kind, prompt)
    key = setup.keys[kind if kind in ("limited", "budget") else "plain"]
    headers = {"authorization": f"Bearer {key}", "accept": "text/event-stream"}
    if api == "messages":
        headers["anthropic-version"] = "2023-06-01"
    tally.sent += 1
    try:
        async with client.stream("POST", path, json=body, headers=headers) as response:
            data = await response.aread()
    except httpx.HTTPError as exc:
        tally.failed[f"{kind}: {type(exc).__name__}"] += 1
        return
    if response.status_code == 429 and kind in ("limited", "budget"):
        tally.refused[kind] += 1
        return
    if response.status_code != 200:
        tally.failed[f"{kind}: status {response.status_code}"] += 1
        return
    if any(marker in data for marker in ERRORS[api]):
        tally.failed[f"{kind}: in-band error"] += 1
    elif DONE[api] not in data:
        tally.failed[f"{kind}: no end ({len(data)} bytes)"] += 1
    else:
        tally.complete[kind] += 1
        status = response.headers.get("x-sluice-cache")
        if status:
            tally.cache[status] += 1


def plan(streams: int, seed: int = 7) -> list[str]:
    """The kinds of the items to send, in order: ``coalesce`` items are BURST streams."""
    rng = random.Random(seed)
    kinds = [kind for kind, weight in MIX for _ in range(weight)]
    out: list[str] = []
    count = 0
    while count < streams:
        kind = rng.choice(kinds)
        if kind == "coalesce" and count + BURST > streams:
            kind = "chat"
        out.append(kind)
        count += BURST if kind == "coalesce" else 1
    return out


async def send(
    client: httpx.AsyncClient,
    setup: Setup,
    items: list[str],
    seconds: float,
    concurrency: int,
    tally: Tally,
    rng: random.Random,
) -> None:
    """The items spread evenly over ``seconds``, at most ``concurrency`` streams at once."""
    slots = asyncio.Semaphore(concurrency)
    tasks: set[asyncio.Task[None]] = set()
    loop = asyncio.get_running_loop()
    start = loop.time()
    total = sum(BURST if kind == "coalesce" else 1 for kind in items)
    sent = 0

    async def run(kind: str, prompt: str) -> None:
        try:
            await one(client, setup, kind, prompt, tally)
        finally:
            slots.release()

    for kind in items:
        width = BURST if kind == "coalesce" else 1
        due = start + seconds * sent / max(1, total)
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        if kind == "cached":
            prompt = f"Tell me story number {rng.randrange(CACHED_PROMPTS)}"
        else:
            prompt = f"Tell me a story {uuid.uuid4().hex}"
        for _ in range(width):
            await slots.acquire()
            task = loop.create_task(run(kind, prompt))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        sent += width
    if tasks:
        await asyncio.gather(*tasks)


async def idle(pid: int, seconds: float = 2.0) -> None:
    """Wait until the gateway uses no CPU for a moment (its records flushed, tasks done)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        before = procs.own_cpu_seconds(pid)
        await asyncio.sleep(seconds)
        if procs.own_cpu_seconds(pid) - before < 0.02 * seconds:
            return


def recorded(db: Path) -> int:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        row = conn.execute("SELECT count(*) FROM requests WHERE route != '/readyz'").fetchone()
    return int(row[0])


async def soak(args: argparse.Namespace, setup: Setup) -> dict[str, Any]:
    pid = setup.gateway.pid
    items = plan(args.streams)
    warm = max(1, int(len(items) * args.warmup))
    seconds = args.minutes * 60
    tally = Tally()
    samples: list[Sample] = []
    rng = random.Random(11)
    t0 = time.monotonic()
    phase = "warm-up"

    async def sample() -> None:
        while True:
            done = tally.sent
            samples.append(Sample(time.monotonic() - t0, phase, rss(pid), fds(pid), done))
            await asyncio.sleep(args.sample)

    limits = httpx.Limits(
        max_connections=args.concurrency, max_keepalive_connections=args.concurrency
    )
    async with httpx.AsyncClient(base_url=setup.url, timeout=60, limits=limits) as client:
        sampler = asyncio.get_running_loop().create_task(sample())
        try:
            warm_seconds = seconds * warm / len(items)
            await send(client, setup, items[:warm], warm_seconds, args.concurrency, tally, rng)
            phase = "idle"
            await idle(pid)
            base = Sample(time.monotonic() - t0, "baseline", rss(pid), fds(pid), tally.sent)
            samples.append(base)
            log(
                f"warmed up: {tally.sent:,} streams; RSS {base.rss / 2**20:.1f} MiB, {base.fds} fds"
            )
            phase = "load"
            rest = items[warm:]
            await send(client, setup, rest, seconds - warm_seconds, args.concurrency, tally, rng)
            # Idle again with the client's connections still open, as at the baseline.
            phase = "idle"
            await idle(pid)
            end = Sample(time.monotonic() - t0, "end", rss(pid), fds(pid), tally.sent)
            samples.append(end)
        finally:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
    deadline = time.monotonic() + 30
    records = recorded(setup.db)
    while records < tally.sent and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        records = recorded(setup.db)
    growth = (end.rss - base.rss) / base.rss if base.rss else None
    # The second half of the load: a leak keeps growing there; a bounded cache filling
    # up (SQLite's page cache, say) has stopped.
    load = [s for s in samples if s.phase == "load"]
    half = load[len(load) // 2] if load else base
    late = (end.rss - half.rss) / half.rss if half.rss else None
    failed = sum(tally.failed.values())
    tracebacks = setup.log.read_text(errors="replace").count("Traceback")
    judged = {
        "rss": growth is not None and growth < RSS_LIMIT,
        "fds": abs(end.fds - base.fds) <= FD_LIMIT,
        "records": records == tally.sent,
        "failed": failed == 0,
        "log": tracebacks == 0,
    }
    return {
        "streams": tally.sent,
        "warmup_streams": sum(BURST if k == "coalesce" else 1 for k in items[:warm]),
        "seconds": round(end.t, 1),
        "complete": dict(tally.complete),
        "refused": dict(tally.refused),
        "failed": failed,
        "failures": dict(tally.failed),
        "cache": dict(tally.cache),
        "records": records,
        "tracebacks": tracebacks,
        "baseline": {"rss": base.rss, "fds": base.fds, "t": round(base.t, 1)},
        "end": {"rss": end.rss, "fds": end.fds, "t": round(end.t, 1)},
        "rss_growth": growth,
        "rss_growth_second_half": late,
        "rss_second_half_from": half.rss,
        "rss_peak": max(s.rss for s in samples),
        "fds_peak": max(s.fds for s in samples),
        "rss_load_median": statistics.median([s.rss for s in samples if s.phase == "load"] or [0]),
        "judged": judged,
        "ok": all(judged.values()),
        "samples": [[round(s.t, 1), s.phase, s.rss, s.fds, s.done] for s in samples],
    }


# -- the report ------------------------------------------------------------------------


def mib(value: float) -> str:
    return f"{value / 2**20:.1f} MiB"


def table(out: dict[str, Any]) -> str:
    r = out["result"]
    judged = r["judged"]

    def verdict(name: str) -> str:
        return "met" if judged[name] else "MISSED"

    growth = r["rss_growth"]
    late = r["rss_growth_second_half"]
    rows = [
        (
            "streams sent",
            f"{r['streams']:,} in {r['seconds']:.0f} s ({r['warmup_streams']:,} warm-up)",
            "",
        ),
        ("complete", ", ".join(f"{k} {v:,}" for k, v in sorted(r["complete"].items())), ""),
        (
            "refused (expected)",
            ", ".join(f"{k} {v:,}" for k, v in sorted(r["refused"].items())),
            "",
        ),
        ("cache", ", ".join(f"{k} {v:,}" for k, v in sorted(r["cache"].items())), ""),
        (
            "failed streams",
            f"{r['failed']:,} {r['failures'] or ''}".strip(),
            f"0: {verdict('failed')}",
        ),
        (
            "records / requests",
            f"{r['records']:,} / {r['streams']:,}",
            f"equal: {verdict('records')}",
        ),
        (
            "RSS warmed up → end",
            f"{mib(r['baseline']['rss'])} → {mib(r['end']['rss'])}"
            f" ({'n/a' if growth is None else f'{growth:+.1%}'}; peak {mib(r['rss_peak'])})",
            f"< {RSS_LIMIT:.0%}: {verdict('rss')}",
        ),
        (
            "RSS over the second half",
            f"{mib(r['rss_second_half_from'])} → {mib(r['end']['rss'])}"
            f" ({'n/a' if late is None else f'{late:+.2%}'})",
            "",
        ),
        ("tracebacks in the gateway's log", str(r["tracebacks"]), f"0: {verdict('log')}"),
        (
            "open fds warmed up → end",
            f"{r['baseline']['fds']} → {r['end']['fds']} (peak {r['fds_peak']})",
            f"±{FD_LIMIT}: {verdict('fds')}",
        ),
    ]
    width = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, width, strict=True)) for row in rows)


def markdown(out: dict[str, Any]) -> str:
    m = out["machine"]
    a = out["args"]
    lines = [
        "# Sluice soak",
        "",
        f"{m['cpu']} · {m['cores']} cores · Python {m['python']} · commit {out['sluice_commit']}"
        f" · {out['started']}  ",
        f"`{out['command']}`: {a['streams']:,} streams over {a['minutes']:g} minutes, at most"
        f" {a['concurrency']} at once; chat, Anthropic Messages, Responses and UI streams with"
        " keys, rate limits, cache hits, coalescing and budgets, on Redis; one gateway process,"
        " the fake upstream in its own.",
        "",
        "```",
        table(out),
        "```",
        "",
        f"Verdict: {'every judgement met' if out['result']['ok'] else 'a judgement MISSED'}.",
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    parser.add_argument("--streams", type=int, default=10_000, help="streams in all (10,000)")
    parser.add_argument("--minutes", type=float, default=10.0, help="over this long (10)")
    parser.add_argument("--concurrency", type=int, default=48, help="streams at once at most")
    parser.add_argument("--warmup", type=float, default=0.1, help="fraction that warms up")
    parser.add_argument("--sample", type=float, default=2.0, help="seconds between samples")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where soak.* go")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    procs.raise_fd_limit()
    started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    with tempfile.TemporaryDirectory(prefix="sluice-soak-") as tmp, running(Path(tmp)) as setup:
        result = asyncio.run(soak(args, setup))
    out = {
        "started": started,
        "command": "python -m bench.soak " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine(),
        "sluice_commit": sluice_commit(),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "result": result,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "soak.json").write_text(json.dumps(out, indent=1) + "\n")
    (args.out / "soak.md").write_text(markdown(out))
    print(table(out))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
