"""Failures other gateways shipped, one test each, so that they cannot happen here.

Each test names in its docstring the public thread where the failure was reported. All
run end to end: the official SDKs (``tests/api_clients.py``) or raw HTTP against the
gateway, in front of the test upstream's OpenAI chat, Anthropic and Responses routes;
model ``UPSTREAM/SCENARIO`` is that route's scenario (``tests/upstream/``).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from sluice.events import RedactedReasoning, expand
from sluice.providers.anthropic import MessagesDecoder
from tests.api_clients import CLIENTS, PROMPT, PROMPT_WORDS, Answer, Ask
from tests.gateway import RunningGateway, run_gateway
from tests.upstream import messages as am
from tests.upstream import scenarios as sc
from tests.upstream.fixture import Upstream

PROVIDERS = {"openai": "openai", "anthropic": "anthropic", "responses": "openai-responses"}
MODELS = {
    "openai": [
        "tool_call:text=1",
        "tool_call:text=1,finish=stop",
        "tool_call:calls=2",
        "tool_call:whole=1",
        "tool_call:calls=2,whole=1",
        "reasoning",
        "normal:n=3",
        "normal:n=3,cached=5",
        "midstream_error",
    ],
    "anthropic": [
        "tool_use",
        "tool_use:calls=2",
        "thinking",
        "redacted",
        "normal:n=2",
        "normal:n=3,cache_read=7,cache_write=3",
        "normal:n=3,cache_read=7,cache_write=3,cache_at=delta",
        "bare_error",
        "bare_error:typed=0",
    ],
    "responses": [
        "tool_call:calls=2",
        "tool_call:whole=1",
        "tool_call:calls=2,whole=1",
        "normal:n=3",
        "normal:n=3,cached=5",
    ],
}


@pytest.fixture(scope="module")
def gateway(
    upstream: Upstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningGateway]:
    models: dict[str, Any] = {}
    for served, provider in PROVIDERS.items():
        base = upstream.base if provider == "anthropic" else upstream.url
        for scenario in MODELS[served]:
            models[f"{served}/{scenario}"] = {
                "provider": provider,
                "base_url": base,
                "api_key_env": "UP_KEY",
                "model": scenario,
            }
    config = {
        "models": models,
        "routing": {"retries": 0, "allowed_fails": 0},
        "keepalive_interval": 5,
    }
    with run_gateway(tmp_path_factory.mktemp("known"), config, {"UP_KEY": "sk-up"}) as gw:
        yield gw


def ask(gateway: RunningGateway, client: str, model: str, request: Ask, stream: bool) -> Answer:
    answer = CLIENTS[client](gateway, model, request, stream)
    assert answer.error is None, f"the request failed: {answer.error!r}"
    return answer


def raw(gateway: RunningGateway, path: str, body: dict[str, Any]) -> bytes:
    with (
        httpx.Client(timeout=20) as http,
        http.stream("POST", f"{gateway.url}{path}", json=body) as response,
    ):
        assert response.status_code == 200
        return b"".join(response.iter_raw())


def anthropic_events(gateway: RunningGateway, model: str, **fields: Any) -> list[Any]:
    """The events of an Anthropic stream, ``(name, data)``; every one must be named."""
    body = {
        "model": model,
        "max_tokens": 100,
        "messages": [{"role": "user", "content": PROMPT}],
        "stream": True,
        **fields,
    }
    out = []
    for block in raw(gateway, "/v1/messages", body).split(b"\n\n"):
        if not block:
            continue
        name, _, data = block.partition(b"\n")
        assert name.startswith(b"event: ") and data.startswith(b"data: "), block
        event = json.loads(data[6:])
        assert event["type"] == name[7:].decode()
        out.append((event["type"], event))
    return out


def blocks(events: list[Any]) -> list[dict[str, Any]]:
    """Content blocks as the stream built them, checked to open, grow and close one at
    a time with indices counted from 0."""
    built: list[dict[str, Any]] = []
    open_now: int | None = None
    for name, event in events:
        if name == "content_block_start":
            assert open_now is None and event["index"] == len(built)
            open_now = event["index"]
            built.append({**event["content_block"], "deltas": []})
        elif name == "content_block_delta":
            assert event["index"] == open_now
            built[-1]["deltas"].append(event["delta"])
        elif name == "content_block_stop":
            assert event["index"] == open_now
            open_now = None
    return built


def sent_with(upstream: Upstream, mark: str) -> dict[str, Any]:
    def find(log: dict[str, Any]) -> list[dict[str, Any]]:
        return [r for r in log["requests"] if mark in json.dumps(r["body"])]

    found = find(upstream.wait_log(lambda log: bool(find(log))))
    assert len(found) == 1
    return found[0]


STREAMS = pytest.mark.parametrize("stream", [True, False], ids=["stream", "json"])


@STREAMS
@pytest.mark.parametrize(
    ("client", "model"),
    [
        ("anthropic", "openai/tool_call:text=1"),
        ("anthropic", "openai/tool_call:text=1,finish=stop"),
        ("chat", "anthropic/tool_use"),
        ("responses", "anthropic/tool_use"),
    ],
)
def test_a_turn_with_text_and_a_tool_call_stops_for_the_tool(
    gateway: RunningGateway, client: str, model: str, stream: bool
) -> None:
    """BerriAI/litellm#34692: a streamed turn holding text and a tool call ended with
    ``stop_reason: end_turn`` (the upstream said ``stop``), so Anthropic clients never
    ran the tool. Here any turn with a tool call stops with ``tool_use``
    (``tool_calls``), whatever the upstream's word."""
    answer = ask(gateway, client, model, Ask(tools=True), stream)
    assert answer.text == sc.TOOL_PREAMBLE == am.TOOL_PREAMBLE
    assert len(answer.calls) == 1
    assert answer.stop == "tool_calls"
    if client == "anthropic":
        assert answer.final.stop_reason == "tool_use"
        assert [b.type for b in answer.final.content] == ["text", "tool_use"]


