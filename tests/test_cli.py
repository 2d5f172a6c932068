"""The command line as a person runs it: real processes, real gateway, real sockets."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import StartGateway
from tests.gateway import RunningGateway, free_port
from tests.policies.keys import KEY_ENV, create_key, gateway_config
from tests.policies.keys import wait_records as keys_wait_records

PYTHON_M = (sys.executable, "-m", "sluice")
CONSOLE_SCRIPT = Path(sys.executable).parent / "sluice"

#: Paced so a stream takes a moment (under a second): long enough to see it arrive in
#: pieces, short enough to keep the suite quick.
STORY = {
    "default_model": "story",
    "models": {
        "story": {"provider": "simulator", "ttft": 0.05, "tokens_per_second": 50, "max_tokens": 40}
    },
}


def clean_env() -> dict[str, str]:
    """The caller's environment without settings that would change what the CLI does."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "SLUICE_"))}


def run(
    *args: str, command: Sequence[str] = PYTHON_M, cwd: Path | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*command, *args],
        capture_output=True,
        text=True,
        env=clean_env(),
        cwd=cwd,
        timeout=timeout,
        check=False,
    )


def console_script() -> tuple[str, ...]:
    if not CONSOLE_SCRIPT.exists():
        pytest.skip(f"the console script is not installed at {CONSOLE_SCRIPT}")
    return (str(CONSOLE_SCRIPT),)


def read_pieces(
    process: subprocess.Popen[bytes], timeout: float = 30
) -> tuple[list[bytes], list[bytes]]:
    """Read stdout as it comes, to its end: the pieces read while the process still
    ran, and all the pieces."""
    assert process.stdout is not None
    fd = process.stdout.fileno()
    while_running: list[bytes] = []
    everything: list[bytes] = []
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no end of output within {timeout} s")
        ready, _, _ = select.select([fd], [], [], min(left, 1.0))
        if not ready:
            continue
        piece = os.read(fd, 65536)
        if not piece:
            return while_running, everything
        everything.append(piece)
        if process.poll() is None:
            while_running.append(piece)


def wait_records(gateway: RunningGateway, count: int) -> list[dict[str, Any]]:
    """Wait for ``count`` records besides the readiness checks made at start-up."""
    deadline = time.monotonic() + 10
    while True:
        rows = gateway.records()
        if sum(r["route"] != "/readyz" for r in rows) >= count or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()
    process.wait(timeout=10)


