"""The benchmark harness still runs: a seconds-long pass over Sluice and direct.

No timing is asserted; only that the harness measures both targets, writes its JSON
and Markdown, and that no stream failed or came back short.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_quick_bench_measures_sluice_and_direct(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "bench.run", "--quick", "--only", "sluice,direct"]
    argv += ["--profiles", "burst,single", "--out", str(tmp_path), "--no-chart"]
    argv += ["--wait-quiet", "0", "--nice", "0"]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    run = json.loads((tmp_path / "latest.json").read_text())
    assert (tmp_path / "latest.md").read_text().startswith("# Sluice bench")
    assert set(run["targets"]) == {"direct", "sluice"}
    for name, target in run["targets"].items():
        assert target["status"] == "ok", (name, target.get("reason"))
        assert set(target["profiles"]) == {"burst", "single"}, name
        for profile, data in target["profiles"].items():
            assert data["streams"] > 0, (name, profile)
            assert data["failed"] == 0, (name, profile, data["rounds"])
    sluice = run["targets"]["sluice"]["headline"]
    assert sluice["cpu_ms_per_1k"] is not None
    assert sluice["ttft_added_p50"] is not None
    assert "burst_chunks_per_s" in run["ratios"]
    assert "direct" in done.stdout and "sluice" in done.stdout


def test_quick_pairs_bench_relays_every_pair(tmp_path: Path) -> None:
    """Every client API over every upstream format: each stream complete, none failed."""
    from bench.pairs import PAIRS

    names = [pair.name for pair in PAIRS]
    argv = [sys.executable, "-m", "bench.pairs", "--quick", "--only", ",".join(names)]
    argv += ["--out", str(tmp_path), "--wait-quiet", "0", "--nice", "0"]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    run = json.loads((tmp_path / "pairs.json").read_text())
    assert (tmp_path / "pairs.md").read_text().startswith("# Sluice bench: API pairs")
    assert list(run["pairs"]) == names
    for name, pair in run["pairs"].items():
        assert pair["status"] == "ok", (name, pair.get("reason"))
        assert pair["streams"] > 0, name
        assert pair["failed"] == 0, (name, pair["failures"])
        assert pair["cpu_ms_per_1k_chunks"] is not None, name
    assert run["pairs"]["chat-chat"]["ratio"] == 1.0
    for name in names:
        assert name in done.stdout


def test_quick_resume_bench_measures_every_row(tmp_path: Path) -> None:
    """``bench.resume --quick``: resumes timed on each backend, every reader of the
    fanned-out generation got the whole answer, the live generations all started."""
    argv = [sys.executable, "-m", "bench.resume", "--quick", "--out", str(tmp_path)]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    run = json.loads((tmp_path / "resume.json").read_text())
    assert (tmp_path / "resume.md").read_text().startswith("# bench.resume")
    assert run["quick"] is True
    assert set(run["latency"]) == {"memory", "redis, same instance", "redis, other instance"}
    for name, (resumed, fresh) in run["latency"].items():
        assert len(resumed) == len(fresh) == 8, name
        assert all(t > 0 for t in resumed + fresh), name
    for key in ("fan_out_memory", "fan_out_redis"):
        fan = run[key]
        assert fan["plain_chunks"] > 0, key
        assert fan["reader_chunks"] == fan["readers"] * fan["plain_chunks"], key
    for key in ("live_memory", "live_redis"):
        assert run[key]["generations"] == 200, key
    assert "resumed, redis, other instance" in done.stdout
