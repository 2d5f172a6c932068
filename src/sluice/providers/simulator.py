"""The offline provider: paced, deterministic stories with no network and no key.

It is the embedded default when no upstream key is configured, and the upstream the
tests run against. A stream waits ``ttft`` seconds, then yields one word per
``TextDelta`` at ``tokens_per_second`` (0: as fast as the consumer reads), in batches of
the words due by then, then one batch of ``Usage`` and ``Finish``. The words come from
``wordmodel``; the same seed, messages and model always give the same text.

Settings come from ``deployment.simulator``; request options that it honours:
``max_tokens`` / ``max_completion_tokens`` (lower the deployment's ``max_tokens``; a
story cut short finishes with ``"length"``) and ``seed`` (mixed into the story's seed).
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
from collections.abc import AsyncGenerator

from sluice.config import Deployment
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
    Usage,
    WireFormat,
    estimate_input_tokens,
    message_text,
)
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

    async def stream(
        self, request: ChatRequest, verbatim: bool = False
    ) -> AsyncGenerator[Batch, None]:
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
        budget = settings.max_tokens
        length = rng.randint(max(1, budget * 55 // 100), max(1, budget * 85 // 100))
        prompt = _last_user_text(request.messages)
        story = default_model().story(rng, length, prompt, limit=budget)

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

    async def aclose(self) -> None:
        # Nothing is held between streams; each stream's own aclose() stops it.
        return None


def _token_limit(default: int, max_tokens: int | None) -> int:
    return default if max_tokens is None else min(default, max_tokens)


def _seed(base: int, request: ChatRequest) -> int:
    """A seed from the deployment's, the request's ``seed``, model and messages.

    ``hashlib``, not ``hash()``: string hashes change from process to process.
    """
    material = json.dumps(
        [base, request.seed, request.model, [_plain(m) for m in request.messages]],
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
        default=repr,
    )
    digest = hashlib.sha256(material.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big")


def _plain(message: Message) -> list[str]:
    return [message.role, message_text(message)]


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
