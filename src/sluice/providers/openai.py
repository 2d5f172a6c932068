"""The ``openai`` provider: any OpenAI-compatible chat completions upstream.

OpenAI itself, vLLM, Ollama, llama.cpp, Groq, OpenRouter and Azure-style base URLs.
The request always asks for the usage chunk, so every request's tokens are known.
Each upstream read becomes one batch of events, so chunks that arrived together are
written to the client together.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator
from typing import Any

import orjson

from sluice.config import Deployment
from sluice.errors import (
    ContextWindowExceeded,
    ModelNotFound,
    RequestError,
    UpstreamConnectError,
    UpstreamProtocolError,
    UpstreamStatusError,
    UpstreamTimeout,
)
from sluice.events import (
    ChatRequest,
    Chunks,
    Finish,
    StreamEvent,
)
from sluice.providers.http import (
    ConnectError,
    ConnectTimeout,
    HTTPError,
    Pool,
    Response,
    split_url,
)
from sluice.providers.openai_wire import (
    DecodeError,
    chunk_events,
    decode_chunk,
    not_a_chunk,
    plain_chunks,
)
from sluice.sse import SSEDecoder

_MAX_ERROR_BODY = 64 * 1024


def _endpoint(base_url: str) -> str:
    # Azure-style bases carry a query (api-version); the path goes before it.
    base, sep, query = base_url.partition("?")
    return f"{base.rstrip('/')}/chat/completions{sep}{query}"


def upstream_status(status: int) -> int:
    """The status the client sees for an upstream error status."""
    if status in (400, 404, 413, 422, 429):
        return 400 if status == 422 else status
    if status in (408, 504):
        return 504
    if status == 503:
        return 503
    return 502  # 401/403 (our upstream credentials) and 5xx are the gateway's problem


def _error_fields(body: bytes) -> tuple[str, str | None, str | None]:
    """The message, code and type of an upstream error body."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        text = body.decode("utf-8", "replace").strip()
        return (text[:500] or "no body"), None, None
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if isinstance(error, dict):
        code, kind = error.get("code"), error.get("type")
        return (
            str(error.get("message") or error),
            str(code) if code is not None else None,
            str(kind) if kind is not None else None,
        )
    if isinstance(error, str):
        return error, None, None
    return str(parsed)[:500], None, None


def _error_message(body: bytes) -> tuple[str, str | None]:
    message, code, _ = _error_fields(body)
    return message, code


#: How OpenAI-compatible servers say that the prompt does not fit. OpenAI, Azure and
#: Groq set the code; llama.cpp sets the type; vLLM, Mistral and others say it only in
#: the message ("This model's maximum context length is 4096 tokens...").
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


class _Watchdog:
    """First-token, idle and total timeouts for one stream, firing on their own.

    Each read only stores the time it started waiting; a timer armed on the loop checks
    that lazily and re-arms itself, so there is no per-read timer churn. Time spent
    writing to a slow client is not counted as upstream idleness. On expiry the error
    is set on the response, which wakes the pending read with it.
    """

    __slots__ = (
        "_handle",
        "_idle",
        "_loop",
        "_response",
        "_total",
        "first",
        "wait_start",
        "waiting",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        response: Response,
        first_deadline: float,
        idle: float,
        deadline: float,
    ) -> None:
        self._loop = loop
        self._response = response
        self._idle = idle
        self.first = True
        self.waiting = True
        self.wait_start = loop.time()
        self._handle: asyncio.TimerHandle | None = None
        self._total: asyncio.TimerHandle | None = None
        if first_deadline != float("inf"):
            self._handle = loop.call_at(first_deadline, self._expire, "first token")
        if deadline != float("inf"):
            self._total = loop.call_at(deadline, self._expire, "total time")

    def got_first(self) -> None:
        self.first = False
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._idle:
            self._handle = self._loop.call_at(self._loop.time() + self._idle, self._check)

    def _check(self) -> None:
        now = self._loop.time()
        due = (self.wait_start if self.waiting else now) + self._idle
        if self.waiting and now >= due - 0.001:
            self._expire("next chunk")
        else:
            self._handle = self._loop.call_at(due, self._check)

    def _expire(self, what: str) -> None:
        self.cancel()
        self._response.interrupt(UpstreamTimeout(f"the upstream timed out waiting for the {what}"))

    def cancel(self) -> None:
        for handle in (self._handle, self._total):
            if handle is not None:
                handle.cancel()
        self._handle = self._total = None


