"""Every client API over every upstream, end to end, with the official SDKs.

Clients (``tests/api_clients.py``): the ``openai`` SDK's chat completions and Responses,
the ``anthropic`` SDK's Messages. Upstreams: the test upstream's OpenAI chat route
(``provider: openai``), its Anthropic route (``anthropic``), its Responses route
(``openai-responses``), and the simulator. For each pair, streamed and not: the
scenario's text, multibyte text cut inside characters, a tool call and its result sent
back, reasoning, usage as the upstream reported it (canonical input counts cache reads
and writes; Anthropic's ``input_tokens`` leaves them out), and every failure the upstream
can produce after the first byte reaching the client as that API's in-band error, never
a clean end. What a pair cannot carry is a 400 that names the field and the upstream.

One gateway serves the module: model ``UPSTREAM/CASE`` is that upstream's scenario for
the case (``CASES``), ``UPSTREAM/fail/SCENARIO`` a failing one.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.api_clients import (
    CLIENTS,
    PROMPT,
    PROMPT_WORDS,
    SCHEMA,
    TOOL,
    Answer,
    Ask,
    Usage,
)
from tests.gateway import RunningGateway, run_gateway
from tests.upstream import messages as am
from tests.upstream import scenarios as sc
from tests.upstream.fixture import Upstream

UPSTREAMS = ("openai", "anthropic", "responses", "simulator")
PROVIDERS = {"openai": "openai", "anthropic": "anthropic", "responses": "openai-responses"}
#: The test upstream's scenario for each case, per upstream.
CASES: dict[str, dict[str, str]] = {
    "openai": {
        "text": "normal:n=5",
        "multibyte": "multibyte",
        "tool": "tool_call",
        "reasoning": "reasoning",
        "usage": "normal:n=3,cached=5",
    },
    "anthropic": {
        "text": "normal:n=5",
        "multibyte": "multibyte",
        "tool": "tool_use",
        "reasoning": "thinking",
        "usage": "normal:n=3,cache_read=7,cache_write=3",
    },
    "responses": {
        "text": "normal:n=5",
        "multibyte": "multibyte",
        "tool": "tool_call",
        "reasoning": "reasoning",
        "usage": "normal:n=3,cached=5",
    },
}
#: Every failure each test upstream produces after its first byte. (The chat route's
#: ``bad_json`` is left out: the wire drops the read that holds the bad event, so
#: whether any byte went out before it is a race; tests/test_anthropic_api.py has it.)
FAILURES: dict[str, tuple[str, ...]] = {
    "openai": ("midstream_error", "drop", "drop:rst=1", "stall"),
    "anthropic": ("overloaded", "drop", "drop:rst=1", "truncated", "bare_error"),
    "responses": ("midstream_error", "drop", "drop:rst=1"),
}
SIMULATOR = {"provider": "simulator", "ttft": 0, "tokens_per_second": 0, "max_tokens": 100}
RESULT = "18 degrees"

PAIRS = [(client, served) for client in CLIENTS for served in UPSTREAMS]
STREAMS = pytest.mark.parametrize("stream", [True, False], ids=["stream", "json"])


def pairs(*upstreams: str) -> Any:
    chosen = [(c, u) for c, u in PAIRS if u in upstreams]
    return pytest.mark.parametrize(
        ("client", "served"), chosen, ids=[f"{c}-{u}" for c, u in chosen]
    )


@pytest.fixture(scope="module")
def gateway(
    upstream: Upstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningGateway]:
    models: dict[str, Any] = {}
    for served, provider in PROVIDERS.items():
        base = upstream.base if provider == "anthropic" else upstream.url
        deployment = {"provider": provider, "base_url": base, "api_key_env": "UP_KEY"}
        scenarios = {**CASES[served], **{f"fail/{s}": s for s in FAILURES[served]}}
        for case, scenario in scenarios.items():
            models[f"{served}/{case}"] = {**deployment, "model": scenario}
    for case in ("text", "tool", "reasoning", "usage"):
        models[f"simulator/{case}"] = SIMULATOR
    config = {
        "default_model": "simulator/text",
        "models": models,
        # Failures are the point: one attempt, no circuit breaker, a stall ends in 1 s.
        "routing": {"retries": 0, "allowed_fails": 0},
        "timeouts": {"idle": 1.0},
        "keepalive_interval": 5,
    }
    with run_gateway(tmp_path_factory.mktemp("matrix"), config, {"UP_KEY": "sk-up"}) as gw:
        yield gw


def ask(gateway: RunningGateway, client: str, model: str, request: Ask, stream: bool) -> Answer:
    return CLIENTS[client](gateway, model, request, stream)


def simulated(gateway: RunningGateway, case: str, request: Ask, client: str = "chat") -> Answer:
    """The simulator's JSON answer, the reference a stream must match: the same
    canonical request gets the same answer (through chat completions by default: a
    plain request is the same whatever the client API)."""
    reference = ask(gateway, client, f"simulator/{case}", request, False)
    assert reference.error is None and reference.text
    return reference


def assert_ok(answer: Answer) -> None:
    assert answer.error is None, f"the request failed: {answer.error!r}"


# -- answers ---------------------------------------------------------------------------


@STREAMS
@pairs(*UPSTREAMS)
def test_text(gateway: RunningGateway, client: str, served: str, stream: bool) -> None:
    answer = ask(gateway, client, f"{served}/text", Ask(), stream)
    assert_ok(answer)
    if served == "simulator":
        expected = simulated(gateway, "text", Ask()).text
    else:
        scenario = CASES[served]["text"]
        expected = (am if served == "anthropic" else sc).expected_text(scenario)
    assert answer.text == expected
    assert answer.stop == "stop"
    assert answer.calls == [] and answer.reasoning == ""


@STREAMS
@pairs("openai", "anthropic", "responses")
def test_multibyte_text_cut_inside_characters(
    gateway: RunningGateway, client: str, served: str, stream: bool
) -> None:
    answer = ask(gateway, client, f"{served}/multibyte", Ask(), stream)
    assert_ok(answer)
    assert answer.text == sc.MULTIBYTE_TEXT


def expected_calls(served: str) -> list[tuple[str, str, Any]]:
    if served == "anthropic":
        return [(c.id, c.name, json.loads(c.arguments)) for c in am.TOOL_CALLS[:1]]
    return [(sc.TOOL_CALL_ID, sc.TOOL_NAME, json.loads(sc.TOOL_ARGUMENTS))]


@STREAMS
@pairs(*UPSTREAMS)
def test_tool_call(gateway: RunningGateway, client: str, served: str, stream: bool) -> None:
    answer = ask(gateway, client, f"{served}/tool", Ask(tools=True), stream)
    assert_ok(answer)
    assert answer.stop == "tool_calls"
    if served == "simulator":
        [call] = answer.calls
        assert call.name == TOOL and call.id
        assert set(call.arguments) <= set(SCHEMA["properties"]) and "city" in call.arguments
        return
    assert [(c.id, c.name, c.arguments) for c in answer.calls] == expected_calls(served)
    assert answer.text == (am.TOOL_PREAMBLE if served == "anthropic" else "")


def sent_with(upstream: Upstream, mark: str) -> dict[str, Any]:
    def find(log: dict[str, Any]) -> list[dict[str, Any]]:
        return [r for r in log["requests"] if mark in json.dumps(r["body"])]

    found = find(upstream.wait_log(lambda log: bool(find(log))))
    assert len(found) == 1, f"{len(found)} upstream requests hold {mark}"
    return found[0]


def assert_round_trip(served: str, body: dict[str, Any], call: tuple[str, str, Any]) -> None:
    """The upstream received the call and its result, each in its own format's shape."""
    call_id, name, arguments = call
    if served == "openai":
        assistant, result = body["messages"][1:]
        [sent] = assistant["tool_calls"]
        assert (sent["id"], sent["function"]["name"]) == (call_id, name)
        assert json.loads(sent["function"]["arguments"]) == arguments
        assert result == {"role": "tool", "tool_call_id": call_id, "content": RESULT}
    elif served == "anthropic":
        assistant, result = body["messages"][1:]
        assert assistant == {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": call_id, "name": name, "input": arguments}],
        }
        assert result["role"] == "user"
        assert result["content"] == [
            {
                "type": "tool_result",
                "tool_use_id": call_id,
                "content": [{"type": "text", "text": RESULT}],
            }
        ]
    else:
        function_call, output = body["input"][1:]
        assert function_call["type"] == "function_call"
        assert (function_call["call_id"], function_call["name"]) == (call_id, name)
        assert json.loads(function_call["arguments"]) == arguments
        assert output == {"type": "function_call_output", "call_id": call_id, "output": RESULT}


