"""How the console's reads scale: each one on 1,000 records and on 100,000, side by side.

``python -m bench.console_queries [--small 1000] [--large 100000] [--rounds 5]``

The records are spread over a week (eight models, twenty keys, one in seventeen an
error, each with a token timeline), written to a scratch SQLite database through the
record store. Each console read (the overview of a week and of an hour, the first and
the next page of the list, a filtered page, the filter choices, one record's detail)
runs ``--rounds`` times on each database; the table shows the best time of each and
the ratio large/small. Reads that go through an index grow far less than the hundred
times the data: that ratio, not the absolute time, is the figure to watch. The table
is printed and written to ``bench/results/console_queries.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from sluice.store import Record, timeline
from sluice.store.database import DatabaseOptions, open_database
from sluice.store.queries import Filters, RecordQueries

RESULTS = Path(__file__).parent / "results"
NOW = 1_800_000_000.0
WEEK = 7 * 86_400
MODELS = ["gpt-4o-mini", "gpt-4o", "claude", "llama", "story", "o3", "mini", "x"]

Read = Callable[[RecordQueries], Awaitable[Any]]


def records(count: int) -> list[Record]:
    blob = bytes(timeline.encode([(300, 1)] + [(20, 1)] * 100))
    out = []
    for i in range(count):
        record = Record(
            id=f"r{i}",
            started_at=NOW - WEEK + i * WEEK / count,
            route="/v1/chat/completions",
            api="openai_chat",
        )
        record.model = MODELS[i % 8]
        record.key_id = f"key_{i % 20}"
        record.outcome = "error" if i % 17 == 0 else "ok"
        record.ttft_ms = 100 + i % 900
        record.duration_ms = 3000.0
        record.output_tokens = 100
        record.cost_usd = 0.001
        record.timeline = blob
        out.append(record)
    return out


async def next_page(queries: RecordQueries) -> Any:
    first = await queries.page(Filters(), 50)
    return await queries.page(Filters(), 50, before=tuple(first["rows"][-1]["cursor"]))


def reads(count: int) -> dict[str, Read]:
    return {
        "overview, week by model": lambda q: q.overview("week", "model", now=NOW),
        "overview, hour by key": lambda q: q.overview("hour", "key", now=NOW),
        "first page": lambda q: q.page(Filters(), 50),
        "first and next page": next_page,
        "filtered page": lambda q: q.page(Filters(model="o3", outcome="error"), 50),
        "filter choices": lambda q: q.facets(NOW - WEEK),
        "record detail": lambda q: q.record(f"r{count // 2}"),
    }


async def measure(count: int, rounds: int) -> dict[str, float]:
    """Best seconds per read on a fresh database of ``count`` records."""
    scratch = Path(tempfile.mkdtemp(prefix="sluice-console-bench-"))
    try:
        db = open_database(
            str(scratch / "records.db"),
            DatabaseOptions(spill_dir=str(scratch), max_pending=count + 1),
        )
        await db.records.start()
        for record in records(count):
            db.records.add(record)
        await db.records.flush()
        best: dict[str, float] = {}
        for name, read in reads(count).items():
            for _ in range(rounds):
                t0 = time.perf_counter()
                await read(db.queries)
                took = time.perf_counter() - t0
                best[name] = min(best.get(name, took), took)
        await db.close()
        return best
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def table(small: int, large: int, a: dict[str, float], b: dict[str, float]) -> str:
    lines = [
        f"| read | {small:,} records | {large:,} records | ratio |",
        "|---|---:|---:|---:|",
    ]
    for name in a:
        lines.append(
            f"| {name} | {a[name] * 1000:.2f} ms | {b[name] * 1000:.2f} ms"
            f" | {b[name] / a[name]:.1f}x |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=1_000)
    parser.add_argument("--large", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-save", action="store_true", help="print only")
    args = parser.parse_args()
    a = asyncio.run(measure(args.small, args.rounds))
    b = asyncio.run(measure(args.large, args.rounds))
    text = table(args.small, args.large, a, b)
    print(text)
    if not args.no_save:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "console_queries.md").write_text(
            f"# Console reads, SQLite ({platform.python_version()})\n\n{text}\n"
        )
        payload = {"small": args.small, "large": args.large, "seconds": {"small": a, "large": b}}
        (RESULTS / "console_queries.json").write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
