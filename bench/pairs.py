"""What each pair of client API and upstream API costs per relayed chunk.

``python -m bench.pairs [--quick] [--rounds N] [--only chat-chat,messages-chat,...]
[--burst-streams N] [--wait-quiet S] [--out DIR]``; ``--report pairs.json`` renders
a run again.

The burst profile (200 chunks written at once by the fake upstream, 50 concurrent
streams) through ``sluice serve`` for each pair of the API a client speaks and the
format its upstream speaks, and through LiteLLM proxy's ``/v1/messages`` over the same
fake OpenAI upstream. The figure is the gateway's CPU (its process tree, from
``/proc``) per 1,000 content chunks relayed, and its ratio to chat → chat, the OpenAI
passthrough, measured in the same run.

Every Sluice pair has its own gateway (one config each: the deployment ``*`` with the
pair's upstream ``provider``), all started at once on the gateway's core and measured
in turns: each round runs one burst round of every pair, in an order rotated from
round to round, after waiting for the machine to be quiet, so work that starts
elsewhere on a shared machine hits every pair alike. Idle gateways cost nothing
meanwhile. Peers are measured after, one at a time, alone on that core.

Responses requests send ``store: false``: the API stores every response by default,
and the bench measures the relay, not the record database's writes.

Writes ``bench/results/pairs.json`` (every round) and ``pairs.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from bench import procs
from bench.client import Kind
from bench.profiles import Env, Sizes, burst, warmup
from bench.report import fmt
from bench.run import RESULTS, machine, sluice_commit, start_upstream
from bench.targets import (
    CACHE,
    Live,
    Request,
    Target,
    fmt_cores,
    openai_request,
    sluice_launch,
    start,
    stop,
)

PROMPT = "Tell me a story"
#: The pair every other is divided by: the OpenAI chat passthrough.
REFERENCE = "chat-chat"
#: Most CPU per chunk a passthrough pair may cost, as a multiple of the reference.
PASSTHROUGH_LIMIT = 1.2
#: Most CPU per chunk a translated pair may cost, as a multiple of the reference.
TRANSLATED_LIMIT = 2.5


def messages_request(scenario: str) -> Request:
    body = {
        "model": scenario,
        "max_tokens": 1024,
        "messages": [{"role": "user", "content": PROMPT}],
        "stream": True,
    }
    headers = {"accept": "text/event-stream", "anthropic-version": "2023-06-01"}
    return "POST", "/v1/messages", orjson.dumps(body), headers


def responses_request(scenario: str) -> Request:
    # ``store: false``: what is measured is the relay, not the stored response.
    body = {"model": scenario, "input": PROMPT, "stream": True, "store": False}
    return "POST", "/v1/responses", orjson.dumps(body), {"accept": "text/event-stream"}


@dataclass(frozen=True)
class Pair:
    name: str
    #: The API the client speaks, and the format the upstream speaks.
    client: str
    upstream: str
    kind: Kind
    request: Callable[[str], Request]
    #: Sluice's ``provider`` for the upstream; None for a peer.
    provider: str | None
    #: The upstream's bytes may reach the client as they came.
    passthrough: bool = False


PAIRS = [
    Pair("chat-chat", "OpenAI chat", "OpenAI chat", "sse", openai_request, "openai", True),
    Pair(
        "messages-messages",
        "Anthropic Messages",
        "Anthropic Messages",
        "anthropic",
        messages_request,
        "anthropic",
        True,
    ),
    Pair(
        "messages-chat",
        "Anthropic Messages",
        "OpenAI chat",
        "anthropic",
        messages_request,
        "openai",
    ),
    Pair("chat-messages", "OpenAI chat", "Anthropic Messages", "sse", openai_request, "anthropic"),
    Pair(
        "responses-chat",
        "OpenAI Responses",
        "OpenAI chat",
        "responses",
        responses_request,
        "openai",
    ),
]


def litellm_messages_request(scenario: str) -> Request:
    from bench.peers.litellm import model_name

    return messages_request(model_name(scenario))


LITELLM = Pair(
    "litellm-messages-chat",
    "Anthropic Messages",
    "OpenAI chat",
    "anthropic",
    litellm_messages_request,
    None,
)
ALL = [*PAIRS, LITELLM]


def target_of(pair: Pair, gateway: set[int], logs: Path) -> Target:
    label = f"{pair.client} → {pair.upstream}"
    if pair.provider is not None:
        launch = sluice_launch(1, logs, pair.provider)
        return Target(
            pair.name, label, pair.kind, pair.request, launch, gateway, frozenset({"burst"})
        )
    from bench.peers.litellm import LiteLLM

    # LiteLLM sends an Anthropic request for an ``openai/`` model to OpenAI's Responses
    # API unless told otherwise; this keeps it on chat completions, the upstream every
    # pair here is measured against.
    peer = LiteLLM({"use_chat_completions_url_for_anthropic_messages": True})
    return Target(
        pair.name,
        f"LiteLLM proxy: {label}",
        pair.kind,
        pair.request,
        lambda base, port: peer.start(base, port, CACHE),
        gateway,
        frozenset({"burst"}),
        install=lambda: peer.install(CACHE),
    )


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.pairs", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes: seconds, not minutes")
    parser.add_argument("--rounds", type=int, help="burst rounds per pair (medians are reported)")
    parser.add_argument("--burst-streams", type=int, help="streams per burst round")
    names = ",".join(p.name for p in ALL)
    parser.add_argument("--only", help=f"comma-separated pairs (default: all: {names})")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where pairs.* go")
    parser.add_argument(
        "--report", type=Path, help="render this pairs.json again (to pairs.md beside it)"
    )
    parser.add_argument(
        "--nice", type=int, default=-5, help="scheduling priority, when allowed (default -5)"
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=30.0,
        help="before each round of each pair, wait up to this many seconds for other"
        " processes to use under 10%% of a core (default 30; 0: just measure them)",
    )
    return parser.parse_args(argv)


async def start_pair(target: Target, env: Env, base: str, entry: dict[str, Any]) -> Live | None:
    why = await asyncio.to_thread(target.install)
    if why is not None:
        entry["status"], entry["reason"] = "skipped", why
        log(f"{target.name}: skipped: {why}")
        return None
    live = await start(target, base)
    if isinstance(live, str):
        entry["status"], entry["reason"] = "failed", live
        log(f"{target.name}: failed to start: {live}")
        return None
    failed = await warmup(live, env)
    if failed is not None:
        entry["status"], entry["reason"] = "failed", f"warm-up: {failed}"
        log(f"{target.name}: warm-up failed: {failed}")
        await stop(live)
        return None
    return live


async def one_round(live: Live, env: Env, sizes: Sizes, wait_quiet: float) -> dict[str, Any]:
    other, waited = await asyncio.to_thread(procs.wait_quiet, [os.getpid()], 10.0, wait_quiet)
    if other >= 10.0:
        log(f"{live.target.name}: the machine is busy: other processes use {other:.0f} %")
    data = await burst(live, env, dataclasses.replace(sizes, rounds=1))
    measured: dict[str, Any] = data["rounds"][0]
    measured["waited_s"] = round(waited, 1)
    log(
        f"{live.target.name}: {fmt(measured['cpu_ms_per_1k_chunks'], 2)} ms CPU/1k chunks,"
        f" {fmt(measured['chunks_per_s'], 0)} chunks/s, failed"
        f" {measured['failed']}/{measured['streams']}, others {measured['other_cpu_pct']:.0f} %"
    )
    return measured


def summary(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    def median(key: str) -> float | None:
        values = [r[key] for r in rounds if r[key] is not None]
        return statistics.median(values) if values else None

    failures: dict[str, int] = {}
    for r in rounds:
        for reason, count in r["failures"].items():
            failures[reason] = failures.get(reason, 0) + count
    return {
        "cpu_ms_per_1k_chunks": median("cpu_ms_per_1k_chunks"),
        "cpu_ms_per_1k_chunks_range": [
            min(r["cpu_ms_per_1k_chunks"] or 0.0 for r in rounds),
            max(r["cpu_ms_per_1k_chunks"] or 0.0 for r in rounds),
        ],
        "chunks_per_s": median("chunks_per_s"),
        "gateway_cpu_pct": median("gateway_cpu_pct"),
        "other_cpu_pct": max(r["other_cpu_pct"] for r in rounds),
        "streams": sum(r["streams"] for r in rounds),
        "failed": sum(r["failed"] for r in rounds),
        "failures": failures,
        "rounds": rounds,
    }


def portkey_reference(path: Path) -> dict[str, Any] | None:
    """Portkey's and Sluice's burst CPU per 1,000 chunks in the committed full run."""
    try:
        run = orjson.loads(path.read_bytes())
        portkey = run["targets"]["portkey"]["headline"]["cpu_ms_per_1k"]
        sluice = run["targets"]["sluice"]["headline"]["cpu_ms_per_1k"]
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError):
        return None
    if not portkey or not sluice:
        return None
    return {
        "source": str(path.relative_to(RESULTS.parent.parent)),
        "commit": run.get("machine", {}).get("commit"),
        "portkey_ms": portkey,
        "sluice_ms": sluice,
        "ratio": portkey / sluice,
    }


def judge(out: dict[str, Any]) -> None:
    """Each Sluice pair's ratio to the reference, against its target."""
    pairs = out["pairs"]
    reference = pairs.get(REFERENCE, {}).get("cpu_ms_per_1k_chunks")
    portkey = out.get("portkey")
    for entry in pairs.values():
        cpu = entry.get("cpu_ms_per_1k_chunks")
        entry["ratio"] = cpu / reference if cpu is not None and reference else None
        ratio = entry["ratio"]
        if entry.get("sluice") is not True or ratio is None:
            continue
        if entry["passthrough"]:
            entry["target"] = f"≤ {PASSTHROUGH_LIMIT}x"
            entry["met"] = ratio <= PASSTHROUGH_LIMIT
        else:
            limit = TRANSLATED_LIMIT
            entry["target"] = f"≤ {TRANSLATED_LIMIT}x"
            if portkey is not None:
                limit = min(limit, portkey["ratio"])
                entry["target"] += f", < Portkey's {portkey['ratio']:.1f}x"
            entry["met"] = ratio <= limit
        entry["met"] = entry["met"] and entry["failed"] == 0