@pairs(*UPSTREAMS)
def test_tool_result_round_trip(
    gateway: RunningGateway, upstream: Upstream, client: str, served: str
) -> None:
    first = ask(gateway, client, f"{served}/tool", Ask(tools=True), False)
    assert_ok(first)
    [call] = first.calls
    mark = f"mark{id(first):x}"
    arguments = json.dumps(call.arguments)
    back = Ask(prompt=f"{PROMPT} {mark}", result=(call.id, call.name, arguments, RESULT))
    answer = ask(gateway, client, f"{served}/text", back, False)
    assert_ok(answer)
    if served == "simulator":
        assert RESULT in answer.text  # it quotes the result, so a tool loop ends
        return
    assert answer.stop == "stop"
    body = sent_with(upstream, mark)["body"]
    assert_round_trip(served, body, (call.id, call.name, call.arguments))
    assert answer.text == (am if served == "anthropic" else sc).expected_text("normal:n=5")


@STREAMS
@pairs(*UPSTREAMS)
def test_reasoning(gateway: RunningGateway, client: str, served: str, stream: bool) -> None:
    request = Ask(reasoning=True, max_tokens=2000)
    answer = ask(gateway, client, f"{served}/reasoning", request, stream)
    assert_ok(answer)
    if served == "simulator":
        # Each API asks in its own words (an effort, a budget): the same client's
        # JSON answer is the reference.
        reference = simulated(gateway, "reasoning", request, client)
        assert reference.reasoning
        assert (answer.reasoning, answer.text) == (reference.reasoning, reference.text)
        assert answer.stop == reference.stop
        return
    assert answer.stop == "stop"
    scenario = CASES[served]["reasoning"]
    if served == "anthropic":
        assert answer.reasoning == am.expected_thinking(scenario)
        assert answer.text == am.expected_text(scenario)
    else:
        assert answer.reasoning == sc.expected_reasoning(scenario)
        assert answer.text == sc.expected_text(scenario)


