"""The generation journal on both backends: readers following a live journal from any
offset (here and, with Redis, from another instance), failures reaching every reader,
kept entries replayed, bounded and expiring."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from sluice.errors import UpstreamStatusError
from sluice.events import (
    Annotations,
    Batch,
    Finish,
    PartEnd,
    ReasoningDelta,
    RedactedReasoning,
    RefusalDelta,
    Start,
    StreamError,
    TextDelta,
    ToolCallDelta,
    Usage,
    Verbatim,
)
from sluice.journal import Journal, Journals, WriterGone, journals_for
from sluice.journal.codec import decode_batches, encode_batches
from sluice.state import SharedState, open_state

BATCHES: list[Batch] = [
    [
        Start(
            "openai_chat", "chatcmpl-1", "m", 1700000000, Usage(3, 0), {"system_fingerprint": "fp"}
        )
    ],
    [TextDelta("")],
    [TextDelta("x", 2, 1, [{"token": "x", "logprob": -0.5}])],
    [ReasoningDelta("sig", 1, 0, "c2ln")],
    [RedactedReasoning("opaque", 3), RefusalDelta("no", 4), Annotations([{"type": "url"}], 0, 1)],
    [PartEnd(1), Finish("other", "end_turn", 1, "###")],
    [Usage(12, 5, "reported", 4, 2, 3)],
    [ReasoningDelta("think")],
    [TextDelta("Once"), TextDelta(" upon")],
    [ToolCallDelta(0, "call_1", "get_weather", '{"city"')],
    [ToolCallDelta(0, None, None, ': "Paris"}')],
    [Finish("stop")],
    [Usage(12, 5, "reported")],
]


@contextlib.asynccontextmanager
async def instance(
    backend: dict[str, Any], max_entries: int = 100, max_bytes: int = 1 << 20
) -> AsyncIterator[tuple[SharedState, Journals]]:
    """One gateway instance's state and journals (with Redis: its own connections)."""
    state = open_state(backend.get("redis_url"))
    await state.start()
    journals = journals_for(state, max_entries, max_bytes)
    try:
        yield state, journals
    finally:
        await journals.close()
        await state.close()


async def drain(stream: AsyncIterator[Batch]) -> list[Batch]:
    return [batch async for batch in stream]


def test_codec_round_trips_every_event_without_raw() -> None:
    for batch in [*BATCHES, [StreamError("boom", "c", "t")]]:
        [(elapsed, decoded)] = decode_batches(encode_batches([(1.25, batch)]))
        assert elapsed == 1.25
        assert decoded == batch
    raw = Verbatim("openai_chat", b"data: {}\n\n", 1, None, [TextDelta("x")])
    with pytest.raises(TypeError, match="Verbatim"):
        encode_batches([(0, [raw])])


def test_readers_follow_a_live_journal_from_any_offset(backend: dict[str, Any]) -> None:
    async def main() -> None:
        async with instance(backend) as (_, here), instance(backend) as (_, there):
            journal = here.create("j1")
            first = asyncio.create_task(drain(here.follow("j1")))
            journal.append(BATCHES[0])
            journal.append(BATCHES[1])
            await asyncio.sleep(0.05)
            late = asyncio.create_task(drain(journal.follow(1)))
            remote = asyncio.create_task(drain(there.follow("j1", 2)))
            for batch in BATCHES[2:]:
                await asyncio.sleep(0.01)
                journal.append(batch)
            await asyncio.sleep(0.05)
            assert not first.done()  # still live: the readers wait for more
            journal.complete()
            assert await first == BATCHES
            assert await late == BATCHES[1:]
            if here.distributed:
                await here.seal(journal)
                assert await asyncio.wait_for(remote, 5) == BATCHES[2:]
                # A reader arriving after the end reads it all, then stops.
                assert await drain(there.follow("j1")) == BATCHES
            else:
                assert await remote == []  # memory: no other instance to read from
            assert journal.storable()

    asyncio.run(main())


def test_a_failed_journal_raises_its_error_in_every_reader(backend: dict[str, Any]) -> None:
    async def main() -> None:
        async with instance(backend) as (_, here), instance(backend) as (_, there):
            journal = here.create("j2")
            journal.append(BATCHES[2])
            readers = [asyncio.create_task(drain(journal.follow())) for _ in range(2)]
            remote = asyncio.create_task(drain(there.follow("j2")))
            await asyncio.sleep(0.05)
            error = UpstreamStatusError(
                "upstream answered 429", status=429, code="rate_limit_exceeded",
                headers={"Retry-After": "2"},
            )  # fmt: skip
            journal.fail(error)
            await here.seal(journal)
            tasks = readers + ([remote] if here.distributed else [])
            for task in tasks:
                with pytest.raises(UpstreamStatusError) as caught:
                    await asyncio.wait_for(task, 5)
                assert caught.value is not error
                assert caught.value.status == 429
                assert caught.value.headers == {"Retry-After": "2"}
                assert caught.value.code == "rate_limit_exceeded"
            assert not journal.storable()

    asyncio.run(main())


def test_only_finished_clean_generations_are_storable() -> None:
    def journal(*batches: Batch, complete: bool = True) -> Journal:
        j = Journal("x")
        for batch in batches:
            j.append(batch)
        if complete:
            j.complete()
        return j

    assert journal([TextDelta("a")], [Finish("stop")]).storable()
    assert journal([TextDelta("a")], [Finish("length")], [Usage(1, 1)]).storable()
    assert not journal([TextDelta("a")]).storable()  # no Finish
    assert not journal([TextDelta("a")], [Finish("stop")], complete=False).storable()
    assert not journal([TextDelta("a")], [Finish("error")]).storable()
    assert not journal([StreamError("x")], [Finish("stop")]).storable()


