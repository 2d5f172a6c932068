"""Passthrough end to end: the gateway in front of the test upstream, the openai SDK as
the client. What the upstream streams in the client's own format reaches the client as
it came, and what is assembled from it (the JSON answer) carries every choice, the
logprobs and the tool calls."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.conftest import StartGateway, upstream_config
from tests.gateway import RunningGateway
from tests.upstream import scenarios as sc

KEY_ENV = {"TEST_UPSTREAM_KEY": "sk-upstream-secret"}
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Tell me a story"}]
PROMPT_TOKENS = 4  # the words of MESSAGES, as the test upstream counts them


@pytest.fixture
def gateway(start_gateway: StartGateway, upstream: Any) -> RunningGateway:
    return start_gateway(upstream_config(upstream.url), env=KEY_ENV)


@pytest.fixture
def client(gateway: RunningGateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.api, api_key="unused", max_retries=0, timeout=20)


def _raw(gateway: RunningGateway, body: dict[str, Any]) -> bytes:
    with (
        httpx.Client(timeout=20) as http,
        http.stream("POST", f"{gateway.api}/chat/completions", json=body) as response,
    ):
        assert response.status_code == 200
        return b"".join(response.iter_raw())


@pytest.mark.parametrize("include_usage", [True, False])
def test_the_client_receives_the_upstream_bytes(
    gateway: RunningGateway, include_usage: bool
) -> None:
    body: dict[str, Any] = {"model": "normal:n=5", "messages": MESSAGES, "stream": True}
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    got = _raw(gateway, body)
    # The gateway always asks the upstream for usage; the usage chunk goes on only if
    # the client asked for it too.
    spec = sc.parse_spec("normal:n=5")
    sent = [
        sc.sse_event(sc.encode(c))
        for c in sc.stream_chunks(spec, "normal:n=5", include_usage=True, prompt=PROMPT_TOKENS)
    ]
    if not include_usage:
        sent = sent[:-1]
    assert got == b"".join(sent) + b"data: [DONE]\n\n"


def test_a_streamed_n_gives_every_choice(client: openai.OpenAI, upstream: Any) -> None:
    model = "choices:n=3"
    chunks = list(
        client.chat.completions.create(
            model=model,
            messages=MESSAGES,
            stream=True,
            n=2,
            stream_options={"include_usage": True},
        )
    )
    assert upstream.log()["requests"][-1]["body"]["n"] == 2
    texts: dict[int, str] = {}
    finishes: dict[int, str] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
            if choice.finish_reason:
                finishes[choice.index] = choice.finish_reason
    assert texts == {0: sc.choice_text(model, 0), 1: sc.choice_text(model, 1)}
    assert finishes == {0: "stop", 1: "stop"}
    assert len({c.id for c in chunks}) == 1
    assert {c.model for c in chunks} == {model}
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None
    assert usage.completion_tokens == 6


def test_a_json_n_gives_every_choice(client: openai.OpenAI) -> None:
    model = "choices:n=2"
    answer = client.chat.completions.create(model=model, messages=MESSAGES, n=3)
    assert [c.index for c in answer.choices] == [0, 1, 2]
    assert [c.message.content for c in answer.choices] == [
        sc.choice_text(model, i) for i in range(3)
    ]
    assert [c.finish_reason for c in answer.choices] == ["stop"] * 3
    assert answer.system_fingerprint == sc.SYSTEM_FINGERPRINT
    assert answer.usage is not None and answer.usage.completion_tokens == 6


def test_logprobs_streamed_and_in_the_json_answer(client: openai.OpenAI, upstream: Any) -> None:
    model = "logprobs:n=3"
    words = sc.content_chunks(sc.parse_spec(model))
    stream = client.chat.completions.create(
        model=model, messages=MESSAGES, stream=True, logprobs=True, top_logprobs=2
    )
    sent = upstream.log()["requests"][-1]["body"]
    assert (sent["logprobs"], sent["top_logprobs"]) == (True, 2)
    streamed: list[dict[str, Any]] = []
    for chunk in stream:
        for choice in chunk.choices:
            if choice.delta.content:
                assert choice.logprobs is not None and choice.logprobs.content is not None
                streamed.extend(t.model_dump() for t in choice.logprobs.content)
    want = [sc.token_logprobs(w, 2) for w in words]
    assert streamed == want

    answer = client.chat.completions.create(
        model=model, messages=MESSAGES, logprobs=True, top_logprobs=2
    )
    logprobs = answer.choices[0].logprobs
    assert logprobs is not None and logprobs.content is not None
    assert [t.model_dump() for t in logprobs.content] == want
    assert answer.choices[0].message.content == "".join(words)


def test_a_tool_call_only_answer_has_no_content(client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(model="tool_call", messages=MESSAGES)
    choice = answer.choices[0]
    assert choice.message.content is None
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls
    assert calls is not None and len(calls) == 1
    call = calls[0]
    assert call.id == sc.TOOL_CALL_ID and call.type == "function"
    assert call.function.name == sc.TOOL_NAME
    assert json.loads(call.function.arguments) == json.loads(sc.TOOL_ARGUMENTS)

    streamed = client.chat.completions.create(model="tool_call", messages=MESSAGES, stream=True)
    arguments = ""
    for chunk in streamed:
        for part in chunk.choices:
            assert not part.delta.content
            for delta in part.delta.tool_calls or ():
                assert delta.index == 0
                arguments += (delta.function.arguments or "") if delta.function else ""
    assert arguments == sc.TOOL_ARGUMENTS