#: What each upstream reported for ``CASES[...]["usage"]``, canonically.
REPORTED = {
    "openai": Usage(PROMPT_WORDS + 5, 3, 5, 0),
    "anthropic": Usage(PROMPT_WORDS + 7 + 3, 3, 7, 3),
    "responses": Usage(PROMPT_WORDS + 5, 3, 5, 0),
}


@STREAMS
@pairs(*UPSTREAMS)
def test_usage(gateway: RunningGateway, client: str, served: str, stream: bool) -> None:
    answer = ask(gateway, client, f"{served}/usage", Ask(), stream)
    assert_ok(answer)
    usage = answer.usage
    assert usage is not None
    if served == "simulator":
        reference = simulated(gateway, "usage", Ask())
        assert reference.usage is not None
        assert usage.input == reference.usage.input == (len(PROMPT) + 3) // 4
        assert usage.output == reference.usage.output > 0
        assert usage.cached == 0
        return
    expected = REPORTED[served]
    assert (usage.input, usage.output, usage.cached) == (
        expected.input,
        expected.output,
        expected.cached,
    )
    if usage.written is not None:  # chat completions has no field for cache writes
        assert usage.written == expected.written
    if client == "anthropic":
        # Anthropic's input_tokens leaves out what was read from or written to the cache.
        final = answer.final.usage
        assert final.input_tokens == PROMPT_WORDS
        assert final.cache_read_input_tokens == expected.cached
        assert final.cache_creation_input_tokens == expected.written


# -- failures --------------------------------------------------------------------------

FAILING = [
    (client, served, scenario)
    for client in CLIENTS
    for served, scenarios in FAILURES.items()
    for scenario in scenarios
]


@STREAMS
@pytest.mark.parametrize(
    ("client", "served", "scenario"), FAILING, ids=[f"{c}-{u}-{s}" for c, u, s in FAILING]
)
def test_a_failure_after_the_first_byte(
    gateway: RunningGateway, client: str, served: str, scenario: str, stream: bool
) -> None:
    answer = ask(gateway, client, f"{served}/fail/{scenario}", Ask(), stream)
    assert answer.error is not None, "a failed upstream answer reached the client as a success"
    if not stream:
        # No byte went out yet: an HTTP error status in the client's API shape.
        assert 500 <= answer.error.status_code < 600
        return
    expected = (am if served == "anthropic" else sc).expected_text(scenario)
    assert answer.text == expected  # what came before the failure, then the failure
    if client == "responses":
        assert answer.events[-2:] == ["error", "response.failed"]
        assert answer.error.message
        assert answer.final.status == "failed" and answer.final.error is not None
    elif client == "anthropic":
        body = answer.error.body
        assert body["type"] == "error" and body["error"]["message"]
        assert "message_stop" not in answer.events
    else:
        assert answer.error.message and "usage" not in answer.events


# -- what a pair cannot carry ----------------------------------------------------------

