"""``POST /v1/chat/completions`` of a running gateway (uvicorn on loopback, the
simulator as upstream) against OpenAI's published description of that operation,
with schemathesis: requests the description allows and requests it does not, a
bounded number of each. No answer is a 5xx, and every error is OpenAI's error object.

The operation's part of the description is ``tests/data/openai_chat_openapi.json``
(``scripts/extract_chat_openapi.py`` writes it from the whole one).
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

schemathesis = pytest.importorskip("schemathesis")

from schemathesis import Case  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.generation import GenerationMode  # noqa: E402

from tests.gateway import RunningGateway, run_gateway  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DESCRIPTION = ROOT / "tests" / "data" / "openai_chat_openapi.json"
MASTER = "sk-master-schemathesis-" + "s" * 24
#: The simulator answers any model at once (no pacing): each case costs milliseconds.
CONFIG = {
    "default_model": "gpt-4o-mini",
    "models": {"*": {"provider": "simulator", "ttft": 0, "tokens_per_second": 0, "max_tokens": 8}},
    "auth": {"max_failures": 0},
}

schema = schemathesis.openapi.from_path(str(DESCRIPTION))


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    env = {"SLUICE_MASTER_KEY": MASTER}
    with run_gateway(tmp_path_factory.mktemp("schemathesis"), CONFIG, env) as running:
        yield running


def error_in_openai_shape(ctx: Any, response: Any, case: Case) -> bool | None:
    """A 4xx body is ``{"error": {"message", "type", "param", "code"}}``."""
    if response.status_code < 400:
        return None
    body = json.loads(response.content)
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, body
    assert isinstance(error["message"], str) and error["message"], body
    assert isinstance(error["type"], str) and error["type"], body
    assert error["param"] is None or isinstance(error["param"], str), body
    assert error["code"] is None or isinstance(error["code"], str), body
    return True


CASES = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)


@schema.include(method="POST", path="/chat/completions").parametrize()
@CASES
def test_chat_completions_against_openai_description(case: Case, gateway: RunningGateway) -> None:
    case.call_and_validate(
        base_url=gateway.url + "/v1",
        headers={"Authorization": f"Bearer {MASTER}"},
        checks=[not_a_server_error, error_in_openai_shape],
        timeout=30,
    )


def test_both_kinds_of_requests_are_generated() -> None:
    """The test above sends what the description allows and what it does not."""
    modes = schema.config.generation.modes
    assert GenerationMode.POSITIVE in modes and GenerationMode.NEGATIVE in modes


def test_the_cases_reached_the_gateway_both_ways(gateway: RunningGateway) -> None:
    """Run after the cases: valid requests were answered, invalid ones refused."""
    rows = [r for r in gateway.wait_records(60) if r["route"] == "/v1/chat/completions"]
    statuses = {row["status"] for row in rows}
    assert len(rows) >= 60, len(rows)
    assert 200 in statuses and 400 in statuses, statuses
    assert max(statuses) < 500


def test_the_description_is_up_to_date_with_the_spec() -> None:
    from tests import openapi

    if not openapi.SPEC.exists():
        pytest.skip(f"OpenAI's API description is not at {openapi.SPEC}")
    loaded = importlib.util.spec_from_file_location(
        "extract", ROOT / "scripts/extract_chat_openapi.py"
    )
    assert loaded is not None and loaded.loader is not None
    module = importlib.util.module_from_spec(loaded)
    loaded.loader.exec_module(module)
    assert module.main(["--check", str(openapi.SPEC)]) == 0, (
        "tests/data/openai_chat_openapi.json is stale: run scripts/extract_chat_openapi.py"
    )
