"""The soak still runs: a few hundred streams over seconds, every API and policy in the
mix, against Redis and the fake upstream. Only what holds at any size is asserted:
no stream failed, every request recorded, every kind of stream seen."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_a_tiny_soak(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "bench.soak", "--streams", "240", "--minutes", "0.25"]
    argv += ["--sample", "0.5", "--out", str(tmp_path)]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)
    run = json.loads((tmp_path / "soak.json").read_text())
    result = run["result"]
    assert result["failed"] == 0, (result["failures"], done.stderr[-3000:])
    assert result["records"] == result["streams"] >= 240
    assert result["tracebacks"] == 0
    assert set(result["complete"]) >= {"chat", "messages", "responses", "ui", "cached", "coalesce"}
    assert result["cache"].get("coalesced", 0) > 0
    assert result["refused"].get("limited", 0) > 0  # the rpm-limited key was refused
    assert result["samples"] and result["baseline"]["rss"] > 0
    assert (tmp_path / "soak.md").read_text().startswith("# Sluice soak")
    assert "records / requests" in done.stdout
    assert done.returncode in (0, 1)  # 1 only when a judgement missed, shown in the table
