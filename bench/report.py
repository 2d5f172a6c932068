"""From a run's raw data to the figures people read: headline numbers per target, the
ratio of each to direct and to every other target of the same run, a text table, a
Markdown page and a chart (drawn by the bench's own venv, which has matplotlib)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.targets import CACHE, ROOT

#: Headline figures: (key, title, unit, lower is better, digits).
FIGURES: list[tuple[str, str, str, bool, int]] = [
    ("cpu_ms_per_1k", "gateway CPU per 1,000 chunks (burst)", "ms", True, 1),
    ("burst_chunks_per_s", "burst throughput", "chunks/s", False, 0),
    ("burst_vs_direct", "burst throughput / direct", "x", False, 2),
    ("ttft_added_p50", "added TTFT p50 (single)", "ms", True, 2),
    ("ttft_added_p99", "added TTFT p99 (single)", "ms", True, 2),
    ("paced_held", "paced streams held, added p99 gap ≤ 10 ms", "streams", False, 0),
    ("kb_per_idle_stream", "memory per idle open stream (largest level)", "KB", True, 1),
    ("failed", "failed or short streams", "", True, 0),
    ("other_cpu_pct", "others' CPU during burst/paced, max", "%", True, 0),
]
GAP_LIMIT_MS = 10.0


def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "—"
    if isinstance(value, str):
        return value
    if digits == 0:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}"


def failed_streams(entry: dict[str, Any]) -> int:
    total = 0
    for name, data in entry.get("profiles", {}).items():
        if name == "paced" or name == "idle":
            total += sum(level.get("failed", 0) for level in data.get("levels", []))
        else:
            total += data.get("failed", 0)
    return total


def one_line(profile: str, data: dict[str, Any]) -> str:
    if profile == "burst":
        return (
            f"{fmt(data['cpu_ms_per_1k_chunks'])} ms CPU/1k chunks, "
            f"{fmt(data['chunks_per_s'], 0)} chunks/s, gateway CPU "
            f"{fmt(data['gateway_cpu_pct'], 0)} %, load CPU {fmt(data['load_cpu_pct'], 0)} %, "
            f"failed {data['failed']}/{data['streams']}"
        )
    if profile == "single":
        return (
            f"TTFT p50 {fmt(data['ttft_p50_ms'], 2)} ms, p99 {fmt(data['ttft_p99_ms'], 2)} ms,"
            f" failed {data['failed']}/{data['streams']}"
        )
    if profile == "paced":
        return f"{len(data['levels'])} levels"
    level = data["levels"][-1]
    return (
        f"{level['open']} open, {fmt(level.get('kb_per_stream'))} KB/stream, "
        f"failed {level['failed']}"
    )


def _added(value: float | None, reference: float | None) -> float | None:
    if value is None or reference is None:
        return None
    return value - reference


#: Above this the load core (client + fake upstream) is itself late: a level measured so
#: is shown, but not counted as held.
LOAD_LIMIT_PCT = 85.0


def _valid(level: dict[str, Any], reference: dict[str, Any] | None, interval_ms: float) -> bool:
    """A level is a fair measurement when the load core kept up: under its CPU limit in
    both runs, and direct itself within the 10 ms bar of the nominal gap."""
    if reference is None:
        return False
    for lv in (level, reference):
        if (lv.get("load_cpu_pct") or 0) > LOAD_LIMIT_PCT:
            return False
    gap = reference.get("gap_p99_ms")
    return gap is not None and gap <= interval_ms + GAP_LIMIT_MS


def headline(
    entry: dict[str, Any], direct: dict[str, Any] | None, interval_ms: float = 20.0
) -> dict[str, Any]:
    profiles = entry.get("profiles", {})
    ref = (direct or {}).get("profiles", {})
    out: dict[str, Any] = {}
    b = profiles.get("burst")
    if b:
        out["cpu_ms_per_1k"] = b["cpu_ms_per_1k_chunks"]
        out["burst_chunks_per_s"] = b["chunks_per_s"]
        rb = ref.get("burst")
        if rb and rb["chunks_per_s"]:
            out["burst_vs_direct"] = b["chunks_per_s"] / rb["chunks_per_s"]
    s = profiles.get("single")
    rs = ref.get("single")
    if s and rs:
        out["ttft_added_p50"] = _added(s["ttft_p50_ms"], rs["ttft_p50_ms"])
        out["ttft_added_p99"] = _added(s["ttft_p99_ms"], rs["ttft_p99_ms"])
    p = profiles.get("paced")
    rp = ref.get("paced")
    if p and rp:
        ref_levels = {lv["concurrency"]: lv for lv in rp["levels"]}
        for level in p["levels"]:
            r = ref_levels.get(level["concurrency"])
            level["valid"] = _valid(level, r, interval_ms)
            level["added_gap_p50_ms"] = _added(level["gap_p50_ms"], r["gap_p50_ms"] if r else None)
            level["added_gap_p99_ms"] = _added(level["gap_p99_ms"], r["gap_p99_ms"] if r else None)
            level["added_ttft_p50_ms"] = _added(
                level["ttft_p50_ms"], r["ttft_p50_ms"] if r else None
            )
        held, limit = 0, "top"
        for level in p["levels"]:
            added = level["added_gap_p99_ms"]
            if added is None or added > GAP_LIMIT_MS or level["failed"]:
                limit = "failed" if level["failed"] else "gap"
                break
            if not level["valid"]:
                limit = "load"
                break
            held = level["concurrency"]
        out["paced_held"] = held
        out["paced_limit"] = limit
    i = profiles.get("idle")
    if i:
        measured = [lv for lv in i["levels"] if lv.get("kb_per_stream") is not None]
        if measured:
            out["kb_per_idle_stream"] = measured[-1]["kb_per_stream"]
            out["idle_open"] = measured[-1]["open"]
    if profiles:
        out["failed"] = failed_streams(entry)
        others = [b["other_cpu_pct"]] if b else []
        others += [lv["other_cpu_pct"] for lv in (p or {}).get("levels", [])]
        out["other_cpu_pct"] = max(others) if others else None
    return out


def add_comparisons(run: dict[str, Any]) -> None:
    """Headline figures per target, and ``ratios[figure][a][b] = a / b``."""
    targets = run["targets"]
    direct = targets.get("direct")
    interval_ms = run["sizes"]["paced_interval"] * 1000
    for entry in targets.values():
        ok = entry.get("status") == "ok"
        entry["headline"] = headline(entry, direct, interval_ms) if ok else {}
    ratios: dict[str, dict[str, dict[str, float]]] = {}
    measured = [n for n, e in targets.items() if e.get("status") == "ok"]
    for key, *_ in FIGURES:
        if key in ("failed", "burst_vs_direct", "other_cpu_pct"):
            continue
        # Added latency and streams held are measured against direct: it has no ratio.
        relative = key.startswith("ttft_added") or key == "paced_held"
        table: dict[str, dict[str, float]] = {}
        among = [n for n in measured if not (relative and n == "direct")]
        for a in among:
            va = targets[a]["headline"].get(key)
            row = {}
            for b in among:
                vb = targets[b]["headline"].get(key)
                if a != b and va is not None and vb is not None and vb > 0 and va >= 0:
                    row[b] = va / vb
            if row:
                table[a] = row
        if table:
            ratios[key] = table
    run["ratios"] = ratios


def _rows(run: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    header = [
        "target",
        *(f"{title} ({unit})" if unit else title for _, title, unit, _, _ in FIGURES),
    ]
    rows = []
    for name, entry in run["targets"].items():
        if entry.get("status") != "ok":
            status = entry.get("status", "?")
            rows.append([name, f"{status}: {entry.get('reason', '')}"[:120]])
            continue
        h = entry["headline"]
        cells = [name]
        for key, _, _, _, digits in FIGURES:
            value = h.get(key)
            if key == "paced_held" and value is not None:
                levels = entry["profiles"]["paced"]["levels"]
                limit = h.get("paced_limit")
                if limit == "top":
                    value = f"≥ {value:,}"
                elif limit == "load":
                    value = f"≥ {value:,} (load-bound above)" if value else "— (load-bound)"
                elif not value:
                    value = f"< {levels[0]['concurrency']:,}" if levels else None
            if key == "kb_per_idle_stream" and value is not None:
                value = f"{value:,.1f} @ {h['idle_open']:,}"
            if name == "direct" and key in ("ttft_added_p50", "ttft_added_p99", "paced_held"):
                value = "(reference)" if value is not None else None
            cells.append(fmt(value, digits))
        rows.append(cells)
    return header, rows


def _text_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    table = [list(header), *(list(r) for r in rows)]
    widths = [max(len(r[c]) for r in table) for c in range(len(header))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in table)


def _transpose(run: dict[str, Any]) -> str:
    """Figures as rows, targets as columns: reads well on a terminal."""
    header, rows = _rows(run)
    ok = [r for r in rows if len(r) == len(header)]
    bad = [r for r in rows if len(r) != len(header)]
    names = [r[0] for r in ok]
    table = [["figure", *names]]
    for i, title in enumerate(header[1:], start=1):
        table.append([title, *(r[i] for r in ok)])
    widths = [max(len(r[c]) for r in table) for c in range(len(table[0]))]
    lines = [
        "  ".join(
            c.ljust(w) if j == 0 else c.rjust(w)
            for j, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in table
    ]
    lines += [f"{r[0]}: {r[1]}" for r in bad]
    return "\n".join(lines)


def _ratio_lines(run: dict[str, Any], markdown: bool) -> list[str]:
    out: list[str] = []
    for key, title, _, lower, _ in FIGURES:
        table = run.get("ratios", {}).get(key)
        if not table:
            continue
        names = sorted(
            {b for row in table.values() for b in row} | set(table), key=list(run["targets"]).index
        )
        better = "lower is better" if lower else "higher is better"
        if markdown:
            out.append(f"\n**{title}** — row ÷ column ({better})\n")
            out.append("| | " + " | ".join(names) + " |")
            out.append("|---|" + "---:|" * len(names))
            for a in names:
                cells = [fmt(table.get(a, {}).get(b), 2) if a != b else "1" for b in names]
                out.append(f"| {a} | " + " | ".join(cells) + " |")
        else:
            out.append(f"\n{title}: row ÷ column ({better})")
            width = max(len(n) for n in names)
            out.append(" " * width + "  " + "  ".join(n.rjust(max(len(n), 8)) for n in names))
            for a in names:
                cells = [
                    (fmt(table.get(a, {}).get(b), 2) if a != b else "1").rjust(max(len(b), 8))
                    for b in names
                ]
                out.append(a.ljust(width) + "  " + "  ".join(cells))
    return out


def _paced_lines(run: dict[str, Any], markdown: bool) -> list[str]:
    out: list[str] = []
    cols = [
        "concurrency",
        "TTFT p50",
        "added TTFT p50",
        "gap p50",
        "gap p99",
        "added gap p99",
        "failed",
        "gateway CPU %",
        "load CPU %",
        "others' CPU %",
        "valid",
    ]
    for name, entry in run["targets"].items():
        p = entry.get("profiles", {}).get("paced")
        if not p:
            continue
        rows = [
            [
                f"{lv['concurrency']:,}",
                fmt(lv["ttft_p50_ms"], 2),
                fmt(lv.get("added_ttft_p50_ms"), 2),
                fmt(lv["gap_p50_ms"], 2),
                fmt(lv["gap_p99_ms"], 2),
                fmt(lv.get("added_gap_p99_ms"), 2),
                f"{lv['failed']}/{lv['streams']}",
                fmt(lv["gateway_cpu_pct"], 0),
                fmt(lv["load_cpu_pct"], 0),
                fmt(lv.get("other_cpu_pct"), 0),
                {True: "yes", False: "no"}.get(lv.get("valid"), "—"),
            ]
            for lv in p["levels"]
        ]
        out.append(f"\n{'**' if markdown else ''}paced, {name}{'**' if markdown else ''} (ms)\n")
        if markdown:
            out.append("| " + " | ".join(cols) + " |")
            out.append("|" + "---:|" * len(cols))
            out += ["| " + " | ".join(r) + " |" for r in rows]
        else:
            out.append(_text_table(cols, rows))
    return out


def _idle_lines(run: dict[str, Any], markdown: bool) -> list[str]:
    out: list[str] = []
    cols = [
        "open streams",
        "held upstream",
        "failed",
        "PSS before MB",
        "PSS open MB",
        "KB/stream (PSS)",
        "KB/stream (RSS)",
        "open+settle s",
    ]
    for name, entry in run["targets"].items():
        i = entry.get("profiles", {}).get("idle")
        if not i:
            continue
        rows = []
        for lv in i["levels"]:
            if "error" in lv:
                rows.append([f"{lv['open']:,}", lv["error"][:80], "", "", "", "", "", ""])
                continue
            rows.append(
                [
                    f"{lv['open']:,}",
                    f"{lv['held_upstream']:,}",
                    str(lv["failed"]),
                    fmt(lv.get("pss_before_mb")),
                    fmt(lv.get("pss_open_mb")),
                    fmt(lv.get("kb_per_stream")),
                    fmt(lv.get("rss_kb_per_stream")),
                    fmt(lv["settle_s"]),
                ]
            )
        out.append(f"\n{'**' if markdown else ''}idle, {name}{'**' if markdown else ''}\n")
        if markdown:
            out.append("| " + " | ".join(cols) + " |")
            out.append("|" + "---:|" * len(cols))
            out += ["| " + " | ".join(r) + " |" for r in rows]
        else:
            out.append(_text_table(cols, rows))
    return out


def _failure_lines(run: dict[str, Any]) -> list[str]:
    out = []
    for name, entry in run["targets"].items():
        reasons: dict[str, int] = {}
        for profile, data in entry.get("profiles", {}).items():
            parts = data.get("levels") or [data]
            for part in parts:
                for sub in part.get("rounds", [part]):
                    for why, count in sub.get("failures", {}).items():
                        key = f"{profile}: {why}"
                        reasons[key] = reasons.get(key, 0) + count
        for why, count in sorted(reasons.items(), key=lambda kv: -kv[1])[:8]:
            out.append(f"- {name}: {count} x {why}")
    return out


def _notes(run: dict[str, Any]) -> list[str]:
    p = run["placement"]
    sizes = run["sizes"]
    m = run["machine"]
    return [
        f"{m['cpu']} · {m['cores']} cores · Python {m['python']} · Linux {m['kernel']}"
        f" · commit {m['commit']} · {run['started']}{' · QUICK' if run['quick'] else ''}",
        f"gateway on core {p['gateway']}, load generator and fake upstream on core {p['load']}"
        " (sluice-w2 and sluice-w1-shared: gateway on every core, sharing the load's);"
        f" {sizes['rounds']} rounds, medians; burst {sizes['burst_streams']} streams of"
        f" {sizes['burst_n']} chunks per round at {sizes['burst_concurrency']} concurrent;"
        f" single {sizes['single_streams']} streams per round; paced {sizes['paced_n']} chunks"
        f" every {sizes['paced_interval'] * 1000:g} ms, {sizes['paced_streams_each']} streams"
        f" per client, {sizes['paced_rounds']} rounds per level.",
    ]


def table(run: dict[str, Any]) -> str:
    lines = [*_notes(run), "", _transpose(run)]
    lines += _ratio_lines(run, markdown=False)
    lines += _paced_lines(run, markdown=False)
    lines += _idle_lines(run, markdown=False)
    failures = _failure_lines(run)
    if failures:
        lines += ["", "failed or short streams:", *failures]
    return "\n".join(lines)


def markdown(run: dict[str, Any]) -> str:
    header, rows = _rows(run)
    ok = [r for r in rows if len(r) == len(header)]
    bad = [r for r in rows if len(r) != len(header)]
    lines = ["# Sluice bench: latest run", "", *(f"{n}  " for n in _notes(run)), ""]
    lines.append("| figure | " + " | ".join(r[0] for r in ok) + " |")
    lines.append("|---|" + "---:|" * len(ok))
    for i, title in enumerate(header[1:], start=1):
        lines.append(f"| {title} | " + " | ".join(r[i] for r in ok) + " |")
    if bad:
        lines.append("")
        lines += [f"- **{r[0]}**: {r[1]}" for r in bad]
    lines.append("\n## Ratios\n\nEach target's figure divided by the same figure of another.")
    lines += _ratio_lines(run, markdown=True)
    lines.append("\n## Paced ramp\n")
    lines += _paced_lines(run, markdown=True)
    lines.append("\n## Idle open streams\n")
    lines += _idle_lines(run, markdown=True)
    failures = _failure_lines(run)
    lines += ["\n## Failed or short streams\n", *(failures or ["None."])]
    return "\n".join(lines) + "\n"


def bench_python(create: bool) -> Path | str:
    """The bench venv's python (matplotlib, py-spy); created on demand when ``create``."""
    venv = CACHE / "venv"
    python = venv / "bin" / "python"
    if python.exists():
        return python
    if not create:
        return f"no bench venv at {venv} (a full run creates it)"
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "matplotlib", "py-spy"],
            check=True,
            timeout=900,
        )
    except (subprocess.SubprocessError, OSError) as exc:
        return f"could not create the bench venv: {exc}"
    return python


def chart(json_path: Path, png: Path, create_env: bool) -> str | None:
    python = bench_python(create_env)
    if isinstance(python, str):
        return python
    done = subprocess.run(
        [str(python), str(ROOT / "bench" / "chart.py"), str(json_path), str(png)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0:
        return done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "chart failed"
    return None


def main(argv: list[str] | None = None) -> int:
    """Render a run again: ``python -m bench.report bench/results/latest.json``."""
    parser = argparse.ArgumentParser(prog="python -m bench.report", description=main.__doc__)
    parser.add_argument("json", type=Path)
    parser.add_argument("--no-chart", action="store_true")
    args = parser.parse_args(argv)
    import orjson

    run = orjson.loads(args.json.read_bytes())
    add_comparisons(run)
    args.json.write_bytes(orjson.dumps(run, option=orjson.OPT_INDENT_2) + b"\n")
    args.json.with_suffix(".md").write_text(markdown(run))
    print(table(run))
    if not args.no_chart:
        why = chart(args.json, args.json.with_suffix(".png"), create_env=False)
        if why is not None:
            print(f"chart skipped: {why}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
