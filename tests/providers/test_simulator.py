from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from sluice.config import Deployment, SimulatorSettings
from sluice.events import (
    ChatRequest,
    Finish,
    ImagePart,
    Message,
    PartEnd,
    Start,
    StreamEvent,
    TextDelta,
    TextPart,
    Usage,
)
from sluice.providers import Batch, Provider
from sluice.providers.simulator import SimulatorProvider
from sluice.providers.wordmodel import WordModel, default_model

STORY = "Tell me a story"


def deployment(**settings: Any) -> Deployment:
    settings = {"ttft": 0.0, "tokens_per_second": 0.0, **settings}
    return Deployment(name="sim", provider="simulator", simulator=SimulatorSettings(**settings))


def user(text: str) -> Message:
    return Message("user", [TextPart(text)])


def request(prompt: str = STORY, model: str = "gpt-4o-mini", **fields: Any) -> ChatRequest:
    return ChatRequest(model=model, messages=[user(prompt)], **fields)


async def collect(stream: AsyncIterator[Batch]) -> list[Batch]:
    batches = [batch async for batch in stream]
    assert all(batches), "no empty batches"
    return batches


def run_batches(req: ChatRequest | None = None, **settings: Any) -> list[Batch]:
    provider = SimulatorProvider(deployment(**settings))
    return asyncio.run(collect(provider.stream(req or request())))


def run(req: ChatRequest | None = None, **settings: Any) -> list[StreamEvent]:
    return [event for batch in run_batches(req, **settings) for event in batch]


