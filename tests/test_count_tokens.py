"""``POST /v1/messages/count_tokens`` through the ``anthropic`` SDK: a model whose
deployment is an Anthropic upstream is counted by that upstream (its own
``/v1/messages/count_tokens``, with its key and API version), any other model gets the
gateway's estimate, and a key that may not use the model is refused before anything
is asked."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import anthropic
import pytest

from tests.gateway import RunningGateway, free_port, run_gateway
from tests.policies.keys import create_key
from tests.upstream import messages as am
from tests.upstream.fixture import Upstream

UPSTREAM_KEY = "sk-ant-upstream-secret"
MASTER = "sk-master-count"
WEATHER: Any = {"name": "get_weather", "input_schema": {"type": "object"}}


@pytest.fixture(scope="module")
def setup(
    upstream: Upstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[RunningGateway, str]]:
    """The gateway, and a key that may use only ``oa``."""
    path = tmp_path_factory.mktemp("count-tokens")
    db = path / "records.db"
    restricted = create_key(db, "only-oa", "--models", "oa")["key"]
    anthropic_up = {"provider": "anthropic", "base_url": upstream.base, "api_key_env": "UP_KEY"}
    config = {
        "models": {
            "*": anthropic_up,
            "claude": {**anthropic_up, "model": "normal:n=2"},
            # A base URL given with the Messages endpoint on it, as LiteLLM writes it.
            "claude-full-url": {**anthropic_up, "base_url": f"{upstream.base}/v1/messages"},
            "claude-down": {**anthropic_up, "base_url": f"http://127.0.0.1:{free_port()}"},
            "oa": {"provider": "openai", "base_url": upstream.url, "api_key_env": "UP_KEY"},
            "sim": {"provider": "simulator"},
        },
        "routing": {"retries": 0, "allowed_fails": 0},
        "record": {"path": str(db), "flush_interval": 0.05},
    }
    env = {"UP_KEY": UPSTREAM_KEY, "SLUICE_MASTER_KEY": MASTER}
    with run_gateway(path / "gw", config, env) as gateway:
        yield gateway, restricted


@pytest.fixture
def gateway(setup: tuple[RunningGateway, str]) -> RunningGateway:
    return setup[0]


def sdk(gateway: RunningGateway, key: str = MASTER) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.url, api_key=key, max_retries=0, timeout=20)


def counts_sent(upstream: Upstream, mark: str) -> list[dict[str, Any]]:
    return [
        r
        for r in upstream.log()["requests"]
        if r["path"] == "/v1/messages/count_tokens" and mark in json.dumps(r["body"])
    ]


def test_an_anthropic_model_is_counted_by_its_upstream(
    gateway: RunningGateway, upstream: Upstream
) -> None:
    mark = uuid.uuid4().hex[:12]
    counted = sdk(gateway).messages.count_tokens(
        model="normal",
        system="Be brief.",
        messages=[{"role": "user", "content": f"Tell me a story {mark}"}],
        tools=[WEATHER],
        thinking={"type": "enabled", "budget_tokens": 2048},
        extra_headers={"anthropic-beta": "context-1m-2025-08-07"},
    )
    [sent] = counts_sent(upstream, mark)
    body = sent["body"]
    assert counted.input_tokens == am.count_tokens(body) == 2 + 5 + am.COUNT_EXTRA
    assert body == {
        "model": "normal",
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": f"Tell me a story {mark}"}]}
        ],
        "system": [{"type": "text", "text": "Be brief."}],
        "tools": [WEATHER],
        "thinking": {"type": "enabled", "budget_tokens": 2048},
    }
    headers = sent["headers"]
    assert headers["x-api-key"] == UPSTREAM_KEY and "authorization" not in headers
    assert headers["anthropic-version"] == "2023-06-01"
    assert headers["anthropic-beta"] == "context-1m-2025-08-07"


@pytest.mark.parametrize(
    ("model", "upstream_model"), [("claude", "normal:n=2"), ("claude-full-url", "claude-full-url")]
)
def test_the_upstream_model_name_and_url(
    gateway: RunningGateway, upstream: Upstream, model: str, upstream_model: str
) -> None:
    mark = uuid.uuid4().hex[:12]
    if model == "claude-full-url":
        # The name passes through: the test upstream knows no such scenario.
        with pytest.raises(anthropic.NotFoundError):
            sdk(gateway).messages.count_tokens(
                model=model, messages=[{"role": "user", "content": mark}]
            )
    else:
        counted = sdk(gateway).messages.count_tokens(
            model=model, messages=[{"role": "user", "content": f"one two {mark}"}]
        )
        assert counted.input_tokens == 3
    [sent] = counts_sent(upstream, mark)
    assert sent["body"]["model"] == upstream_model


@pytest.mark.parametrize("model", ["oa", "sim"])
def test_other_models_get_the_gateways_estimate(
    gateway: RunningGateway, upstream: Upstream, model: str
) -> None:
    mark = uuid.uuid4().hex[:12]
    text = f"{'x' * 20} {mark}"  # 33 characters, and "Be brief." 9: 42 / 4, rounded up
    counted = sdk(gateway).messages.count_tokens(
        model=model, system="Be brief.", messages=[{"role": "user", "content": text}]
    )
    assert counted.input_tokens == 11
    # Tool definitions are part of the prompt: name, description and schema count.
    tool = {
        "name": "get_weather",  # 11
        "description": "Weather now",  # 11
        "input_schema": {"type": "object", "properties": {}},  # 33 as compact JSON
    }
    with_tools = sdk(gateway).messages.count_tokens(
        model=model,
        system="Be brief.",
        messages=[{"role": "user", "content": text}],
        tools=[tool],  # type: ignore[list-item]
    )
    assert with_tools.input_tokens == -(-(42 + 11 + 11 + 33) // 4)  # 97 / 4, rounded up
    assert not [r for r in upstream.log()["requests"] if mark in json.dumps(r["body"])]


def test_a_key_that_may_not_use_the_model_is_refused_first(
    setup: tuple[RunningGateway, str], upstream: Upstream
) -> None:
    gateway, restricted = setup
    mark = uuid.uuid4().hex[:12]
    with pytest.raises(anthropic.PermissionDeniedError) as caught:
        sdk(gateway, restricted).messages.count_tokens(
            model="normal", messages=[{"role": "user", "content": mark}]
        )
    body: Any = caught.value.body
    assert body["error"]["type"] == "permission_error" and "normal" in body["error"]["message"]
    assert counts_sent(upstream, mark) == []
    allowed = sdk(gateway, restricted).messages.count_tokens(
        model="oa", messages=[{"role": "user", "content": "abcd"}]
    )
    assert allowed.input_tokens == 1
    with pytest.raises(anthropic.AuthenticationError):
        sdk(gateway, "sk-wrong").messages.count_tokens(
            model="normal", messages=[{"role": "user", "content": mark}]
        )


@pytest.mark.parametrize(
    ("model", "error_class", "status", "kind"),
    [
        ("error_status:status=429", anthropic.RateLimitError, 429, "rate_limit_error"),
        ("error_status:status=529", anthropic.InternalServerError, 529, "overloaded_error"),
        ("error_status:status=500", anthropic.InternalServerError, 502, "api_error"),
        ("prompt_too_long", anthropic.BadRequestError, 400, "invalid_request_error"),
        ("claude-down", anthropic.InternalServerError, 529, "overloaded_error"),
    ],
)
def test_the_upstreams_errors_in_anthropic_shape(
    gateway: RunningGateway,
    model: str,
    error_class: type[anthropic.APIStatusError],
    status: int,
    kind: str,
) -> None:
    with pytest.raises(error_class) as caught:
        sdk(gateway).messages.count_tokens(
            model=model, messages=[{"role": "user", "content": "Tell me a story"}]
        )
    assert caught.value.status_code == status
    body: Any = caught.value.body
    assert body["type"] == "error" and body["error"]["type"] == kind
    assert body["error"]["message"]


def test_the_upstream_key_is_never_logged(gateway: RunningGateway) -> None:
    assert UPSTREAM_KEY not in gateway.log()
