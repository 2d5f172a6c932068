"""The shared-state backends, memory and a real ``redis-server``: the same contract,
and for Redis the outage handling (logged once, fast failures, recovery logged once)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from sluice import config
from sluice.state import SharedState, StateUnavailable, open_state
from sluice.state.memory import MemoryState
from sluice.state.redis import RedisState, redacted
from tests.cluster import RedisServer, run_redis
from tests.gateway import free_port


@contextlib.asynccontextmanager
async def opened(url: str | None) -> AsyncIterator[SharedState]:
    state = open_state(url)
    await state.start()
    try:
        yield state
    finally:
        await state.close()


def test_the_same_contract_on_both_backends(backend: dict[str, Any]) -> None:
    async def main() -> None:
        async with opened(backend.get("redis_url")) as state:
            assert state.name == ("redis" if backend else "memory")
            assert await state.get("missing") is None
            await state.set("a", b"one")
            assert await state.get("a") == b"one"
            assert await state.add("a", b"two", ttl=5) is False
            assert await state.add("b", b"two", ttl=5) is True
            assert await state.get("b") == b"two"
            await state.delete("a")
            assert await state.get("a") is None
            assert await state.incr("n", 1.5, ttl=5) == 1.5
            assert await state.incr("n", 2, ttl=60) == 3.5
            assert float(await state.get("n") or b"") == 3.5
            # Expiry: set, add and incr's first ttl.
            await state.set("short", b"x", ttl=0.15)
            assert await state.add("gone", b"x", ttl=0.15)
            assert await state.incr("count", 1, ttl=0.15) == 1
            assert await state.incr("count", 1, ttl=60) == 2  # keeps the first expiry
            await asyncio.sleep(0.3)
            for key in ("short", "gone", "count"):
                assert await state.get(key) is None, key
            assert await state.add("gone", b"y", ttl=5)
            assert await state.run(lambda: state.get("gone")) == b"y"

    asyncio.run(main())


def test_a_lease_is_renewed_and_released_only_by_its_holder(backend: dict[str, Any]) -> None:
    async def main() -> None:
        async with opened(backend.get("redis_url")) as state:
            assert await state.add("lease", b"mine", ttl=0.3)
            assert await state.renew("lease", b"mine", ttl=5) is True
            await asyncio.sleep(0.5)
            assert await state.get("lease") == b"mine"  # renewed past its first ttl
            # Another holder took it over (ours lapsed while we were paused).
            await state.set("lease", b"theirs", ttl=5)
            assert await state.renew("lease", b"mine", ttl=60) is False
            assert await state.release("lease", b"mine") is False
            assert await state.get("lease") == b"theirs"
            assert await state.release("lease", b"theirs") is True
            assert await state.get("lease") is None
            assert await state.renew("lease", b"theirs", ttl=5) is False  # lapsed: not revived
            assert await state.get("lease") is None

    asyncio.run(main())


def test_holds_on_a_budget(backend: dict[str, Any]) -> None:
    async def main() -> None:
        async with opened(backend.get("redis_url")) as state:
            total, holds = "spend:{k}", "spend-holds:{k}"
            await state.set(total, b"1.5")
            assert await state.reserve(total, holds, "a", 1.0, 3.0, ttl=60) == (True, 1.5, 0.0)
            assert await state.reserve(total, holds, "b", 0.25, 3.0, ttl=0.2) == (True, 1.5, 1.0)
            # 1.5 spent + 1.25 held + 0.5 > 3: refused, and nothing held for it.
            assert await state.reserve(total, holds, "c", 0.5, 3.0, ttl=60) == (False, 1.5, 1.25)
            await asyncio.sleep(0.3)  # b's hold lapsed (its instance died, say)
            assert await state.reserve(total, holds, "c", 0.5, 3.0, ttl=60) == (True, 1.5, 1.0)
            # a settles at its real cost: its hold goes and the cost counts, in one step.
            await state.unreserve(total, holds, "a", 0.75)
            assert float(await state.get(total) or b"") == 2.25
            assert await state.reserve(total, holds, "d", 0.25, 3.0, ttl=60) == (True, 2.25, 0.5)
            await state.unreserve(total, holds, "c", 0.0)
            await state.unreserve(total, holds, "d", 0.0)
            assert await state.reserve(total, holds, "e", 0.75, 3.0, ttl=60) == (True, 2.25, 0.0)

    asyncio.run(main())


def test_memory_is_bounded_least_recently_used_first() -> None:
    async def main() -> None:
        state = MemoryState(max_entries=3)
        for key in "abc":
            await state.set(key, key.encode())
        assert await state.get("a") == b"a"  # now the most recent
        await state.set("d", b"d")
        assert len(state) == 3
        assert await state.get("b") is None
        assert [await state.get(k) for k in "acd"] == [b"a", b"c", b"d"]

    asyncio.run(main())


def test_open_state_and_the_url_in_config() -> None:
    assert open_state(None).name == "memory"
    with pytest.raises(ValueError, match="'http'"):
        open_state("http://example.invalid")
    settings = config.parse("", {"SLUICE_REDIS_URL": "redis://:hunter2@127.0.0.1:6390/1"})
    assert settings.redis_url is not None
    assert "hunter2" not in repr(settings) and "hunter2" not in str(settings.redis_url)
    state = open_state(settings.redis_url.get())
    assert isinstance(state, RedisState)
    assert state.where == "redis://:****@127.0.0.1:6390/1"
    assert state.limits_uri == "async+redis://:hunter2@127.0.0.1:6390/1"
    assert (
        redacted("rediss://u:p@h:1/0?password=x&db=2") == "rediss://u:****@h:1/0?password=****&db=2"
    )
    with pytest.raises(config.ConfigError) as caught:
        config.parse("port: 1\nredis_url: postgres://u:hunter2@h/db\n", {}, origin="c.yaml")
    assert (
        str(caught.value) == "c.yaml line 2: redis_url: expected a redis://, rediss://, unix:// or"
        " redis+cluster:// URL"
    )


def _messages(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


def test_redis_outage_logged_once_then_recovery_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sluice.state")

    async def main(server: RedisServer) -> None:
        async with opened(server.url.replace("//", "//:s3cret@", 1)) as state:
            await state.set("k", b"v")
            server.stop()
            causes = []
            for _ in range(50):
                with pytest.raises(StateUnavailable) as caught:
                    await state.get("k")
                causes.append(caught.value.__cause__)
                await asyncio.sleep(0.01)
            assert causes[0] is not None  # the first failure keeps the client's error
            outage = _messages(caplog, "redis unavailable")
            assert len(outage) == 1
            assert outage[0].startswith("redis unavailable: ")
            assert "s3cret" not in caplog.text and ":****@" in outage[0]
            server.start()  # empty again: no persistence
            deadline = time.monotonic() + 10
            while True:
                try:
                    assert await state.get("k") is None
                    break
                except StateUnavailable:
                    assert time.monotonic() < deadline, "never recovered"
                    await asyncio.sleep(0.05)
            await state.set("k", b"again")
            assert await state.get("k") == b"again"
        assert len(_messages(caplog, "redis unavailable")) == 1
        assert len(_messages(caplog, "redis available again")) == 1

    with run_redis(tmp_path) as server:
        asyncio.run(main(server))


@contextlib.contextmanager
def refusing_server() -> Iterator[tuple[int, list[float]]]:
    """A TCP port that accepts connections and closes them at once, counting them."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    listener.settimeout(0.05)
    accepted: list[float] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            accepted.append(time.monotonic())
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], accepted
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()


