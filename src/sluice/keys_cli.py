"""``sluice keys create|list|revoke``: manage virtual keys in the record database
(a SQLite file, or PostgreSQL with ``--db postgresql://…`` or ``SLUICE_DATABASE_URL``).

A new key is printed once, on creation; afterwards only its id, name and a short
prefix are ever shown. Bad input exits with status 2 and a message on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import re
import sys
import time
from datetime import UTC, datetime
from typing import Any

from sluice import config
from sluice.store import StoreError
from sluice.store.database import Database, open_database
from sluice.store.keys import KeyRow, KeyStore, shown

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


class Invalid(Exception):
    """Bad input on the command line: exit status 2."""


def parse_expiry(text: str, now: float) -> float:
    """``30d`` / ``12h`` / ``90m`` / ``45s`` / ``2w`` from now; a date (``2026-12-31``:
    midnight UTC at its start); or an ISO 8601 time (UTC unless it says otherwise)."""
    text = text.strip()
    match = _DURATION.fullmatch(text.lower())
    if match:
        seconds = float(match.group(1)) * _UNIT[match.group(2)]
        if seconds <= 0:
            raise Invalid(f"--expires: {text!r} is not in the future")
        return now + seconds
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
    except ValueError:
        raise Invalid(
            f"--expires: cannot read {text!r}; use a duration (30d, 12h, 90m), a date"
            " (2026-12-31) or an ISO 8601 time (2026-12-31T18:00:00+02:00)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    at = when.timestamp()
    if at <= now:
        raise Invalid(f"--expires: {text!r} is in the past")
    return at


def _positive_int(flag: str, value: int | None) -> int | None:
    if value is not None and value < 1:
        raise Invalid(f"{flag}: expected a positive integer, got {value}")
    return value


def _budget(value: float | None) -> float | None:
    if value is not None and (math.isnan(value) or math.isinf(value) or value < 0):
        raise Invalid(f"--budget-usd: expected a non-negative amount, got {value}")
    return value


def _models(text: str | None) -> list[str]:
    if text is None:
        return []
    names = [name.strip() for name in text.split(",")]
    if not all(names):
        raise Invalid(f"--models: expected comma-separated model names, got {text!r}")
    return list(dict.fromkeys(names))


def _iso(unix: float | None) -> str:
    if unix is None:
        return "-"
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def location(args: argparse.Namespace) -> str:
    """The record database of a command: ``--db``, else the config's (a PostgreSQL URL
    from ``record.url`` or ``SLUICE_DATABASE_URL``, else the SQLite path). Raises
    ``config.ConfigError``."""
    found: str = args.db or config.load(args.config).database
    return found


async def _create(args: argparse.Namespace, keys: KeyStore) -> int:
    name = args.name.strip()
    if not name:
        raise Invalid("--name: expected a name")
    models = _models(args.models)
    rpm = _positive_int("--rpm", args.rpm)
    tpm = _positive_int("--tpm", args.tpm)
    budget = _budget(args.budget_usd)
    expires_at = parse_expiry(args.expires, time.time()) if args.expires else None
    if models:
        settings = config.load(args.config)
        if "*" not in settings.models:
            unknown = [m for m in models if m not in settings.models]
            if unknown:
                print(
                    f"sluice: warning: no model named {', '.join(unknown)} in the config",
                    file=sys.stderr,
                )
    secret, key = await keys.create(
        name,
        models=models,
        rpm=rpm,
        tpm=tpm,
        budget_usd=budget,
        expires_at=expires_at,
        admin=args.admin,
    )
    if args.json:
        row = KeyRow(key, shown(secret), None, 0.0)
        print(json.dumps({"key": secret, **row.as_dict()}))
    else:
        print(secret)
        print(
            f"created key {key.id} ({key.name}); this is the only time the key is shown",
            file=sys.stderr,
        )
    return 0


def _limits(row: KeyRow) -> str:
    k = row.key
    parts = []
    if k.models:
        parts.append("models=" + ",".join(k.models))
    if k.rpm is not None:
        parts.append(f"rpm={k.rpm}")
    if k.tpm is not None:
        parts.append(f"tpm={k.tpm}")
    return " ".join(parts) or "-"


async def _list(args: argparse.Namespace, keys: KeyStore) -> int:
    rows = await keys.rows()
    if args.json:
        print(json.dumps([row.as_dict() for row in rows]))
        return 0
    if not rows:
        print("no keys yet: create one with `sluice keys create --name NAME`", file=sys.stderr)
        return 0
    now = time.time()
    table: list[list[str]] = [
        ["id", "name", "prefix", "limits", "spend", "budget", "expires", "status"]
    ]
    for row in rows:
        k = row.key
        status = "revoked" if k.revoked else "active"
        if not k.revoked and k.expires_at is not None and k.expires_at <= now:
            status = "expired"
        if k.admin:
            status += ", admin"
        table.append(
            [
                k.id,
                k.name,
                row.prefix + "…",
                _limits(row),
                f"${row.spend_usd:.4f}",
                "-" if k.budget_usd is None else f"${k.budget_usd:.2f}",
                _iso(k.expires_at),
                status,
            ]
        )
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    for line in table:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        )
    return 0


async def _revoke(args: argparse.Namespace, keys: KeyStore) -> int:
    before = await keys.get(args.id)
    if before is None:
        raise Invalid(f"no key with id {args.id!r} (see `sluice keys list`)")
    key = await keys.revoke(args.id)
    assert key is not None
    if before.revoked:
        print(f"key {key.id} ({key.name}) was already revoked")
    else:
        print(f"revoked key {key.id} ({key.name})")
    return 0


def _run(args: argparse.Namespace) -> int:
    try:
        database = open_database(location(args))
    except config.ConfigError as exc:
        print(f"sluice: configuration error: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(_run_in(args, database))


async def _run_in(args: argparse.Namespace, database: Database) -> int:
    try:
        command: Any = args.keys_run
        return int(await command(args, database.keys))
    except Invalid as exc:
        print(f"sluice: {exc}", file=sys.stderr)
        return 2
    except config.ConfigError as exc:
        print(f"sluice: configuration error: {exc}", file=sys.stderr)
        return 2
    except StoreError as exc:
        print(f"sluice: {exc}", file=sys.stderr)
        return 1
    finally:
        await database.close()


def serve_problem(settings: config.Settings) -> str | None:
    """Why ``sluice serve`` must not start with these settings (the safe default), or None."""
    from sluice.policies.auth import exposure_problem, is_loopback

    async def check() -> tuple[str | None, bool]:
        database = open_database(settings.database)
        keys = database.keys
        try:
            problem = await exposure_problem(settings, keys)
            exposed = (
                problem is None
                and settings.insecure
                and not settings.master_key
                and not is_loopback(settings.host)
                and await keys.count() == 0
            )
            return problem, exposed
        finally:
            await database.close()

    try:
        problem, exposed = asyncio.run(check())
    except StoreError as exc:
        return f"cannot read the key database: {exc}"
    if exposed:
        print(
            f"sluice: warning: --insecure: serving on {settings.host} without keys; anyone who"
            " can reach it can use the upstream keys until a key exists",
            file=sys.stderr,
        )
    return problem


def register(commands: Any) -> None:
    """Add ``keys`` and its subcommands to the CLI's subparsers."""
    keys = commands.add_parser("keys", help="manage virtual API keys")
    sub = keys.add_subparsers(dest="keys_command", required=True)

    def common(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--db",
            help="key and record database: a SQLite path or a postgresql:// URL"
            " (default from config)",
        )
        parser.add_argument("--config", help="YAML config file (default $SLUICE_CONFIG)")
        parser.set_defaults(run=_run)

    create = sub.add_parser("create", help="create a key and print it (only this once)")
    create.add_argument("--name", required=True, help="who or what the key is for")
    create.add_argument("--models", help="comma-separated model names it may use (default all)")
    create.add_argument("--rpm", type=int, help="requests per minute")
    create.add_argument("--tpm", type=int, help="tokens per minute")
    create.add_argument("--budget-usd", type=float, help="total spend allowed, in USD")
    create.add_argument(
        "--expires", help="30d, 12h, 90m; a date (2026-12-31, 00:00 UTC); or an ISO time"
    )
    create.add_argument(
        "--admin", action="store_true", help="may also sign in to the console (/ui/)"
    )
    create.add_argument("--json", action="store_true", help="print a JSON object")
    create.set_defaults(keys_run=_create)
    common(create)

    listing = sub.add_parser("list", help="list keys (never the keys themselves)")
    listing.add_argument("--json", action="store_true", help="print a JSON list")
    listing.set_defaults(keys_run=_list)
    common(listing)

    revoke = sub.add_parser("revoke", help="revoke a key by id")
    revoke.add_argument("id", help="the key's id (key_…)")
    revoke.set_defaults(keys_run=_revoke)
    common(revoke)
