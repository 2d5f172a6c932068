"""The generic upstream loop: one HTTP exchange per request, over any wire.

It owns what every format shares: the connection pool, the three timers (first token,
idle, total), backpressure (the next read happens only when the consumer asks for the
next batch) and release (a connection goes back to the pool only after a whole body;
anything else closes it, which is how the upstream learns that nobody listens). The
wire owns the bytes: the request, the decoding of reads into batches, the error body.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator, Mapping
from dataclasses import replace

from sluice import codings
from sluice.config import Deployment
from sluice.errors import (
    RequestError,
    SluiceError,
    Unsupported,
    UpstreamConnectError,
    UpstreamProtocolError,
    UpstreamTimeout,
    UpstreamTLSError,
)
from sluice.events import Batch, ChatRequest, WireFormat
from sluice.providers import Decoder, Wire
from sluice.providers.http import (
    ConnectError,
    ConnectTimeout,
    HTTPError,
    InvalidHTTP,
    Pool,
    Response,
    TLSError,
    split_url,
)
from sluice.sse import EventTooLarge

_MAX_ERROR_BODY = 64 * 1024
_TOTAL = "the upstream timed out: the answer took longer than the total time limit"
#: The most of a JSON answer ``HTTPProvider.call`` reads.
_MAX_ANSWER = 1024 * 1024


def endpoint(base_url: str, path: str) -> str:
    # Azure-style bases carry a query (api-version); the path goes before it.
    base, sep, query = base_url.partition("?")
    base = base.rstrip("/")
    if base.endswith(path):  # a base URL given with the endpoint already on it
        return f"{base}{sep}{query}"
    return f"{base}{path}{sep}{query}"


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
        if what == "total time":
            message = _TOTAL
        else:
            message = f"the upstream timed out waiting for the {what}"
        self._response.interrupt(UpstreamTimeout(message))

    def cancel(self) -> None:
        for handle in (self._handle, self._total):
            if handle is not None:
                handle.cancel()
        self._handle = self._total = None


def _header_lines(headers: dict[str, str]) -> bytes:
    lines = []
    for name, value in headers.items():
        if any(c in name or c in value for c in "\r\n\0") or not name.strip():
            # Never the value in the message: it may be a credential.
            raise RequestError(
                f"the upstream header {name!r} holds a line break or is empty", param=name
            )
        lines.append(f"{name}: {value}\r\n")
    return "".join(lines).encode("latin-1")


class HTTPProvider:
    """A configured upstream: a wire, a base URL, credentials."""

    def __init__(
        self,
        deployment: Deployment,
        pool: Pool,
        wire: Wire,
        owned_by: str,
        trace: Callable[[], dict[str, str]] | None = None,
    ) -> None:
        self._deployment = deployment
        #: With tracing on: the headers that carry the current span (``traceparent``),
        #: added to each request; the fixed head below cannot hold them.
        self._trace = trace
        self._pool = pool
        self._wire = wire
        self.format: WireFormat = wire.format
        origin, target = split_url(endpoint(deployment.base_url, wire.path))
        if origin.scheme == "https" and deployment.ca_file:
            origin = replace(origin, ca_file=deployment.ca_file)
        self._origin = origin
        self._embeddings_target: str | None = None
        if wire.embeddings_path is not None:
            embeddings_url = endpoint(deployment.base_url, wire.embeddings_path)
            self._embeddings_target = split_url(embeddings_url)[1]
        headers = {
            "Host": self._origin.authority,
            "Content-Type": "application/json",
            "Accept": "text/event-stream",
            # No Accept-Encoding would allow any coding (RFC 9110 §12.5.3); a stream is
            # read as it comes. A server that compresses anyway is decoded (``_Inflate``).
            "Accept-Encoding": "identity",
        }
        headers.update(wire.fixed_headers)
        key = deployment.api_key.get() if deployment.api_key else ""
        self._key = key
        if key:
            headers.update(wire.auth_headers(key, deployment.base_url))
        headers.update(deployment.headers)
        # The request head, but for its length: built once, written with each body.
        self._lines = _header_lines(headers)
        self._head = f"POST {target} HTTP/1.1\r\n".encode("latin-1") + self._lines
        self._connect_timeout = deployment.timeouts.connect or None
        self.owned_by = owned_by
        if owned_by.startswith("openai") and "openai.com" not in deployment.base_url:
            self.owned_by = f"openai-compatible ({self._origin.authority})"

    def payload(self, request: ChatRequest) -> bytes:
        return self._wire.body(request, self._deployment.upstream_model(request.model))

    def _request(self, request: ChatRequest) -> bytes:
        body = self.payload(request)
        extra = self._wire.request_headers(request)
        if self._trace is not None:
            extra = {**extra, **self._trace()}
        head = self._head
        if request.operation == "embeddings":
            target = self._embeddings_target
            if target is None:
                raise Unsupported(
                    f"a {self._wire.format} upstream has no embeddings", param="model"
                )
            head = f"POST {target} HTTP/1.1\r\n".encode("latin-1") + self._lines
        if extra:
            head += _header_lines(extra)
        return b"".join((head, b"Content-Length: %d\r\n\r\n" % len(body), body))

    async def stream(
        self, request: ChatRequest, verbatim: bool = False
    ) -> AsyncGenerator[Batch, None]:
        timeouts = self._deployment.timeouts
        data_out = self._request(request)  # a request the format cannot carry fails here
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + timeouts.total if timeouts.total else float("inf")
        first_deadline = started + timeouts.first_token if timeouts.first_token else float("inf")
        response: Response | None = None
        watchdog: _Watchdog | None = None
        decoder: Decoder | None = None
        try:
            # The request and its response head: nothing is yielded in here, so a
            # timeout context is safe (one that spans a yield would cancel whichever
            # task happens to be running when it fires).
            with _mapped(loop, deadline):
                async with asyncio.timeout_at(min(deadline, first_deadline)):
                    response = await self._pool.request(
                        self._origin, data_out, self._connect_timeout
                    )
            if response.status >= 400:
                raise await self._error(response)
            watchdog = _Watchdog(loop, response, first_deadline, timeouts.idle, deadline)
            decoder = self._wire.decoder(request, verbatim)
            feed = decoder.feed
            read = response.read
            coding = response.headers.get("content-encoding", "").strip().lower()
            if coding not in ("", "identity"):
                read = _Inflate(read, coding).read
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
                    batch = decoder.eof()
                    if batch:
                        yield batch
                    return
                try:
                    batch = feed(data)
                except EventTooLarge as exc:
                    raise UpstreamProtocolError(f"the upstream sent {exc}") from exc
                if batch:
                    if watchdog.first:
                        watchdog.got_first()
                    yield batch
                if decoder.done:
                    if decoder.error is not None:
                        raise decoder.error
                    return
        except SluiceError as exc:
            self._hide_key(exc)
            raise
        finally:
            if watchdog is not None:
                watchdog.cancel()
            if response is not None:
                # Back to the pool only if the whole body was read (or all but its last
                # chunk, after the stream's own end); else closed.
                response.release(ended=decoder is not None and decoder.done)

    async def _error(self, response: Response) -> SluiceError:
        body = b""
        with contextlib.suppress(HTTPError):
            body = await response.read_all(_MAX_ERROR_BODY)
        with contextlib.suppress(UpstreamProtocolError):
            body = _inflated(body, response.headers, _MAX_ERROR_BODY)
        return self._hide_key(self._wire.error(response.status, body, response.headers))

    def _hide_key(self, exc: SluiceError) -> SluiceError:
        """An upstream may quote the key it refused (``Incorrect API key provided:
        sk-…``): never pass it on to a client, a log or a record."""
        key = self._key
        if key and key in exc.message:
            exc.message = exc.message.replace(key, "[the upstream key]")
            exc.args = (exc.message,)
        return exc

    async def call(self, path: str, body: bytes, request: ChatRequest) -> bytes:
        """One JSON exchange with ``path`` beside the wire's own endpoint (Anthropic's
        ``count_tokens``), not streamed: the answer's body. An error status is the
        wire's error; a connection that fails or an answer later than the first-token
        (or total) timeout fails as ``stream`` does."""
        base, sep, query = self._deployment.base_url.partition("?")
        base = base.rstrip("/").removesuffix(self._wire.path)
        target = split_url(f"{base}{path}{sep}{query}")[1]
        head = f"POST {target} HTTP/1.1\r\n".encode("latin-1") + self._lines
        head += _header_lines(self._wire.request_headers(request))
        data = b"".join((head, b"Content-Length: %d\r\n\r\n" % len(body), body))
        timeouts = self._deployment.timeouts
        loop = asyncio.get_running_loop()
        limit = min((t for t in (timeouts.first_token, timeouts.total) if t), default=0.0)
        deadline = loop.time() + limit if limit else float("inf")
        response: Response | None = None
        try:
            with _mapped(loop, deadline, "answer"):
                async with asyncio.timeout_at(deadline):
                    response = await self._pool.request(self._origin, data, self._connect_timeout)
                    if response.status >= 400:
                        raise await self._error(response)
                    body = await response.read_all(_MAX_ANSWER)
                    return _inflated(body, response.headers, _MAX_ANSWER)
        finally:
            if response is not None:
                response.release()

    async def aclose(self) -> None:
        return None


#: The most one compressed read may expand to: past it, the body is refused.
_MAX_INFLATE = 16 * 1024 * 1024
_SUBJECT = "the upstream's body"


class _Inflate:
    """Reads of a body a server compressed although asked for ``identity`` (gzip or
    deflate: ``codings``' decoders), decoded read by read."""

    __slots__ = ("_decoder", "_read")

    def __init__(self, read: Callable[[], Awaitable[bytes]], coding: str) -> None:
        self._read = read
        with _as_protocol_error():
            self._decoder = codings.decoder(coding, _MAX_INFLATE, _SUBJECT, per_feed=True)

    async def read(self) -> bytes:
        while True:
            data = await self._read()
            with _as_protocol_error():
                out = self._decoder.feed(data) if data else self._decoder.flush()
            if out or not data:
                return out


def _inflated(body: bytes, headers: Mapping[str, str], limit: int) -> bytes:
    """A whole body decoded as its ``Content-Encoding`` says, at most ``limit`` bytes."""
    coding = headers.get("content-encoding")
    if not coding or not body:
        return body
    with _as_protocol_error():
        decoder = codings.decoder(coding, limit, _SUBJECT)
        return decoder.feed(body) + decoder.flush()


@contextlib.contextmanager
def _as_protocol_error() -> Iterator[None]:
    """What a decoder of the upstream's body refuses is the upstream's fault."""
    try:
        yield
    except SluiceError as exc:
        raise UpstreamProtocolError(exc.message) from exc


@contextlib.contextmanager
def _mapped(
    loop: asyncio.AbstractEventLoop, deadline: float, awaited: str = "first token"
) -> Iterator[None]:
    """Connection failures and a timeout while waiting for the upstream, as errors of
    the tree (a timeout past ``deadline`` is the total time's, else ``awaited``'s)."""
    try:
        yield
    except TimeoutError as exc:
        if loop.time() >= deadline:
            raise UpstreamTimeout(_TOTAL) from exc
        raise UpstreamTimeout(f"the upstream timed out waiting for the {awaited}") from exc
    except ConnectTimeout as exc:
        raise UpstreamTimeout("timed out connecting to the upstream") from exc
    except InvalidHTTP as exc:
        raise UpstreamProtocolError(str(exc)) from exc
    except TLSError as exc:
        raise UpstreamTLSError(f"cannot connect to the upstream: {exc}") from exc
    except ConnectError as exc:
        raise UpstreamConnectError(f"cannot connect to the upstream: {exc}") from exc
    except HTTPError as exc:
        raise UpstreamConnectError(f"upstream request failed: {exc}") from exc
