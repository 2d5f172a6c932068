"""A real upstream nobody here wrote: llama.cpp's llama-server, relayed through the gateway.

llama-server closes the connection after every streamed response while announcing
keep-alive (see test_llama_direct); the gateway's upstream pool must replace such a
connection, not fail the next request on it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import StartGateway
from tests.gateway import RunningGateway
from tests.llama.fixture import LLAMA_MODEL, NO_KEEPALIVE, start_llama_server

MESSAGES: list[Any] = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Say hi."},
]


@pytest.fixture(scope="module")
def llama_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with start_llama_server(tmp_path_factory.mktemp("llama")) as url:
        yield url


@pytest.fixture
def gateway(start_gateway: StartGateway, llama_url: str) -> RunningGateway:
    config = {
        "default_model": "tiny-alias",
        "models": {
            # Same name upstream: chunks are forwarded as they came.
            LLAMA_MODEL: {"provider": "openai", "base_url": llama_url},
            # Another public name: chunks are re-encoded under it.
            "tiny-alias": {"provider": "openai", "base_url": llama_url, "model": LLAMA_MODEL},
        },
    }
    return start_gateway(config)


def _stream(client: openai.OpenAI, model: str, **extra: Any) -> tuple[str, str | None, list[Any]]:
    chunks = list(
        client.chat.completions.create(
            model=model,
            messages=MESSAGES,
            stream=True,
            temperature=0,
            seed=1,
            max_tokens=40,
            **extra,
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = next(
        (c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason),
        None,
    )
    return text, finish, chunks


@pytest.mark.parametrize("model", [LLAMA_MODEL, "tiny-alias"])
def test_relay_is_unchanged_in_content(gateway: RunningGateway, llama_url: str, model: str) -> None:
    direct = openai.OpenAI(
        base_url=llama_url,
        api_key="unused",
        max_retries=0,
        http_client=openai.DefaultHttpxClient(trust_env=False, limits=NO_KEEPALIVE),
    )
    through = openai.OpenAI(base_url=gateway.api, api_key="unused", max_retries=0)
    want_text, want_finish, upstream_chunks = _stream(direct, LLAMA_MODEL)
    got_text, got_finish, chunks = _stream(through, model)
    assert want_text
    assert got_text == want_text
    assert got_finish == want_finish
    # Clients see the model the upstream said answered, alias or not, in every chunk.
    assert {c.model for c in chunks} == {c.model for c in upstream_chunks}
    assert len({c.id for c in chunks}) == 1

    # Non-streaming through the gateway gives the same text.
    completion = through.chat.completions.create(
        model=model, messages=MESSAGES, temperature=0, seed=1, max_tokens=40
    )
    assert completion.choices[0].message.content == want_text


def test_usage_is_taken_from_the_upstream(gateway: RunningGateway, llama_url: str) -> None:
    """llama-server answers ``include_usage`` with a usage chunk: the record uses it."""
    client = openai.OpenAI(base_url=gateway.api, api_key="unused", max_retries=0)
    _, _, chunks = _stream(client, LLAMA_MODEL, stream_options={"include_usage": True})
    assert chunks[-1].usage is not None
    body = {
        "model": LLAMA_MODEL,
        "messages": MESSAGES,
        "temperature": 0,
        "seed": 1,
        "max_tokens": 40,
    }
    with httpx.Client(trust_env=False, timeout=30.0, limits=NO_KEEPALIVE) as http:
        usage = http.post(f"{llama_url}/chat/completions", json=body).json()["usage"]
    rows = gateway.wait_records(1)
    assert rows[-1]["outcome"] == "ok"
    assert rows[-1]["usage_source"] == "reported"
    assert rows[-1]["input_tokens"] == usage["prompt_tokens"]
    assert rows[-1]["output_tokens"] == usage["completion_tokens"]
    assert chunks[-1].usage.completion_tokens == usage["completion_tokens"]


def test_streams_back_to_back(gateway: RunningGateway) -> None:
    """Each stream ends with llama-server closing its connection: requests that follow
    one another on the gateway's pool all succeed."""
    client = openai.OpenAI(base_url=gateway.api, api_key="unused", max_retries=0)
    results = {_stream(client, LLAMA_MODEL)[:2] for _ in range(12)}
    assert len(results) == 1
    rows = gateway.wait_records(12)
    assert [r["outcome"] for r in rows] == ["ok"] * 12


def test_sdk_sees_the_models(gateway: RunningGateway, tmp_path: Path) -> None:
    client = openai.OpenAI(base_url=gateway.api, api_key="unused", max_retries=0)
    assert {m.id for m in client.models.list().data} == {LLAMA_MODEL, "tiny-alias"}
