"""Settings from YAML, the environment and flags. Every test passes ``env`` explicitly."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from sluice import config
from sluice.config import (
    OPENAI_DEFAULT_BASE_URL,
    ConfigError,
    Deployment,
    Secret,
    SimulatorSettings,
    Timeouts,
)

KEY = "sk-test-0123456789-do-not-print"


def parse(text: str, env: dict[str, str] | None = None) -> config.Settings:
    return config.parse(text, env or {}, origin="sluice.yaml")


def error(text: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        parse(text, env)
    return str(info.value)


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "sluice.yaml"
    path.write_text(text, encoding="utf-8")
    return str(path)


# -- Defaults ---------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "\n", "# only a comment\n", "---\n", "~\n"])
def test_no_key_means_one_simulator_for_every_name(text: str) -> None:
    settings = parse(text)
    assert settings.models == {"*": Deployment(name="*", provider="simulator")}
    assert settings.uses_simulator
    assert settings.resolve("anything") is settings.models["*"]
    assert (settings.host, settings.port, settings.workers) == ("127.0.0.1", 8000, 1)
    assert settings.default_model == "gpt-4o-mini"
    assert settings.log_level == "info"
    assert settings.source == "sluice.yaml"


def test_load_without_a_file_uses_the_defaults() -> None:
    settings = config.load(env={})
    assert settings.source == "defaults"
    assert settings.models["*"].provider == "simulator"


def test_an_openai_key_passes_every_name_to_openai() -> None:
    settings = config.load(env={"OPENAI_API_KEY": KEY})
    star = settings.models["*"]
    assert (star.provider, star.base_url) == ("openai", OPENAI_DEFAULT_BASE_URL)
    assert star.api_key is not None and star.api_key.get() == KEY
    assert not settings.uses_simulator
    assert settings.resolve("gpt-4o") is star
    assert star.upstream_model("gpt-4o") == "gpt-4o"


def test_openai_base_url_is_honoured_without_its_trailing_slash() -> None:
    env = {"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": "http://127.0.0.1:8080/v1/"}
    assert config.load(env=env).models["*"].base_url == "http://127.0.0.1:8080/v1"


def test_openai_base_url_must_be_http() -> None:
    with pytest.raises(ConfigError, match=r"OPENAI_BASE_URL: expected an http\(s\) URL"):
        config.load(env={"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": "127.0.0.1:8080"})


def test_environment_defaults() -> None:
    env = {"SLUICE_DEFAULT_MODEL": "llama", "SLUICE_DB": "/tmp/x.db"}
    settings = parse("", env)
    assert (settings.default_model, settings.db_path) == ("llama", "/tmp/x.db")


# -- The models section -----------------------------------------------------------------

FULL = """\
timeouts:
  connect: 3
models:
  gpt-4o:
    provider: openai
    model: gpt-4o-2024-08-06
    base_url: https://example.test/v1/
    api_key_env: EXAMPLE_KEY
    timeouts:
      first_token: 30
      idle: 5.5
    headers:
      X-Team: research
      X-Number: 7
  sim:
    provider: simulator
    seed: 42
    ttft: 0.01
    tokens_per_second: 1000
    max_tokens: 20
default_model: sim
"""


def test_every_model_key() -> None:
    settings = parse(FULL, {"EXAMPLE_KEY": KEY})
    gpt = settings.models["gpt-4o"]
    assert gpt.provider == "openai"
    assert gpt.upstream_model("gpt-4o") == "gpt-4o-2024-08-06"
    assert gpt.base_url == "https://example.test/v1"
    assert gpt.api_key is not None and gpt.api_key.get() == KEY
    assert gpt.timeouts == Timeouts(connect=3, first_token=30, idle=5.5, total=900)
    assert gpt.headers == {"X-Team": "research", "X-Number": "7"}
    sim = settings.models["sim"]
    assert sim.provider == "simulator"
    assert sim.api_key is None
    assert sim.simulator == SimulatorSettings(
        seed=42, ttft=0.01, tokens_per_second=1000, max_tokens=20
    )
    assert sim.timeouts == Timeouts(connect=3)
    assert settings.default_model == "sim"
    assert settings.resolve("other") is None
    assert settings.uses_simulator


def test_an_openai_model_takes_the_default_key_and_base_url() -> None:
    env = {"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": "http://proxy.test/v1/"}
    gpt = parse("models:\n  gpt:\n", env).models["gpt"]
    assert gpt.provider == "openai"
    assert gpt.base_url == "http://proxy.test/v1"
    assert gpt.api_key is not None and gpt.api_key.get() == KEY
    # Without a key an OpenAI-compatible upstream may still need none (a local server).
    assert parse("models:\n  gpt: {}\n").models["gpt"].api_key is None


def test_default_model_falls_back_to_the_first_model() -> None:
    text = "default_model: missing\nmodels:\n  b: {provider: simulator}\n  a: {}\n"
    assert parse(text).default_model == "b"
    # With a catch-all, any name is servable.
    assert parse("default_model: x\nmodels:\n  '*': {}\n").default_model == "x"


def test_timeouts_are_inherited_then_overridden_per_model() -> None:
    text = """\
