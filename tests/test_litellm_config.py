"""LiteLLM proxy configs: converted into Sluice's settings, warned about, refused clearly.

The conversion on its own first (every test passes ``env`` explicitly), then a realistic
LiteLLM config serving through a real gateway in front of two test upstreams, with the
openai SDK as the client.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from sluice import config
from sluice.config import OPENAI_DEFAULT_BASE_URL, ConfigError, Settings
from tests.conftest import StartGateway
from tests.upstream.fixture import Upstream, start_upstream
from tests.upstream.scenarios import expected_text

SECRET = "sk-literal-0123456789-never-shown"
MESSAGES: list[Any] = [{"role": "user", "content": "Tell me a story"}]


def parse(text: str, env: dict[str, str] | None = None) -> Settings:
    return config.parse(text, env or {}, origin="litellm.yaml")


def error(text: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        parse(text, env)
    return str(info.value)


REALISTIC = """\
model_list:
  - model_name: gpt-4o
    litellm_params:
      model: openai/gpt-4o
      api_key: os.environ/OPENAI_API_KEY
      rpm: 100
      tpm: 200000
      weight: 3
  - model_name: gpt-4o
    litellm_params:
      model: azure/gpt-4o-eu
      api_base: https://eu.openai.azure.com/
      api_key: os.environ/AZURE_EU_KEY
      api_version: "2024-10-21"
      rpm: 50
      tpm: 100000
      timeout: 60
      stream_timeout: 15
  - model_name: local
    litellm_params:
      model: hosted_vllm/Qwen/Qwen2.5-7B-Instruct
      api_base: http://127.0.0.1:8001/v1
  - model_name: llama
    litellm_params:
      model: ollama_chat/llama3.2
      api_base: http://127.0.0.1:11434
      extra_headers: {X-Team: search}
  - model_name: fast
    litellm_params:
      model: groq/llama-3.1-8b-instant
      api_key: os.environ/GROQ_API_KEY
router_settings:
  routing_strategy: least-busy
  num_retries: 3
  allowed_fails: 2
  cooldown_time: 45
  timeout: 120
  fallbacks: [{"gpt-4o": ["local", "fast"]}]
  context_window_fallbacks: [{"local": ["gpt-4o"]}]
  redis_host: 127.0.0.1
  redis_port: 6390
  redis_password: os.environ/REDIS_PASSWORD
litellm_settings:
  default_fallbacks: ["fast"]
"""
REALISTIC_ENV = {
    "OPENAI_API_KEY": "sk-openai",
    "AZURE_EU_KEY": "az-key",
    "GROQ_API_KEY": "gsk-key",
    "REDIS_PASSWORD": "p@ss word",
}


def test_a_realistic_litellm_config_becomes_sluice_settings() -> None:
    settings = parse(REALISTIC, REALISTIC_ENV)
    assert settings.warnings == ()
    assert list(settings.routes) == ["gpt-4o", "local", "llama", "fast"]
    gpt = settings.routes["gpt-4o"]
    openai_, azure = gpt.deployments
    assert (openai_.provider, openai_.model, openai_.base_url) == (
        "openai",
        "gpt-4o",
        OPENAI_DEFAULT_BASE_URL,
    )
    assert openai_.api_key is not None and openai_.api_key.get() == "sk-openai"
    assert openai_.weight == 3
    assert azure.base_url == (
        "https://eu.openai.azure.com/openai/deployments/gpt-4o-eu?api-version=2024-10-21"
    )
    assert azure.api_key is not None and azure.api_key.get() == "az-key"
    assert (azure.timeouts.total, azure.timeouts.first_token, azure.timeouts.idle) == (60, 15, 15)
    assert openai_.timeouts.total == 120  # router_settings.timeout
    assert (gpt.strategy, gpt.retries, gpt.fallbacks) == ("least-busy", 3, ("local", "fast"))
    local = settings.routes["local"]
    assert local.deployments[0].model == "Qwen/Qwen2.5-7B-Instruct"
    assert local.deployments[0].base_url == "http://127.0.0.1:8001/v1"
    assert local.deployments[0].api_key is None
    assert local.context_window_fallbacks == ("gpt-4o",)
    assert local.fallbacks == ("fast",)  # default_fallbacks
    llama = settings.routes["llama"].deployments[0]
    assert llama.base_url == "http://127.0.0.1:11434/v1"  # Ollama's OpenAI-compatible API
    assert llama.headers == {"X-Team": "search"}
    fast = settings.routes["fast"].deployments[0]
    assert fast.base_url == "https://api.groq.com/openai/v1"
    assert settings.routes["fast"].fallbacks == ()  # never itself
    assert (settings.routing.allowed_fails, settings.routing.cooldown) == (2, 45)
    # rpm and tpm: the model's limits, the sum over its deployments.
    limits = settings.limits.models["gpt-4o"]
    assert (limits.rpm, limits.tpm) == (150, 300000)
    assert set(settings.limits.models) == {"gpt-4o"}
    assert settings.redis_url is not None
    assert settings.redis_url.get() == "redis://:p%40ss%20word@127.0.0.1:6390"


def line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


UNSUPPORTED = """\
model_list:
  - model_name: gpt-4o
    litellm_params:
      model: openai/gpt-4o
      max_retries: 5
      input_cost_per_token: 0.000005
    model_info:
      id: primary
  - model_name: claude
    litellm_params:
      model: vertex_ai/claude-3-5-sonnet
  - model_name: gpt-4o
    litellm_params:
      model: bedrock/anthropic.claude-v2
