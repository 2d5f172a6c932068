"""The seed: ``GET /?prompt=…&model=…`` answered as plain UTF-8 text, one write per
upstream read."""

from __future__ import annotations

from collections.abc import Mapping

from sluice.dialects import Headers, error_headers
from sluice.errors import RequestError, SluiceError
from sluice.events import (
    Batch,
    ChatRequest,
    Message,
    StreamError,
    TextDelta,
    TextPart,
    WireFormat,
    expand,
)

DEFAULT_PROMPT = "Tell me a story"
MAX_PROMPT_CHARS = 32_000


class TextEncoder:
    streaming: bool = True
    content_type: bytes = b"text/plain; charset=utf-8"
    keepalive: bytes | None = None
    verbatim: WireFormat | None = None

    def encode(self, batch: Batch) -> bytes:
        # Providers hand over whole characters (SSE lines are decoded whole), so one
        # encode per batch never splits a UTF-8 sequence across writes.
        texts: list[str] = []
        for event in expand(batch):
            kind = type(event)
            if kind is TextDelta:
                if event.text and not event.choice:  # type: ignore[union-attr]
                    texts.append(event.text)  # type: ignore[union-attr]
            elif kind is StreamError:
                texts.append(f"\n\n[error: {event.message}]\n")  # type: ignore[union-attr]
        if not texts:
            return b""
        return (texts[0] if len(texts) == 1 else "".join(texts)).encode()

    def end(self) -> bytes:
        return b""

    def error(self, exc: SluiceError) -> bytes:
        return f"\n\n[error: {exc.message}]\n".encode()


class TextDialect:
    name = "text"
    id_prefix = "chatcmpl-"

    def decode(
        self, body: bytes, query: Mapping[str, str], headers: Mapping[str, str], default_model: str
    ) -> ChatRequest:
        prompt = query.get("prompt", DEFAULT_PROMPT)
        if not prompt.strip():
            raise RequestError("the prompt is empty", param="prompt")
        if len(prompt) > MAX_PROMPT_CHARS:
            raise RequestError(
                f"the prompt is longer than {MAX_PROMPT_CHARS} characters", param="prompt"
            )
        model = query.get("model") or default_model
        return ChatRequest(model=model, messages=[Message("user", [TextPart(prompt)])])

    def error_response(self, exc: SluiceError) -> tuple[int, Headers, bytes]:
        body = f"error: {exc.message}\n".encode()
        return exc.status, error_headers(b"text/plain; charset=utf-8", exc), body

    def encoder(self, request: ChatRequest, response_id: str) -> TextEncoder:
        return TextEncoder()
