"""The decode and encode work of each API pair, in-process, without sockets.

``python -m bench.pairs_codec [--profile PAIR] [--reads N]``

For each pair of ``bench.pairs``: the client's request decoded by its dialect, the fake
upstream's burst body (200 text chunks, the bytes ``bench/upstream.py`` sends) fed to
the upstream wire's decoder in ``--reads`` equal reads (1: the whole body at once, as a
burst usually arrives), each batch counted as the relay counts it and encoded for the
client. Prints the CPU time (``time.process_time``, best of 9 runs of 100 streams) per
content chunk: what the pair's formats cost, without the event loop, the sockets and
the per-request work the gateway does whatever the formats. ``--profile PAIR`` adds
cProfile's top functions for that pair.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from collections.abc import Callable

from tests.upstream import messages as am
from tests.upstream import scenarios as sc

from bench.pairs import PAIRS
from sluice.dialects import Dialect
from sluice.dialects.anthropic_messages import AnthropicMessagesDialect
from sluice.dialects.openai_chat import OpenAIChatDialect
from sluice.dialects.openai_responses import OpenAIResponsesDialect
from sluice.events import TextDelta, Verbatim
from sluice.providers import Wire
from sluice.providers.anthropic import AnthropicWire
from sluice.providers.openai_chat import OpenAIChatWire

N = 200
MODEL = f"burst:n={N}"
PROMPT = 4  # words in "Tell me a story"


def upstream_body(provider: str) -> bytes:
    """The SSE body the fake upstream streams for ``MODEL`` (without HTTP chunking)."""
    if provider == "anthropic":
        return b"".join(am.stream_events(am.parse_spec(f"normal:n={N}"), MODEL, PROMPT))
    spec = sc.parse_spec(MODEL)
    chunks = sc.stream_chunks(spec, MODEL, include_usage=True, prompt=PROMPT)
    return b"".join(sc.sse_event(sc.encode(c)) for c in chunks) + sc.sse_event(sc.DONE)


DIALECTS: dict[str, Callable[[], Dialect]] = {
    "OpenAI chat": OpenAIChatDialect,
    "Anthropic Messages": AnthropicMessagesDialect,
    "OpenAI Responses": OpenAIResponsesDialect,
}
WIRES: dict[str, Callable[[], Wire]] = {"openai": OpenAIChatWire, "anthropic": AnthropicWire}


def stream_once(dialect: Dialect, request_body: bytes, wire: Wire, body: bytes, reads: int) -> int:
    """One stream through decoder and encoder; the content chunks the relay counted."""
    request = dialect.decode(request_body, {}, {}, MODEL)
    encoder = dialect.encoder(request, f"{dialect.id_prefix}bench")
    decoder = wire.decoder(request, encoder.verbatim == wire.format)
    size = -(-len(body) // reads)
    chunks = 0
    for at in range(0, len(body), size):
        batch = decoder.feed(body[at : at + size])
        for event in batch:
            kind = type(event)
            if kind is TextDelta:
                chunks += 1
            elif kind is Verbatim:
                inner = event.events  # type: ignore[union-attr]
                if inner is None:
                    chunks += event.count  # type: ignore[union-attr]
                else:
                    chunks += sum(type(e) is TextDelta for e in inner)
        encoder.encode(batch)
    encoder.end()
    return chunks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pairs_codec", description=__doc__)
    parser.add_argument("--profile", help="a pair to profile with cProfile")
    parser.add_argument("--reads", type=int, default=1, help="reads the body comes in")
    args = parser.parse_args(argv)
    for pair in PAIRS:
        assert pair.provider is not None
        dialect = DIALECTS[pair.client]()
        wire = WIRES[pair.provider]()
        _, _, request_body, _ = pair.request(MODEL)
        body = upstream_body(pair.provider)

        def run(count: int) -> None:
            for _ in range(count):
                stream_once(dialect, request_body, wire, body, args.reads)  # noqa: B023

        got = stream_once(dialect, request_body, wire, body, args.reads)
        if got != N:
            print(f"{pair.name}: counted {got} chunks, not {N}", file=sys.stderr)
            return 1
        best = float("inf")
        for _ in range(9):
            t0 = time.process_time()
            run(100)
            best = min(best, (time.process_time() - t0) / 100 / N * 1e6)
        print(f"{pair.name:18} {best:5.2f} µs CPU per chunk")
        if args.profile == pair.name:
            profiler = cProfile.Profile()
            profiler.runcall(run, 100)
            pstats.Stats(profiler).sort_stats("tottime").print_stats(15)
    return 0


if __name__ == "__main__":
    sys.exit(main())