@pytest.mark.parametrize(
    ("client", "model"),
    [
        ("chat", "anthropic/tool_use:calls=2"),
        ("chat", "responses/tool_call:calls=2"),
        ("anthropic", "openai/tool_call:calls=2"),
        ("anthropic", "responses/tool_call:calls=2"),
        ("responses", "openai/tool_call:calls=2"),
        ("responses", "anthropic/tool_use:calls=2"),
    ],
)
def test_parallel_tool_calls_each_keep_their_own_index(
    gateway: RunningGateway, client: str, model: str
) -> None:
    """Portkey-AI/gateway#1275 (Anthropic to OpenAI) and BerriAI/litellm#21331 (the
    Responses API to OpenAI): parallel tool calls streamed through a translation all
    came with ``index: 0``, so clients merged them into one call with concatenated
    arguments (and litellm#15307: into one Anthropic block). Here each call has its own
    OpenAI index, its own Anthropic block, its own Responses item."""
    calls = am.TOOL_CALLS if model.startswith("anthropic/") else sc.TOOL_CALLS
    expected = [(c.id, c.name, json.loads(c.arguments)) for c in calls]
    answer = ask(gateway, client, model, Ask(tools=True), True)
    assert [(c.id, c.name, c.arguments) for c in answer.calls] == expected
    if client == "chat":
        assert answer.indices == [0, 1]
    elif client == "anthropic":
        built = blocks(anthropic_events(gateway, model, tools=[]))
        tools = [b for b in built if b["type"] == "tool_use"]
        assert [t["id"] for t in tools] == [c.id for c in calls]
        for tool, call in zip(tools, calls, strict=True):
            assert "".join(d["partial_json"] for d in tool["deltas"]) == call.arguments
    else:
        items = [i for i in answer.final.output if i.type == "function_call"]
        assert len({i.id for i in items}) == 2