WEB_SEARCH = {"type": "web_search_20250305", "name": "web_search", "max_uses": 1}
REFUSED: list[tuple[str, str, dict[str, Any], str]] = [
    ("chat", "anthropic", {"n": 2}, "n"),
    ("chat", "anthropic", {"logprobs": True}, "logprobs"),
    ("chat", "anthropic", {"seed": 7}, "seed"),
    ("chat", "anthropic", {"response_format": {"type": "json_object"}}, "response_format"),
    ("chat", "anthropic", {"frequency_penalty": 0.5}, "frequency_penalty"),
    ("chat", "anthropic", {"temperature": 1.5}, "temperature"),
    ("chat", "responses", {"n": 2}, "n"),
    ("chat", "responses", {"stop": ["END"]}, "stop"),
    ("chat", "responses", {"seed": 7}, "seed"),
    ("chat", "responses", {"logprobs": True}, "logprobs"),
    ("responses", "openai", {"tools": [{"type": "web_search"}]}, "web_search"),
    ("responses", "anthropic", {"tools": [{"type": "web_search"}]}, "web_search"),
    ("responses", "openai", {"include": ["file_search_call.results"]}, "include"),
    ("responses", "anthropic", {"include": ["file_search_call.results"]}, "include"),
    ("responses", "anthropic", {"text": {"format": {"type": "json_object"}}}, "response_format"),
    ("anthropic", "openai", {"tools": [WEB_SEARCH]}, "web_search_20250305"),
    ("anthropic", "responses", {"tools": [WEB_SEARCH]}, "web_search_20250305"),
    ("responses", "simulator", {"tools": [{"type": "web_search"}]}, "web_search"),
    ("anthropic", "simulator", {"tools": [WEB_SEARCH]}, "web_search_20250305"),
    ("anthropic", "openai", {"top_k": 5}, "top_k"),
    ("anthropic", "responses", {"top_k": 5}, "top_k"),
]
#: How each upstream is named in a refusal.
NAMED = {
    "openai": "OpenAI chat completions upstream",
    "anthropic": "Anthropic Messages upstream",
    "responses": "OpenAI Responses upstream",
    "simulator": "simulator",
}


@STREAMS
@pytest.mark.parametrize(
    ("client", "served", "extra", "field"),
    REFUSED,
    ids=[f"{c}-{u}-{f}" for c, u, _, f in REFUSED],
)
def test_what_a_pair_cannot_carry_is_a_400_naming_it(
    gateway: RunningGateway,
    upstream: Upstream,
    client: str,
    served: str,
    extra: dict[str, Any],
    field: str,
    stream: bool,
) -> None:
    mark = f"refused{id(extra):x}{stream}"
    answer = ask(gateway, client, f"{served}/text", Ask(prompt=mark, extra=extra), stream)
    error = answer.error
    assert error is not None and error.status_code == 400
    if client == "anthropic":
        message = error.body["error"]["message"]
        assert error.body["error"]["type"] == "invalid_request_error"
    else:
        message = error.body["message"]
        assert error.body["code"] == "unsupported_parameter"
        assert error.body["param"] in (field, "tools", f"'{field}'")
    assert field in message and NAMED[served] in message
    log = upstream.log()
    assert not [r for r in log["requests"] if mark in json.dumps(r["body"])]


# -- the seed route and embeddings -----------------------------------------------------


@pytest.mark.parametrize("served", UPSTREAMS)
def test_the_seed_text_route(gateway: RunningGateway, served: str) -> None:
    query = urllib.parse.urlencode({"prompt": PROMPT, "model": f"{served}/text"})
    with httpx.Client(timeout=20) as http, http.stream("GET", f"{gateway.url}/?{query}") as got:
        assert got.status_code == 200
        assert got.headers["content-type"] == "text/plain; charset=utf-8"
        text = b"".join(got.iter_raw()).decode()
    if served == "simulator":
        assert text == simulated(gateway, "text", Ask()).text
    else:
        assert text == (am if served == "anthropic" else sc).expected_text("normal:n=5")


@pytest.mark.parametrize("served", UPSTREAMS)
def test_embeddings(gateway: RunningGateway, served: str) -> None:
    body = {"model": f"{served}/text", "input": ["one text", "another"]}
    got = httpx.post(f"{gateway.api}/embeddings", json=body, timeout=20)
    if served == "anthropic":
        # The Messages API has no embeddings: refused naming the model and the format.
        assert got.status_code == 400
        error = got.json()["error"]
        assert error["param"] == "model" and "anthropic_messages" in error["message"]
        return
    assert got.status_code == 200, got.text
    data = got.json()["data"]
    assert [d["index"] for d in data] == [0, 1]
    assert all(isinstance(d["embedding"], list) and d["embedding"] for d in data)


#: What clients send that asks for nothing a pair cannot do: ``max_completion_tokens``
#: (the newer name of ``max_tokens``) and values that ask for nothing.
HARMLESS: dict[str, Any] = {
    "max_completion_tokens": 1000,
    "logprobs": False,
    "frequency_penalty": 0,
    "presence_penalty": 0,
}


@pytest.mark.parametrize("served", UPSTREAMS)
def test_chat_fields_that_ask_for_nothing_new_are_never_refused(
    gateway: RunningGateway, served: str
) -> None:
    answer = ask(gateway, "chat", f"{served}/text", Ask(extra=HARMLESS), True)
    assert_ok(answer)
    assert answer.stop == "stop" and answer.text
