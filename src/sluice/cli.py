"""The command line: ``sluice serve``, ``sluice ask``; ``sluice requests`` and ``sluice stats``
(``records_cli``); ``sluice keys`` (``keys_cli``); ``sluice db migrate``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import logging
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from urllib.parse import urlsplit

from sluice import config
from sluice.sse import SSEDecoder

#: The status a shell reports for a program that SIGPIPE ended (128 + 13).
SIGPIPE_EXIT = 141


def _raise_fd_limit() -> None:
    """Each open stream holds two sockets (client and upstream): allow as many as we may."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


@contextlib.contextmanager
def _worker_metrics(workers: int) -> Iterator[None]:
    """Worker processes write their metrics to files in one directory, and a scrape of
    any worker adds them all up: a private directory for this run, removed at exit,
    unless ``PROMETHEUS_MULTIPROC_DIR`` names one already."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        yield
        return
    with tempfile.TemporaryDirectory(prefix="sluice-metrics-") as directory:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
        logging.getLogger("sluice.metrics").info(
            "metrics of the %d workers are kept in %s", workers, directory
        )
        try:
            yield
        finally:
            del os.environ["PROMETHEUS_MULTIPROC_DIR"]


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    _raise_fd_limit()

    try:
        settings = config.load(
            args.config,
            host=args.host,
            port=args.port,
            workers=args.workers,
            insecure=args.insecure or None,
        )
    except config.ConfigError as exc:
        print(f"sluice: configuration error: {exc}", file=sys.stderr)
        return 2
    from sluice.keys_cli import serve_problem

    problem = serve_problem(settings)
    if problem:
        print(f"sluice: {problem}", file=sys.stderr)
        return 2
    metrics_dir = settings.metrics.multiprocess_dir
    if metrics_dir is not None and not os.path.isdir(metrics_dir):
        print(
            f"sluice: PROMETHEUS_MULTIPROC_DIR: {metrics_dir} is not a directory", file=sys.stderr
        )
        return 2
    level = (args.log_level or settings.log_level).lower()
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for warning in settings.warnings:  # once, here, not in each worker
        logging.getLogger("sluice.config").warning("%s", warning)
    options: dict[str, object] = {
        "host": settings.host,
        "port": settings.port,
        "loop": "uvloop",
        "http": "httptools",
        "ws": "none",
        "lifespan": "on",
        "access_log": False,
        "log_level": level,
        "timeout_graceful_shutdown": 5,
    }
    if settings.workers > 1:
        # Each worker process builds its own app from the same settings.
        if args.config:
            os.environ["SLUICE_CONFIG"] = os.path.abspath(args.config)
        os.environ["SLUICE_HOST"] = settings.host
        os.environ["SLUICE_PORT"] = str(settings.port)
        with _worker_metrics(settings.workers):
            uvicorn.run("sluice.app:create_app", factory=True, workers=settings.workers, **options)  # type: ignore[arg-type]
        return 0
    from sluice.app import Gateway

    uvicorn.run(Gateway(settings), **options)  # type: ignore[arg-type]
    return 0


def _connection(url: str) -> tuple[http.client.HTTPConnection, str]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    return cls(parts.hostname, parts.port, timeout=600), parts.path.rstrip("/")


def _ask(args: argparse.Namespace) -> int:
    try:
        conn, base = _connection(args.url)
    except ValueError as exc:
        print(f"sluice: {exc}", file=sys.stderr)
        return 2
    body: dict[str, object] = {
        "messages": [{"role": "user", "content": args.prompt}],
        "stream": True,
    }
    if args.model:
        body["model"] = args.model
    else:
        body["model"] = os.environ.get("SLUICE_DEFAULT_MODEL", "gpt-4o-mini")
    headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
    key = args.key or os.environ.get("SLUICE_API_KEY", "")
    if key:
        headers["Authorization"] = f"Bearer {key}"
    try:
        conn.request("POST", f"{base}/v1/chat/completions", json.dumps(body), headers)
        response = conn.getresponse()
    except OSError as exc:
        print(f"sluice: cannot reach the gateway at {args.url}: {exc}", file=sys.stderr)
        return 1
    if response.status >= 400:
        raw = response.read()
        try:
            message = json.loads(raw)["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = raw.decode("utf-8", "replace")
        print(f"sluice: {response.status}: {message}", file=sys.stderr)
        return 1
    decoder = SSEDecoder()
    out = sys.stdout
    while True:
        data = response.read1(65536)
        if not data:
            print("\nsluice: the stream ended early", file=sys.stderr)
            return 1
        for event in decoder.feed(data):
            if event.data == b"[DONE]":
                out.write("\n")
                out.flush()
                return 0
            chunk = json.loads(event.data)
            if "error" in chunk:
                print(f"\nsluice: error: {chunk['error'].get('message')}", file=sys.stderr)
                return 1
            for choice in chunk.get("choices") or ():
                content = (choice.get("delta") or {}).get("content")
                if content:
                    out.write(content)
        out.flush()


def _location(args: argparse.Namespace) -> str | None:
    """``--db``, else the config's record database; None (reported) on a config error."""
    from sluice.keys_cli import location

    try:
        return location(args)
    except config.ConfigError as exc:
        print(f"sluice: configuration error: {exc}", file=sys.stderr)
        return None


def _migrate(args: argparse.Namespace) -> int:
    from sluice.store import StoreError
    from sluice.store.database import describe, migrate

    where = _location(args)
    if where is None:
        return 2
    try:
        now, every = asyncio.run(migrate(where))
    except StoreError as exc:
        print(f"sluice: {exc}", file=sys.stderr)
        return 1
    for name in now:
        print(f"applied {name}")
    print(
        f"{describe(where)}: up to date ({len(every)} migrations, {len(now)} applied now)",
        file=sys.stderr,
    )
    return 0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="sluice", description="A streaming LLM gateway.")
    commands = root.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the gateway")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default 8000)")
    serve.add_argument("--config", help="YAML config file (default $SLUICE_CONFIG)")
    serve.add_argument("--workers", type=int, help="worker processes (default 1)")
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    serve.add_argument(
        "--insecure",
        action="store_true",
        help="serve on a non-loopback address even though no API key exists",
    )
    serve.set_defaults(run=_serve)

    ask = commands.add_parser("ask", help="stream an answer to the terminal")
    ask.add_argument("prompt", nargs="?", default="Tell me a story")
    ask.add_argument("--model", help="model name (default $SLUICE_DEFAULT_MODEL or gpt-4o-mini)")
    ask.add_argument(
        "--url",
        default=os.environ.get("SLUICE_URL", "http://127.0.0.1:8000"),
        help="gateway URL (default $SLUICE_URL or http://127.0.0.1:8000)",
    )
    ask.add_argument("--key", help="API key (default $SLUICE_API_KEY)")
    ask.set_defaults(run=_ask)

    db = commands.add_parser("db", help="the record database")
    db_commands = db.add_subparsers(dest="db_command", required=True)
    migrate = db_commands.add_parser(
        "migrate", help="apply the pending schema migrations (SQLite or PostgreSQL)"
    )
    migrate.add_argument(
        "--db", help="record database: a SQLite path or a postgresql:// URL (default from config)"
    )
    migrate.add_argument("--config", help="YAML config file (default $SLUICE_CONFIG)")
    migrate.set_defaults(run=_migrate)

    from sluice import keys_cli, records_cli

    records_cli.register(commands)
    keys_cli.register(commands)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.run(args))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (``sluice ask … | head``): stop quietly, as ``cat`` does.
        # Point stdout at /dev/null so that the flush at exit cannot fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return SIGPIPE_EXIT