def rows(out: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    header = [
        "pair",
        "client API → upstream API",
        "CPU ms / 1,000 chunks [rounds' range]",
        f"÷ {REFERENCE}",
        "chunks/s",
        "gateway CPU %",
        "failed / streams",
        "others' CPU %",
        "target",
    ]
    body = []
    for name, entry in out["pairs"].items():
        label = entry["label"]
        if entry.get("status") != "ok":
            body.append([name, label, f"{entry['status']}: {entry.get('reason', '')}"] + [""] * 6)
            continue
        low, high = entry["cpu_ms_per_1k_chunks_range"]
        target = entry.get("target", "")
        if "met" in entry:
            target = f"{target}: {'met' if entry['met'] else 'missed'}"
        body.append(
            [
                name,
                label,
                f"{fmt(entry['cpu_ms_per_1k_chunks'], 2)} [{low:.2f}-{high:.2f}]",
                fmt(entry["ratio"], 2),
                fmt(entry["chunks_per_s"], 0),
                fmt(entry["gateway_cpu_pct"], 0),
                f"{entry['failed']:,} / {entry['streams']:,}",
                fmt(entry["other_cpu_pct"], 0),
                target,
            ]
        )
    return header, body


def table(out: dict[str, Any]) -> str:
    header, body = rows(out)
    grid = [header, *body]
    widths = [max(len(r[c]) for r in grid) for c in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in grid)


def markdown(out: dict[str, Any]) -> str:
    header, body = rows(out)
    m = out["machine"]
    sizes = out["sizes"]
    lines = [
        "# Sluice bench: API pairs",
        "",
        f"{m['cpu']} · {m['cores']} cores · Python {m['python']} · commit {out['sluice_commit']}"
        f" · {out['started']}  ",
        f"`{out['command']}`: burst, {sizes['burst_n']} chunks at once per stream,"
        f" {sizes['burst_concurrency']} concurrent, {sizes['burst_streams']:,} streams per round,"
        f" {sizes['rounds']} rounds per pair, medians; gateway on core"
        f" {out['placement']['gateway']}, load and fake upstream on core"
        f" {out['placement']['load']}. Sluice's pairs measured in"
        " turns, LiteLLM after them. Responses requests send `store: false`.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---", "---"] + ["---:"] * 6 + ["---"]) + "|",
    ]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    portkey = out.get("portkey")
    if portkey is not None:
        lines += [
            "",
            f"Portkey's passthrough, from `{portkey['source']}` (commit {portkey['commit']}):"
            f" {portkey['portkey_ms']:.1f} ms per 1,000 chunks against Sluice chat's"
            f" {portkey['sluice_ms']:.1f} ms in that run, {portkey['ratio']:.1f}x it. A translated"
            " pair is below Portkey when its ratio here is below that.",
        ]
    busy = max((e.get("other_cpu_pct", 0.0) for e in out["pairs"].values()), default=0.0)
    if busy > 10:
        lines += [
            "",
            f"Other processes used up to {busy:.0f} % of a core during the rounds: the machine"
            " was busy, so throughput says little and only ratios within this run count.",
        ]
    failures = [
        (name, reason, count)
        for name, entry in out["pairs"].items()
        for reason, count in entry.get("failures", {}).items()
    ]
    if failures:
        lines += ["", "Failed streams:", ""]
        lines += [f"- {name}: {count:,} x {reason}" for name, reason, count in failures]
    return "\n".join(lines) + "\n"