def test_no_reconnect_storm_while_down(caplog: pytest.LogCaptureFixture) -> None:
    """Hundreds of calls during an outage make a handful of connection attempts."""
    caplog.set_level(logging.INFO, logger="sluice.state")

    async def main(port: int) -> float:
        state = RedisState(f"redis://127.0.0.1:{port}/0", min_backoff=0.2, max_backoff=0.2)
        await state.start()  # fails: logged, not raised
        t0 = time.monotonic()
        for _ in range(40):
            results = await asyncio.gather(
                *(state.get("k") for _ in range(10)), return_exceptions=True
            )
            assert all(isinstance(r, StateUnavailable) for r in results)
            await asyncio.sleep(0.01)
        elapsed = time.monotonic() - t0
        await state.close()
        return elapsed

    with refusing_server() as (port, accepted):
        elapsed = asyncio.run(main(port))
    # One probe (plus its single retry on a broken connection) per back-off period.
    assert len(accepted) <= 2 * (elapsed / 0.2 + 2), (len(accepted), elapsed)
    assert len(_messages(caplog, "redis unavailable")) == 1


def test_an_unreachable_redis_does_not_stop_the_gateway(start_gateway: Any, upstream: Any) -> None:
    from tests.conftest import upstream_config

    gateway = start_gateway(
        upstream_config(upstream.url, redis_url=f"redis://127.0.0.1:{free_port()}/0"),
        env={"TEST_UPSTREAM_KEY": "sk-test"},
    )
    assert gateway.log().count("redis unavailable") == 1