def _header_lines(headers: dict[str, str]) -> bytes:
    lines = []
    for name, value in headers.items():
        if any(c in name or c in value for c in "\r\n\0") or not name.strip():
            raise ValueError(f"upstream header {name!r} has a line break or is empty")
        lines.append(f"{name}: {value}\r\n")
    return "".join(lines).encode("latin-1")


#: What ends a run of plain content chunks: a finish reason, a usage object, an error
#: or ``[DONE]`` (in compact JSON; other spellings only make ``plain_chunks`` say no,
#: and the read is decoded as usual).
_STOPS = (b'"finish_reason":"', b'"usage":{', b'"error"', b"data: [DONE]")
#: They come at the end of a stream, so only a read's last bytes are searched for them.
_TAIL = 4096


def _plain_prefix(events: bytes) -> tuple[Chunks | None, int]:
    """The content chunks at the start of ``events`` (whole events) and where they end.

    The cut is a guess from the last bytes; ``plain_chunks`` checks every event before
    it, so a stop earlier in the read only costs the undecoded path, never correctness.
    """
    size = len(events)
    stop = size
    tail = max(0, size - _TAIL)
    for marker in _STOPS:
        at = events.find(marker, tail, stop)
        if at >= 0:
            stop = at
    cut = size if stop == size else events.rfind(b"\n\n", 0, stop) + 2
    if cut < 2:
        return None, 0
    chunks = plain_chunks(events if cut == size else events[:cut])
    return (chunks, cut) if chunks is not None else (None, 0)


def _split(data: bytes, decoder: SSEDecoder) -> list[bytes | Chunks]:
    """One read as payloads to decode and, where it holds a run of plain content
    chunks, one ``Chunks`` passing them along undecoded, in stream order.

    What the decoder holds of an event from earlier reads is finished through it first
    and the read's unfinished last event goes to it after, so ``plain_chunks`` only
    ever sees whole events that start at an event boundary.
    """
    feed = decoder.feed_data
    items: list[bytes | Chunks] = []
    start = 0
    if not decoder.at_boundary:
        first = data.find(b"\n\n")
        if first < 0:
            items.extend(feed(data))
            return items
        start = first + 2
        items.extend(feed(data[:start]))
        if not decoder.at_boundary:
            items.extend(feed(data[start:]))
            return items
    last = data.rfind(b"\n\n")
    if last < start:
        items.extend(feed(data[start:]))
        return items
    end = last + 2
    whole = data if start == 0 and end == len(data) else data[start:end]
    chunks, cut = _plain_prefix(whole)
    if chunks is None:
        items.extend(feed(data[start:]))
        return items
    items.append(chunks)
    items.extend(feed(data[start + cut :]))
    return items


