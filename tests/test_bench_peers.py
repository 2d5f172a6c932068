"""The bench's third-party peers: what they ask for, checked without installing them."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from bench.peers import peers
from bench.peers.litellm import REQUIREMENT, LiteLLM, config_text, model_name
from bench.peers.portkey import Portkey
from bench.peers.seed import BUNDLE, SOURCE, SeedWorkerd, SeedWrangler

SCENARIOS = [
    "burst:n=200",
    "paced:n=64,interval=0.02",
    "slow_first:n=10,delay=5.0",
    "error_status:status=429,retry_after=2.0",
    "normal",
]
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


def litellm_route(config: dict[str, Any], model: str) -> str:
    """The upstream model LiteLLM's wildcard router picks for ``model``.

    As its PatternMatchRouter does: each ``*`` of a route's model_name becomes a
    group, the longest pattern that matches wins, and the groups replace the ``*``
    of the route's litellm_params model one by one.
    """
    routes = {
        re.escape(r["model_name"]).replace(r"\*", "(.*)"): r["litellm_params"]["model"]
        for r in config["model_list"]
    }
    for pattern in sorted(routes, key=len, reverse=True):
        match = re.match(pattern, model)
        if match:
            target = routes[pattern]
            for segment in match.groups():
                target = target.replace("*", segment, 1)
            return str(target)
    raise AssertionError(f"no route for {model!r}")


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_litellm_routes_the_scenario_to_the_upstream_unchanged(scenario: str) -> None:
    method, path, body, headers = LiteLLM().request(scenario)
    assert (method, path) == ("POST", "/v1/chat/completions")
    assert headers["content-type"] == "application/json"
    payload = json.loads(body)
    assert payload["stream"] is True
    # A comma would make LiteLLM fan the request out to several models.
    assert "," not in payload["model"]
    config = json.loads(config_text(BASE))  # JSON is YAML
    assert litellm_route(config, payload["model"]) == f"openai/{scenario}"
    for route in config["model_list"]:
        assert route["litellm_params"]["api_base"] == BASE


def test_litellm_config_has_no_extra_work() -> None:
    config = json.loads(config_text(BASE))
    assert config["litellm_settings"]["drop_params"] is True
    assert set(config["general_settings"]) == {"dangerously_permit_weak_or_unset_master_key"}
    assert re.fullmatch(r"litellm\[proxy\]==[\d.]+", REQUIREMENT)


def test_litellm_refuses_what_it_cannot_route() -> None:
    with pytest.raises(ValueError):
        model_name("weird;name")
    with pytest.raises(ValueError):
        model_name("paced:" + ",".join(["n=1"] * 20))


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
