"""Processes under measurement: their tree, CPU time and memory from ``/proc``, cores,
readiness, and an end by PID."""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def raise_fd_limit(want: int = 65_536) -> int:
    """Raise this process's open-file limit (children inherit it); returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < want:
        try:  # root may raise the hard limit too
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
            return want
        except (ValueError, OSError):
            want = hard
    target = max(soft, want if hard == resource.RLIM_INFINITY else min(want, hard))
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


def _stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ")".
    return raw[raw.rindex(b")") + 2 :].decode().split()


def tree(root: int) -> list[int]:
    """``root`` and every live descendant."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = _stat(int(entry.name))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found = [root]
    index = 0
    while index < len(found) and index < 10_000:
        found.extend(children.get(found[index], ()))
        index += 1
    return found


def own_cpu_seconds(pid: int) -> float:
    """utime + stime of one process (all its threads), without its children."""
    fields = _stat(pid)
    return 0.0 if fields is None else (int(fields[11]) + int(fields[12])) / TICKS


def cpu_seconds(root: int) -> float:
    """utime + stime of the tree (and of children it already reaped)."""
    total = 0
    for pid in tree(root):
        fields = _stat(pid)
        if fields is not None:
            # Fields 14-17 of stat (utime, stime, cutime, cstime); here 0-based after the name.
            total += sum(int(v) for v in fields[11:15])
    return total / TICKS


def busy_seconds() -> float:
    """CPU seconds the whole machine spent busy (every core, every process, the kernel)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / TICKS


def wait_quiet(
    ours: list[int], threshold_pct: float = 10.0, timeout: float = 120.0
) -> tuple[float, float]:
    """Wait until processes other than ``ours`` (trees) use under ``threshold_pct`` of one
    core over a second, at most ``timeout`` seconds; (their use in %, seconds waited)."""
    start = time.monotonic()
    other = 0.0
    while True:
        busy0 = busy_seconds()
        mine0 = sum(cpu_seconds(pid) for pid in ours)
        time.sleep(1.0)
        other = 100 * (busy_seconds() - busy0 - sum(cpu_seconds(p) for p in ours) + mine0)
        waited = time.monotonic() - start
        if other < threshold_pct or waited > timeout:
            return max(other, 0.0), waited


def cpu_by_process(root: int) -> dict[int, float]:
    """utime + stime of each live process of the tree."""
    out = {}
    for pid in tree(root):
        fields = _stat(pid)
        if fields is not None:
            out[pid] = (int(fields[11]) + int(fields[12])) / TICKS
    return out


def memory(root: int) -> tuple[int, int]:
    """(RSS, PSS) of the tree in bytes; PSS splits shared pages between the processes."""
    rss = pss = 0
    for pid in tree(root):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1]) * 1024
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1]) * 1024
    return rss, pss


def pin(root: int, cores: set[int]) -> None:
    """Put every thread of every process of the tree on ``cores``."""
    for pid in tree(root):
        with contextlib.suppress(OSError):
            for tid in os.listdir(f"/proc/{pid}/task"):
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(int(tid), cores)


@contextlib.contextmanager
def affinity(cores: set[int]) -> Iterator[None]:
    """Run the block on ``cores``: processes started in it inherit them."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cores)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def wait_port(port: int, process: subprocess.Popen[bytes], timeout: float) -> str | None:
    """None once 127.0.0.1:port accepts connections; else why not."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return f"exited with status {process.returncode} before listening"
        with socket.socket() as sock:
            sock.settimeout(0.5)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return None
        time.sleep(0.05)
    return f"not listening on port {port} after {timeout:g} s"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop(process: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM the root, wait, then SIGKILL whatever of its tree is left, each by PID."""
    pids = tree(process.pid) if process.poll() is None else []
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=grace)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=5)
