"""OpenAI embeddings: ``POST /v1/embeddings``. The request goes through the same
policies as a generation (keys, limits, budgets, cache, routing, the record); the
answer is one JSON object."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from sluice.dialects import Headers, error_headers
from sluice.dialects.bounds import DEFAULT_BOUNDS, Bounds, no_line_break
from sluice.dialects.openai_chat import error_body
from sluice.dialects.openai_request import fail, parse_object
from sluice.errors import SluiceError
from sluice.events import Batch, ChatRequest, Embedding, Start, Usage, Verbatim, WireFormat

#: OpenAI's limit on inputs per request.
MAX_INPUTS = 2048
_FIELDS = frozenset({"model", "input", "encoding_format", "dimensions", "user"})


def _input(value: Any) -> list[str | list[int]]:
    if isinstance(value, str):
        items: list[Any] = [value]
    elif isinstance(value, list) and value and all(isinstance(v, int) for v in value):
        items = [value]  # one input as token ids
    elif isinstance(value, list):
        items = value
    else:
        raise fail("'input' must be a string, an array of strings or of token arrays", "input")
    if not items:
        raise fail("'input' must not be empty", "input")
    if len(items) > MAX_INPUTS:
        raise fail(f"'input' may hold at most {MAX_INPUTS} items", "input")
    for i, item in enumerate(items):
        if isinstance(item, str):
            if not item:
                raise fail(f"input[{i}] is an empty string", f"input[{i}]")
        elif not (
            isinstance(item, list)
            and item
            and all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in item)
        ):
            raise fail(
                f"input[{i}] must be a non-empty string or array of token ids", f"input[{i}]"
            )
    return items


def decode(body: bytes, bounds: Bounds = DEFAULT_BOUNDS) -> ChatRequest:
    data = parse_object(body, bounds)
    model = data.get("model")
    if not isinstance(model, str) or not model.strip():
        raise fail("'model' is required and must be a non-empty string", "model")
    no_line_break(model, "model")
    items = _input(data.get("input"))
    extra: dict[str, Any] = {}
    encoding = data.get("encoding_format")
    if encoding is not None:
        if encoding not in ("float", "base64"):
            raise fail("'encoding_format' must be 'float' or 'base64'", "encoding_format")
        extra["encoding_format"] = encoding
    dimensions = data.get("dimensions")
    if dimensions is not None:
        if isinstance(dimensions, bool) or not isinstance(dimensions, int) or dimensions < 1:
            raise fail("'dimensions' must be a positive integer", "dimensions")
        extra["dimensions"] = dimensions
    user = data.get("user")
    if user is not None and not isinstance(user, str):
        raise fail("'user' must be a string", "user")
    raw = data.get("input")
    if isinstance(raw, str) or (isinstance(raw, list) and raw and isinstance(raw[0], int)):
        extra["input"] = raw  # one input: sent upstream as the client wrote it
    unknown = sorted(set(data) - _FIELDS)
    extra.update((k, data[k]) for k in unknown)  # vendor fields, passed on as given
    return ChatRequest(
        model=model,
        messages=[],
        stream=False,
        user=user,
        extra=extra,
        operation="embeddings",
        input=items,
    )


class EmbeddingsEncoder:
    streaming: bool = False
    content_type: bytes = b"application/json"
    keepalive: bytes | None = None
    verbatim: WireFormat | None = None

    def __init__(self, request: ChatRequest) -> None:
        self._model = request.model
        self._items: list[Embedding] = []
        self._tokens = 0

    def encode(self, batch: Batch) -> bytes:
        for event in batch:
            kind = type(event)
            if kind is Embedding:
                self._items.append(event)  # type: ignore[arg-type]
            elif kind is Usage:
                self._tokens = event.input_tokens  # type: ignore[union-attr]
            elif kind is Start:
                self._model = event.model or self._model  # type: ignore[union-attr]
            elif kind is Verbatim:
                self.encode(event.expanded())  # type: ignore[union-attr]
        return b""

    def end(self) -> bytes:
        data = [
            {"object": "embedding", "index": item.index, "embedding": item.vector}
            for item in sorted(self._items, key=lambda item: item.index)
        ]
        usage = {"prompt_tokens": self._tokens, "total_tokens": self._tokens}
        return orjson.dumps({"object": "list", "data": data, "model": self._model, "usage": usage})

    def error(self, exc: SluiceError) -> bytes:
        return error_body(exc)


class OpenAIEmbeddingsDialect:
    name = "openai_embeddings"
    id_prefix = "emb-"

    def __init__(self, bounds: Bounds = DEFAULT_BOUNDS) -> None:
        self.bounds = bounds

    def decode(
        self, body: bytes, query: Mapping[str, str], headers: Mapping[str, str], default_model: str
    ) -> ChatRequest:
        return decode(body, self.bounds)

    def error_response(self, exc: SluiceError) -> tuple[int, Headers, bytes]:
        return exc.status, error_headers(b"application/json", exc), error_body(exc)

    def encoder(self, request: ChatRequest, response_id: str) -> EmbeddingsEncoder:
        return EmbeddingsEncoder(request)
