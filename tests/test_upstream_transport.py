"""How the gateway reaches its upstreams: TLS with the system's trust (``SSL_CERT_FILE``)
or a model's own ``ca_file``, and the proxies of ``HTTPS_PROXY``/``HTTP_PROXY``/
``NO_PROXY``. Against a local HTTPS upstream whose certificate the tests make
(``trustme``) and a local proxy (``tests/faults/proxy.py``), each in its own process."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
import trustme

from sluice import config
from sluice.config.proxies import proxies_from
from tests.conftest import StartGateway, upstream_config
from tests.gateway import ROOT, free_port
from tests.upstream.fixture import Upstream, read_ready_line, start_upstream, stop_process
from tests.upstream.scenarios import expected_text

KEY_ENV = {"TEST_UPSTREAM_KEY": "sk-test"}
MESSAGES: Any = [{"role": "user", "content": "Tell me a story"}]
MODEL = "normal:n=3"
UNVERIFIED = "certificate verify failed: unable to get local issuer certificate"


@dataclass
class TLS:
    ca: Path
    upstream: Upstream

    @property
    def url(self) -> str:
        """By name: the certificate is for ``localhost``."""
        return f"https://localhost:{self.upstream.port}/v1"


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TLS]:
    directory = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    ca.cert_pem.write_to_path(str(directory / "ca.pem"))
    cert.private_key_pem.write_to_path(str(directory / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(directory / "chain.pem"))
    for pem in cert.cert_chain_pems[1:]:
        pem.write_to_path(str(directory / "chain.pem"), append=True)
    args = ("--certfile", str(directory / "chain.pem"), "--keyfile", str(directory / "key.pem"))
    with start_upstream(args=args) as upstream:
        yield TLS(directory / "ca.pem", upstream)


@dataclass
class RunningProxy:
    url: str
    log: Path

    def lines(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []


def _proxy(directory: Path, auth: str | None = None) -> Iterator[RunningProxy]:
    log = directory / "proxy.log"
    command = [sys.executable, "-m", "tests.faults.proxy", "--log", str(log)]
    if auth:
        command += ["--auth", auth]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        line = read_ready_line(process, 10)
        yield RunningProxy(line.removeprefix("listening on ").strip(), log)
    finally:
        stop_process(process)


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[RunningProxy]:
    yield from _proxy(tmp_path)


def _models(tls: TLS, **entries: dict[str, Any]) -> dict[str, Any]:
    base = {"provider": "openai", "base_url": tls.url, "api_key_env": "TEST_UPSTREAM_KEY"}
    return {
        "models": {name: {**base, "model": MODEL, **entry} for name, entry in entries.items()},
        "routing": {"retries": 0, "allowed_fails": 0},
    }


def _chat(gateway: Any, model: str) -> str:
    client = openai.OpenAI(base_url=gateway.api, api_key="x", max_retries=0)
    chunks = client.chat.completions.create(model=model, messages=MESSAGES, stream=True)
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_a_models_ca_file_is_trusted_and_a_certificate_that_does_not_verify_is_a_502(
    start_gateway: StartGateway, tls: TLS
) -> None:
    config = _models(tls, trusted={"ca_file": str(tls.ca)}, untrusted={})
    gateway = start_gateway(config, env=KEY_ENV)
    assert _chat(gateway, "trusted") == expected_text(MODEL)

    client = openai.OpenAI(base_url=gateway.api, api_key="x", max_retries=0)
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="untrusted", messages=MESSAGES, stream=True)
    assert caught.value.status_code == 502
    body: Any = caught.value.body
    assert body["code"] == "upstream_tls_error"
    assert UNVERIFIED in body["message"] and "localhost" in body["message"]
    claude = anthropic.Anthropic(base_url=gateway.url, api_key="x", max_retries=0)
    with pytest.raises(anthropic.APIStatusError) as refused:
        claude.messages.create(model="untrusted", max_tokens=10, messages=MESSAGES)
    assert refused.value.status_code == 502
    assert UNVERIFIED in str(refused.value.body)
    rows = gateway.wait_records(3)
    failed = [r for r in rows if r["model"] == "untrusted"]
    assert [r["error_type"] for r in failed] == ["UpstreamTLSError"] * 2
    assert all(UNVERIFIED in r["error"] for r in failed)


def test_ssl_cert_file_is_the_system_trust(start_gateway: StartGateway, tls: TLS) -> None:
    gateway = start_gateway(_models(tls, plain={}), env={**KEY_ENV, "SSL_CERT_FILE": str(tls.ca)})
    assert _chat(gateway, "plain") == expected_text(MODEL)


def test_https_proxy_tunnels_with_connect(
    start_gateway: StartGateway, tls: TLS, proxy: RunningProxy
) -> None:
    env = {**KEY_ENV, "HTTPS_PROXY": proxy.url, "NO_PROXY": ""}
    gateway = start_gateway(_models(tls, trusted={"ca_file": str(tls.ca)}), env=env)
    assert _chat(gateway, "trusted") == expected_text(MODEL)
    assert _chat(gateway, "trusted") == expected_text(MODEL)
    # One tunnel, kept alive in the pool for the second request.
    assert proxy.lines() == [f"CONNECT localhost:{tls.upstream.port} HTTP/1.1"]


def test_http_proxy_gets_the_absolute_form(
    start_gateway: StartGateway, upstream: Upstream, proxy: RunningProxy
) -> None:
    env = {**KEY_ENV, "http_proxy": proxy.url}
    gateway = start_gateway(upstream_config(upstream.url, routing={"retries": 0}), env=env)
    assert _chat(gateway, MODEL) == expected_text(MODEL)
    assert _chat(gateway, MODEL) == expected_text(MODEL)  # a second request, a new connection
    target = f"POST {upstream.url}/chat/completions HTTP/1.1"
    assert proxy.lines() == [target, target]


def test_no_proxy_goes_direct_and_a_proxy_that_is_down_is_named(
    start_gateway: StartGateway, upstream: Upstream
) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    config = upstream_config(upstream.url, routing={"retries": 0, "allowed_fails": 0})
    direct = start_gateway(
        config, env={**KEY_ENV, "HTTP_PROXY": down, "NO_PROXY": "localhost,127.0.0.0/8"}
    )
    assert _chat(direct, MODEL) == expected_text(MODEL)
    proxied = start_gateway(config, env={**KEY_ENV, "HTTP_PROXY": down, "NO_PROXY": "example.com"})
    client = openai.OpenAI(base_url=proxied.api, api_key="x", max_retries=0)
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert caught.value.status_code == 503
    assert f"the proxy {down.removeprefix('http://')}" in str(caught.value.body)


def test_proxy_credentials_are_sent_and_never_shown(
    start_gateway: StartGateway, tls: TLS, tmp_path: Path
) -> None:
    for running in _proxy(tmp_path, auth="sluice:pr0xy-s3cret"):
        address = running.url.removeprefix("http://")
        config = _models(tls, trusted={"ca_file": str(tls.ca)})
        good = {**KEY_ENV, "HTTPS_PROXY": f"http://sluice:pr0xy-s3cret@{address}"}
        gateway = start_gateway(config, env=good)
        assert _chat(gateway, "trusted") == expected_text(MODEL)
        bad = {**KEY_ENV, "HTTPS_PROXY": f"http://sluice:wrong-s3cret@{address}"}
        refused = start_gateway(config, env=bad)
        client = openai.OpenAI(base_url=refused.api, api_key="x", max_retries=0)
        with pytest.raises(openai.APIStatusError) as caught:
            client.chat.completions.create(model="trusted", messages=MESSAGES)
        assert caught.value.status_code == 503
        assert "407 Proxy Authentication Required" in str(caught.value.body)
        for each in (gateway, refused):
            each.stop()
            assert "s3cret" not in each.log()
            assert all("s3cret" not in str(r) for r in each.records())


def test_a_ca_file_that_cannot_be_read_stops_the_start(tmp_path: Path) -> None:
    text = (
        "models:\n  m:\n    provider: openai\n    base_url: https://x.test/v1\n"
        f"    ca_file: {tmp_path}/none.pem\n"
    )
    with pytest.raises(config.ConfigError, match=r"line 5: models\.m\.ca_file: cannot load"):
        config.parse(text, {})


@pytest.mark.parametrize(
    ("no_proxy", "host", "port", "proxied"),
    [
        ("", "api.openai.com", 443, True),
        ("*", "api.openai.com", 443, False),
        ("openai.com", "api.openai.com", 443, False),
        (".openai.com", "api.openai.com", 443, False),
        ("*.openai.com", "openai.com", 443, False),
        ("penai.com", "api.openai.com", 443, True),
        ("api.openai.com:8443", "api.openai.com", 443, True),
        ("api.openai.com:443", "api.openai.com", 443, False),
        ("10.0.0.0/8, localhost", "10.1.2.3", 80, False),
        ("10.0.0.0/8", "11.1.2.3", 80, True),
        ("::1", "::1", 80, False),
        ("[::1]:8080", "::1", 8080, False),
        ("127.0.0.1", "127.0.0.1", 80, False),
    ],
)
def test_no_proxy_matching(no_proxy: str, host: str, port: int, proxied: bool) -> None:
    env = {"HTTP_PROXY": "http://proxy:3128", "HTTPS_PROXY": "proxy:3128", "NO_PROXY": no_proxy}
    proxies = proxies_from(env)
    for scheme in ("http", "https"):
        found = proxies.for_origin(scheme, host, port)
        assert (found is not None) is proxied
        assert found is None or found.address == "proxy:3128"


def test_proxy_variables_are_checked_and_never_shown() -> None:
    lower_wins = proxies_from({"HTTPS_PROXY": "http://a:1", "https_proxy": "http://b:2"})
    assert lower_wins.https is not None and lower_wins.https.address == "b:2"
    with pytest.raises(config.ConfigError, match="only http:// proxies") as caught:
        proxies_from({"HTTPS_PROXY": "socks5://user:s3cret@proxy:1080"})
    assert "s3cret" not in str(caught.value)
    secret = proxies_from({"HTTP_PROXY": "http://user:s3cret@proxy:3128"})
    assert "s3cret" not in repr(secret)
    every = proxies_from({"ALL_PROXY": "http://all:1", "http_proxy": "http://web:2"})
    assert every.http is not None and every.http.address == "web:2"
    assert every.https is not None and every.https.address == "all:1"
