"""``sluice requests`` and ``sluice stats``: the request log, filtered, and summed up.

Both read the record database (``--db``, or the config's; an older one is migrated
first, as the gateway would) and never create one. Times
given with ``--since`` are a duration back from now (``90s``, ``30m``, ``1h``, ``2d``,
``1w``) or an ISO 8601 date or time (UTC unless it says otherwise). Bad input exits
with status 2 and a message on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import re
import sqlite3
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from sluice import config
from sluice.store import Record, StoreError
from sluice.store.analytics import Grouping, RecordQuery, Summary

if TYPE_CHECKING:
    from sluice.store.sqlite import SQLiteRecordStore

T = TypeVar("T")

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
OUTCOMES = ("ok", "error", "rejected", "client_disconnected", "cancelled", "shutdown")
GROUPS: dict[str, Grouping] = {"model": "model", "key": "key_id"}


class Invalid(Exception):
    """Bad input on the command line: exit status 2."""


class NoDatabase(Exception):
    """The record database does not exist: exit status 1."""


def parse_since(text: str, now: float) -> float:
    """Unix seconds: ``1h`` (and the like) before ``now``, or an ISO 8601 date or time."""
    text = text.strip()
    match = _DURATION.fullmatch(text.lower())
    if match:
        return now - float(match.group(1)) * _UNIT[match.group(2)]
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
    except ValueError:
        raise Invalid(
            f"--since: cannot read {text!r}; use a duration (90s, 30m, 1h, 2d, 1w), a date"
            " (2026-01-31) or an ISO 8601 time (2026-01-31T18:00:00+02:00)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def _iso(unix: float | None) -> str | None:
    if unix is None:
        return None
    return datetime.fromtimestamp(unix, UTC).isoformat(timespec="milliseconds")


def _db_path(args: argparse.Namespace) -> str:
    from sluice.keys_cli import location
    from sluice.store.postgres import is_postgres

    path = location(args)
    if not is_postgres(path) and not os.path.exists(path):
        raise NoDatabase(path)
    return path


def _read(path: str, read: Callable[[SQLiteRecordStore], Awaitable[T]]) -> T:
    from sluice.store.postgres import is_postgres
    from sluice.store.sqlite import SQLiteRecordStore

    if is_postgres(path):
        raise Invalid(
            "filters and sluice stats read a SQLite record database only for now;"
            " sluice requests --last N reads PostgreSQL"
        )

    async def run() -> T:
        store = SQLiteRecordStore(path)
        await store.start()
        try:
            return await read(store)
        finally:
            await store.close()

    return asyncio.run(run())


def _recent_shared(path: str, last: int) -> list[Record]:
    """The newest records of a PostgreSQL record database (no filters there yet)."""
    from sluice.store.database import open_database

    async def run() -> list[Record]:
        database = open_database(path)
        try:
            return await database.records.recent(last)
        finally:
            await database.close()

    return asyncio.run(run())


def _run(command: Callable[[argparse.Namespace, str], int]) -> Callable[[argparse.Namespace], int]:
    """The shared start and the exits: 2 for bad input or config, 1 for the database."""

    def run(args: argparse.Namespace) -> int:
        try:
            return command(args, _db_path(args))
        except Invalid as exc:
            print(f"sluice: {exc}", file=sys.stderr)
            return 2
        except config.ConfigError as exc:
            print(f"sluice: configuration error: {exc}", file=sys.stderr)
            return 2
        except NoDatabase as exc:
            print(f"sluice: no record database at {exc.args[0]}", file=sys.stderr)
            return 1
        except (sqlite3.Error, OSError, StoreError) as exc:
            print(f"sluice: cannot read the record database: {exc}", file=sys.stderr)
            return 1

    return run


# -- sluice requests --------------------------------------------------------------------


def _record_json(record: Record) -> dict[str, Any]:
    from sluice.store import timeline

    data = dataclasses.asdict(record)
    data["started"] = _iso(record.started_at)
    # (ms since the request started, deltas that arrived then), as the console shows it.
    data["timeline"] = [list(mark) for mark in timeline.decode(record.timeline)]
    return data


def _requests(args: argparse.Namespace, path: str) -> int:
    from sluice.store.render import render_table

    if args.last < 1:
        raise Invalid(f"--last: expected a positive integer, got {args.last}")
    since = parse_since(args.since, time.time()) if args.since else None
    query = RecordQuery(model=args.model, key_id=args.key, outcome=args.outcome, since=since)
    from sluice.store.postgres import is_postgres

    filtered = any(v is not None for v in (args.model, args.key, args.outcome, since))
    if is_postgres(path) and not filtered:
        records = _recent_shared(path, args.last)
    else:
        records = _read(path, lambda store: store.recent(args.last, query))
    if args.json:
        print(json.dumps([_record_json(r) for r in records]))
    else:
        print(render_table(records))
    return 0


# -- sluice stats -----------------------------------------------------------------------


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _table(title: str, summaries: list[Summary]) -> str:
    rows = [[title, "requests", "errors", "ttft p50 ms", "ttft p95 ms", "tokens in"]]
    rows[0] += ["tokens out", "cost usd"]
    for s in summaries:
        rows.append(
            [
                s.name or "-",
                str(s.requests),
                str(s.errors),
                _ms(s.ttft_p50_ms),
                _ms(s.ttft_p95_ms),
                str(s.input_tokens),
                str(s.output_tokens),
                "-" if s.cost_usd is None else f"{s.cost_usd:.6f}",
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [row[0].ljust(widths[0])]
        cells += [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _stats(args: argparse.Namespace, path: str) -> int:
    since = parse_since(args.since, time.time()) if args.since else None
    names = [args.by] if args.by else list(GROUPS)

    async def read(store: SQLiteRecordStore) -> dict[str, list[Summary]]:
        return {name: await store.summary(GROUPS[name], since) for name in names}

    found = _read(path, read)
    if args.json:
        out: dict[str, Any] = {"since": _iso(since)}
        out.update({f"by_{name}": [s.as_dict() for s in found[name]] for name in names})
        print(json.dumps(out))
        return 0
    if since is not None:
        print(f"since {_iso(since)}\n")
    print("\n\n".join(_table(name, found[name]) for name in names))
    return 0


def register(commands: Any) -> None:
    """Add ``requests`` and ``stats`` to the CLI's subparsers."""

    def common(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--since", help="a duration back from now (1h, 30m, 2d) or an ISO 8601 time"
        )
        parser.add_argument("--json", action="store_true", help="print JSON")
        parser.add_argument("--db", help="record database (default from config)")
        parser.add_argument("--config", help="YAML config file (default $SLUICE_CONFIG)")

    requests = commands.add_parser("requests", help="show recent request records")
    requests.add_argument("--last", type=int, default=20, help="how many (default 20)")
    requests.add_argument("--model", help="only requests for this model (as the client named it)")
    requests.add_argument("--key", help="only requests made with this key id (key_…)")
    requests.add_argument("--outcome", choices=OUTCOMES, help="only requests with this outcome")
    common(requests)
    requests.set_defaults(run=_run(_requests))

    stats = commands.add_parser(
        "stats", help="per model and per key: requests, errors, TTFT, tokens, cost"
    )
    stats.add_argument("--by", choices=list(GROUPS), help="only one table (default both)")
    common(stats)
    stats.set_defaults(run=_run(_stats))