async def main_async(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    sizes = Sizes.quick() if args.quick else Sizes()
    if args.rounds:
        sizes.rounds = args.rounds
    if args.burst_streams:
        sizes.burst_streams = args.burst_streams
    wanted = args.only.split(",") if args.only else [p.name for p in ALL]
    unknown = set(wanted) - {p.name for p in ALL}
    if unknown:
        raise SystemExit(f"no such pair: {', '.join(sorted(unknown))}")
    chosen = [p for p in ALL if p.name in wanted]
    cores = sorted(os.sched_getaffinity(0))
    gateway_core, load_core = {cores[0]}, {cores[-1]}
    os.sched_setaffinity(0, load_core)
    if args.nice:
        try:
            os.setpriority(os.PRIO_PROCESS, 0, args.nice)  # inherited by what we start
        except OSError as exc:
            log(f"cannot set priority {args.nice}: {exc}")
    procs.raise_fd_limit()
    logs = CACHE / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python -m bench.pairs", *argv]),
        "machine": machine(),
        "sluice_commit": sluice_commit(),
        "placement": {"gateway": fmt_cores(gateway_core), "load": fmt_cores(load_core)},
        "quick": args.quick,
        "sizes": sizes.__dict__,
        "reference": REFERENCE,
        "portkey": portkey_reference(RESULTS / "latest.json"),
        "pairs": {},
    }
    for pair in chosen:
        out["pairs"][pair.name] = {
            "label": f"{pair.client} → {pair.upstream}"
            + (" (LiteLLM)" if not pair.provider else ""),
            "client": pair.client,
            "upstream": pair.upstream,
            "sluice": pair.provider is not None,
            "provider": pair.provider,
            "passthrough": pair.passthrough,
            "status": "ok",
        }
    upstream, base_url = start_upstream("bench", load_core, logs)
    env = Env(base_url, upstream.pid)
    base = f"{base_url}/v1"
    log(
        f"upstream {base_url}; gateway on core {fmt_cores(gateway_core)}, load on core"
        f" {fmt_cores(load_core)}"
    )
    lives: dict[str, Live] = {}
    try:
        # Sluice's pairs: all started, then measured in turns.
        for pair in chosen:
            if pair.provider is None:
                continue
            entry = out["pairs"][pair.name]
            live = await start_pair(target_of(pair, gateway_core, logs), env, base, entry)
            if live is not None:
                lives[pair.name] = live
        rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in lives}
        names = list(lives)
        for index in range(sizes.rounds):
            shift = index % len(names) if names else 0
            for name in names[shift:] + names[:shift]:
                rounds[name].append(await one_round(lives[name], env, sizes, args.wait_quiet))
        for name, measured in rounds.items():
            out["pairs"][name].update(summary(measured))
        for name in list(lives):
            await stop(lives.pop(name))
        # Peers: one at a time, alone on the gateway's core.
        for pair in chosen:
            if pair.provider is not None:
                continue
            entry = out["pairs"][pair.name]
            t0 = time.monotonic()
            live = await start_pair(target_of(pair, gateway_core, logs), env, base, entry)
            if live is None:
                continue
            lives[pair.name] = live
            measured = [
                await one_round(live, env, sizes, args.wait_quiet) for _ in range(sizes.rounds)
            ]
            entry.update(summary(measured))
            entry["seconds"] = round(time.monotonic() - t0, 1)
            await stop(lives.pop(pair.name))
    finally:
        for live in lives.values():
            await stop(live)
        procs.stop(upstream)
    judge(out)
    out["finished"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    return out


def main(argv: list[str] | None = None) -> int:
    given = sys.argv[1:] if argv is None else argv
    args = parse_args(given)
    if args.report is not None:
        out = orjson.loads(args.report.read_bytes())
        args.report.with_suffix(".md").write_text(markdown(out))
        print(table(out))
        return 0
    try:
        import uvloop
    except ImportError:
        out = asyncio.run(main_async(args, given))
    else:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            out = runner.run(main_async(args, given))
    args.out.mkdir(parents=True, exist_ok=True)
    json_path = args.out / "pairs.json"
    json_path.write_bytes(orjson.dumps(out, option=orjson.OPT_INDENT_2) + b"\n")
    (args.out / "pairs.md").write_text(markdown(out))
    print(table(out))
    failed = sum(e.get("failed", 0) for e in out["pairs"].values())
    log(f"wrote {json_path} and pairs.md; failed streams in total: {failed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
