"""The bench's third-party peers: what they ask for, checked without installing them."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from bench.peers import peers
from bench.peers.litellm import REQUIREMENT, LiteLLM, config_text
from bench.peers.portkey import Portkey
from bench.peers.seed import BUNDLE, SOURCE, SeedWorkerd, SeedWrangler

from tests.upstream import scenarios as sc

SCENARIOS = ["burst:n=200", "paced:n=64,interval=0.02", "slow_first:n=10,delay=5.0", "normal"]
BASE = "http://127.0.0.1:9/v1"


def test_registry_lists_every_peer_once() -> None:
    names = [peer.name for peer in peers()]
    assert names == ["litellm", "portkey", "seed-workerd", "seed-wrangler"]
    kinds = {peer.name: peer.kind for peer in peers()}
    assert kinds == {
        "litellm": "sse",
        "portkey": "sse",
        "seed-workerd": "text",
        "seed-wrangler": "text",
    }


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_litellm_request_carries_the_scenario_in_a_header(scenario: str) -> None:
    method, path, body, headers = LiteLLM().request(scenario)
    assert (method, path) == ("POST", "/v1/chat/completions")
    payload = json.loads(body)
    assert payload["stream"] is True
    # A comma would make LiteLLM fan the request out to several models.
    assert "," not in payload["model"]
    assert headers["x-upstream-scenario"] == scenario
    assert headers["content-type"] == "application/json"
    # The model alone would still name the same scenario (with default parameters).
    assert sc.parse_spec(payload["model"]).name == sc.parse_spec(scenario).name
    if "," not in scenario:
        assert payload["model"] == scenario


def test_litellm_config_routes_any_model_to_the_upstream() -> None:
    config = json.loads(config_text(BASE))  # JSON is YAML
    [route] = config["model_list"]
    assert route["model_name"] == "*"
    assert route["litellm_params"] == {"model": "openai/*", "api_base": BASE, "api_key": "sk-fake"}
    assert config["litellm_settings"]["drop_params"] is True
    assert config["general_settings"]["forward_client_headers_to_llm_api"] is True
    assert "database_url" not in config["general_settings"]
    assert re.fullmatch(r"litellm\[proxy\]==[\d.]+", REQUIREMENT)


def test_portkey_request_names_the_upstream_it_was_started_with() -> None:
    peer = Portkey()
    with pytest.raises(RuntimeError):
        peer.request("burst:n=200")
    peer.upstream_base = BASE
    for scenario in SCENARIOS:
        method, path, body, headers = peer.request(scenario)
        assert (method, path) == ("POST", "/v1/chat/completions")
        payload = json.loads(body)
        assert payload["model"] == scenario
        assert payload["stream"] is True
        assert headers["x-portkey-provider"] == "openai"
        assert headers["x-portkey-custom-host"] == BASE
        assert headers["content-type"] == "application/json"


@pytest.mark.parametrize("peer", [SeedWorkerd(), SeedWrangler()], ids=lambda p: p.name)
def test_seed_request_is_a_get_with_the_model_in_the_query(peer: SeedWorkerd) -> None:
    for scenario in SCENARIOS:
        method, path, body, headers = peer.request(scenario)
        assert (method, body, headers) == ("GET", b"", {})
        url = urlsplit(path)
        assert url.path == "/"
        assert parse_qs(url.query) == {"model": [scenario]}


def test_seed_worker_sources_fit_together() -> None:
    worker = (SOURCE / "worker.js").read_text()
    assert 'import OpenAI from "openai"' in worker
    assert "env.OPENAI_BASE_URL" in worker
    assert 'searchParams.get("model")' in worker
    capnp = (SOURCE / "workerd.capnp").read_text()
    assert f'embed "{BUNDLE}"' in capnp
    assert 'fromEnvironment = "OPENAI_BASE_URL"' in capnp
    wrangler = tomllib.loads((SOURCE / "wrangler.toml").read_text())
    assert wrangler["main"] == "worker.js"
    package = json.loads((SOURCE / "package.json").read_text())
    pins = {**package["dependencies"], **package["devDependencies"]}
    assert set(pins) == {"openai", "esbuild", "workerd", "wrangler"}
    for name, version in pins.items():
        assert re.fullmatch(r"\d+\.\d+\.\d+", version), f"{name} is not pinned: {version}"


def test_nothing_is_installed_in_an_empty_cache(tmp_path: Path) -> None:
    assert not LiteLLM().installed(tmp_path)
    assert not Portkey().installed(tmp_path)
    assert list(tmp_path.iterdir()) == []