router_settings:
  routing_strategy: usage-based-routing-v2
  enable_pre_call_checks: true
litellm_settings:
  drop_params: true
  success_callback: ["langfuse"]
general_settings:
  master_key: os.environ/LITELLM_MASTER_KEY
  database_url: os.environ/DATABASE_URL
environment_variables:
  LANGFUSE_HOST: https://example.invalid
"""


def test_unsupported_keys_are_warned_about_with_their_line_never_fatal() -> None:
    settings = parse(UNSUPPORTED, {"OPENAI_API_KEY": "sk-x"})
    warnings = "\n".join(settings.warnings)
    for key, needle in [
        ("model_list[0].litellm_params.max_retries", "max_retries"),
        ("model_list[0].litellm_params.input_cost_per_token", "input_cost_per_token"),
        ("model_list[0].model_info", "model_info"),
        ("model_list[1].litellm_params.model", "vertex_ai/"),
        ("model_list[2].litellm_params.model", "bedrock/"),
        ("router_settings.routing_strategy", "routing_strategy"),
        ("router_settings.enable_pre_call_checks", "enable_pre_call_checks"),
        ("litellm_settings.drop_params", "drop_params"),
        ("litellm_settings.success_callback", "success_callback"),
        ("general_settings.master_key", "master_key"),
        ("general_settings.database_url", "database_url"),
        ("environment_variables", "environment_variables"),
    ]:
        assert f"litellm.yaml line {line_of(UNSUPPORTED, needle)}: {key}: " in warnings, key
    assert "SLUICE_MASTER_KEY" in warnings
    assert "'vertex_ai' is not supported" in warnings
    # Lines in order, one warning per key.
    lines = [int(re.search(r" line (\d+):", w).group(1)) for w in settings.warnings]  # type: ignore[union-attr]
    assert lines == sorted(lines) and len(settings.warnings) == 12
    # What could be served is served; the rest is not there.
    assert list(settings.routes) == ["gpt-4o"]
    assert len(settings.routes["gpt-4o"].deployments) == 1
    assert settings.route("claude") is None
    assert settings.routing.strategy == "weighted"


def test_a_literal_key_works_with_a_warning_and_is_never_shown() -> None:
    text = f"""\
model_list:
  - model_name: local
    litellm_params:
      model: openai/qwen
      api_base: http://127.0.0.1:8001/v1
      api_key: {SECRET}
