"""The Vercel AI SDK (the ``ai`` npm package, tests/ui) run by Node for tests.

``scripts/test`` installs it (``npm ci`` in tests/ui). On a developer's machine without
it the tests that need it are skipped; in CI a missing one fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

UI = Path(__file__).resolve().parent / "ui"
SCRIPT = UI / "chat.mjs"


def require_sdk() -> str:
    node = shutil.which("node")
    reason = None
    if node is None:
        reason = "node is not installed"
    elif not (UI / "node_modules" / "ai" / "package.json").exists():
        reason = f"the ai package is not installed (npm ci in {UI})"
    if reason is None:
        assert node is not None
        return node
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI must run the AI SDK tests", pytrace=False)
    pytest.skip(reason)


def _run(args: list[str], stdin: bytes, timeout: float) -> dict[str, Any]:
    node = require_sdk()
    done = subprocess.run(
        [node, str(SCRIPT), *args],
        input=stdin,
        capture_output=True,
        timeout=timeout,
        cwd=UI,
        check=False,
    )
    if done.returncode != 0:
        raise AssertionError(f"node failed ({done.returncode}):\n{done.stderr.decode()}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def send(api: str, request: dict[str, Any], timeout: float = 30) -> dict[str, Any]:
    """``DefaultChatTransport`` sends (or, with ``resume``, reconnects) and
    ``readUIMessageStream`` assembles: ``{status, headers, message, chunks, errors,
    problems, thrown}``."""
    return _run(["send", api], json.dumps(request).encode(), timeout)


def validate(raw: bytes) -> dict[str, Any]:
    """``{chunks, problems}`` of a raw UI message stream, each chunk checked against the
    SDK's ``uiMessageChunkSchema``."""
    return _run(["validate"], raw, 30)