@pytest.mark.parametrize(
    "model",
    ["openai/tool_call:whole=1", "openai/tool_call:calls=2,whole=1", "responses/tool_call:whole=1"],
)
def test_tool_input_always_comes_as_input_json_delta(gateway: RunningGateway, model: str) -> None:
    """inflaborg/ccrelay#119: a tool call whose arguments the upstream sent whole was
    written as a ``tool_use`` block with its ``input`` filled in and no
    ``input_json_delta``; Claude Code builds the input from the deltas only, so every
    such call ran with ``{}``. Here a tool block opens with ``input: {}`` and its
    arguments always follow as deltas, over an upstream that streams no argument
    pieces (chat completions' whole arguments, the Responses API's arguments only in
    ``output_item.done``)."""
    calls = sc.tool_calls(sc.parse_spec(model.split("/", 1)[1]))
    built = blocks(anthropic_events(gateway, model))
    tools = [b for b in built if b["type"] == "tool_use"]
    assert len(tools) == len(calls)
    for tool, call in zip(tools, calls, strict=True):
        assert tool["input"] == {}
        assert {d["type"] for d in tool["deltas"]} == {"input_json_delta"}
        assert json.loads("".join(d["partial_json"] for d in tool["deltas"])) == json.loads(
            call.arguments
        )
    for client in CLIENTS:
        answer = ask(gateway, client, model, Ask(tools=True), True)
        assert [c.arguments for c in answer.calls] == [json.loads(c.arguments) for c in calls]


def test_thinking_is_one_block_with_its_signature_both_ways(
    gateway: RunningGateway, upstream: Upstream
) -> None:
    """BerriAI/litellm#29428: streamed thinking came out as one thinking block per
    upstream delta, each with an empty signature, and Anthropic refused them when the
    client sent them back. Here thinking is one block with its signature, passed through
    or encoded from events (a cacheable request, ``temperature: 0``, is encoded), to an
    Anthropic client and as a Responses reasoning item; and the signature goes back
    upstream unchanged with the thinking."""
    thinking = am.expected_thinking("thinking")
    for fields in ({}, {"temperature": 0}):
        built = blocks(anthropic_events(gateway, "anthropic/thinking", **fields))
        assert [b["type"] for b in built] == ["thinking", "text"]
        deltas = built[0]["deltas"]
        assert "".join(d.get("thinking", "") for d in deltas) == thinking
        assert [d["signature"] for d in deltas if d["type"] == "signature_delta"] == [am.SIGNATURE]
    # OpenAI reasoning deltas are one thinking block too.
    built = blocks(anthropic_events(gateway, "openai/reasoning"))
    assert [b["type"] for b in built] == ["thinking", "text"]
    assert "".join(d.get("thinking", "") for d in built[0]["deltas"]) == sc.expected_reasoning(
        "reasoning"
    )
    for stream in (True, False):
        answer = ask(gateway, "anthropic", "anthropic/thinking", Ask(), stream)
        block = answer.final.content[0]
        assert (block.type, block.thinking, block.signature) == ("thinking", thinking, am.SIGNATURE)
        answer = ask(gateway, "responses", "anthropic/thinking", Ask(), stream)
        [item] = [i for i in answer.final.output if i.type == "reasoning"]
        assert item.encrypted_content == am.SIGNATURE and answer.reasoning == thinking

    # Back upstream, from an Anthropic client and from a Responses client.
    mark = uuid.uuid4().hex[:12]
    back = [
        {"type": "thinking", "thinking": thinking, "signature": am.SIGNATURE},
        {"type": "text", "text": "Once upon a time."},
    ]
    ask(
        gateway,
        "anthropic",
        "anthropic/normal:n=2",
        Ask(
            prompt=mark,
            extra={
                "messages": [
                    {"role": "user", "content": mark},
                    {"role": "assistant", "content": back},
                    {"role": "user", "content": "Go on"},
                ]
            },
        ),
        False,
    )
    assert sent_with(upstream, mark)["body"]["messages"][1]["content"] == back
    mark = uuid.uuid4().hex[:12]
    items = [
        {"role": "user", "content": mark},
        {
            "type": "reasoning",
            "id": "rs_1",
            "summary": [],
            "content": [{"type": "reasoning_text", "text": thinking}],
            "encrypted_content": am.SIGNATURE,
        },
        {"role": "assistant", "content": "Once upon a time."},
        {"role": "user", "content": "Go on"},
    ]
    ask(gateway, "responses", "anthropic/normal:n=2", Ask(extra={"input": items}), False)
    sent = sent_with(upstream, mark)["body"]["messages"][1]["content"]
    assert sent[0] == {"type": "thinking", "thinking": thinking, "signature": am.SIGNATURE}