class OpenAIProvider:
    owned_by = "openai"

    def __init__(self, deployment: Deployment, pool: Pool) -> None:
        self._deployment = deployment
        self._pool = pool
        self._origin, target = split_url(_endpoint(deployment.base_url))
        headers = {
            "Host": self._origin.authority,
            "Content-Type": "application/json",
            "Accept": "text/event-stream",
        }
        key = deployment.api_key.get() if deployment.api_key else ""
        if key:
            if ".azure.com" in deployment.base_url:
                headers["api-key"] = key
            else:
                headers["Authorization"] = f"Bearer {key}"
        headers.update(deployment.headers)
        # The request head, but for its length: built once, written with each body.
        self._head = f"POST {target} HTTP/1.1\r\n".encode("latin-1") + _header_lines(headers)
        self._connect_timeout = deployment.timeouts.connect or None
        if "openai.com" not in deployment.base_url:
            self.owned_by = f"openai-compatible ({self._origin.authority})"

    def payload(self, request: ChatRequest) -> bytes:
        body: dict[str, Any] = dict(request.options)
        body["model"] = self._deployment.upstream_model(request.model)
        body["messages"] = request.messages
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
        return orjson.dumps(body)

    def _request(self, request: ChatRequest) -> bytes:
        body = self.payload(request)
        return b"".join((self._head, b"Content-Length: %d\r\n\r\n" % len(body), body))

    async def stream(
        self, request: ChatRequest, undecoded: bool = False
    ) -> AsyncGenerator[list[StreamEvent], None]:
        timeouts = self._deployment.timeouts
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + timeouts.total if timeouts.total else float("inf")
        first_deadline = started + timeouts.first_token if timeouts.first_token else float("inf")
        response: Response | None = None
        watchdog: _Watchdog | None = None
        try:
            try:
                # The request and its response head: nothing is yielded in here, so a
                # timeout context is safe (one that spans a yield would cancel whichever
                # task happens to be running when it fires).
                async with asyncio.timeout_at(min(deadline, first_deadline)):
                    response = await self._pool.request(
                        self._origin, self._request(request), self._connect_timeout
                    )
            except TimeoutError as exc:
                what = "total time" if loop.time() >= deadline else "first token"
                raise UpstreamTimeout(f"the upstream timed out waiting for the {what}") from exc
            except ConnectTimeout as exc:
                raise UpstreamTimeout("timed out connecting to the upstream") from exc
            except ConnectError as exc:
                raise UpstreamConnectError(f"cannot connect to the upstream: {exc}") from exc
            except HTTPError as exc:
                raise UpstreamConnectError(f"upstream request failed: {exc}") from exc
            if response.status >= 400:
                await self._raise_status(response)
            watchdog = _Watchdog(loop, response, first_deadline, timeouts.idle, deadline)
            decoder = SSEDecoder()
            feed = decoder.feed_data
            decode = decode_chunk
            read = response.read
            saw_finish = False
            # With several choices per chunk the other choices are dropped, so each
            # chunk has to be read.
            plain = undecoded and request.options.get("n") in (None, 1)
            while True:
                watchdog.wait_start = loop.time()
                watchdog.waiting = True
                try:
                    data = await read()
                except HTTPError as exc:
                    raise UpstreamProtocolError(
                        f"the upstream connection broke mid-stream ({exc})"
                    ) from exc
                watchdog.waiting = False
                if not data:
                    if saw_finish:
                        return
                    raise UpstreamProtocolError("the upstream closed the stream before it finished")
                batch: list[StreamEvent] = []
                for payload in _split(data, decoder) if plain else feed(data):
                    if isinstance(payload, Chunks):
                        batch.append(payload)
                        continue
                    if payload == b"[DONE]":
                        if batch:
                            yield batch
                        return
                    try:
                        chunk = decode(payload)
                    except (DecodeError, UnicodeDecodeError) as exc:
                        raise not_a_chunk(exc) from exc
                    if chunk.error is not None:
                        if batch:  # what came before the error still reaches the client
                            yield batch
                        message, _ = _error_message(payload)
                        raise UpstreamProtocolError(f"upstream error: {message}")
                    chunk_events(chunk, payload, batch)
                if batch:
                    if watchdog.first:
                        watchdog.got_first()
                    if not saw_finish:
                        saw_finish = Finish in map(type, batch)
                    yield batch
        finally:
            if watchdog is not None:
                watchdog.cancel()
            if response is not None:
                # Back to the pool only if the whole body was read; else closed, which
                # is how the upstream learns that nobody is listening any more.
                response.release()

    async def _raise_status(self, response: Response) -> None:
        body = b""
        with contextlib.suppress(HTTPError):
            body = await response.read_all(_MAX_ERROR_BODY)
        message, code, kind = _error_fields(body)
        status = response.status
        headers = {}
        retry_after = response.headers.get("retry-after")
        if retry_after:
            headers["Retry-After"] = retry_after
        if status == 404 and (code == "model_not_found" or "model" in message.lower()):
            raise ModelNotFound(f"upstream: {message}", param="model")
        if status in (400, 413, 422):
            if is_context_window_error(message, code, kind):
                raise ContextWindowExceeded(f"upstream: {message}", param="messages")
            raise RequestError(f"upstream: {message}", code=code, status=upstream_status(status))
        error = UpstreamStatusError(
            f"upstream answered {status}: {message}",
            status=upstream_status(status),
            code=code if status == 429 else None,
            headers=headers,
        )
        error.upstream_status = status
        raise error

    async def aclose(self) -> None:
        return None
