"""The ASGI app: routes → dialect → pipeline → relay to the client, recorded in a finally."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import orjson

from sluice import config
from sluice.chat_resume import ResumableChat, wants_resume
from sluice.config import Settings
from sluice.cors import Cors
from sluice.dialects import Dialect, Encoder
from sluice.dialects.anthropic_messages import AnthropicMessagesDialect, count_tokens_body
from sluice.dialects.bounds import Bounds
from sluice.dialects.openai_chat import OpenAIChatDialect
from sluice.dialects.openai_embeddings import OpenAIEmbeddingsDialect
from sluice.dialects.text import TextDialect
from sluice.drain import Drain
from sluice.errors import (
    MethodNotAllowed,
    NotFound,
    ShuttingDown,
    SluiceError,
)
from sluice.events import Batch, ChatRequest, estimate_input_tokens, transcript
from sluice.exchange import ClientGone, Exchange, Receive, Scope, Send, check_head
from sluice.generations import Detached, Generation, Generations
from sluice.journal import journals_for
from sluice.policies import Call, Handler, pipeline
from sluice.policies.auth import (
    Access,
    Authenticator,
    exposure_problem,
    may_use,
    model_access,
    require_model,
    visible_models,
)
from sluice.policies.budget import Budgets
from sluice.policies.cache import Cache
from sluice.policies.lockout import Lockout
from sluice.policies.ratelimit import RateLimits
from sluice.policies.route import Router
from sluice.pricing import PriceTable
from sluice.providers.http import Pool
from sluice.providers.registry import Providers
from sluice.relay import relay
from sluice.responses_api import ResponsesAPI
from sluice.resume import Discard, discard, never
from sluice.state import SharedState, open_state
from sluice.store import Backlog, Record, RecordStore
from sluice.store.database import DatabaseOptions, open_database
from sluice.store.keys import KeyStore
from sluice.store.responses import ResponseStore
from sluice.telemetry import RequestSpan
from sluice.telemetry.metrics import Metrics
from sluice.ui_chat_api import UIChatAPI
from sluice.web import Console, is_console

if TYPE_CHECKING:
    from sluice.telemetry.traces import Tracing

log = logging.getLogger("sluice")

Handler_ = Callable[[Exchange, Dialect], Awaitable[None]]
JSON = [(b"content-type", b"application/json")]
#: Served while draining: a probe, and the last scrapes.
_DRAIN_OPEN = frozenset({"/healthz", "/readyz", "/metrics"})


@dataclass(frozen=True, slots=True)
class Route:
    """One entry of the route table: the dialect that decodes the request and renders
    its errors, and what serves it."""

    dialect: Dialect
    serve: Handler_


class RouteTable:
    """Exact paths, paths with one ``{id}`` segment, and paths that end in ``{rest}``:
    everything after a prefix, slashes included (model names such as
    ``meta-llama/Llama-3``)."""

    def __init__(self) -> None:
        self._exact: dict[str, dict[str, Route]] = {}
        self._prefixed: list[tuple[str, str, dict[str, Route]]] = []
        self._rest: dict[str, dict[str, Route]] = {}
        self._patterns: dict[int, str] = {}  # id of a methods dict → its pattern

    def add(self, method: str, path: str, route: Route) -> None:
        if path.endswith("{rest}"):
            methods = self._rest.setdefault(path.removesuffix("{rest}"), {})
        elif "{" in path:
            head, _, tail = path.partition("{id}")
            shared = (m for prefix, suffix, m in self._prefixed if (prefix, suffix) == (head, tail))
            methods = next(shared, {})
            if not methods:
                self._prefixed.append((head, tail, methods))
        else:
            methods = self._exact.setdefault(path, {})
        methods[method] = route
        self._patterns[id(methods)] = path

    def label(self, path: str) -> str:
        """The pattern of the route ``path`` matches (``/v1/responses/{id}``), or
        ``unmatched``: what metrics and traces name a route by."""
        found = self.find(path)
        return "unmatched" if found is None else self._patterns[id(found)]

    def find(self, path: str) -> dict[str, Route] | None:
        found = self._exact.get(path)
        if found is not None:
            return found
        for prefix, suffix, methods in self._prefixed:
            if path.startswith(prefix) and path.endswith(suffix):
                middle = path[len(prefix) : len(path) - len(suffix)]
                if middle and "/" not in middle:
                    return methods
        for prefix, methods in self._rest.items():
            if len(path) > len(prefix) and path.startswith(prefix):
                return methods
        return None


def path_id(path: str, prefix: str, suffix: str = "") -> str:
    return path[len(prefix) : len(path) - len(suffix)]


def _tune_gc() -> None:
    """Keep the cyclic garbage collector off the hot path.

    What start-up built lives as long as the process: freeze it, so collections stop
    scanning it. The per-chunk objects are freed by reference counting and form no
    cycles, so young collections can run far less often than every 700 allocations
    (measured: the collector took about a fifth of the relay's CPU).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(25_000, 20, 20)


#: Seconds between re-reads of a key's spend from records that other instances share
#: when the running spend is kept in this process (no Redis).
SHARED_RECORDS_RESEED = 2.0


#: Seconds a stream stopped at shutdown gets to write its error to a slow client.
STOP_WRITE = 2.0


def new_id() -> str:
    return uuid.uuid4().hex[:24]


class Gateway:
    def __init__(self, settings: Settings, store: RecordStore | None = None) -> None:
        self.settings = settings
        # Records, keys, stored responses and console sign-ins: SQLite, or PostgreSQL
        # shared by every instance (store/database.py chooses by the location).
        self.database = open_database(
            settings.database,
            DatabaseOptions(
                batch_size=settings.record_batch_size,
                flush_interval=settings.record_flush_interval,
                key_cache_ttl=settings.key_cache_ttl,
                max_pending=settings.record_max_pending,
                spill_dir=settings.spill_dir,
            ),
        )
        self.store: RecordStore = store if store is not None else self.database.records
        self.responses: ResponseStore = self.database.responses
        # Key lookups are cached briefly (settings.key_cache_ttl).
        self.keys: KeyStore = self.database.keys
        self._auth = Authenticator(settings, self.keys)
        self._budgets: Budgets | None = None
        self._cache: Cache | None = None
        self._pool: Pool | None = None
        self._providers: Providers | None = None
        self._handler: Handler | None = None
        self._state: SharedState | None = None
        self._generations: Generations | None = None
        bounds = Bounds(settings.max_json_depth, settings.max_messages)
        self._text = TextDialect()
        self._openai = OpenAIChatDialect(bounds)
        embeddings = OpenAIEmbeddingsDialect(bounds)
        self._anthropic = AnthropicMessagesDialect(bounds)
        self.routes = RouteTable()
        text, openai, anthropic = self._text, self._openai, self._anthropic
        api = ResponsesAPI(
            self.responses,
            self._serve,
            settings.max_body_bytes,
            self._detach,
            lambda: self.generations,
            settings.keepalive_interval,
            bounds,
        )
        responses = api.dialect
        ui = UIChatAPI(
            self._serve,
            settings.max_body_bytes,
            settings.default_model,
            settings.keepalive_interval,
            self._detach,
            lambda: self.generations,
            bounds,
        )
        self._resumable = ResumableChat(
            self._detach, lambda: self.generations, settings.keepalive_interval
        )
        for method, path, route in (
            ("GET", "/", Route(text, self._generate)),
            ("POST", "/v1/chat/completions", Route(openai, self._generate)),
            ("GET", "/v1/chat/completions/{id}/stream", Route(openai, self._resumable.resume)),
            ("POST", "/v1/embeddings", Route(embeddings, self._generate)),
            ("GET", "/v1/models", Route(openai, self._models)),
            ("GET", "/v1/models/{rest}", Route(openai, self._model)),
            ("POST", "/v1/responses", Route(responses, api.create)),
            ("GET", "/v1/responses/{id}", Route(responses, api.retrieve)),
            ("DELETE", "/v1/responses/{id}", Route(responses, api.delete)),
            ("POST", "/v1/responses/{id}/cancel", Route(responses, api.cancel)),
            ("GET", "/v1/responses/{id}/input_items", Route(responses, api.input_items)),
            ("GET", "/healthz", Route(openai, self._health)),
            ("GET", "/readyz", Route(openai, self._ready)),
            ("POST", "/v1/messages", Route(anthropic, self._generate)),
            ("POST", "/v1/messages/count_tokens", Route(anthropic, self._count_tokens)),
            ("POST", "/api/chat", Route(ui.dialect, ui.create)),
            ("GET", "/api/chat/{id}/stream", Route(ui.dialect, ui.resume)),
            ("POST", "/api/chat/{id}/stop", Route(ui.dialect, ui.stop)),
            ("GET", "/metrics", Route(openai, self._scrape)),
        ):
            self.routes.add(method, path, route)
        # The web console at /ui/: its own sign-in; its playground calls the routes above.
        self.console = Console(
            settings,
            self._auth,
            self.keys,
            self.database.sessions,
            self.database.queries,
            self._model_names,
            self._http,
        )
        self.metrics = Metrics(settings.metrics.multiprocess_dir, self.routes.label)
        self._cors = Cors(settings.cors)
        self._tracing: Tracing | None = None
        #: SIGTERM drains: see drain.py.
        self.drain = Drain(settings.shutdown_grace)

    def _error_dialect(self, path: str) -> Dialect:
        """The dialect that renders errors for a path no route matched."""
        if path == "/v1/messages" or path.startswith("/v1/messages/"):
            return self._anthropic
        return self._text if path == "/" else self._openai

    @property
    def state(self) -> SharedState:
        """What every instance shares (memory, or Redis with ``redis_url``); opened in
        ``startup`` before the pipeline is built, closed in ``shutdown``."""
        assert self._state is not None, "the gateway has not started"
        return self._state

    # -- lifecycle ---------------------------------------------------------------

    async def startup(self) -> None:
        # The safe default holds however the app is served (sluice serve, or an ASGI
        # server given create_app): no public address without authentication.
        problem = await exposure_problem(self.settings, self.keys)
        if problem is not None:
            raise config.ConfigError(problem)
        if self.settings.traces.enabled:
            from sluice.telemetry.traces import Tracing

            self._tracing = Tracing(self.settings.traces, self.routes.label)
        tracing = self._tracing
        self._pool = Pool(proxies=self.settings.proxies)
        self._providers = Providers(
            self.settings, self._pool, tracing.headers if tracing is not None else None
        )
        redis_url = self.settings.redis_url
        self._state = open_state(redis_url.get() if redis_url else None)
        await self._state.start()
        if self.settings.auth_max_failures:
            self._auth.lockout = Lockout(self._state, self.settings.auth_max_failures)
        generations = self.settings.generations
        self._generations = Generations(
            generations,
            self._state,
            journals_for(self._state, 0, generations.max_total_bytes, generations.retention),
            count_resumes=self.store.resumed,
        )
        self._watch_generations(self._generations)
        # Spend in a database that other instances write to, but counted in this
        # process's memory: re-read it from the shared records often, not every 10 min.
        reseed = SHARED_RECORDS_RESEED if self.database.shared and not redis_url else None
        self._budgets = Budgets(
            PriceTable(self.settings.pricing),
            self._state,
            self.keys,
            reseed_interval=reseed,
            output_estimate=self.settings.limits.output_estimate,
            resolve=self.settings.resolve,
        )
        cache = self.settings.cache
        self._cache = Cache(
            cache, journals_for(self._state, cache.max_entries, cache.max_bytes), self._state
        )
        self._handler = pipeline(
            [
                model_access,
                RateLimits(self.settings.limits, self._state, free=self._cache.answered),
                self._budgets.policy,
                self._cache,
            ],
            Router(self.settings, self._providers, self._state, tracer=tracing),
        )
        await self.store.start()
        await self.responses.start()
        if not self.drain.install(asyncio.get_running_loop()):
            log.debug("SIGTERM is not drained here (not the main thread, or no server handler)")
        _tune_gc()
        for name, deployment in self.settings.models.items():
            if deployment.provider == "simulator":
                log.warning(
                    "%s served by the offline simulator (no upstream key configured):"
                    " answers are generated text, not a real model",
                    "every model is" if name == "*" else f"model {name!r} is",
                )
            else:
                log.info("model %s → %s at %s", name, deployment.provider, deployment.base_url)

    def _watch_generations(self, generations: Generations) -> None:
        """While draining, generations running without a client (background responses)
        run on as requests do; at the deadline they fail, which ends their readers with
        the error and records them with outcome ``shutdown``."""
        self.drain.busy = generations.__len__
        failing: set[asyncio.Task[None]] = set()

        def fail() -> None:
            task = asyncio.get_running_loop().create_task(generations.shutdown())
            failing.add(task)
            task.add_done_callback(failing.discard)

        self.drain.track(fail)

    async def shutdown(self) -> None:
        self.drain.uninstall()
        if self._generations is not None:
            await self._generations.close()  # running generations end failed, recorded
        if self._cache is not None:
            await self._cache.close()  # generations in flight, before their upstreams
        if self._providers is not None:
            await self._providers.aclose()
        if self._pool is not None:
            await self._pool.close()
        await self.store.close()
        await self.database.close()
        if self._state is not None:
            await self._state.close()
        self.metrics.close()
        if self._tracing is not None:
            await asyncio.to_thread(self._tracing.close)

    # -- ASGI --------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(
        self, scope: Scope, receive: Receive, send: Send, access: Access | None = None
    ) -> None:
        """Serve one request; ``access`` is given only by the console's playground,
        for the requests it makes as the signed-in key."""
        path: str = scope["path"]
        method: str = scope["method"]
        if access is None and is_console(path):
            await self.console(scope, receive, send)  # not a client API call: not recorded
            return
        client = scope.get("client")
        record = Record(
            id=new_id(),
            started_at=time.time(),
            route=path,
            method=method,
            client=client[0] if client else None,
        )
        exchange = Exchange(scope, receive, send, record)
        span: RequestSpan | None = None
        if self._tracing is not None:
            span = self._tracing.request(record, exchange.headers)
        routes = self.routes.find(path)
        route = routes.get(method) if routes is not None else None
        if route is not None:
            dialect = route.dialect
        elif routes:
            dialect = next(iter(routes.values())).dialect
        else:
            dialect = self._error_dialect(path)
        t0 = time.perf_counter()
        drain = self.drain
        drain.enter()
        try:
            if drain.draining and path not in _DRAIN_OPEN:
                record.outcome = "rejected"  # never served: another instance can be asked
                raise ShuttingDown("the gateway is shutting down; retry on another instance")
            check_head(scope["headers"], self.settings.max_header_bytes)
            origin = exchange.headers.get("origin") if self._cors.enabled else None
            if origin is not None and self._cors.allows(origin):
                if method != "OPTIONS" or "access-control-request-method" not in exchange.headers:
                    exchange.response_headers.extend(self._cors.response_headers(origin))
                else:
                    preflight = self._cors.preflight(origin, exchange.headers)
                    if preflight is not None:  # else answered as any request (401, 405)
                        await exchange.respond(204, preflight, b"")
                        return
            if access is None:
                server = scope.get("server")
                access = await self._auth.check(
                    method, path, exchange.headers, record, server[0] if server else None
                )
            elif access.key is not None:
                record.key_id = access.key.id
            exchange.key, exchange.public = access.key, access.public
            if routes is None:
                raise NotFound(f"Unknown route: {method} {path}")
            if route is None:
                allowed = ", ".join(routes)
                raise MethodNotAllowed(
                    f"Method {method} is not allowed on {path}; use {allowed}",
                    headers={"Allow": allowed},
                )
            await route.serve(exchange, dialect)
        except ClientGone:
            record.outcome = "client_disconnected"
            record.status = 499
        except SluiceError as exc:
            await self._fail(exchange, dialect, exc)
        except Exception as exc:
            log.exception("unexpected error serving %s %s (request %s)", method, path, record.id)
            record.error_type = type(exc).__name__
            await self._fail(
                exchange, dialect, SluiceError(f"internal error: {type(exc).__name__}")
            )
        finally:
            drain.leave()
            record.ended_at = time.time()
            record.duration_ms = (time.perf_counter() - t0) * 1000
            if record.status == 0:
                record.status = exchange.status
            if exchange.record is record:  # else a generation took it: recorded at its end
                self.store.add(record)
                self.metrics.observe(record)
            if span is not None:
                span.end(record)

    async def _fail(self, exchange: Exchange, dialect: Dialect, exc: SluiceError) -> None:
        record = exchange.record
        record.error = exc.message
        if record.error_type is None:
            record.error_type = type(exc).__name__
        if record.outcome == "ok":
            record.outcome = "rejected" if exc.status < 500 and not exchange.started else "error"
        if exchange.started:
            return
        if exchange.disconnected:
            record.outcome = "client_disconnected"
            return
        status, headers, body = dialect.error_response(exc)
        with contextlib.suppress(OSError):
            await exchange.respond(status, headers, body)

    # -- routes ------------------------------------------------------------------

    async def _generate(self, exchange: Exchange, dialect: Dialect) -> None:
        body = b""
        if exchange.scope["method"] != "GET":
            body = await exchange.read_body(self.settings.max_body_bytes)
        request = dialect.decode(
            body, exchange.query, exchange.headers, self.settings.default_model
        )
        if dialect is self._openai and wants_resume(exchange.headers):
            await self._resumable.create(exchange, dialect, request)
            return
        await self._serve(exchange, dialect, request)

    async def _serve(
        self,
        exchange: Exchange,
        dialect: Dialect,
        request: ChatRequest,
        encoder: Encoder | None = None,
        wrap: Callable[[AsyncGenerator[Batch, None]], AsyncGenerator[Batch, None]] | None = None,
    ) -> None:
        """Serve ``request`` through the pipeline to the client: with the dialect's encoder
        unless one is given, the event stream passed through ``wrap`` when given."""
        call = self._call(exchange, dialect, request)
        record = call.record
        assert self._handler is not None, "the gateway has not started"
        if encoder is None:
            encoder = dialect.encoder(request, f"{dialect.id_prefix}{record.id}")
        if encoder.streaming and not self.settings.store_content:
            call.verbatim = encoder.verbatim
        stream = self._handler(request, call)
        if wrap is not None:
            stream = wrap(stream)
        task = asyncio.current_task()
        assert task is not None
        watcher = exchange.watch_disconnect(task)
        stopped = False

        def stop() -> None:  # the grace after SIGTERM is over
            nonlocal stopped
            stopped = True
            task.cancel()

        forget = self.drain.track(stop)
        self.metrics.stream_started(record)
        try:
            async with contextlib.aclosing(stream):
                await relay(
                    exchange,
                    stream,
                    encoder,
                    self.settings.keepalive_interval,
                    keep_text=self.settings.store_content,
                    call=call,
                )
        except asyncio.CancelledError:
            if stopped and not exchange.disconnected:
                task.uncancel()
                await self._stopped(exchange, encoder)
            elif not exchange.disconnected:
                raise
            else:
                task.uncancel()
                record.outcome = "client_disconnected"
                if not exchange.started:
                    record.status = 499
        except SluiceError as exc:
            if not exchange.started:
                raise
            # After the first byte the status is history: an in-band error, then a close.
            record.outcome = "error"
            record.error = exc.message
            record.error_type = type(exc).__name__
            with contextlib.suppress(OSError):
                await exchange.write(encoder.error(exc), more=False)
        finally:
            forget()
            watcher.cancel()
            self.metrics.stream_ended(record)
        if record.input_tokens is None:
            self._estimate_usage(request, record)
        assert self._budgets is not None
        await self._budgets.settle(request, call)

    async def _stopped(self, exchange: Exchange, encoder: Encoder) -> None:
        """A stream still running when the grace after SIGTERM ran out: its API's error
        (in-band once the head is out; never a clean end), and outcome ``shutdown``."""
        record = exchange.record
        error = ShuttingDown("the gateway shut down before the answer was complete")
        record.outcome = "shutdown"
        record.error = error.message
        record.error_type = type(error).__name__
        if not exchange.started:
            raise error  # an HTTP error in the API's shape (``_fail``)
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(STOP_WRITE):  # a client that no longer reads
                await exchange.write(encoder.error(error), more=False)

    @property
    def generations(self) -> Generations:
        """Generations that outlive their request; made in ``startup``."""
        assert self._generations is not None, "the gateway has not started"
        return self._generations

    def _call(self, exchange: Exchange, dialect: Dialect, request: ChatRequest) -> Call:
        """The pipeline's call for ``request``, its record filled in with what was asked."""
        record = exchange.record
        record.api = dialect.name
        record.model = request.model
        record.stream = request.stream
        record.operation = request.operation
        if self.settings.store_content:
            record.prompt = orjson.dumps(transcript(request)).decode()
        return Call(
            record=record,
            headers=exchange.headers,
            response_headers=exchange.response_headers,
            key=exchange.key,
            public=exchange.public,
        )

    async def _detach(
        self,
        exchange: Exchange,
        dialect: Dialect,
        request: ChatRequest,
        detached: Detached,
    ) -> Generation:
        """Start ``request`` as a generation of its own: it runs through the pipeline to
        its end whatever the client does, and its record (the request's, taken from the
        exchange) is written once, when it ends. The client reads it like any reader."""
        call = self._call(exchange, dialect, request)
        record = call.record
        handler, budgets = self._handler, self._budgets
        assert handler is not None and budgets is not None, "the gateway has not started"
        sink = Exchange(exchange.scope, never, discard, record)
        generations, metrics = self.generations, self.metrics
        keep_text = self.settings.store_content

        async def produce(generation: Generation) -> None:
            stream = handler(request, call)
            if detached.wrap is not None:
                stream = detached.wrap(stream)
            metrics.stream_started(record)
            try:
                async with contextlib.aclosing(generation.tee(stream)) as batches:
                    await relay(sink, batches, Discard(), 0, keep_text=keep_text, call=call)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                assert task is not None
                task.uncancel()  # recorded below, then the generation ends
                if generation.cancelled:
                    record.outcome, record.error = "cancelled", generation.reason
                else:
                    record.outcome = "shutdown"
                    record.error = "the gateway shut down before the generation ended"
                    record.error_type = ShuttingDown.__name__
            except SluiceError as exc:
                before = not sink.started and record.chunks == 0
                record.outcome = "rejected" if exc.status < 500 and before else "error"
                record.error = exc.message
                record.error_type = type(exc).__name__
                if before:
                    record.status = exc.status
            finally:
                metrics.stream_ended(record)
            if record.input_tokens is None:
                self._estimate_usage(request, record)
            await budgets.settle(request, call)
            record.resumes = await generations.resumes(generation.id)
            record.ended_at = time.time()
            record.duration_ms = (record.ended_at - record.started_at) * 1000
            self.store.add(record)
            metrics.observe(record)

        generation = await generations.begin(
            detached.id,
            detached.kind,
            exchange.key.id if exchange.key is not None else None,
            detached.data,
            produce,
            background=detached.background,
            on_cancel=detached.on_cancel,
            record_id=record.id,
        )
        generation.admitted = lambda: call.admitted
        # The request goes on as a reader; what it does is not the generation's record.
        exchange.record = Record(
            id=record.id,
            started_at=record.started_at,
            route=record.route,
            method=record.method,
            api=record.api,
            model=record.model,
            client=record.client,
            key_id=record.key_id,
        )
        return generation

    @staticmethod
    def _estimate_usage(request: ChatRequest, record: Record) -> None:
        record.input_tokens = estimate_input_tokens(request)
        record.output_tokens = record.chunks
        record.usage_source = "estimated"

    async def _count_tokens(self, exchange: Exchange, dialect: Dialect) -> None:
        """Anthropic's ``count_tokens``, once the key may use the model: a model whose
        deployment is an Anthropic upstream is counted there; any other gets the
        gateway's estimate."""
        body = await exchange.read_body(self.settings.max_body_bytes)
        request = self._anthropic.decode_count(body, exchange.headers)
        exchange.record.api = dialect.name
        exchange.record.model = request.model
        require_model(exchange.key, request.model)
        deployment = self.settings.resolve(request.model)
        tokens = None
        if deployment is not None:
            assert self._providers is not None, "the gateway has not started"
            tokens = await self._providers.count_tokens(deployment, request)
        if tokens is None:
            tokens = estimate_input_tokens(request)
        await exchange.respond(200, JSON, count_tokens_body(tokens))

    async def _models(self, exchange: Exchange, dialect: Dialect) -> None:
        names = visible_models(exchange.key, self._model_names(), "*" in self.settings.models)
        data = [self._model_object(name) for name in names]
        await exchange.respond(200, JSON, orjson.dumps({"object": "list", "data": data}))

    async def _model(self, exchange: Exchange, dialect: Dialect) -> None:
        name = exchange.scope["path"][len("/v1/models/") :]
        if self.settings.resolve(name) is None or not may_use(exchange.key, name):
            raise NotFound(f"The model '{name}' does not exist", code="model_not_found")
        await exchange.respond(200, JSON, orjson.dumps(self._model_object(name)))

    def _model_names(self) -> list[str]:
        names = [name for name in self.settings.models if name != "*"]
        if "*" in self.settings.models and self.settings.default_model not in names:
            names.insert(0, self.settings.default_model)
        return names

    def _model_object(self, name: str) -> dict[str, object]:
        deployment = self.settings.resolve(name)
        owned_by = "sluice"
        if deployment is not None and self._providers is not None:
            owned_by = self._providers.get(deployment).owned_by
        return {"id": name, "object": "model", "created": 0, "owned_by": owned_by}

    async def _health(self, exchange: Exchange, dialect: Dialect) -> None:
        await exchange.respond(200, JSON, b'{"status":"ok"}')

    async def _scrape(self, exchange: Exchange, dialect: Dialect) -> None:
        """``GET /metrics``: every worker's metrics (their files are read off the loop)."""
        accept = exchange.headers.get("accept")
        if self.metrics.shared:
            body, content_type = await asyncio.to_thread(self.metrics.render, accept)
        else:
            body, content_type = self.metrics.render(accept)
        await exchange.respond(200, [(b"content-type", content_type.encode())], body)

    async def _ready(self, exchange: Exchange, dialect: Dialect) -> None:
        if self.drain.draining:
            await exchange.respond(503, JSON, b'{"status":"draining"}')
            return
        if self._handler is None:
            await exchange.respond(503, JSON, b'{"status":"starting"}')
            return
        store = self.store
        held = store.held_back if isinstance(store, Backlog) else 0
        if held:
            # Still serving, so still 200 (a load balancer keeps the instance), but the
            # record database cannot be written: records wait in memory or a spill file.
            body = orjson.dumps({"status": "degraded", "records_held": held})
            await exchange.respond(200, JSON, body)
            return
        await exchange.respond(200, JSON, b'{"status":"ready"}')


def create_app() -> Gateway:
    """Factory for ASGI servers: settings from ``SLUICE_CONFIG`` and the environment."""
    return Gateway(config.load(env=dict(os.environ)))