def test_kept_entries_replay_with_their_pace(backend: dict[str, Any]) -> None:
    async def main() -> None:
        async with instance(backend) as (_, here), instance(backend) as (_, there):
            journal = here.create("j3")
            for batch in BATCHES:
                journal.append(batch)
                await asyncio.sleep(0.02)
            journal.complete()
            await here.seal(journal)
            assert await here.keep("entry", journal, ttl=30)
            here.release(journal)
            for journals in (here, there) if here.distributed else (here,):
                found = await journals.lookup("entry")
                assert found is not None
                assert list(found.batches) == BATCHES
                times = list(found.times)
                assert times == sorted(times)
                assert times[-1] - times[0] >= 0.1
            assert await there.lookup("missing") is None
            await there.forget("entry")
            if here.distributed:
                assert await here.lookup("entry") is None

    asyncio.run(main())


async def _keep(journals: Journals, name: str, text: str, ttl: float = 30) -> None:
    journal = journals.create(f"id-{name}")
    journal.append([TextDelta(text)])
    journal.append([Finish("stop")])
    journal.complete()
    await journals.seal(journal)
    assert await journals.keep(name, journal, ttl=ttl)
    journals.release(journal)


def test_kept_entries_are_bounded_least_recently_used_first(backend: dict[str, Any]) -> None:
    async def main() -> None:
        async with instance(backend, max_entries=2) as (_, journals):
            await _keep(journals, "a", "one")
            await _keep(journals, "b", "two")
            assert await journals.lookup("a") is not None  # a is now the most recent
            await _keep(journals, "c", "three")
            assert await journals.lookup("b") is None
            assert await journals.lookup("a") is not None
            assert await journals.lookup("c") is not None
        # By bytes: each entry counts about 520 bytes here.
        async with instance(backend, max_bytes=1200) as (_, journals):
            for name in "def":
                await _keep(journals, name, "x" * 100)
            assert await journals.lookup("d") is None
            assert await journals.lookup("e") is not None
            assert await journals.lookup("f") is not None
            # One larger than the whole bound is never kept.
            big = journals.create("big")
            big.append([TextDelta("y" * 1000)])
            big.append([Finish("stop")])
            big.complete()
            await journals.seal(big)
            assert not await journals.keep("g", big, ttl=30)
            assert await journals.lookup("g") is None
            assert await journals.lookup("f") is not None

    asyncio.run(main())


def test_kept_entries_expire(backend: dict[str, Any]) -> None:
    async def main() -> None:
        async with instance(backend) as (_, journals):
            await _keep(journals, "short", "a", ttl=0.2)
            await _keep(journals, "long", "b", ttl=30)
            assert await journals.lookup("short") is not None
            await asyncio.sleep(0.35)
            assert await journals.lookup("short") is None
            assert await journals.lookup("long") is not None

    asyncio.run(main())


def test_a_reader_elsewhere_gives_up_on_a_writer_that_went_quiet(redis_server: Any) -> None:
    backend = {"redis_url": redis_server.url}
    if not redis_server.running:
        redis_server.start()

    async def main() -> None:
        async with instance(backend) as (_, here), instance(backend) as (_, there):
            journal = here.create("j4")
            journal.append(BATCHES[0])
            got: list[Batch] = []

            async def dead() -> bool:
                return False

            with pytest.raises(WriterGone):
                async for batch in there.follow("j4", 0, dead):
                    got.append(batch)
            assert got == [BATCHES[0]]
            # While alive, a quiet writer is waited for; its readers are counted.
            live = asyncio.create_task(drain(there.follow("j4")))
            await asyncio.sleep(0.1)
            assert await here.remote_readers("j4") == 1
            journal.complete()
            assert await asyncio.wait_for(live, 5) == [BATCHES[0]]
            await asyncio.sleep(0.1)
            assert await here.remote_readers("j4") == 0

    asyncio.run(main())


def test_a_journal_holds_the_events_of_verbatim_bytes(backend: dict[str, Any]) -> None:
    async def main() -> None:
        async with instance(backend) as (_, journals):
            journal = journals.create("raw")
            decoded = [TextDelta("hi")]
            journal.append([Verbatim("openai_chat", b"data: {}\n\n", 1, None, decoded)])
            journal.append([Finish("stop")])
            journal.complete()
            await journals.seal(journal)
            assert await journals.keep("raw", journal, ttl=30)
            found = await journals.lookup("raw")
            assert found is not None
            assert list(found.batches) == [[TextDelta("hi")], [Finish("stop")]]

    asyncio.run(main())


def test_a_mirrored_journal_reaches_redis_before_anyone_reads_it(redis_server: Any) -> None:
    """Batches of a journal created ``mirrored`` are in its stream while it is live;
    those of any other wait until a reader elsewhere shows up (or the end)."""
    backend = {"redis_url": redis_server.url}
    if not redis_server.running:
        redis_server.start()

    async def stream_length(state: SharedState, id: str) -> int:
        client = state.client()
        return int(await client.xlen(f"sluice:{{cache}}:journal:{id}"))

    async def main() -> None:
        async with instance(backend) as (state, here):
            mirrored = here.create("j6", mirrored=True)
            plain = here.create("j7")
            for journal in (mirrored, plain):
                journal.append(BATCHES[0])
                journal.append(BATCHES[1])
            for _ in range(100):  # the flusher writes once a tick
                if await stream_length(state, "j6") >= 1:
                    break
                await asyncio.sleep(0.02)
            assert await stream_length(state, "j6") >= 1
            assert await stream_length(state, "j7") == 0
            mirrored.complete()
            plain.complete()

    asyncio.run(main())