@pytest.mark.parametrize("command", ["python -m sluice", "console script"])
def test_ask_streams_the_answer_in_pieces(start_gateway: StartGateway, command: str) -> None:
    gateway = start_gateway(STORY)
    cmd = PYTHON_M if command == "python -m sluice" else console_script()
    with subprocess.Popen(
        [*cmd, "ask", "Tell me a story", "--url", gateway.url, "--model", "story"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=clean_env(),
    ) as process:
        try:
            pieces, everything = read_pieces(process)
            code = process.wait(timeout=10)
            assert process.stderr is not None
            stderr = process.stderr.read().decode(errors="replace")
        finally:
            stop(process)
    text = b"".join(everything).decode()
    assert code == 0, stderr
    assert stderr == ""
    # The answer was printed as it streamed, not all at the end.
    assert len(pieces) >= 3, f"{len(pieces)} of {len(everything)} pieces came before the exit"
    assert text.strip()
    # The same story as the seed endpoint tells for that prompt: the simulator is
    # deterministic for a model and its messages.
    query = urllib.parse.urlencode({"prompt": "Tell me a story", "model": "story"})
    with urllib.request.urlopen(f"{gateway.url}/?{query}", timeout=30) as response:
        assert text == response.read().decode() + "\n"  # ask ends the line it printed
    records = [r for r in wait_records(gateway, 2) if r["route"] != "/readyz"]
    assert [(r["route"], r["model"], r["outcome"]) for r in records] == [
        ("/v1/chat/completions", "story", "ok"),
        ("/", "story", "ok"),
    ]


def test_ask_into_a_pipe_closed_early_ends_quietly(start_gateway: StartGateway) -> None:
    """``sluice ask … | head -c 20``: the reader leaves after a few bytes."""
    story = {"provider": "simulator", "ttft": 0.05, "tokens_per_second": 100, "max_tokens": 300}
    gateway = start_gateway({"default_model": "long", "models": {"long": story}})
    read_end, write_end = os.pipe()
    with subprocess.Popen(
        [*PYTHON_M, "ask", "Tell me a story", "--url", gateway.url, "--model", "long"],
        stdout=write_end,
        stderr=subprocess.PIPE,
        env=clean_env(),
    ) as process:
        os.close(write_end)
        try:
            first = b""
            while len(first) < 20:
                piece = os.read(read_end, 20 - len(first))
                assert piece, "the answer ended before 20 bytes"
                first += piece
            os.close(read_end)  # as head does once it has its bytes
            code = process.wait(timeout=30)
            assert process.stderr is not None
            stderr = process.stderr.read().decode(errors="replace")
        finally:
            stop(process)
    assert code == 141, stderr  # 128 + SIGPIPE, what a shell reports for `cat | head`
    assert stderr == ""
    # The gateway saw its client leave and recorded it.
    records = [r for r in wait_records(gateway, 1) if r["route"] != "/readyz"]
    assert [(r["route"], r["outcome"]) for r in records] == [
        ("/v1/chat/completions", "client_disconnected")
    ]


def test_ask_without_a_gateway_fails_clearly() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    result = run("ask", "hello", "--url", url, "--model", "story")
    assert result.returncode == 1
    assert result.stdout == ""
    assert f"cannot reach the gateway at {url}" in result.stderr
    assert "Traceback" not in result.stderr


def test_ask_for_an_unknown_model_shows_the_gateway_error(start_gateway: StartGateway) -> None:
    gateway = start_gateway(STORY)
    result = run("ask", "hello", "--url", gateway.url, "--model", "nope")
    assert result.returncode == 1
    assert "404" in result.stderr
    assert "'nope' does not exist" in result.stderr
    assert "Traceback" not in result.stderr


def test_requests_lists_recent_requests(start_gateway: StartGateway) -> None:
    gateway = start_gateway(STORY)
    for prompt in ("Tell me a story", "A story about the sea"):
        result = run("ask", prompt, "--url", gateway.url, "--model", "story")
        assert result.returncode == 0, result.stderr
    result = run("ask", "hello", "--url", gateway.url, "--model", "nope")
    assert result.returncode == 1
    wait_records(gateway, 3)

    result = run("requests", "--last", "3", "--db", str(gateway.db_path))
    assert result.returncode == 0, result.stderr
    header, *lines = result.stdout.strip().splitlines()
    assert header.split()[:6] == ["time", "id", "route", "model", "outcome", "status"]
    # Newest first.
    assert [tuple(line.split()[2:6]) for line in lines] == [
        ("/v1/chat/completions", "nope", "rejected", "404"),
        ("/v1/chat/completions", "story", "ok", "200"),
        ("/v1/chat/completions", "story", "ok", "200"),
    ]
    assert "does not exist" in lines[0]

    result = run("requests", "--last", "5", "--db", str(gateway.db_path))
    assert result.returncode == 0, result.stderr
    routes = [line.split()[2] for line in result.stdout.strip().splitlines()[1:]]
    assert 4 <= len(routes) <= 5
    assert routes[:3] == ["/v1/chat/completions"] * 3
    assert set(routes[3:]) == {"/readyz"}


def test_requests_without_a_database_fails_clearly(tmp_path: Path) -> None:
    missing = tmp_path / "none.db"
    result = run("requests", "--db", str(missing))
    assert result.returncode == 1
    assert f"no record database at {missing}" in result.stderr
    assert not missing.exists()


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("models:\n  story:\n    provider: nonsense\n", ["story", "provider", "nonsense"]),
        ("port: [8000\n", ["YAML", "line 2"]),
        ("default_model: story\ncolour: blue\n", ["unknown", "colour"]),
    ],
    ids=["unknown-provider", "not-yaml", "unknown-key"],
)
def test_serve_with_a_bad_config_exits_2(tmp_path: Path, text: str, named: list[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    result = run("serve", "--config", str(bad), "--port", str(free_port()), cwd=tmp_path)
    assert result.returncode == 2
    assert "sluice: configuration error" in result.stderr
    assert str(bad) in result.stderr
    for word in named:
        assert word in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_with_a_missing_config_exits_2(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    result = run("serve", "--config", str(missing), "--port", str(free_port()), cwd=tmp_path)
    assert result.returncode == 2
    assert f"{missing}: cannot read the config file" in result.stderr


def test_serve_with_an_unknown_flag_exits_2(tmp_path: Path) -> None:
    result = run("serve", "--no-such-flag", cwd=tmp_path)
    assert result.returncode == 2
    assert "unrecognized arguments: --no-such-flag" in result.stderr
    assert result.stderr.startswith("usage: sluice")


@pytest.mark.parametrize("command", ["python -m sluice", "console script"])
def test_help(command: str) -> None:
    cmd = PYTHON_M if command == "python -m sluice" else console_script()
    result = run("--help", command=cmd)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: sluice")
    for subcommand in ("serve", "ask", "requests"):
        assert subcommand in result.stdout


def test_no_command_exits_2() -> None:
    result = run()
    assert result.returncode == 2
    assert "usage: sluice" in result.stderr


#: $0.10 a token: "normal" answers MESSAGES with 4 prompt and 10 completion tokens.
PRICED = {"normal": {"input": 100_000, "output": 100_000}}


def _json(*args: str) -> Any:
    result = run(*args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_requests_filters_and_stats_per_model_and_key(
    tmp_path: Path, start_gateway: StartGateway, upstream: Any
) -> None:
    db = tmp_path / "sluice.db"
    alice, bob = create_key(db, "alice"), create_key(db, "bob")
    gateway = start_gateway(gateway_config(upstream.url, db, pricing=PRICED), env=KEY_ENV)
    asks = [(alice, "normal")] * 3 + [(alice, "paced:n=3,interval=0.01"), (bob, "normal")]
    for key, model in [*asks, (bob, "nope")]:
        result = run(
            "ask", "Tell me a story", "--url", gateway.url, "--model", model, "--key", key["key"]
        )
        assert result.returncode == (1 if model == "nope" else 0), result.stderr
    keys_wait_records(db, 6)
    where = ("--db", str(db))

    normal = _json("requests", *where, "--model", "normal", "--json")
    assert [(r["model"], r["outcome"]) for r in normal] == [("normal", "ok")] * 4
    assert [r["key_id"] for r in normal] == [bob["id"], *[alice["id"]] * 3]  # newest first
    assert normal[0]["started"].startswith("20") and normal[0]["input_tokens"] == 4
    assert [r["model"] for r in _json("requests", *where, "--key", bob["id"], "--json")] == [
        "nope",
        "normal",
    ]
    (refused,) = _json("requests", *where, "--outcome", "rejected", "--json")
    assert (refused["model"], refused["status"], refused["error_type"]) == (
        "nope",
        404,
        "ModelNotFound",
    )
    assert len(_json("requests", *where, "--model", "normal", "--since", "1h", "--json")) == 4
    assert len(_json("requests", *where, "--model", "normal", "--last", "2", "--json")) == 2
    assert _json("requests", *where, "--since", "2999-01-01", "--json") == []
    since_iso = _json(
        "requests", *where, "--since", "2001-02-03T04:05:06Z", "--model", "normal", "--json"
    )
    assert len(since_iso) == 4

    table = run("requests", *where, "--key", alice["id"], "--model", "normal")
    assert table.returncode == 0, table.stderr
    header, *lines = table.stdout.strip().splitlines()
    assert header.split()[:4] == ["time", "id", "route", "model"]
    assert len(lines) == 3 and all(" normal " in line for line in lines)

    stats = _json("stats", *where, "--json")
    assert stats["since"] is None
    by_model = {s["name"]: s for s in stats["by_model"]}
    assert list(by_model) == ["normal", "nope", "paced:n=3,interval=0.01"]  # most requests first
    assert {
        k: by_model["normal"][k] for k in ("requests", "errors", "input_tokens", "output_tokens")
    } == {
        "requests": 4,
        "errors": 0,
        "input_tokens": 16,
        "output_tokens": 40,
    }
    assert by_model["normal"]["cost_usd"] == pytest.approx(4 * 1.4)
    assert 0 < by_model["normal"]["ttft_p50_ms"] <= by_model["normal"]["ttft_p95_ms"]
    assert (by_model["nope"]["requests"], by_model["nope"]["errors"]) == (1, 1)
    assert by_model["nope"]["ttft_p50_ms"] is None
    by_key = {s["name"]: s for s in stats["by_key"]}
    assert (by_key[alice["id"]]["requests"], by_key[alice["id"]]["errors"]) == (4, 0)
    assert (by_key[bob["id"]]["requests"], by_key[bob["id"]]["errors"]) == (2, 1)
    assert by_key[bob["id"]]["cost_usd"] == pytest.approx(1.4)

    only_keys = _json("stats", *where, "--by", "key", "--since", "1h", "--json")
    assert set(only_keys) == {"since", "by_key"}
    assert only_keys["since"].startswith("20")
    assert _json("stats", *where, "--since", "2999-01-01", "--json")["by_model"] == []

    printed = run("stats", *where, "--by", "model")
    assert printed.returncode == 0, printed.stderr
    header, *lines = printed.stdout.strip().splitlines()
    assert header.split() == [
        "model",
        "requests",
        "errors",
        "ttft",
        "p50",
        "ms",
        "ttft",
        "p95",
        "ms",
        "tokens",
        "in",
        "tokens",
        "out",
        "cost",
        "usd",
    ]
    first = lines[0].split()
    assert first[:3] == ["normal", "4", "0"]
    assert first[-3:] == ["16", "40", "5.600000"]


@pytest.mark.parametrize("command", ["requests", "stats"])
def test_a_bad_since_exits_2(tmp_path: Path, command: str) -> None:
    db = tmp_path / "sluice.db"
    create_key(db, "someone")  # makes the database
    result = run(command, "--db", str(db), "--since", "yesterday")
    assert result.returncode == 2
    assert "--since: cannot read 'yesterday'" in result.stderr
    assert "Traceback" not in result.stderr


def test_stats_without_a_database_fails_clearly(tmp_path: Path) -> None:
    missing = tmp_path / "none.db"
    result = run("stats", "--db", str(missing))
    assert result.returncode == 1
    assert f"no record database at {missing}" in result.stderr
    assert not missing.exists()
