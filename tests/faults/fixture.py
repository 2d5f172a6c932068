"""Start the failing upstream (``tests/faults/upstream.py``) in its own process."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.gateway import ROOT
from tests.upstream.fixture import read_ready_line, stop_process


@dataclass
class FaultUpstream:
    base: str  #: ``http://127.0.0.1:PORT``
    blackhole: int  #: a port whose connects stall
    resetter: int  #: a port that resets every connection at once
    log_path: Path

    @property
    def url(self) -> str:
        return f"{self.base}/v1"

    def requests(self) -> list[dict[str, Any]]:
        if not self.log_path.exists():
            return []
        return [json.loads(line) for line in self.log_path.read_text().splitlines()]


@contextlib.contextmanager
def start_fault_upstream(directory: Path) -> Iterator[FaultUpstream]:
    log = directory / "faults.log"
    command = [sys.executable, "-m", "tests.faults.upstream", "--log", str(log)]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        words = read_ready_line(process, 10).split()
        # listening on URL blackhole PORT reset PORT
        yield FaultUpstream(words[2], int(words[4]), int(words[6]), log)
    finally:
        stop_process(process)