timeouts:
  connect: 1
  idle: 2
models:
  a:
    timeouts:
      idle: 7
      total: 60
  b: {}
"""
    settings = parse(text)
    assert settings.models["a"].timeouts == Timeouts(connect=1, first_token=120, idle=7, total=60)
    assert settings.models["b"].timeouts == Timeouts(connect=1, first_token=120, idle=2, total=900)
    # The default deployment inherits them too.
    star = parse("timeouts:\n  total: 30\n").models["*"]
    assert star.timeouts == Timeouts(total=30)


def test_top_level_and_record_keys() -> None:
    text = """\
host: 0.0.0.0
port: 9000
workers: 4
keepalive_interval: 2.5
max_body_bytes: 1024
log_level: DEBUG
record:
  path: /var/lib/sluice.db
  store_content: true
  batch_size: 10
  flush_interval: 0.1
"""
    settings = parse(text)
    assert (settings.host, settings.port, settings.workers) == ("0.0.0.0", 9000, 4)
    assert (settings.keepalive_interval, settings.max_body_bytes) == (2.5, 1024)
    assert settings.log_level == "debug"
    assert settings.db_path == "/var/lib/sluice.db"
    assert settings.store_content is True
    assert (settings.record_batch_size, settings.record_flush_interval) == (10, 0.1)


def test_a_postgresql_url_chooses_postgresql_and_never_shows_its_password() -> None:
    url = "postgresql://sluice:pg-secret@db.internal:5432/sluice"
    settings = parse(
        f"record:\n  url: {url}\n  spill_dir: /var/spill\n  max_pending: 50\n",
        {"SLUICE_DB": "ignored.db"},
    )
    assert settings.database == url and settings.database_url is not None
    assert (settings.spill_dir, settings.record_max_pending) == ("/var/spill", 50)
    assert "pg-secret" not in repr(settings)
    from_env = parse("{}\n", {"SLUICE_DATABASE_URL": url, "SLUICE_SPILL_DIR": "/s"})
    assert from_env.database == url and from_env.spill_dir == "/s"
    assert parse("{}\n", {"SLUICE_DB": "x.db"}).database == "x.db"
    for text, env in (
        ("record:\n  url: mysql://u:pg-secret@h/db\n", {}),
        ("{}\n", {"SLUICE_DATABASE_URL": "redis://:pg-secret@h/0"}),
    ):
        with pytest.raises(config.ConfigError) as failed:
            parse(text, env)
        assert "postgresql://" in str(failed.value) and "pg-secret" not in str(failed.value)


# -- Errors say what is wrong and where -------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line", "parts"),
    [
        ("port: 1\nprot: 2\n", 2, ["top level", "unknown key(s) 'prot'", "known: "]),
        (
            "models:\n  gpt:\n    provider: openai\n    modle: x\n",
            4,
            ["models.gpt", "unknown key(s) 'modle'", "api_key_env"],
        ),
        (
            "models:\n  gpt:\n    timeouts:\n      idle: 1\n      soon: 2\n",
            5,
            ["models.gpt.timeouts", "'soon'"],
        ),
        ("record:\n  size: 1\n", 2, ["record", "'size'"]),
        ("port: eighty\n", 1, ["port", "expected an integer from 0 to 65535", "'eighty'"]),
        ("port: 65536\n", 1, ["port", "65536"]),
        ("workers: 0\n", 1, ["workers", "expected an integer >= 1"]),
        ("keepalive_interval: true\n", 1, ["keepalive_interval", "non-negative number"]),
        ("keepalive_interval: .nan\n", 1, ["keepalive_interval", "nan"]),
        ("host: [a]\n", 1, ["host", "expected a string"]),
        ("log_level: verbose\n", 1, ["log_level", "'verbose'", "debug"]),
        ("models: [gpt]\n", 1, ["models", "expected a mapping, got list"]),
        ("models:\n  gpt: 3\n", 2, ["models.gpt", "expected a mapping, got int"]),
        ("record:\n  store_content: yes please\n", 2, ["record.store_content", "true or false"]),
        (
            "models:\n  a: {}\n  b:\n    timeouts:\n      idle: soon\n",
            5,
            ["models.b.timeouts.idle", "non-negative number", "'soon'"],
        ),
        ("models:\n  a:\n    max_tokens: 0\n", 3, ["models.a.max_tokens", ">= 1"]),
        ("models:\n  a:\n    headers: [x]\n", 3, ["models.a.headers", "mapping"]),
        (
            "models:\n  gpt:\n    provider: opneai\n",
            3,
            [
                "models.gpt.provider",
                "unknown provider 'opneai'",
                "openai, openai-responses, anthropic, simulator",
            ],
        ),
        (
            "models:\n  gpt:\n    api_key_env: MY_KEY\n",
            3,
            ["models.gpt.api_key_env", "MY_KEY is not set"],
        ),
        (
            "models:\n  gpt:\n    base_url: ftp://example.test\n",
            3,
            ["models.gpt.base_url", "http(s) URL", "'ftp://example.test'"],
        ),
    ],
)
def test_errors_name_the_key_and_its_line(text: str, line: int, parts: list[str]) -> None:
    message = error(text)
    assert message.startswith(f"sluice.yaml line {line}: ")
    for part in parts:
        assert part in message


def test_the_line_is_the_nested_key_not_an_earlier_one_with_its_name() -> None:
    text = """\
