"""``sluice keys create|list|revoke``, run as a user runs them, and what they store."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from sluice.keys_cli import Invalid, parse_expiry
from tests.policies.keys import create_key, list_keys, sluice


def test_create_prints_the_key_once_and_stores_only_its_hash(tmp_path: Path) -> None:
    db = tmp_path / "sluice.db"
    done = sluice("keys", "create", "--name", "web app", "--db", str(db))
    assert done.returncode == 0, done.stderr
    secret = done.stdout.strip()
    assert secret.startswith("sk-sluice-") and len(secret) >= len("sk-sluice-") + 43
    assert "only time" in done.stderr

    listed = sluice("keys", "list", "--db", str(db))
    listed_json = sluice("keys", "list", "--json", "--db", str(db))
    for output in (listed.stdout + listed.stderr, listed_json.stdout + listed_json.stderr):
        assert secret not in output
        assert secret[len("sk-sluice-") + 4 :] not in output
    assert "web app" in listed.stdout and secret[:14] in listed.stdout

    # Not in the database either, in any form but its SHA-256.
    assert secret.encode() not in db.read_bytes()
    wal = db.with_name(db.name + "-wal")
    assert not wal.exists() or secret.encode() not in wal.read_bytes()
    with sqlite3.connect(db) as conn:
        (stored,) = conn.execute("SELECT hash FROM keys").fetchone()
    assert stored == hashlib.sha256(secret.encode()).hexdigest()


def test_create_json_has_every_field(tmp_path: Path) -> None:
    db = tmp_path / "sluice.db"
    before = time.time()
    key = create_key(
        db,
        "batch",
        "--models",
        "gpt-4o-mini, gpt-4.1",
        "--rpm",
        "60",
        "--tpm",
        "100000",
        "--budget-usd",
        "12.5",
        "--expires",
        "30d",
    )
    assert key["key"].startswith("sk-sluice-")
    assert key["id"].startswith("key_")
    assert key["name"] == "batch"
    assert key["models"] == ["gpt-4o-mini", "gpt-4.1"]
    assert (key["rpm"], key["tpm"], key["budget_usd"]) == (60, 100000, 12.5)
    assert before + 30 * 86400 - 5 < key["expires_at"] < time.time() + 30 * 86400 + 5
    assert key["revoked"] is False and key["spend_usd"] == 0.0
    assert key["prefix"] == key["key"][:14]

    (listed,) = list_keys(db)
    assert "key" not in listed
    assert {k: v for k, v in key.items() if k != "key"} == listed


def test_revoke(tmp_path: Path) -> None:
    db = tmp_path / "sluice.db"
    keep = create_key(db, "keep")
    drop = create_key(db, "drop")
    done = sluice("keys", "revoke", drop["id"], "--db", str(db))
    assert done.returncode == 0, done.stderr
    assert f"revoked key {drop['id']}" in done.stdout
    again = sluice("keys", "revoke", drop["id"], "--db", str(db))
    assert again.returncode == 0 and "already revoked" in again.stdout
    by_id = {row["id"]: row for row in list_keys(db)}
    assert by_id[drop["id"]]["revoked"] is True and by_id[drop["id"]]["revoked_at"]
    assert by_id[keep["id"]]["revoked"] is False
    text = sluice("keys", "list", "--db", str(db)).stdout
    assert "revoked" in text and "active" in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("revoke", "key_doesnotexist"), "no key with id 'key_doesnotexist'"),
        (("create", "--name", "x", "--expires", "someday"), "--expires: cannot read"),
        (("create", "--name", "x", "--expires", "2001-01-01"), "in the past"),
        (("create", "--name", "x", "--expires", "0d"), "not in the future"),
        (("create", "--name", "x", "--budget-usd", "-1"), "--budget-usd: expected a non-negative"),
        (("create", "--name", "x", "--budget-usd", "nan"), "--budget-usd"),
        (("create", "--name", "x", "--rpm", "0"), "--rpm: expected a positive integer"),
        (("create", "--name", "x", "--models", "a,,b"), "--models"),
        (("create", "--name", "  "), "--name"),
        (("create", "--name", "x", "--rpm", "many"), "invalid int value"),
    ],
)
def test_bad_input_exits_2_with_a_clear_message(
    tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    db = tmp_path / "sluice.db"
    done = sluice("keys", *args, "--db", str(db))
    assert done.returncode == 2
    assert message in done.stderr
    assert done.stdout == ""
    assert not db.exists() or list_keys(db) == []


def test_db_comes_from_the_config(tmp_path: Path) -> None:
    db = tmp_path / "from-config.db"
    config = tmp_path / "sluice.yaml"
    config.write_text(f"record: {{path: {json.dumps(str(db))}}}\n")
    done = sluice("keys", "create", "--name", "c", "--config", str(config))
    assert done.returncode == 0, done.stderr
    assert [row["name"] for row in list_keys(db)] == ["c"]
    env_done = sluice("keys", "list", "--json", env={"SLUICE_CONFIG": str(config)})
    assert [row["name"] for row in json.loads(env_done.stdout)] == ["c"]


def test_expiry_forms() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
    assert parse_expiry("30d", now) == now + 30 * 86400
    assert parse_expiry("12h", now) == now + 12 * 3600
    assert parse_expiry("90m", now) == now + 90 * 60
    assert parse_expiry("2w", now) == now + 14 * 86400
    assert parse_expiry("2026-12-31", now) == datetime(2026, 12, 31, tzinfo=UTC).timestamp()
    assert (
        parse_expiry("2026-12-31T18:00:00+02:00", now)
        == datetime(2026, 12, 31, 16, tzinfo=UTC).timestamp()
    )
    assert parse_expiry("2026-06-01T00:00:00Z", now) == datetime(2026, 6, 1, tzinfo=UTC).timestamp()
    for bad in ("", "30", "d30", "-1d", "2025-12-31", "tomorrow"):
        with pytest.raises(Invalid):
            parse_expiry(bad, now)
