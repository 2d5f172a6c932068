"""What recording a request costs, on SQLite and on PostgreSQL, side by side.

``python -m bench.record_cost [--records 20000] [--rate 5000] [--rounds 3] [--postgres URL]``

Records like the gateway's (a chat completion with its token timeline) arrive at
``--rate`` a second, in groups of 50 (a busy gateway; the event loop sleeps between
groups as it waits between requests), into the record store of each backend with the
gateway's settings (batches of 256, flushed every 0.5 s); a round ends when everything
is written. Per record, best of ``--rounds``:

- ``add``: the request path's share, ``store.add`` alone (the relay never waits longer);
- ``gateway CPU``: all of this process's CPU (every thread: SQLite writes from a worker
  thread) from the first ``add`` until every record is in the database;
- ``server CPU``: PostgreSQL's processes (the postmaster and its children), when the
  bench started the server itself; SQLite has no server;
- ``lag``: from the last ``add`` until every record is in the database.

Without ``--postgres`` a scratch PostgreSQL is started in a temporary directory by
``tests/postgres.py`` (as ``nobody`` when run as root) and stopped at the end. The
table is printed and written to ``bench/results/record_cost.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sluice.store import Record, timeline
from sluice.store.database import DatabaseOptions, open_database

RESULTS = Path(__file__).parent / "results"
GROUP = 50
TICKS = os.sysconf("SC_CLK_TCK")


def record(i: int, marks: bytes) -> Record:
    now = time.time()
    return Record(
        id=f"{i:024x}",
        started_at=now,
        route="/v1/chat/completions",
        method="POST",
        api="openai_chat",
        model="gpt-4o-mini",
        upstream="openai:gpt-4o-mini@127.0.0.1:9000",
        client="127.0.0.1",
        ended_at=now + 1.2,
        status=200,
        ttft_ms=210.5,
        duration_ms=1200.25,
        input_tokens=42,
        output_tokens=120,
        usage_source="reported",
        chunks=120,
        key_id="key_0123456789ab",
        cost_usd=0.000078,
        cache="miss",
        attempts=1,
        timeline=marks,
    )


def tree_cpu(pid: int) -> float:
    """CPU seconds of ``pid`` and its children (PostgreSQL's backends are children)."""
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry) == pid or int(fields[1]) == pid:
            total += (int(fields[11]) + int(fields[12])) / TICKS
    return total


async def one_round(
    location: str, count: int, rate: float, spill: str, server: int | None
) -> dict[str, float]:
    marks = bytes(timeline.encode([(210, 0)] + [(10, 1)] * 119))
    records = [record(i, marks) for i in range(count)]
    database = open_database(location, DatabaseOptions(spill_dir=spill))
    store = database.records
    await store.start()
    await store.flush()
    server_before = tree_cpu(server) if server else 0.0
    cpu0, wall0 = time.process_time(), time.perf_counter()
    add_ns = 0
    for start in range(0, count, GROUP):
        t0 = time.perf_counter_ns()
        for r in records[start : start + GROUP]:
            store.add(r)
        add_ns += time.perf_counter_ns() - t0
        due = wall0 + (start + GROUP) / rate
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
    added = time.perf_counter()
    await store.flush()
    cpu, lag = time.process_time() - cpu0, time.perf_counter() - added
    server_cpu = tree_cpu(server) - server_before if server else None
    await database.close()
    row = {
        "add_us": add_ns / count / 1000,
        "cpu_us": cpu / count * 1e6,
        "lag_ms": lag * 1000,
    }
    if server_cpu is not None:
        row["server_us"] = server_cpu / count * 1e6
    return row


@contextlib.contextmanager
def scratch_postgres(url: str | None) -> Iterator[tuple[str, int | None]]:
    if url:
        yield url, None
        return
    from tests.postgres import run_postgres

    with run_postgres() as server:
        assert server.process is not None
        yield server.create_database(), server.process.pid


def best(rows: list[dict[str, float]]) -> dict[str, float]:
    return {key: min(row[key] for row in rows) for key in rows[0]}


def table(results: dict[str, dict[str, float]]) -> str:
    lines = [
        "| backend | add (request path) | gateway CPU | server CPU | lag after the last |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, row in results.items():
        server = f"{row['server_us']:.1f} µs" if "server_us" in row else "-"
        lines.append(
            f"| {name} | {row['add_us']:.2f} µs | {row['cpu_us']:.1f} µs | {server} |"
            f" {row['lag_ms']:.1f} ms |"
        )
    return "\n".join(lines)


async def measure(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    workdir = tempfile.mkdtemp(prefix="sluice-record-cost-")
    try:
        with scratch_postgres(args.postgres) as (url, server):
            rounds: dict[str, list[dict[str, float]]] = {"SQLite": [], "PostgreSQL": []}
            for i in range(args.rounds):  # alternate, so a busy moment hits both alike
                path = os.path.join(workdir, f"round{i}.db")
                rounds["SQLite"].append(
                    await one_round(path, args.records, args.rate, workdir, None)
                )
                rounds["PostgreSQL"].append(
                    await one_round(url, args.records, args.rate, workdir, server)
                )
            return {name: best(rows) for name, rows in rounds.items()}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--rate", type=float, default=5000.0, help="records a second")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--postgres", help="postgresql:// URL of a scratch database")
    parser.add_argument("--no-save", action="store_true", help="print only")
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    results = asyncio.run(measure(args))
    text = table(results)
    print(text)
    if args.no_save:
        return
    RESULTS.mkdir(exist_ok=True)
    meta: dict[str, Any] = {
        "records": args.records,
        "rounds": args.rounds,
        "rate": args.rate,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    (RESULTS / "record_cost.json").write_text(json.dumps({**meta, "results": results}, indent=2))
    (RESULTS / "record_cost.md").write_text(
        "# Record-path cost per request\n\n"
        "`python -m bench.record_cost` (best of"
        f" {args.rounds} rounds of {args.records} records at {args.rate:.0f} a second;"
        f" CPU per record).\n\n{text}\n"
    )


if __name__ == "__main__":
    main()
