"""Every client API over llama-server speaking each of its three formats, and
embeddings: a real upstream nobody here wrote, behind ``provider: openai``,
``anthropic`` and ``openai-responses``.

The tiny model writes the same text for the same prompt in every format, so each pair
is checked against the text llama-server streams directly on chat completions.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.conftest import StartGateway
from tests.gateway import RunningGateway
from tests.llama.fixture import LLAMA_MODEL, NO_KEEPALIVE, start_llama_server

PROMPT = "Say hi."
MAX_TOKENS = 24
PROVIDERS = ("openai", "anthropic", "openai-responses")


@pytest.fixture(scope="module")
def llama_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with start_llama_server(tmp_path_factory.mktemp("llama")) as url:
        yield url


@pytest.fixture(scope="module")
def expected(llama_url: str) -> str:
    body = {
        "model": LLAMA_MODEL,
        "messages": [{"role": "user", "content": PROMPT}],
        "temperature": 0,
        "max_tokens": MAX_TOKENS,
    }
    with httpx.Client(trust_env=False, timeout=60.0, limits=NO_KEEPALIVE) as http:
        answer = http.post(f"{llama_url}/chat/completions", json=body).json()
    text: str = answer["choices"][0]["message"]["content"]
    assert text
    return text


@pytest.fixture
def gateway(start_gateway: StartGateway, llama_url: str) -> RunningGateway:
    root = llama_url.removesuffix("/v1")
    models: dict[str, Any] = {
        "via-openai": {"provider": "openai", "base_url": llama_url, "model": LLAMA_MODEL},
        # The Anthropic SDK's base URL: the wire adds /v1/messages.
        "via-anthropic": {"provider": "anthropic", "base_url": root, "model": LLAMA_MODEL},
        "via-openai-responses": {
            "provider": "openai-responses",
            "base_url": llama_url,
            "model": LLAMA_MODEL,
        },
        "embedder": {"provider": "openai", "base_url": llama_url, "model": LLAMA_MODEL},
    }
    return start_gateway({"models": models})


def _chat(gateway: RunningGateway, model: str) -> str:
    client = openai.OpenAI(base_url=gateway.api, api_key="unused", max_retries=0)
    chunks = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": PROMPT}],
        stream=True,
        temperature=0,
        max_tokens=MAX_TOKENS,
    )
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def _messages(gateway: RunningGateway, model: str) -> str:
    client = anthropic.Anthropic(base_url=gateway.url, api_key="unused", max_retries=0)
    with client.messages.stream(
        model=model,
        max_tokens=MAX_TOKENS,
        messages=[{"role": "user", "content": PROMPT}],
        extra_body={"temperature": 0},
    ) as stream:
        final = stream.get_final_message()
    assert final.stop_reason in ("end_turn", "max_tokens")
    return "".join(block.text for block in final.content if block.type == "text")


def _responses(gateway: RunningGateway, model: str) -> str:
    client = openai.OpenAI(base_url=gateway.api, api_key="unused", max_retries=0)
    events = list(
        client.responses.create(
            model=model,
            input=PROMPT,
            stream=True,
            temperature=0,
            max_output_tokens=MAX_TOKENS,
            store=False,
        )
    )
    # Cut at max_output_tokens: incomplete (llama-server's own /v1/responses says
    # completed even then; the gateway says what happened).
    assert events[-1].type in ("response.completed", "response.incomplete")
    return "".join(e.delta for e in events if e.type == "response.output_text.delta")


CLIENTS = {"chat": _chat, "messages": _messages, "responses": _responses}


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("client", sorted(CLIENTS))
def test_every_client_api_over_every_llama_format(
    gateway: RunningGateway, expected: str, client: str, provider: str
) -> None:
    assert CLIENTS[client](gateway, f"via-{provider}") == expected
    rows = gateway.wait_records(1)
    assert rows[-1]["outcome"] == "ok"
    assert rows[-1]["usage_source"] == "reported"


def test_embeddings_through_the_gateway(gateway: RunningGateway, llama_url: str) -> None:
    client = openai.OpenAI(base_url=gateway.api, api_key="unused", max_retries=0)
    through = client.embeddings.create(model="embedder", input=["hello", "world"])
    with httpx.Client(trust_env=False, timeout=60.0, limits=NO_KEEPALIVE) as http:
        direct = http.post(
            f"{llama_url}/embeddings",
            json={"model": LLAMA_MODEL, "input": ["hello", "world"], "encoding_format": "float"},
        ).json()
    for got, want in zip(through.data, direct["data"], strict=True):
        assert got.embedding == pytest.approx(want["embedding"], rel=1e-5, abs=1e-6)
    assert through.usage.prompt_tokens == direct["usage"]["prompt_tokens"]
    row = gateway.wait_records(1)[-1]
    assert row["route"] == "/v1/embeddings" and row["outcome"] == "ok"
    assert row["input_tokens"] == direct["usage"]["prompt_tokens"]