timeouts:
  idle: 1
models:
  a:
    provider: openai
    timeouts:
      idle: 1
  b:
    provider: {provider}
    timeouts:
      idle: {idle}
"""
    message = error(text.format(provider="nope", idle=1))
    assert message.startswith("sluice.yaml line 9: models.b.provider: ")
    message = error(text.format(provider="simulator", idle=-1))
    assert message.startswith("sluice.yaml line 11: models.b.timeouts.idle: ")


def test_a_key_overriding_a_merged_one_is_the_one_reported() -> None:
    text = """\
models:
  a: &base
    provider: openai
  b:
    <<: *base
    provider: nope
"""
    assert error(text).startswith("sluice.yaml line 6: models.b.provider: ")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "port: 1\nhost: a\nport: 2\n",
            "sluice.yaml line 3: duplicate key 'port' (first at line 1)",
        ),
        (
            "models:\n  a:\n    provider: openai\n    api_key_env: K\n    provider: simulator\n",
            "sluice.yaml line 5: duplicate key 'provider' (first at line 3)",
        ),
        (
            "models:\n  a: {}\n  'a': {}\n",
            "sluice.yaml line 3: duplicate key 'a' (first at line 2)",
        ),
    ],
)
def test_a_key_written_twice_names_both_lines(text: str, expected: str) -> None:
    assert error(text).startswith(expected)


def test_a_merged_key_may_be_overridden_once() -> None:
    text = "models:\n  a: &base\n    provider: openai\n  b:\n    <<: *base\n    provider: nope\n"
    assert "duplicate" not in error(text)


def test_keys_that_are_not_strings() -> None:
    message = error("1: one\nnull: none\nport: 1\n")
    assert message.startswith("sluice.yaml line 1: top level: unknown key(s) '1', 'None'")


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("port: 1\nmodels: [\n", "line 3, column 1"),
        ("port: 1\nhost: a: b\n", "line 2, column 8"),
        ("port: 1\n---\nport: 2\n", "line 2"),
        ("models:\n\t- x\n", "line 2"),
    ],
)
def test_invalid_yaml_names_the_line(text: str, where: str) -> None:
    message = error(text)
    assert message.startswith("sluice.yaml: not valid YAML at ")
    assert where in message


def test_a_document_that_is_not_a_mapping() -> None:
    assert error("- port\n") == "sluice.yaml: expected a mapping at the top, got list"


# -- Secrets ----------------------------------------------------------------------------


def test_a_secret_never_shows_its_value(caplog: pytest.LogCaptureFixture) -> None:
    env = {"OPENAI_API_KEY": KEY, "OTHER": KEY + "-2"}
    settings = parse("models:\n  a: {}\n  b:\n    api_key_env: OTHER\n", env)
    defaults = config.load(env=env)
    for shown in (settings, defaults):
        for text in (repr(shown), str(shown), f"{shown}", f"{shown!r}", f"{shown.models}"):
            assert KEY not in text
    secret = Secret(KEY)
    for text in (repr(secret), str(secret), f"{secret}", f"{secret!r}", f"{[secret]}"):
        assert KEY not in text
    assert secret.get() == KEY
    assert secret and not Secret("")
    with caplog.at_level(logging.INFO):
        logging.getLogger("sluice.test").info("settings: %s %r", settings, defaults)
    assert "settings: Settings(" in caplog.text
    assert KEY not in caplog.text


# -- load(): file, environment, flags ---------------------------------------------------


def test_load_reads_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "port: 9000\n")
    settings = config.load(path, env={})
    assert (settings.port, settings.source) == (9000, path)
    # SLUICE_CONFIG names the file when no path is given.
    assert config.load(env={"SLUICE_CONFIG": path}).port == 9000


def test_flags_override_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "host: 0.0.0.0\nport: 9000\nworkers: 2\n")
    settings = config.load(path, env={}, host="::1", port=9100, workers=None)
    assert (settings.host, settings.port, settings.workers) == ("::1", 9100, 2)


def test_the_environment_overrides_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "host: 0.0.0.0\nport: 9000\nworkers: 2\n")
    env = {"SLUICE_HOST": "10.0.0.1", "SLUICE_PORT": "9001", "SLUICE_WORKERS": "3"}
    settings = config.load(path, env=env)
    assert (settings.host, settings.port, settings.workers) == ("10.0.0.1", 9001, 3)
    # The CLI passes every flag, None when not given: the environment still applies.
    settings = config.load(path, env=env, host=None, port=None, workers=None)
    assert (settings.host, settings.port, settings.workers) == ("10.0.0.1", 9001, 3)
    # A flag given beats the environment.
    assert config.load(path, env=env, port=9002).port == 9002


@pytest.mark.parametrize(
    ("env", "parts"),
    [
        ({"SLUICE_PORT": "http"}, ["SLUICE_PORT", "expected an integer", "'http'"]),
        ({"SLUICE_PORT": "70000"}, ["SLUICE_PORT", "from 0 to 65535", "70000"]),
        ({"SLUICE_WORKERS": "0"}, ["SLUICE_WORKERS", ">= 1"]),
    ],
)
def test_bad_environment_values(env: dict[str, str], parts: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        config.load(env=env)
    for part in parts:
        assert part in str(info.value)


def test_bad_flag_values() -> None:
    with pytest.raises(ConfigError, match="port: expected an integer from 0 to 65535"):
        config.load(env={}, port=-1)
    with pytest.raises(ConfigError, match="workers: expected an integer >= 1"):
        config.load(env={}, workers=0)


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    path = str(tmp_path / "nowhere.yaml")
    with pytest.raises(ConfigError) as info:
        config.load(path, env={})
    assert str(info.value).startswith(f"{path}: cannot read the config file: ")
    with pytest.raises(ConfigError, match=re.escape(path)):
        config.load(env={"SLUICE_CONFIG": path})


def test_a_file_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("host: caf\u00e9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=re.escape(f"{path}: the config file is not UTF-8")):
        config.load(str(path), env={})


def test_errors_in_a_file_name_the_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "port: 1\nmodels:\n  gpt:\n    provider: x\n")
    with pytest.raises(ConfigError) as info:
        config.load(path, env={})
    assert str(info.value).startswith(f"{path} line 4: models.gpt.provider: ")


def test_openai_key_is_not_sent_to_a_base_url_written_in_the_config() -> None:
    env = {"OPENAI_API_KEY": "sk-secret"}
    text = (
        "models:\n"
        "  local: {provider: openai, base_url: 'http://127.0.0.1:9/v1'}\n"
        "  openai: {provider: openai, base_url: 'https://api.openai.com/v1'}\n"
        "  default: {provider: openai}\n"
    )
    settings = config.parse(text, env)
    assert settings.models["local"].api_key is None
    for name in ("openai", "default"):
        key = settings.models[name].api_key
        assert key is not None and key.get() == "sk-secret"


def test_generations_section() -> None:
    settings = parse("generations:\n  retention: 30\n  per_key: 5\n  lease: 2.5\n")
    assert settings.generations.retention == 30.0
    assert settings.generations.per_key == 5 and settings.generations.lease == 2.5
    assert parse("{}\n").generations.window == 300.0
    assert "generations.lease" in error("generations:\n  lease: 0\n")
    assert "generations.per_key" in error("generations:\n  per_key: 0\n")
    assert "'ttl'" in error("generations:\n  ttl: 3\n")
