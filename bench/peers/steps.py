"""Running one install step of a peer: output to its log, bounded in time, one-line failure."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path


def last_line(log: Path) -> str:
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    return (lines or ["no output"])[-1][:200]


def npm_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    return dict(base if base is not None else os.environ, npm_config_update_notifier="false")


def run_step(
    argv: list[str],
    *,
    cwd: Path,
    log: Path,
    timeout: float,
    env: Mapping[str, str] | None = None,
    summary: Callable[[Path], str] = last_line,
) -> str | None:
    """Run ``argv`` with its output appended to ``log``; None, or why it failed (one line).

    The step runs in its own session, so a timeout kills everything it started.
    """
    with log.open("ab") as out:
        out.write(f"$ {shlex.join(argv)}\n".encode())
        out.flush()
        try:
            process = subprocess.Popen(
                argv,
                cwd=cwd,
                env=dict(env) if env is not None else None,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            return f"could not run: {exc}"
        try:
            status = process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return f"timed out after {timeout:g} s (log: {log})"
    if status != 0:
        return f"failed (exit {status}): {summary(log)} (log: {log})"
    return None
