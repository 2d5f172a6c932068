"""What every wire does with an upstream error status: the status the client sees, and
whether a 4xx says the prompt did not fit the context window."""

from __future__ import annotations

from collections.abc import Mapping

from sluice.errors import (
    ContextWindowExceeded,
    ModelNotFound,
    RequestError,
    SluiceError,
    UpstreamStatusError,
)


def client_status(status: int) -> int:
    """The status the client sees for an upstream error status."""
    if status in (400, 404, 413, 422, 429):
        return 400 if status == 422 else status
    if status in (408, 504):
        return 504
    if status in (503, 529):
        return 503
    return 502  # 401/403 (our upstream credentials) and 5xx are the gateway's problem


#: How servers say that the prompt does not fit. OpenAI, Azure and Groq set the code;
#: llama.cpp sets the type; vLLM, Mistral, Anthropic and others say it in the message
#: ("This model's maximum context length is 4096 tokens...", "prompt is too long").
_CONTEXT_CODES = frozenset({"context_length_exceeded", "exceed_context_size_error"})
_CONTEXT_PHRASES = (
    "context length",
    "context window",
    "context size",
    "maximum model length",
    "prompt is too long",
)


def is_context_window_error(message: str, code: str | None, kind: str | None) -> bool:
    """Whether a 4xx error body says the messages exceed the model's context window."""
    if code in _CONTEXT_CODES or kind in _CONTEXT_CODES:
        return True
    lowered = message.lower()
    return any(phrase in lowered for phrase in _CONTEXT_PHRASES)


def status_error(
    status: int,
    message: str,
    code: str | None,
    kind: str | None,
    headers: Mapping[str, str],
) -> SluiceError:
    """The error for an upstream's error answer, its fields read by the wire."""
    extra = {}
    retry_after = headers.get("retry-after")
    if retry_after:
        extra["Retry-After"] = retry_after
    if status == 404 and (code == "model_not_found" or "model" in message.lower()):
        return ModelNotFound(f"upstream: {message}", param="model")
    if status in (400, 413, 422):
        if is_context_window_error(message, code, kind):
            return ContextWindowExceeded(f"upstream: {message}", param="messages")
        return RequestError(f"upstream: {message}", code=code, status=client_status(status))
    error = UpstreamStatusError(
        f"upstream answered {status}: {message}",
        status=client_status(status),
        code=code if status == 429 else None,
        headers=extra,
    )
    error.upstream_status = status
    return error
