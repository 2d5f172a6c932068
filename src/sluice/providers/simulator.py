"""The offline provider: paced, deterministic stories with no network and no key.

It is the embedded default when no upstream key is configured, and the upstream the
tests run against. A stream waits ``ttft`` seconds, then yields one word per
``TextDelta`` at ``tokens_per_second`` (0: as fast as the consumer reads), in batches of
the words due by then, then one batch of ``Usage`` and ``Finish``. The words come from
``wordmodel``; the same seed, messages and model always give the same text.

Settings come from ``deployment.simulator``; request fields that it honours:
``max_tokens`` (lowers the deployment's ``max_tokens``, per choice; an answer cut
short finishes with ``"length"``) and ``seed`` (mixed into the story's seed).

A request that asks for more — ``n`` choices, tools, a JSON ``response_format``,
``reasoning``, logprobs, or that ends with tool results — is answered as
``simulator_answers`` describes: the choices are written side by side, one token of
each per step, paced as words are. A plain request never goes through that code.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import math
import random
import struct
import time
import uuid
from collections.abc import AsyncGenerator, Iterator

from sluice.config import Deployment
from sluice.errors import Unsupported
from sluice.events import (
    Batch,
    ChatRequest,
    Embedding,
    Finish,
    FinishReason,
    Message,
    PartEnd,
    Start,
    StreamEvent,
    TextDelta,
    TextPart,
    Usage,
    WireFormat,
    estimate_input_tokens,
    message_text,
)
from sluice.providers.simulator_answers import Counts, Plan, draft, plan_for, steps, story_words
from sluice.providers.wordmodel import default_model

__all__ = ["SimulatorProvider"]

#: The most tokens in one batch. A batch holds the tokens that are due by the time it
#: is made: one at a time while the consumer keeps up with the pace, more when it fell
#: behind (as one socket read returns several chunks), this many when unpaced.
_BATCH = 64


class SimulatorProvider:
    owned_by = "sluice-simulator"
    format: WireFormat = "sluice"

    def __init__(self, deployment: Deployment) -> None:
        self._deployment = deployment

    def stream(self, request: ChatRequest, verbatim: bool = False) -> AsyncGenerator[Batch, None]:
        plan = plan_for(request)
        if plan.plain and request.n == 1:
            return self._story(request)
        return self._answers(request, plan)

    async def _story(self, request: ChatRequest) -> AsyncGenerator[Batch, None]:
        _refuse_tools(request)
        settings = self._deployment.simulator
        if request.operation == "embeddings":
            if settings.ttft > 0:
                await asyncio.sleep(settings.ttft)
            yield _embeddings(request)
            return
        limit = _token_limit(settings.max_tokens, request.max_tokens)
        rng = random.Random(_seed(settings.seed, request))
        # The story fits the deployment's budget, not the request's: a request that asks
        # for fewer tokens gets the same story, cut short.
        prompt = _last_user_text(request.messages)
        story = story_words(rng, default_model(), settings.max_tokens, prompt)

        loop = asyncio.get_running_loop()
        # Every token has a due time counted from one start, so pacing never drifts.
        start = loop.time() + settings.ttft
        if settings.ttft > 0:
            await asyncio.sleep(settings.ttft)
        tps = settings.tokens_per_second
        interval = 1.0 / tps if tps > 0 else 0.0

        produced = 0
        reason: FinishReason = "stop"
        batch: list[StreamEvent] = [
            Start("sluice", f"sim-{uuid.uuid4().hex[:24]}", request.model, int(time.time()))
        ]
        for text in story:
            if produced >= limit:
                reason = "length"
                break
            if interval:
                due = start + produced * interval
                if due > loop.time():
                    if batch:
                        yield batch
                        batch = []
                    delay = due - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
            batch.append(TextDelta(text))
            produced += 1
            if len(batch) >= _BATCH:
                yield batch
                batch = []
                if not interval:
                    # Unpaced: still let the event loop run other tasks now and then.
                    await asyncio.sleep(0)
        if batch:
            yield batch
        usage = Usage(
            input_tokens=estimate_input_tokens(request),
            output_tokens=produced,
            source="reported",
        )
        yield [PartEnd(0), Finish(reason, reason), usage]

    async def _answers(self, request: ChatRequest, plan: Plan) -> AsyncGenerator[Batch, None]:
        _refuse_tools(request)
        settings = self._deployment.simulator
        limit = _token_limit(settings.max_tokens, request.max_tokens)
        words = default_model()
        counts = Counts()
        writers: list[Iterator[list[StreamEvent]]] = []
        for choice in range(request.n):
            # Choice 0 tells the story a plain request would; the others their own.
            story_seed = _seed(settings.seed, request, f"choice {choice}" if choice else "")
            rng = random.Random(_seed(settings.seed, request, f"extras {choice}"))
            laid = draft(
                plan, request, choice, random.Random(story_seed), rng, words, settings.max_tokens
            )
            writers.append(steps(laid, choice, limit, counts))

        loop = asyncio.get_running_loop()
        start = loop.time() + settings.ttft
        if settings.ttft > 0:
            await asyncio.sleep(settings.ttft)
        tps = settings.tokens_per_second
        interval = 1.0 / tps if tps > 0 else 0.0

        batch: list[StreamEvent] = [
            Start("sluice", f"sim-{uuid.uuid4().hex[:24]}", request.model, int(time.time()))
        ]
        step = 0
        while writers:
            if interval:
                due = start + step * interval
                if due > loop.time():
                    if batch:
                        yield batch
                        batch = []
                    delay = due - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
            # One step of every choice that is still writing: they are written side by side.
            going = []
            for writer in writers:
                events = next(writer, None)
                if events is not None:
                    batch.extend(events)
                    going.append(writer)
            writers = going
            step += 1
            if len(batch) >= _BATCH:
                yield batch
                batch = []
                if not interval:
                    await asyncio.sleep(0)
        batch.append(
            Usage(
                input_tokens=estimate_input_tokens(request),
                output_tokens=counts.output,
                source="reported",
                reasoning_tokens=counts.reasoning,
            )
        )
        yield batch

    async def aclose(self) -> None:
        # Nothing is held between streams; each stream's own aclose() stops it.
        return None


#: Fields of ``extra`` that ask for tools the upstream runs itself (Anthropic's server
#: tools, the Responses API's built-in tools): the simulator cannot, and says so rather
#: than answer as if they were not asked for.
_HOSTED_TOOLS = ("server_tools", "builtin_tools")


def _refuse_tools(request: ChatRequest) -> None:
    for name in _HOSTED_TOOLS:
        tools = request.extra.get(name)
        if tools:
            kinds = ", ".join(sorted({str(t.get("type")) for t in tools if isinstance(t, dict)}))
            raise Unsupported(f"'{name}' ({kinds}) cannot be run by the simulator", param=name)


def _token_limit(default: int, max_tokens: int | None) -> int:
    return default if max_tokens is None else min(default, max_tokens)


def _seed(base: int, request: ChatRequest, salt: str = "") -> int:
    """A seed from the deployment's, the request's ``seed``, model and messages (and
    ``salt``, to draw another sequence from the same request).

    ``hashlib``, not ``hash()``: string hashes change from process to process.
    """
    parts: list[object] = [base, request.seed, request.model, [_plain(m) for m in request.messages]]
    if salt:
        parts.append(salt)
    material = json.dumps(
        parts,
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
        default=repr,
    )
    digest = hashlib.sha256(material.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big")


def _plain(message: Message) -> list[str]:
    plain = [message.role, message_text(message)]
    # Tool calls and results (and images) count too, though text-only messages weigh
    # in as they always did: the same request keeps its story.
    plain.extend(repr(p) for p in message.parts if type(p) is not TextPart)
    return plain


def _last_user_text(messages: list[Message]) -> str:
    for message in reversed(messages):
        if message.role == "user":
            return message_text(message)
    return ""


#: Dimensions of a simulated embedding unless the request asks for others.
EMBEDDING_DIMENSIONS = 256


def _embeddings(request: ChatRequest) -> Batch:
    """Deterministic unit vectors: the same text always embeds the same, and texts that
    share words point the same way (a bag of hashed words), so similarity demos work."""
    dimensions = request.extra.get("dimensions")
    size = dimensions if isinstance(dimensions, int) and dimensions > 0 else EMBEDDING_DIMENSIONS
    batch: Batch = [Start("sluice", "", request.model, int(time.time()))]
    for index, item in enumerate(request.input):
        words = item.lower().split() if isinstance(item, str) else [str(t) for t in item]
        vector = [0.0] * size
        for word in words or [""]:
            digest = hashlib.sha256(word.encode("utf-8")).digest()
            for k in range(0, 8, 2):
                slot = int.from_bytes(digest[k : k + 2], "big") % size
                vector[slot] += 1.0 if digest[k + 8] & 1 else -1.0
        norm = math.sqrt(sum(v * v for v in vector)) or 1.0
        values: list[float] | str = [v / norm for v in vector]
        if request.extra.get("encoding_format") == "base64":
            values = base64.b64encode(struct.pack(f"<{size}f", *values)).decode("ascii")
        batch.append(Embedding(index, values))
    batch.append(Usage(estimate_input_tokens(request), 0))
    batch.append(Finish("stop", "stop"))
    return batch