def test_redacted_thinking_is_kept(gateway: RunningGateway, upstream: Upstream) -> None:
    """maximhq/bifrost#4942 (and #5093 for the Responses API): ``redacted_thinking``
    blocks were dropped on the way to the client, and Anthropic refuses the next turn
    of a tool loop without them. Here the block is a canonical event, reaches an
    Anthropic client passed through or encoded, a Responses client as an encrypted
    reasoning item, and goes back upstream as it came."""
    body = b"".join(am.stream_events(am.parse_spec("redacted"), "redacted", 4))
    for verbatim in (False, True):
        events = expand(MessagesDecoder(verbatim).feed(body))
        assert RedactedReasoning(am.REDACTED, 0) in events
    for fields in ({}, {"temperature": 0}):
        built = blocks(anthropic_events(gateway, "anthropic/redacted", **fields))
        assert built[0] == {"type": "redacted_thinking", "data": am.REDACTED, "deltas": []}
    for stream in (True, False):
        answer = ask(gateway, "anthropic", "anthropic/redacted", Ask(), stream)
        assert answer.final.content[0].type == "redacted_thinking"
        assert answer.final.content[0].data == am.REDACTED
        answer = ask(gateway, "responses", "anthropic/redacted", Ask(), stream)
        [item] = [i for i in answer.final.output if i.type == "reasoning"]
        assert item.encrypted_content == am.REDACTED
    mark = uuid.uuid4().hex[:12]
    back = [{"type": "redacted_thinking", "data": am.REDACTED}, {"type": "text", "text": "Hm."}]
    messages = [
        {"role": "user", "content": mark},
        {"role": "assistant", "content": back},
        {"role": "user", "content": "Go on"},
    ]
    ask(gateway, "anthropic", "anthropic/normal:n=2", Ask(extra={"messages": messages}), False)
    assert sent_with(upstream, mark)["body"]["messages"][1]["content"] == back


@pytest.mark.parametrize("client", ["anthropic", "responses"])
def test_a_usage_chunk_with_no_choices_is_read(gateway: RunningGateway, client: str) -> None:
    """BerriAI/litellm#30761 (and #36553): the Anthropic bridge read ``choices[0]`` of
    every chunk and crashed on the usage-only chunk (``"choices": []``) that
    OpenAI-compatible servers send last, so streams died before their usage. Here that
    chunk is the usage an Anthropic or Responses client sees at the end."""
    spec = sc.parse_spec("normal:n=3")
    last = sc.stream_chunks(spec, "normal:n=3", include_usage=True, prompt=PROMPT_WORDS)[-1]
    assert last["choices"] == [] and last["usage"]["completion_tokens"] == 3
    answer = ask(gateway, client, "openai/normal:n=3", Ask(), True)
    assert answer.text == sc.expected_text("normal:n=3")
    assert answer.usage is not None
    assert (answer.usage.input, answer.usage.output) == (PROMPT_WORDS, 3)


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("openai/midstream_error", "Simulated failure after 3 chunks."),
        ("anthropic/bare_error", "Overloaded"),
        ("anthropic/bare_error:typed=0", "Upstream proxy failure."),
    ],
)
def test_an_unnamed_error_reaches_an_anthropic_client_as_an_error_event(
    gateway: RunningGateway, model: str, message: str
) -> None:
    """mlflow/mlflow#25897 (and Portkey-AI/gateway#722): a late failure written as a
    ``data: {"error": ...}`` line with no ``event:`` name is invisible to Anthropic
    clients, which act on ``event: error`` only: the stream just stopped. Here every
    event an Anthropic client gets is named, and the failure is an ``error`` event with
    the upstream's message, which the SDK raises."""
    events = anthropic_events(gateway, model)  # every event named, or this fails
    name, last = events[-1]
    assert name == "error" and message in last["error"]["message"]
    assert "message_stop" not in [n for n, _ in events]
    answer = CLIENTS["anthropic"](gateway, model, Ask(), True)
    assert answer.error is not None and message in answer.error.body["error"]["message"]
    assert answer.text == "word0 word1 word2"


