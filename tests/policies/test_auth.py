"""Authentication through the real gateway, with the openai SDK as the client."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from sluice import config
from sluice.config.values import Secret
from tests.conftest import StartGateway
from tests.gateway import RunningGateway, free_port
from tests.policies.keys import (
    KEY_ENV,
    MESSAGES,
    create_key,
    gateway_config,
    sluice,
    wait_records,
)


def client(gateway: RunningGateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.api, api_key=key, max_retries=0, timeout=20)


def ask(gateway: RunningGateway, key: str, model: str = "normal") -> str:
    with client(gateway, key) as sdk:
        stream = sdk.chat.completions.create(model=model, messages=MESSAGES, stream=True)
        return "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)


def test_keys_wrong_revoked_expired_and_missing(
    tmp_path: Path, start_gateway: StartGateway, upstream: Any
) -> None:
    db = tmp_path / "sluice.db"
    good = create_key(db, "good")
    revoked = create_key(db, "gone")
    assert sluice("keys", "revoke", revoked["id"], "--db", str(db)).returncode == 0
    expiring = create_key(db, "brief", "--expires", "1s")
    gateway = start_gateway(gateway_config(upstream.url, db), env=KEY_ENV)
    time.sleep(max(0.0, expiring["expires_at"] - time.time()) + 0.1)

    assert (
        ask(gateway, good["key"]) == "word0 word1 word2 word3 word4 word5 word6 word7 word8 word9"
    )

    with pytest.raises(openai.AuthenticationError) as wrong:
        ask(gateway, "sk-sluice-" + "x" * 43)
    assert wrong.value.status_code == 401
    assert wrong.value.code == "invalid_api_key"
    assert "Incorrect API key" in wrong.value.message
    with pytest.raises(openai.AuthenticationError):
        ask(gateway, "sk-proj-not-one-of-ours")

    with pytest.raises(openai.AuthenticationError) as gone:
        ask(gateway, revoked["key"])
    assert gone.value.code == "key_revoked"
    assert f"{revoked['id']} (gone) has been revoked" in gone.value.message

    with pytest.raises(openai.AuthenticationError) as late:
        ask(gateway, expiring["key"])
    assert late.value.code == "key_expired"
    assert f"{expiring['id']} (brief) expired at" in late.value.message

    missing = httpx.post(
        f"{gateway.api}/chat/completions", json={"model": "normal", "messages": MESSAGES}
    )
    assert missing.status_code == 401
    assert missing.json()["error"]["type"] == "authentication_error"
    assert missing.json()["error"]["code"] == "missing_api_key"
    not_bearer = httpx.get(f"{gateway.api}/models", headers={"authorization": good["key"]})
    assert not_bearer.status_code == 401

    rows = wait_records(db, 7)
    del rows[2]  # the key that is not ours, refused like the wrong one
    assert [(r["outcome"], r["status"], r["key_id"]) for r in rows] == [
        ("ok", 200, good["id"]),
        ("rejected", 401, None),
        ("rejected", 401, revoked["id"]),
        ("rejected", 401, expiring["id"]),
        ("rejected", 401, None),
        ("rejected", 401, None),
    ]
    assert rows[0]["model"] == "normal"
    assert rows[1]["error"].startswith("Incorrect API key")
    assert "revoked" in rows[2]["error"]
    assert "expired" in rows[3]["error"]
    assert "didn't provide an API key" in rows[4]["error"]
    assert all(r["cost_usd"] is None for r in rows[1:])


def test_probes_stay_open(tmp_path: Path, start_gateway: StartGateway, upstream: Any) -> None:
    db = tmp_path / "sluice.db"
    create_key(db, "someone")
    gateway = start_gateway(gateway_config(upstream.url, db), env=KEY_ENV)
    assert httpx.get(f"{gateway.url}/healthz").status_code == 200
    assert httpx.get(f"{gateway.url}/readyz").status_code == 200
    # Every other route needs a key, even one that does not exist.
    assert httpx.get(f"{gateway.url}/v1/nothing-here").status_code == 401
    assert httpx.get(f"{gateway.url}/").status_code == 401


def test_a_revoked_key_is_refused_within_the_cache_ttl(
    tmp_path: Path, start_gateway: StartGateway, upstream: Any
) -> None:
    db = tmp_path / "sluice.db"
    key = create_key(db, "soon revoked")
    gateway = start_gateway(gateway_config(upstream.url, db), env=KEY_ENV)
    assert ask(gateway, key["key"])
    assert sluice("keys", "revoke", key["id"], "--db", str(db)).returncode == 0
    revoked_at = time.monotonic()
    deadline = revoked_at + 10
    while True:
        try:
            ask(gateway, key["key"])
        except openai.AuthenticationError as exc:
            assert exc.code == "key_revoked"
            break
        assert time.monotonic() < deadline, "the revoked key still works"
        time.sleep(0.05)
    # Within the configured cache_ttl (0.2 s), with room for a slow machine.
    assert time.monotonic() - revoked_at < 3


def test_a_key_limited_to_some_models(
    tmp_path: Path, start_gateway: StartGateway, upstream: Any
) -> None:
    db = tmp_path / "sluice.db"
    key = create_key(db, "narrow", "--models", "normal,paced:n=3")
    upstream.reset()
    gateway = start_gateway(gateway_config(upstream.url, db), env=KEY_ENV)
    assert ask(gateway, key["key"], "normal")
    assert ask(gateway, key["key"], "paced:n=3") == "word0 word1 word2"
    with pytest.raises(openai.PermissionDeniedError) as denied:
        ask(gateway, key["key"], "paced:n=4")
    assert denied.value.status_code == 403
    assert denied.value.code == "model_not_allowed"
    assert "may not use the model 'paced:n=4'" in denied.value.message

    with client(gateway, key["key"]) as sdk:
        assert [m.id for m in sdk.models.list()] == ["normal", "paced:n=3"]
        assert sdk.models.retrieve("normal").id == "normal"
        with pytest.raises(openai.NotFoundError):
            sdk.models.retrieve("paced:n=4")

    rows = wait_records(db, 6)
    chats = [r for r in rows if r["route"] == "/v1/chat/completions"]
    assert [(r["model"], r["outcome"], r["status"]) for r in chats] == [
        ("normal", "ok", 200),
        ("paced:n=3", "ok", 200),
        ("paced:n=4", "rejected", 403),
    ]
    assert chats[2]["key_id"] == key["id"]
    assert "may not use the model" in chats[2]["error"]
    assert upstream_saw_no(upstream, "paced:n=4")


def upstream_saw_no(upstream: Any, model: str) -> bool:
    return all((r["body"] or {}).get("model") != model for r in upstream.log()["requests"])


def test_the_master_key(tmp_path: Path, start_gateway: StartGateway, upstream: Any) -> None:
    db = tmp_path / "sluice.db"
    master = "sk-master-" + "m" * 40
    gateway = start_gateway(
        gateway_config(upstream.url, db, models=_two_models(upstream.url)),
        env={**KEY_ENV, "SLUICE_MASTER_KEY": master},
    )
    assert ask(gateway, master, "normal")
    with client(gateway, master) as sdk:
        assert sorted(m.id for m in sdk.models.list()) == ["normal", "paced"]
    with pytest.raises(openai.AuthenticationError):
        ask(gateway, master + "x")
    assert httpx.get(f"{gateway.api}/models").status_code == 401
    rows = wait_records(db, 4)
    assert [(r["route"], r["status"], r["key_id"]) for r in rows] == [
        ("/v1/chat/completions", 200, "master"),
        ("/v1/models", 200, "master"),
        ("/v1/chat/completions", 401, None),
        ("/v1/models", 401, None),
    ]
    # The master key is never logged.
    assert master not in gateway.log()


def _two_models(upstream_url: str) -> dict[str, Any]:
    deployment = {
        "provider": "openai",
        "base_url": upstream_url,
        "api_key_env": "TEST_UPSTREAM_KEY",
    }
    return {"normal": deployment, "paced": deployment}


def test_auth_is_off_without_keys(
    tmp_path: Path, start_gateway: StartGateway, upstream: Any
) -> None:
    # On loopback with no key and no master key, any key (the SDK always sends one) works.
    db = tmp_path / "sluice.db"
    gateway = start_gateway(gateway_config(upstream.url, db), env=KEY_ENV)
    assert ask(gateway, "anything")
    assert httpx.get(f"{gateway.api}/models").status_code == 200
    assert [r["key_id"] for r in wait_records(db, 2)] == [None, None]


def test_public_seed_route(tmp_path: Path, start_gateway: StartGateway, upstream: Any) -> None:
    db = tmp_path / "sluice.db"
    key = create_key(db, "api user")
    gateway = start_gateway(
        gateway_config(upstream.url, db, auth={"public_seed": True}), env=KEY_ENV
    )
    page = httpx.get(f"{gateway.url}/", params={"prompt": "hi", "model": "normal"})
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/plain")
    assert page.text == "word0 word1 word2 word3 word4 word5 word6 word7 word8 word9"
    # A key still counts when one is sent; a bad one is still refused.
    with_key = httpx.get(
        f"{gateway.url}/",
        params={"model": "normal"},
        headers={"authorization": f"Bearer {key['key']}"},
    )
    assert with_key.status_code == 200
    bad = httpx.get(f"{gateway.url}/", headers={"authorization": "Bearer sk-wrong"})
    assert bad.status_code == 401 and bad.text.startswith("error: Incorrect API key")
    # The API still needs a key.
    assert httpx.get(f"{gateway.api}/models").status_code == 401
    assert httpx.post(f"{gateway.url}/", params={"model": "normal"}).status_code == 401
    rows = wait_records(db, 5)
    assert [(r["route"], r["status"], r["key_id"]) for r in rows] == [
        ("/", 200, None),
        ("/", 200, key["id"]),
        ("/", 401, None),
        ("/v1/models", 401, None),
        ("/", 401, None),
    ]


def test_the_seed_route_needs_a_key_unless_public(
    tmp_path: Path, start_gateway: StartGateway, upstream: Any
) -> None:
    db = tmp_path / "sluice.db"
    create_key(db, "someone")
    gateway = start_gateway(gateway_config(upstream.url, db), env=KEY_ENV)
    page = httpx.get(f"{gateway.url}/", params={"model": "normal"})
    assert page.status_code == 401
    assert page.text.startswith("error: You didn't provide an API key")


# -- the safe default ---------------------------------------------------------------------


def _serve(db: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "sluice", "serve", "--port", str(free_port()), *args],
        env={"PATH": "/usr/bin:/bin", "SLUICE_DB": str(db), **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "env"])
def test_refuses_a_public_address_without_keys(tmp_path: Path, host: str) -> None:
    db = tmp_path / "sluice.db"
    if host == "env":
        host = "0.0.0.0"
        process = _serve(db, env={"SLUICE_HOST": host})
    else:
        process = _serve(db, "--host", host)
    try:
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 2
    assert f"refusing to serve on {host}" in stderr
    assert "--insecure" in stderr and "sluice keys create" in stderr
    assert not db.exists()  # nothing was created by looking


@pytest.mark.parametrize("how", ["--insecure", "config insecure", "a key exists", "master key"])
def test_serves_a_public_address_when_safe_or_told(
    tmp_path: Path, start_gateway: StartGateway, upstream: Any, how: str
) -> None:
    db = tmp_path / "sluice.db"
    extra: dict[str, Any] = {}
    env = dict(KEY_ENV)
    args: tuple[str, ...] = ("--host", "0.0.0.0")
    if how == "--insecure":
        args += ("--insecure",)
    elif how == "config insecure":
        extra["insecure"] = True
    elif how == "a key exists":
        create_key(db, "k")
    else:
        env["SLUICE_MASTER_KEY"] = "sk-master-" + "m" * 40
    gateway = start_gateway(gateway_config(upstream.url, db, **extra), env=env, args=args)
    status = httpx.get(f"{gateway.api}/models").status_code
    assert status == (401 if how in ("a key exists", "master key") else 200)


def test_a_loopback_name_is_fine_without_keys(tmp_path: Path) -> None:
    db = tmp_path / "sluice.db"
    process = _serve(db, "--host", "localhost")
    try:
        time.sleep(1.5)
        assert process.poll() is None, process.communicate()[1]
    finally:
        process.terminate()
        process.communicate(timeout=15)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.7"])
def test_the_app_refuses_to_start_for_a_public_address_without_keys(
    tmp_path: Path, host: str
) -> None:
    """The check lives where the app is built, so an ASGI server given the app (not
    only ``sluice serve``) cannot open it to the network without authentication."""
    from sluice.app import Gateway

    db = str(tmp_path / "sluice.db")
    gateway = Gateway(config.Settings(host=host, db_path=db))
    with pytest.raises(config.ConfigError, match=f"refusing to serve on {re.escape(host)}"):
        asyncio.run(gateway.startup())
    assert not Path(db).exists()

    master = config.Settings(host=host, db_path=db, master_key=Secret("sk-master-" + "m" * 40))
    told = config.Settings(host=host, db_path=db, insecure=True)
    loopback = config.Settings(host="127.0.0.1", db_path=db)
    for settings in (master, told, loopback):
        gateway = Gateway(settings)

        async def start_and_stop(gateway: Gateway = gateway) -> None:
            await gateway.startup()
            await gateway.shutdown()

        asyncio.run(start_and_stop())


def test_an_asgi_server_given_the_factory_refuses_a_public_address(tmp_path: Path) -> None:
    """``uvicorn sluice.app:create_app --factory`` with ``SLUICE_HOST`` public and no
    key: the application's start-up fails, and the server exits."""
    env = {"PATH": "/usr/bin:/bin", "SLUICE_DB": str(tmp_path / "s.db"), "SLUICE_HOST": "0.0.0.0"}
    port = str(free_port())
    done = subprocess.run(
        [sys.executable, "-m", "uvicorn", "sluice.app:create_app", "--factory", "--port", port],
        env={**env, "PYTHONPATH": os.environ.get("PYTHONPATH", "")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "refusing to serve on 0.0.0.0" in done.stderr


def _outward_address() -> str | None:
    """This machine's address on its network (no packet is sent), or None."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))
        except OSError:
            return None
        address = str(probe.getsockname()[0])
    return None if address.startswith("127.") else address


def test_without_keys_a_request_on_a_public_address_is_refused(tmp_path: Path) -> None:
    """An ASGI server told to listen everywhere while the settings say loopback (no
    SLUICE_HOST): the start-up check cannot see it, each request's address can."""
    outward = _outward_address()
    if outward is None:
        pytest.skip("this machine has no address besides loopback")
    port = free_port()
    env = {"PATH": "/usr/bin:/bin", "SLUICE_DB": str(tmp_path / "s.db")}
    env["PYTHONPATH"] = os.environ.get("PYTHONPATH", "")
    command = [sys.executable, "-m", "uvicorn", "sluice.app:create_app", "--factory"]
    command += ["--host", "0.0.0.0", "--port", str(port), "--log-level", "warning"]
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1)
                if ready.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        local = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=10)
        assert local.status_code == 200
        remote = httpx.get(f"http://{outward}:{port}/v1/models", timeout=10)
        assert remote.status_code == 403, remote.text
        error = remote.json()["error"]
        assert error["code"] == "no_authentication"
        assert outward in error["message"]
        # Probes stay open, for a load balancer.
        assert httpx.get(f"http://{outward}:{port}/healthz", timeout=10).status_code == 200
    finally:
        process.terminate()
        process.communicate(timeout=15)


