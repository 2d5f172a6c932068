"""``GET /metrics``: what a real gateway counts, guarded like every route, across workers."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import StartGateway, upstream_config
from tests.gateway import RunningGateway
from tests.policies.keys import KEY_ENV, MESSAGES, create_key, gateway_config, wait_records

#: $0.10 a token: "normal" answers MESSAGES with 4 prompt and 10 completion tokens.
PRICED = {"normal": {"input": 100_000, "output": 100_000}}
MASTER = "sk-master-for-metrics"

Families = list[Metric]


def scrape(gateway: RunningGateway, key: str | None = None) -> str:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    response = httpx.get(f"{gateway.url}/metrics", headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return response.text


def value(families: Families, sample: str, **labels: str) -> float:
    """The sum of the samples named ``sample`` whose labels include ``labels``."""
    return sum(
        s.value
        for family in families
        for s in family.samples
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items())
    )


def wait_metrics(
    gateway: RunningGateway, done: Callable[[Families], bool], key: str | None = None
) -> Families:
    """A request is counted in the gateway's ``finally``, just after its last byte went
    out: scrape until ``done`` holds."""
    deadline = time.monotonic() + 10
    while True:
        families = list(text_string_to_metric_families(scrape(gateway, key)))
        if done(families) or time.monotonic() > deadline:
            return families
        time.sleep(0.05)


def ask(gateway: RunningGateway, key: str, model: str = "normal", **options: Any) -> str:
    with openai.OpenAI(base_url=gateway.api, api_key=key, max_retries=0, timeout=20) as sdk:
        if options.pop("stream", True):
            chunks = sdk.chat.completions.create(
                model=model, messages=MESSAGES, stream=True, **options
            )
            return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        answer = sdk.chat.completions.create(model=model, messages=MESSAGES, **options)
        return answer.choices[0].message.content or ""


def test_requests_tokens_cache_and_refusals_are_counted(
    tmp_path: Path, start_gateway: StartGateway, upstream: Any
) -> None:
    db = tmp_path / "sluice.db"
    plain = create_key(db, "plain")
    limited = create_key(db, "limited", "--rpm", "1")
    # One request ($1.40, held as such with 10 output tokens estimated) fits, two do not.
    tiny = create_key(db, "tiny", "--budget-usd", "2")
    config = gateway_config(upstream.url, db, pricing=PRICED, limits={"output_estimate": 10})
    gateway = start_gateway(config, env=KEY_ENV)

    assert ask(gateway, plain["key"])
    assert ask(gateway, plain["key"], stream=False)
    # Deterministic, so cacheable: a miss, then a hit (served without an upstream).
    for _ in range(2):
        assert ask(gateway, plain["key"], stream=False, temperature=0)
    assert ask(gateway, limited["key"])
    with pytest.raises(openai.RateLimitError):
        ask(gateway, limited["key"])
    assert ask(gateway, tiny["key"])
    with pytest.raises(openai.RateLimitError):
        ask(gateway, tiny["key"])
    with pytest.raises(openai.NotFoundError):
        ask(gateway, plain["key"], model="nope")
    assert httpx.get(f"{gateway.api}/models", headers={"authorization": "Bearer x"}).is_error

    chat = {"route": "/v1/chat/completions", "api": "openai_chat"}
    families = wait_metrics(
        gateway,
        lambda f: value(f, "sluice_requests_total", **chat) == 9,
        key=plain["key"],
    )
    text = scrape(gateway, plain["key"])
    for key in (plain, limited, tiny):  # ids, never the keys themselves
        assert key["key"] not in text

    assert value(families, "sluice_requests_total", **chat, outcome="ok", status="200") == 6
    assert value(families, "sluice_requests_total", **chat, outcome="rejected", status="429") == 2
    assert value(families, "sluice_requests_total", **chat, outcome="rejected", status="404") == 1
    # The bad key on /v1/models: no operation, but a request by its route pattern.
    assert value(families, "sluice_requests_total", route="/v1/models", status="401") == 1

    genai = {
        "gen_ai_operation_name": "chat",
        "gen_ai_request_model": "normal",
        "gen_ai_response_model": "normal",
    }
    duration = "gen_ai_client_operation_duration_seconds_count"
    # Five answers came from the upstream, one from the cache (no provider known).
    assert value(families, duration, **genai, gen_ai_provider_name="openai", error_type="") == 5
    assert value(families, duration, **genai, gen_ai_provider_name="", error_type="") == 1
    refusals = {"gen_ai_request_model": "normal", "gen_ai_response_model": ""}
    assert value(families, duration, **refusals, error_type="RateLimited") == 1
    assert value(families, duration, **refusals, error_type="BudgetExceeded") == 1
    missing = {"gen_ai_request_model": "nope", "gen_ai_provider_name": "openai"}
    assert value(families, duration, **missing, error_type="ModelNotFound") == 1

    tokens = "gen_ai_client_token_usage"
    assert value(families, f"{tokens}_count", **genai, gen_ai_token_type="input") == 6
    assert value(families, f"{tokens}_sum", **genai, gen_ai_token_type="input") == 6 * 4
    assert value(families, f"{tokens}_sum", **genai, gen_ai_token_type="output") == 6 * 10
    ttft = "gen_ai_server_time_to_first_token_seconds"
    assert value(families, f"{ttft}_count", **genai) == 6
    assert 0 < value(families, f"{ttft}_sum", **genai) < 6 * 5
    assert value(families, "gen_ai_server_time_per_output_token_seconds_count", **genai) == 6
    bucket = value(families, f"{ttft}_bucket", **genai, le="10.0")
    assert bucket == 6

    model = {"gen_ai_request_model": "normal"}
    assert value(families, "sluice_cache_results_total", **model, result="miss") == 1
    assert value(families, "sluice_cache_results_total", **model, result="hit") == 1
    assert value(families, "sluice_rate_limit_refusals_total", key_id=limited["id"]) == 1
    assert value(families, "sluice_budget_refusals_total", key_id=tiny["id"]) == 1
    assert value(families, "sluice_rate_limit_refusals_total") == 1
    assert value(families, "sluice_budget_refusals_total") == 1
    assert value(families, "sluice_upstream_attempts_total", **model) == 5
    assert value(families, "sluice_upstream_attempts_total", gen_ai_request_model="nope") == 1
    assert value(families, "sluice_streams_in_flight") == 0

    rows = [r for r in wait_records(db, 10) if r["route"] != "/metrics"]
    assert [r["error_type"] for r in rows if r["route"] == "/v1/chat/completions"] == [
        *([None] * 5),
        "RateLimited",
        None,
        "BudgetExceeded",
        "ModelNotFound",
    ]
    assert [r["operation"] for r in rows] == ["chat"] * 9 + [None]
    assert {r["finish_reasons"] for r in rows if r["outcome"] == "ok"} == {"stop"}


def test_attempts_and_fallbacks(start_gateway: StartGateway, upstream: Any) -> None:
    base = {"provider": "openai", "base_url": upstream.url, "api_key_env": "TEST_UPSTREAM_KEY"}
    models = {
        "m": {**base, "model": "error_status:status=500", "retries": 1, "fallbacks": ["backup"]},
        "backup": {**base, "model": "normal"},
    }
    config = {"models": models, "routing": {"backoff": {"base": 0.01, "max": 0.05}}}
    gateway = start_gateway(config, env=KEY_ENV)
    assert ask(gateway, "unused", model="m")

    families = wait_metrics(
        gateway, lambda f: value(f, "sluice_requests_total", route="/v1/chat/completions") == 1
    )
    model = {"gen_ai_request_model": "m"}
    assert value(families, "sluice_upstream_attempts_total", **model) == 3
    assert value(families, "sluice_upstream_fallbacks_total", **model) == 1
    # The answer came from the fallback's upstream, under the name the client asked for.
    duration = "gen_ai_client_operation_duration_seconds_count"
    assert value(families, duration, **model, gen_ai_response_model="normal") == 1


def test_metrics_need_a_key_unless_public(start_gateway: StartGateway, upstream: Any) -> None:
    env = {**KEY_ENV, "SLUICE_MASTER_KEY": MASTER}
    guarded = start_gateway(upstream_config(upstream.url), env=env)
    response = httpx.get(f"{guarded.url}/metrics", timeout=10)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "missing_api_key"
    assert "sluice_requests_total" in scrape(guarded, MASTER)

    public = start_gateway(upstream_config(upstream.url, metrics={"public": True}), env=env)
    assert "sluice_requests_total" in scrape(public)
    assert httpx.get(f"{public.api}/models", timeout=10).status_code == 401


def test_openmetrics_when_asked(start_gateway: StartGateway, upstream: Any) -> None:
    gateway = start_gateway(upstream_config(upstream.url), env=KEY_ENV)
    accept = {"accept": "application/openmetrics-text; version=1.0.0"}
    response = httpx.get(f"{gateway.url}/metrics", headers=accept, timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.endswith("# EOF\n")


def test_a_bad_metrics_section_names_the_key(tmp_path: Path) -> None:
    from sluice import config

    with pytest.raises(config.ConfigError, match=r"metrics\.public: expected true or false"):
        config.parse("metrics: {public: 1}\n", env={})
    with pytest.raises(config.ConfigError, match="metrics: unknown key"):
        config.parse("metrics: {path: /x}\n", env={})


def test_workers_share_their_metrics(start_gateway: StartGateway, upstream: Any) -> None:
    gateway = start_gateway(
        upstream_config(upstream.url), env=KEY_ENV, args=("--workers", "2", "--log-level", "info")
    )
    found = re.search(r"metrics of the 2 workers are kept in (\S+)", gateway.log())
    assert found, gateway.log()
    directory = Path(found.group(1))
    assert directory.is_dir()

    # A stream held open while other requests come and go, on fresh connections until
    # both workers have served some (the kernel picks which worker accepts).
    slow = threading.Thread(target=ask, args=(gateway, "unused", "paced:n=20,interval=0.1"))
    slow.start()
    served = 0
    try:
        while served < 6 or (len(workers(directory)) < 2 and served < 40):
            assert ask(gateway, "unused")
            served += 1
        chat = {"route": "/v1/chat/completions", "outcome": "ok"}
        in_flight = wait_metrics(
            gateway,
            lambda f: (
                value(f, "sluice_requests_total", **chat) == served
                and value(f, "sluice_streams_in_flight") == 1
            ),
        )
        assert value(in_flight, "sluice_requests_total", **chat) == served
        assert value(in_flight, "sluice_streams_in_flight", api="openai_chat") == 1
    finally:
        slow.join(timeout=20)
    assert len(workers(directory)) == 2
    total = served + 1
    for _ in range(4):  # whichever worker answers, it adds up both
        families = wait_metrics(
            gateway,
            lambda f: value(f, "sluice_requests_total", route="/v1/chat/completions") == total,
        )
        assert value(families, "sluice_requests_total", route="/v1/chat/completions") == total
        assert value(families, "sluice_streams_in_flight") == 0
        count = "gen_ai_client_operation_duration_seconds_count"
        assert value(families, count, gen_ai_provider_name="openai") == total

    assert gateway.stop() == 0
    assert not directory.exists()


def workers(directory: Path) -> set[str]:
    """The workers that served a generation (each writes its own file)."""
    return {p.stem.rsplit("_", 1)[-1] for p in directory.glob("histogram_*.db")}


def test_the_one_process_histogram_counts_as_prometheus_client_does() -> None:
    from prometheus_client import CollectorRegistry, Histogram, generate_latest

    from sluice.telemetry.metrics import TTFT_BUCKETS, _Histogram

    ours, theirs = CollectorRegistry(), CollectorRegistry()
    mine = _Histogram("t_seconds", "Time.", ("model",), TTFT_BUCKETS, ours)
    reference = Histogram("t_seconds", "Time.", ("model",), buckets=TTFT_BUCKETS, registry=theirs)
    # On a bound (le is inclusive), between bounds, below the first, above the last.
    for model, value in [("a", 0.01), ("a", 0.011), ("a", 0.0), ("b", 10.0), ("b", 11.5)]:
        mine.labels(model).observe(value)
        reference.labels(model).observe(value)

    def samples(registry: CollectorRegistry) -> list[tuple[str, list[tuple[str, str]], float]]:
        text = generate_latest(registry).decode()
        return sorted(
            (s.name, sorted(s.labels.items()), s.value)
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if not s.name.endswith("_created")
        )

    assert samples(ours) == samples(theirs)
