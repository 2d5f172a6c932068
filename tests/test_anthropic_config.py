"""The ``anthropic`` provider in Sluice's configuration, its defaults without a config file,
and ``anthropic/`` models in LiteLLM configs. Every test passes ``env`` explicitly."""

from __future__ import annotations

import pytest

from sluice import config
from sluice.config import (
    ANTHROPIC_DEFAULT_BASE_URL,
    OPENAI_DEFAULT_BASE_URL,
    ConfigError,
    Settings,
)
from sluice.providers.anthropic import AnthropicWire
from sluice.providers.registry import WIRES, wire_format
from sluice.providers.upstream import endpoint

KEY = "sk-ant-test-0123456789-do-not-print"


def parse(text: str, env: dict[str, str] | None = None, origin: str = "sluice.yaml") -> Settings:
    return config.parse(text, env or {}, origin=origin)


def error(text: str, env: dict[str, str] | None = None, origin: str = "sluice.yaml") -> str:
    with pytest.raises(ConfigError) as info:
        parse(text, env, origin)
    return str(info.value)


# -- Sluice's own format -------------------------------------------------------------


def test_an_anthropic_model_with_the_defaults() -> None:
    settings = parse("models:\n  claude:\n    provider: anthropic\n", {"ANTHROPIC_API_KEY": KEY})
    deployment = settings.models["claude"]
    assert deployment.provider == "anthropic"
    assert deployment.base_url == ANTHROPIC_DEFAULT_BASE_URL
    assert deployment.api_key is not None and deployment.api_key.get() == KEY
    assert deployment.max_tokens_default == 4096
    assert endpoint(deployment.base_url, AnthropicWire.path) == (
        "https://api.anthropic.com/v1/messages"
    )
    assert wire_format("anthropic") == "anthropic_messages"


def test_the_anthropic_key_goes_only_to_anthropic_unless_named() -> None:
    text = (
        "models:\n"
        "  a: {provider: anthropic, base_url: 'http://127.0.0.1:9/'}\n"
        "  b: {provider: anthropic, base_url: 'http://127.0.0.1:9', api_key_env: MY_KEY}\n"
        "  c: {provider: anthropic}\n"
    )
    settings = parse(text, {"ANTHROPIC_API_KEY": KEY, "MY_KEY": "other"})
    a, b, c = (settings.models[name] for name in "abc")
    assert a.api_key is None and a.base_url == "http://127.0.0.1:9"
    assert b.api_key is not None and b.api_key.get() == "other"
    assert c.api_key is not None and c.api_key.get() == KEY


def test_anthropic_base_url_from_the_environment() -> None:
    env = {"ANTHROPIC_API_KEY": KEY, "ANTHROPIC_BASE_URL": "http://127.0.0.1:8080/"}
    deployment = parse("models:\n  c: {provider: anthropic}\n", env).models["c"]
    assert deployment.base_url == "http://127.0.0.1:8080"
    assert deployment.api_key is not None


def test_max_tokens_default_is_validated_and_reaches_the_wire() -> None:
    settings = parse("models:\n  c: {provider: anthropic, max_tokens_default: 1000}\n")
    wire = WIRES["anthropic"](settings.models["c"])
    assert isinstance(wire, AnthropicWire) and wire.max_tokens_default == 1000
    message = error("models:\n  c:\n    provider: anthropic\n    max_tokens_default: 0\n")
    assert message.startswith("sluice.yaml line 4: models.c.max_tokens_default: ")


def test_no_config_and_only_an_anthropic_key_sends_every_name_to_anthropic() -> None:
    settings = config.load(env={"ANTHROPIC_API_KEY": KEY})
    star = settings.models["*"]
    assert (star.provider, star.base_url) == ("anthropic", ANTHROPIC_DEFAULT_BASE_URL)
    assert star.api_key is not None and star.api_key.get() == KEY
    assert settings.resolve("claude-sonnet-4-5") is star
    assert not settings.uses_simulator


def test_no_config_and_both_keys_claude_names_go_to_anthropic() -> None:
    env = {
        "OPENAI_API_KEY": "sk-openai",
        "ANTHROPIC_API_KEY": KEY,
        "ANTHROPIC_BASE_URL": "http://127.0.0.1:8081",
    }
    settings = config.load(env=env)
    assert list(settings.models) == ["*"]  # /v1/models shows no pattern
    gpt = settings.route("gpt-4o")
    claude = settings.route("claude-sonnet-4-5")
    assert gpt is not None and claude is not None
    assert gpt.deployments[0].provider == "openai"
    assert gpt.deployments[0].base_url == OPENAI_DEFAULT_BASE_URL
    deployment = claude.deployments[0]
    assert (deployment.provider, deployment.base_url) == ("anthropic", "http://127.0.0.1:8081")
    assert deployment.api_key is not None and deployment.api_key.get() == KEY
    assert settings.resolve("claude-3-5-haiku") is deployment
    assert settings.resolve("gpt-4o") is settings.models["*"]


def test_a_models_section_turns_the_defaults_off() -> None:
    env = {"OPENAI_API_KEY": "sk-openai", "ANTHROPIC_API_KEY": KEY}
    settings = parse("models:\n  '*': {provider: openai}\n", env)
    route = settings.route("claude-sonnet-4-5")
    assert route is not None and route.deployments[0].provider == "openai"


# -- LiteLLM configs ------------------------------------------------------------------


def litellm(model: str, extra: str = "") -> str:
    return f"model_list:\n  - model_name: c\n    litellm_params:\n      model: {model}\n{extra}"


@pytest.mark.parametrize(
    ("extra", "env", "base_url"),
    [
        ("", {}, ANTHROPIC_DEFAULT_BASE_URL),
        ("", {"ANTHROPIC_API_BASE": "http://127.0.0.1:9000/"}, "http://127.0.0.1:9000"),
        (
            "      api_base: http://127.0.0.1:9001/v1/messages\n",
            {},
            "http://127.0.0.1:9001/v1/messages",
        ),
    ],
)
def test_litellm_anthropic_models(extra: str, env: dict[str, str], base_url: str) -> None:
    settings = parse(
        litellm("anthropic/claude-sonnet-4-5", extra), {"ANTHROPIC_API_KEY": KEY, **env}
    )
    deployment = settings.routes["c"].deployments[0]
    assert deployment.provider == "anthropic"
    assert deployment.model == "claude-sonnet-4-5"
    assert deployment.base_url == base_url
    assert deployment.api_key is not None and deployment.api_key.get() == KEY
    # LiteLLM's rule, and the wire's: /v1/messages is appended unless it is there.
    target = endpoint(deployment.base_url, AnthropicWire.path)
    assert target.endswith("/v1/messages") and target.count("/v1/messages") == 1
    assert not settings.warnings


def test_litellm_bare_claude_names_go_to_anthropic() -> None:
    settings = parse(litellm("claude-3-5-haiku-20241022"), {"ANTHROPIC_API_KEY": KEY})
    deployment = settings.routes["c"].deployments[0]
    assert (deployment.provider, deployment.model) == ("anthropic", "claude-3-5-haiku-20241022")


def test_litellm_anthropic_needs_its_key() -> None:
    message = error(litellm("anthropic/claude-sonnet-4-5"), origin="litellm.yaml")
    assert "ANTHROPIC_API_KEY is not set" in message
    assert message.startswith("litellm.yaml line 3: model_list[0].litellm_params")
