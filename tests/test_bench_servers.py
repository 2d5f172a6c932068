"""The floor and the other-server targets of the bench: they relay complete, correct streams.

Granian is not installed here (it would need the package index); its options are checked
as written.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench.servers import granian_argv, uvicorn_h11_argv

ROOT = Path(__file__).resolve().parent.parent


def test_quick_bench_measures_the_floor_and_sluice_under_h11(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "bench.run", "--quick", "--only", "floor,sluice-h11"]
    argv += ["--profiles", "burst,single,paced", "--paced-levels", "20"]
    argv += ["--out", str(tmp_path), "--no-chart", "--wait-quiet", "0", "--nice", "0"]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    run = json.loads((tmp_path / "latest.json").read_text())
    assert set(run["targets"]) == {"direct", "floor", "sluice-h11"}
    for name, target in run["targets"].items():
        assert target["status"] == "ok", (name, target.get("reason"))
        assert set(target["profiles"]) == {"burst", "single", "paced"}, name
        for profile, data in target["profiles"].items():
            if profile == "paced":
                assert all(lv["failed"] == 0 and lv["streams"] for lv in data["levels"]), name
            else:
                assert data["streams"] > 0 and data["failed"] == 0, (name, profile)


def test_granian_runs_the_factory_with_room_for_every_stream() -> None:
    argv = granian_argv(8123)

    def option(name: str) -> str:
        return argv[argv.index(name) + 1]

    assert argv[-2:] == ["--factory", "sluice.app:create_app"]
    assert (option("--interface"), option("--loop"), option("--workers")) == ("asgi", "uvloop", "1")
    # Granian queues requests beyond --backpressure: it must exceed the idle profile's top.
    assert int(option("--backpressure")) >= 10_000
    assert option("--port") == "8123"


def test_h11_target_differs_from_sluice_serve_only_in_the_parser() -> None:
    argv = uvicorn_h11_argv(8123)
    assert argv[argv.index("--http") + 1] == "h11"
    assert argv[argv.index("--loop") + 1] == "uvloop"
    assert "--factory" in argv
