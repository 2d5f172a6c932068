from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from tests.cluster import RedisServer, run_redis
from tests.gateway import RunningGateway, run_gateway
from tests.postgres import PostgresServer, run_postgres
from tests.upstream.fixture import start_upstream

StartGateway = Callable[..., RunningGateway]


@pytest.fixture(scope="session")
def upstream() -> Iterator[Any]:
    """The project's test upstream, a real HTTP server in its own process."""
    with start_upstream() as server:
        yield server


@pytest.fixture
def start_gateway(tmp_path: Path) -> Iterator[StartGateway]:
    """Start gateways for this test; each is stopped (by PID) at the end."""
    with ExitStack() as stack:
        count = 0

        def start(
            config: Any = None, env: dict[str, str] | None = None, args: tuple[str, ...] = ()
        ) -> RunningGateway:
            nonlocal count
            count += 1
            return stack.enter_context(run_gateway(tmp_path / f"gw{count}", config, env, args))

        yield start


def upstream_config(upstream_url: str, **extra: Any) -> dict[str, Any]:
    """Every model name passes through to the test upstream (the name picks the scenario)."""
    config: dict[str, Any] = {
        "default_model": "normal",
        "models": {
            "*": {
                "provider": "openai",
                "base_url": upstream_url,
                "api_key_env": "TEST_UPSTREAM_KEY",
            }
        },
        "keepalive_interval": 5,
    }
    config.update(extra)
    return config


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real ``redis-server`` for the whole run (tests/cluster.py starts it)."""
    with run_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Config for one shared-state backend: ``{}`` (memory) or ``{"redis_url": ...}``
    pointing at an emptied Redis. Features with shared state run against both:
    ``start_gateway(upstream_config(url, **backend, ...))``."""
    if request.param == "memory":
        return {}
    server: RedisServer = request.getfixturevalue("redis_server")
    if not server.running:
        server.start()
    server.flush()
    return {"redis_url": server.url}


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A real PostgreSQL for the whole run (tests/postgres.py starts it), restarted if a
    test stopped it."""
    with run_postgres() as server:
        yield server


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """A new, empty PostgreSQL database of this test."""
    if not postgres_server.running:
        postgres_server.start()
    return postgres_server.create_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A record database for one test, of each backend: the path of a new SQLite file,
    or the URL of a new PostgreSQL database. Stores run against both."""
    if request.param == "sqlite":
        return str(tmp_path / "records.db")
    url: str = request.getfixturevalue("postgres_url")
    return url