"""
    settings = parse(text)
    key = settings.routes["local"].deployments[0].api_key
    assert key is not None and key.get() == SECRET
    (warning,) = settings.warnings
    assert "line 6: model_list[0].litellm_params.api_key" in warning
    assert "os.environ/NAME" in warning
    assert SECRET not in warning and SECRET not in repr(settings)


def test_our_own_format_refuses_a_literal_key() -> None:
    message = error(f"models:\n  gpt:\n    api_key: {SECRET}\n")
    assert message.startswith("litellm.yaml line 3: models.gpt.api_key: ")
    assert "api_key_env" in message and SECRET not in message


def test_openai_key_is_sent_only_to_openai_unless_named() -> None:
    text = """\
model_list:
  - model_name: a
    litellm_params: {model: openai/gpt-4o}
  - model_name: b
    litellm_params: {model: openai/qwen, api_base: "http://127.0.0.1:8001/v1"}
  - model_name: c
    litellm_params: {model: "openai/*"}
  - model_name: "*"
    litellm_params: {model: "openai/*"}
"""
    settings = parse(text, {"OPENAI_API_KEY": "sk-x"})
    a, b, c = (settings.routes[n].deployments[0] for n in "abc")
    assert a.api_key is not None and b.api_key is None
    assert c.model is None  # the public name passes through
    assert settings.route("anything-else") is settings.routes["*"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("model_list: 3\n", "line 1: model_list: expected a non-empty list of models"),
        ("model_list: []\n", "line 1: model_list: expected a non-empty list of models"),
        ("model_list:\n  - just-a-name\n", "line 2: model_list[0]: expected a mapping, got str"),
        (
            "model_list:\n  - litellm_params: {model: openai/x}\n",
            "line 2: model_list[0].model_name: expected a non-empty string, got None",
        ),
        (
            "model_list:\n  - model_name: a\n",
            "line 2: model_list[0].litellm_params: missing: the upstream model",
        ),
        (
            "model_list:\n  - model_name: a\n    litellm_params: {api_base: 'http://x/v1'}\n",
            "line 3: model_list[0].litellm_params.model: expected a non-empty string",
        ),
        (
            "model_list:\n  - model_name: a\n    litellm_params:\n      model: openai/x\n"
            "      api_key: os.environ/NOT_SET\n",
            "line 5: model_list[0].litellm_params.api_key: environment variable NOT_SET is not set",
        ),
        (
            "model_list:\n  - model_name: a\n    litellm_params:\n      model: hosted_vllm/x\n",
            "line 3: model_list[0].litellm_params.api_base: missing: where the hosted_vllm server",
        ),
        (
            "model_list:\n  - model_name: a\n    litellm_params:\n      model: openai/x\n"
            "      weight: -2\n",
            "line 5: model_list[0].litellm_params.weight: expected a non-negative number, got -2",
        ),
        (
            "model_list:\n  - model_name: a\n    litellm_params:\n      model: openai/x\n"
            "      rpm: lots\n",
            "line 5: model_list[0].litellm_params.rpm: expected a non-negative integer",
        ),
        (
            "model_list:\n  - model_name: a\n    litellm_params: {model: openai/x}\n"
            "router_settings:\n  fallbacks: {a: [b]}\n",
            "line 5: router_settings.fallbacks: expected a list like",
        ),
        (
            "model_list:\n  - model_name: a\n    litellm_params: {model: openai/x}\n"
            "router_settings:\n  fallbacks:\n    - a: [missing]\n",
            "line 6: router_settings.fallbacks[0].a: falls back to 'missing', which is not a"
            " configured model",
        ),
        (
            "model_list:\n  - model_name: a\n    litellm_params: {model: openai/x}\n"
            "router_settings:\n  num_retries: many\n",
            "line 5: router_settings.num_retries: expected an integer from 0 to 10",
        ),
        (
            "model_list:\n  - model_name: a\n    litellm_params: {model: vertex_ai/gemini}\n",
            "line 1: model_list: no model that Sluice can serve",
        ),
        ("model_list:\n  - model_name: [a\n", "not valid YAML at line 3"),
    ],
)
def test_malformed_litellm_configs_name_the_key_and_line(text: str, expected: str) -> None:
    assert expected in error(text, {"OPENAI_API_KEY": "sk-x"})


def test_a_litellm_key_written_twice_names_both_lines() -> None:
    text = (
        "model_list:\n  - model_name: a\n    litellm_params:\n      model: openai/x\n"
        "      api_base: http://127.0.0.1:1\n      model: openai/y\n"
    )
    message = error(text, {"OPENAI_API_KEY": "sk-x"})
    assert "line 6: duplicate key 'model' (first at line 4)" in message


def test_partial_rpm_gives_no_model_limit_and_says_so() -> None:
    text = """\
