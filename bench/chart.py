"""Draw ``latest.png`` from ``latest.json``: ``python bench/chart.py IN.json OUT.png``.

Runs in the bench's own venv (``bench/.cache/venv``, which has matplotlib), not in the
project's: it reads only the JSON the harness wrote.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

COLOURS = {"direct": "#888888", "sluice": "#1f77b4", "sluice-w2": "#6baed6"}


PALETTE: dict[str, str] = {}


def colour(name: str) -> str:
    """One colour per target across every panel."""
    if name not in PALETTE:
        free = [f"C{i}" for i in (3, 1, 2, 4, 5, 6, 8, 9)]  # C7 is direct's grey
        PALETTE[name] = COLOURS.get(name, free[len(PALETTE) % len(free)])
    return PALETTE[name]


def bars(ax: Any, run: dict[str, Any], key: str, title: str, unit: str, log: bool) -> None:
    names, values = [], []
    for name, entry in run["targets"].items():
        value = entry.get("headline", {}).get(key)
        if value is not None:
            names.append(name)
            values.append(value)
    ax.set_title(title, fontsize=10)
    if not names:
        ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
        return
    drawn = ax.bar(names, values, color=[colour(n) for n in names])
    ax.bar_label(drawn, labels=[f"{v:,.3g}" for v in values], fontsize=8)
    ax.set_ylabel(unit)
    if log:
        ax.set_yscale("symlog", linthresh=1)
    ax.tick_params(axis="x", labelrotation=30, labelsize=8)


def lines(
    ax: Any,
    run: dict[str, Any],
    profile: str,
    x: str,
    y: str,
    title: str,
    unit: str,
    log: bool = True,
) -> None:
    ax.set_title(title, fontsize=10)
    drawn = False
    for name, entry in run["targets"].items():
        data = entry.get("profiles", {}).get(profile)
        if not data:
            continue
        points = [(lv[x], lv[y]) for lv in data["levels"] if lv.get(y) is not None]
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, marker="o", label=name, color=colour(name))
            drawn = True
    ax.set_ylabel(unit)
    ax.set_xlabel(x.replace("_", " "))
    if drawn:
        if log:
            ax.set_yscale("symlog", linthresh=10)  # peers' seconds beside Sluice's ms
        ax.legend(fontsize=8)


def main(argv: list[str]) -> int:
    source, target = argv
    with open(source) as f:
        run = json.load(f)
    for name in run["targets"]:
        colour(name)
    fig, axes = plt.subplots(2, 3, figsize=(16, 9))
    bars(axes[0][0], run, "cpu_ms_per_1k", "gateway CPU per 1,000 chunks (burst)", "ms", True)
    bars(axes[0][1], run, "burst_chunks_per_s", "burst throughput", "chunks/s", True)
    bars(axes[0][2], run, "ttft_added_p50", "added time to first token, p50 (single)", "ms", True)
    lines(
        axes[1][0],
        run,
        "paced",
        "concurrency",
        "added_gap_p99_ms",
        "paced: added p99 gap between chunks",
        "ms",
    )
    axes[1][0].axhline(10, color="red", linewidth=0.8, linestyle="--")
    lines(
        axes[1][1],
        run,
        "paced",
        "concurrency",
        "added_ttft_p50_ms",
        "paced: added time to first token, p50",
        "ms",
    )
    idle_title = "memory per idle open stream"
    lines(axes[1][2], run, "idle", "open", "kb_per_stream", idle_title, "KB", log=False)
    m = run["machine"]
    fig.suptitle(
        f"Sluice bench · {m['cpu']} · {m['cores']} cores · commit {m['commit']} · {run['started']}"
        + (" · QUICK" if run.get("quick") else ""),
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(target, dpi=110)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