def test_anthropic_pings_never_reach_an_openai_client(gateway: RunningGateway) -> None:
    """Wei-Shaw/sub2api#5203 (and anthropics/anthropic-sdk-typescript#734): Anthropic's
    ``ping`` keep-alives went on to OpenAI chat clients as ``data:`` events, which the
    OpenAI SDKs cannot read as chunks. Here an Anthropic upstream's pings (one after
    every ``message_start``) never reach a chat or Responses client."""
    assert b"event: ping" in b"".join(am.stream_events(am.parse_spec("normal:n=2"), "m", 4))
    messages = [{"role": "user", "content": PROMPT}]
    body = {"model": "anthropic/normal:n=2", "messages": messages, "stream": True}
    data = raw(gateway, "/v1/chat/completions", body)
    assert b"ping" not in data
    for block in filter(None, data.split(b"\n\n")):
        assert block.startswith(b"data: ")
        if block != b"data: [DONE]":
            assert json.loads(block[6:])["object"] == "chat.completion.chunk"
    body = {"model": "anthropic/normal:n=2", "input": PROMPT, "stream": True, "store": False}
    assert b"ping" not in raw(gateway, "/v1/responses", body)


#: Canonical usage each upstream reports for these scenarios: input (cache included),
#: cache reads, cache writes.
CACHED = {
    "anthropic/normal:n=3,cache_read=7,cache_write=3": (PROMPT_WORDS + 10, 7, 3),
    "anthropic/normal:n=3,cache_read=7,cache_write=3,cache_at=delta": (PROMPT_WORDS + 10, 7, 3),
    "openai/normal:n=3,cached=5": (PROMPT_WORDS + 5, 5, 0),
    "responses/normal:n=3,cached=5": (PROMPT_WORDS + 5, 5, 0),
}


@pytest.mark.parametrize("client", list(CLIENTS))
@pytest.mark.parametrize("model", list(CACHED))
def test_cache_tokens_reach_a_streaming_client(
    gateway: RunningGateway, client: str, model: str
) -> None:
    """8monkey-ai/hebo-gateway#187, decolua/9router#2873 and envoyproxy/ai-gateway#2290:
    streamed usage lost the cache counts (read from the wrong event, or not carried
    across the translation), so cached prompts were billed at the full input price.
    Here a stream's usage carries them into every client API's own fields, wherever the
    upstream reported them (Anthropic's ``message_start`` or ``message_delta``)."""
    total, read, written = CACHED[model]
    requests = [Ask()]
    if client == "anthropic":
        requests.append(Ask(extra={"temperature": 0}))  # encoded, not passed through
    for request in requests:
        answer = ask(gateway, client, model, request, True)
        usage = answer.usage
        assert usage is not None
        assert (usage.input, usage.cached, usage.output) == (total, read, 3)
        if usage.written is not None:
            assert usage.written == written
        if client == "anthropic":
            final = answer.final.usage
            assert final.input_tokens == total - read - written  # Anthropic's own count
            assert (final.cache_read_input_tokens, final.cache_creation_input_tokens) == (
                read,
                written,
            )