model_list:
  - model_name: a
    litellm_params: {model: openai/x, rpm: 10}
  - model_name: a
    litellm_params: {model: openai/y}
"""
    settings = parse(text)
    assert "a" not in settings.limits.models
    (warning,) = settings.warnings
    assert "line 3: model_list[0].litellm_params.rpm: not every deployment of 'a'" in warning


# -- through a real gateway ---------------------------------------------------------


@pytest.fixture(scope="module")
def ups() -> Iterator[tuple[Upstream, Upstream]]:
    with start_upstream() as a, start_upstream() as b:
        yield a, b


def calls(up: Upstream) -> int:
    return sum(r["path"] == "/v1/chat/completions" for r in up.log()["requests"])


def test_a_litellm_config_serves_end_to_end(
    start_gateway: StartGateway, ups: tuple[Upstream, Upstream]
) -> None:
    a, b = ups
    for up in ups:
        up.reset()
    text = f"""\
# A LiteLLM proxy config, as its users write them.
model_list:
  - model_name: story
    litellm_params:
      model: openai/normal
      api_base: {a.url}
      api_key: os.environ/TEST_UPSTREAM_KEY
  - model_name: story
    litellm_params:
      model: hosted_vllm/normal
      api_base: {b.url}
  - model_name: flaky
    litellm_params:
      model: openai/error_status:status=500
      api_base: {a.url}
      api_key: os.environ/TEST_UPSTREAM_KEY
  - model_name: limited
    litellm_params:
      model: openai/normal:n=2
      api_base: {b.url}
      rpm: 2
router_settings:
  routing_strategy: simple-shuffle
  num_retries: 1
  fallbacks: [{{"flaky": ["story"]}}]
  enable_pre_call_checks: true
litellm_settings:
  drop_params: true
general_settings:
  master_key: os.environ/LITELLM_MASTER_KEY
"""
    gateway = start_gateway(text, env={"TEST_UPSTREAM_KEY": "sk-test"})
    log = gateway.log()
    for key in ("enable_pre_call_checks", "drop_params", "master_key"):
        assert re.search(rf"line {line_of(text, key)}: \S*{key}: ", log), key
    client = openai.OpenAI(base_url=gateway.api, api_key="unused", max_retries=0, timeout=30)
    assert {m.id for m in client.models.list()} == {"story", "flaky", "limited"}

    def ask(model: str) -> str:
        stream = client.chat.completions.create(model=model, messages=MESSAGES, stream=True)
        return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    # Two deployments of one model share the requests.
    for _ in range(20):
        assert ask("story") == expected_text("normal")
    assert calls(a) > 0 and calls(b) > 0 and calls(a) + calls(b) == 20
    # num_retries, then the fallback.
    a.reset()
    assert ask("flaky") == expected_text("normal")
    assert sum(r["body"]["model"].startswith("error_status") for r in a.log()["requests"]) == 2
    # rpm: the model's rate limit.
    assert ask("limited") == expected_text("normal:n=2")
    assert ask("limited") == expected_text("normal:n=2")
    with pytest.raises(openai.RateLimitError):
        ask("limited")
    rows = gateway.wait_records(25)
    flaky = next(r for r in rows if r["model"] == "flaky")
    assert flaky["attempts"] == 3 and flaky["outcome"] == "ok"
    assert flaky["upstream"].startswith("openai:normal@")