def text_of(events: list[StreamEvent]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


def finish_of(events: list[StreamEvent]) -> str:
    finish = events[-2]
    assert isinstance(finish, Finish)
    return finish.reason


def usage_of(events: list[StreamEvent]) -> Usage:
    usage = events[-1]
    assert isinstance(usage, Usage)
    return usage


def test_is_a_provider() -> None:
    provider: Provider = SimulatorProvider(deployment())
    assert provider.owned_by == "sluice-simulator"
    asyncio.run(provider.aclose())


def test_event_order_and_shape() -> None:
    batches = run_batches()
    start = batches[0][0]
    assert isinstance(start, Start)
    assert (start.format, start.model) == ("sluice", "gpt-4o-mini")
    assert start.id.startswith("sim-") and start.created > 0
    # The text part ends, then the choice, then the usage (the order OpenAI uses).
    assert batches[-1] == [PartEnd(0), Finish("stop", "stop"), usage_of(batches[-1])]
    events = [event for batch in batches for event in batch]
    deltas = [e for e in events if isinstance(e, TextDelta)]
    assert len(deltas) == len(events) - 4
    assert all(d.index == 0 and d.choice == 0 and d.logprobs is None for d in deltas)
    # One word per delta, with its leading space or paragraph break.
    assert deltas[0].text[0].isupper() and " " not in deltas[0].text
    for delta in deltas[1:]:
        word = delta.text.removeprefix("\n\n").removeprefix(" ")
        assert word and not any(c.isspace() for c in word), repr(delta.text)


def test_finished_story_reads_like_sentences() -> None:
    for seed in range(10):
        events = run(seed=seed)
        assert finish_of(events) == "stop"
        text = text_of(events)
        assert text.isascii() or set(text) - {chr(c) for c in range(128)} == {"—"}
        for paragraph in text.split("\n\n"):
            assert paragraph[0].isupper(), paragraph
            assert paragraph[-1] in ".!?", paragraph
        assert usage_of(events).output_tokens <= SimulatorSettings().max_tokens


def test_small_budgets_still_get_whole_stories() -> None:
    for seed in range(30):
        events = run(max_tokens=60, seed=seed)
        assert finish_of(events) == "stop"
        assert 10 <= usage_of(events).output_tokens <= 60
        assert text_of(events)[-1] in ".!?"


def test_same_seed_same_text() -> None:
    assert text_of(run(seed=7)) == text_of(run(seed=7))
    req = request(temperature=0.3, seed=11)
    assert text_of(run(req, seed=7)) == text_of(run(req, seed=7))


def test_same_text_in_another_process() -> None:
    # No reliance on hash(): a different PYTHONHASHSEED gives the same story.
    code = (
        "import asyncio, sys\n"
        "from sluice.config import Deployment, SimulatorSettings\n"
        "from sluice.events import ChatRequest, Message, TextDelta, TextPart\n"
        "from sluice.providers.simulator import SimulatorProvider\n"
        "s = SimulatorSettings(seed=7, ttft=0, tokens_per_second=0)\n"
        "p = SimulatorProvider(Deployment(name='sim', provider='simulator', simulator=s))\n"
        "m = [Message('user', [TextPart(sys.argv[1])])]\n"
        "r = ChatRequest(model='gpt-4o-mini', messages=m)\n"
        "async def main():\n"
        "    texts = [e.text async for b in p.stream(r) for e in b if isinstance(e, TextDelta)]\n"
        "    return ''.join(texts)\n"
        "print(asyncio.run(main()), end='')\n"
    )
    texts = {
        subprocess.run(
            [sys.executable, "-c", code, STORY],
            env={**os.environ, "PYTHONHASHSEED": hash_seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for hash_seed in ("1", "2")
    }
    assert texts == {text_of(run(seed=7))}


def test_variety_across_seeds_and_prompts() -> None:
    by_seed = {text_of(run(seed=seed)) for seed in range(10)}
    assert len(by_seed) == 10
    openings = {text.split(".")[0] for text in by_seed}
    assert len(openings) >= 5
    prompts = [STORY, "Tell me a story, please", "Once more: a story!", "Another one"]
    assert len({text_of(run(request(p))) for p in prompts}) == len(prompts)
    assert text_of(run(request(model="a"))) != text_of(run(request(model="b")))
    assert text_of(run(request(seed=1))) != text_of(run(request(seed=2)))


def test_topic_of_the_prompt() -> None:
    for seed in range(5):
        text = text_of(run(request("Tell me a story about a dragon"), seed=seed))
        assert "dragon" in text.lower()
    assert default_model().topics("Tell me a story about the dragons of the sea") == [
        "dragon",
        "sea",
    ]
    assert default_model().topics(STORY) == []


def test_max_tokens_cuts_the_story() -> None:
    full = run(request(model="m"), seed=3)
    events = run(request(model="m", max_tokens=10), seed=3)
    assert finish_of(events) == "length"
    assert len([e for e in events if isinstance(e, TextDelta)]) == 10
    assert usage_of(events).output_tokens == 10
    # The same story, cut short.
    assert text_of(full).startswith(text_of(events))


def test_max_tokens_at_the_story_length_is_a_stop() -> None:
    produced = usage_of(run(seed=3)).output_tokens
    events = run(request(max_tokens=produced), seed=3)
    assert finish_of(events) == "stop"
    assert usage_of(events).output_tokens == produced


def test_request_cannot_raise_the_deployment_limit() -> None:
    events = run(request(max_tokens=10_000), max_tokens=20, seed=1)
    assert usage_of(events).output_tokens <= 20


def test_deployment_limit_alone() -> None:
    events = run(max_tokens=5, seed=1)
    assert finish_of(events) == "length"
    assert usage_of(events).output_tokens == 5


def test_usage() -> None:
    events = run()
    usage = usage_of(events)
    assert usage.source == "reported"
    assert usage.input_tokens == 4  # "Tell me a story": 15 characters
    assert usage.output_tokens == len([e for e in events if isinstance(e, TextDelta)])

    messages = [
        Message("system", [TextPart("x" * 40)]),
        Message("user", [TextPart("y" * 20)]),
        Message("assistant", []),
    ]
    assert usage_of(run(ChatRequest(model="m", messages=messages))).input_tokens == 15
    # An image counts as OpenAI's low-detail cost, 85 tokens.
    messages[1].parts.append(ImagePart("https://example.com/cat.png"))
    assert usage_of(run(ChatRequest(model="m", messages=messages))).input_tokens == 100
    assert usage_of(run(ChatRequest(model="m", messages=[]))).input_tokens == 1


def test_paced_stream_finishes() -> None:
    started = time.monotonic()
    events = run(request(max_tokens=50), tokens_per_second=1000, ttft=0.01)
    elapsed = time.monotonic() - started
    assert usage_of(events).output_tokens == 50
    # Generous sanity bounds only: 50 tokens at 1000/s plus 10 ms is about 60 ms.
    assert 0.03 < elapsed < 10


def test_unpaced_long_stream_is_cheap() -> None:
    started = time.monotonic()
    events = run(max_tokens=20_000, seed=5)
    assert time.monotonic() - started < 10
    produced = usage_of(events).output_tokens
    assert 10_000 < produced <= 20_000
    text = text_of(events)
    assert text.count("\n\n") > 50


def test_unpaced_stream_comes_in_bounded_batches() -> None:
    batches = run_batches(max_tokens=5000, seed=5)
    assert len(batches) > 10
    assert max(len(batch) for batch in batches) <= 64


def test_paced_stream_comes_a_token_at_a_time() -> None:
    # A consumer that keeps up gets each token on its own (the first batch can only
    # hold more if the event loop stalled for a whole 50 ms interval).
    batches = run_batches(request(max_tokens=3), tokens_per_second=20)
    assert [type(e) for e in batches[0]] == [Start, TextDelta]
    assert [len(batch) for batch in batches[1:3]] == [1, 1]
    assert sum(len(batch) for batch in batches) == 1 + 3 + 3


def test_unpaced_stream_lets_other_tasks_run() -> None:
    async def main() -> int:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        task = asyncio.create_task(ticker())
        await collect(SimulatorProvider(deployment(max_tokens=5000)).stream(request()))
        task.cancel()
        return ticks

    assert asyncio.run(main()) > 10


def test_aclose_stops_the_stream() -> None:
    async def main() -> None:
        stream = SimulatorProvider(deployment(tokens_per_second=2)).stream(request())
        first = await anext(stream)
        assert [type(e) for e in first] == [Start, TextDelta]
        await asyncio.wait_for(stream.aclose(), 1)
        with pytest.raises(StopAsyncIteration):
            await anext(stream)

    asyncio.run(main())


def test_cancel_stops_the_stream_at_once() -> None:
    async def main() -> None:
        seen: list[StreamEvent] = []

        async def consume(stream: AsyncIterator[Batch]) -> None:
            async for batch in stream:
                seen.extend(batch)

        for settings in ({"ttft": 60.0}, {"tokens_per_second": 0.5}):
            seen.clear()
            task = asyncio.create_task(
                consume(SimulatorProvider(deployment(**settings)).stream(request()))
            )
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(task, 1)
            assert not any(isinstance(e, Finish) for e in seen)

    asyncio.run(main())


def test_word_model_on_a_tiny_corpus() -> None:
    model = WordModel(
        "The cat sat on the mat. The dog sat on the rug.\n\nA bird sang in the tree.\n"
    )
    for seed in range(20):
        text = "".join(model.story(random.Random(seed), 12))
        assert text[0].isupper() and text[-1] == "."
        assert len(text.split()) >= 12
    assert model.topics("a story about a bird") == ["bird"]
    with pytest.raises(ValueError):
        WordModel("\n\n")
    with pytest.raises(ValueError):
        WordModel("No end here")