# -- configuration ------------------------------------------------------------------------


def _config_error(text: str) -> str:
    with pytest.raises(config.ConfigError) as info:
        config.parse(text, {}, origin="sluice.yaml")
    return str(info.value)


def test_auth_settings() -> None:
    master = "sk-master-do-not-print-0123456789"
    settings = config.parse(
        "insecure: true\nauth:\n  public_seed: true\n  cache_ttl: 0.5\n",
        {"SLUICE_MASTER_KEY": master},
    )
    assert settings.insecure and settings.public_seed and settings.key_cache_ttl == 0.5
    assert settings.master_key is not None and settings.master_key.get() == master
    assert master not in repr(settings) and master not in str(settings)
    defaults = config.parse("", {})
    assert (defaults.insecure, defaults.public_seed, defaults.master_key) == (False, False, None)
    assert defaults.key_cache_ttl == 2.0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("insecure: yes please\n", "sluice.yaml line 1: insecure: expected true or false"),
        ("port: 1\nauth:\n  public_seed: 1\n", "line 3: auth.public_seed: expected true or false"),
        ("auth:\n  cache_ttl: -1\n", "line 2: auth.cache_ttl: expected a non-negative number"),
        ("auth:\n  public_routes: ['/']\n", "line 2: auth: unknown key(s) 'public_routes'"),
    ],
)
def test_bad_auth_settings_name_the_line(text: str, message: str) -> None:
    assert message in _config_error(text)
