"""OpenAI's ``/embeddings`` on the upstream side: the request body and a decoder of
the JSON answer (one body, not a stream) into ``Embedding`` events."""

from __future__ import annotations

from typing import Any

import msgspec
import orjson

from sluice.errors import SluiceError, UpstreamProtocolError
from sluice.events import Batch, ChatRequest, Embedding, Finish, Start, Usage

#: An answer larger than this is refused rather than held (2,048 inputs of 3,072
#: dimensions as JSON floats is about 130 MB).
MAX_BODY = 256 << 20


def body(request: ChatRequest, model: str) -> bytes:
    payload: dict[str, Any] = {"model": model, "input": request.input}
    if request.user is not None:
        payload["user"] = request.user
    payload.update(request.extra)  # encoding_format, dimensions, ...
    return orjson.dumps(payload)


class _Item(msgspec.Struct, gc=False):
    index: int = 0
    embedding: list[float] | str = msgspec.field(default_factory=list)


class _Usage(msgspec.Struct, gc=False):
    prompt_tokens: int = 0


class _Answer(msgspec.Struct, gc=False):
    data: list[_Item]
    model: str | None = None
    usage: _Usage | None = None


_decode = msgspec.json.Decoder(_Answer).decode


class EmbeddingsDecoder:
    """Collects the body; its events come at the end."""

    __slots__ = ("_model", "_parts", "_size", "done", "error")

    def __init__(self, model: str) -> None:
        self._model = model
        self._parts: list[bytes] = []
        self._size = 0
        self.done = False
        self.error: SluiceError | None = None

    def feed(self, data: bytes) -> Batch:
        self._size += len(data)
        if self._size > MAX_BODY:
            raise UpstreamProtocolError(
                f"the upstream's embeddings are larger than {MAX_BODY} bytes"
            )
        self._parts.append(data)
        return []

    def eof(self) -> Batch:
        try:
            answer = _decode(b"".join(self._parts))
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            raise UpstreamProtocolError(f"the upstream's embeddings do not decode: {exc}") from exc
        self.done = True
        batch: Batch = [Start("openai_chat", "", answer.model or self._model)]
        batch.extend(Embedding(item.index, item.embedding) for item in answer.data)
        tokens = answer.usage.prompt_tokens if answer.usage is not None else 0
        batch.append(Usage(tokens, 0))
        batch.append(Finish("stop"))
        return batch
