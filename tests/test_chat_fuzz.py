"""Chat requests, valid and almost valid, against a running gateway: whatever a client
sends, the answer is never a 5xx, and every error is OpenAI's error object.

Almost valid: a valid request with one or two places changed to a wrong type, a huge
number (2**64, 1e20), a role that is not a string, nested junk, a member dropped or
added. ``temperature: 0`` and ``seed`` make a request cacheable, which sends it through
the cache key's canonical form as well.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.gateway import RunningGateway, run_gateway
from tests.mutations import HUGE, change, junk

text = st.text(max_size=24)
text_part = st.fixed_dictionaries({"type": st.just("text"), "text": text})
image_part = st.fixed_dictionaries(
    {
        "type": st.just("image_url"),
        "image_url": st.fixed_dictionaries({"url": st.just("https://example.com/a.png")}),
    }
)
tool_call = st.fixed_dictionaries(
    {
        "id": st.text(min_size=1, max_size=8),
        "type": st.just("function"),
        "function": st.fixed_dictionaries({"name": st.just("f"), "arguments": st.just("{}")}),
    }
)
message = st.one_of(
    st.fixed_dictionaries({"role": st.sampled_from(["system", "developer"]), "content": text}),
    st.fixed_dictionaries(
        {
            "role": st.just("user"),
            "content": text | st.lists(text_part | image_part, min_size=1, max_size=3),
        }
    ),
    st.fixed_dictionaries(
        {"role": st.just("assistant"), "content": text | st.none()},
        optional={"tool_calls": st.lists(tool_call, min_size=1, max_size=2)},
    ),
    st.fixed_dictionaries(
        {"role": st.just("tool"), "tool_call_id": st.text(min_size=1, max_size=8), "content": text}
    ),
)
tool = st.fixed_dictionaries(
    {
        "type": st.just("function"),
        "function": st.fixed_dictionaries(
            {"name": st.sampled_from(["f", "g"])},
            optional={"parameters": st.just({"type": "object", "properties": {}})},
        ),
    }
)
options = st.fixed_dictionaries(
    {},
    optional={
        "stream": st.booleans(),
        # 0 and a seed make the request cacheable: the cache key's path.
        "temperature": st.sampled_from([0, 0.0, 0.7, 2]),
        "seed": st.integers(min_value=-(2**63), max_value=2**63 - 1),
        "max_tokens": st.integers(min_value=1, max_value=4096),
        "n": st.just(1),
        "stop": st.lists(text, min_size=1, max_size=4) | text,
        "logprobs": st.booleans(),
        "user": text,
        "tools": st.lists(tool, min_size=1, max_size=2),
        "response_format": st.just({"type": "json_object"}),
        # Vendor fields: not in OpenAI's schema, passed on as they are.
        "top_k": st.integers(min_value=1, max_value=100) | st.sampled_from(HUGE),
        "repetition_penalty": st.floats(0, 2) | st.sampled_from(HUGE),
        "chat_template_kwargs": st.just({"enable_thinking": False}) | junk,
    },
)


@st.composite
def valid_requests(draw: st.DrawFn) -> dict[str, Any]:
    request: dict[str, Any] = {
        "model": "normal",
        "messages": draw(st.lists(message, min_size=1, max_size=4)),
        **draw(options),
    }
    if request.get("stream"):
        request["stream_options"] = {"include_usage": draw(st.booleans())}
    return request


@st.composite
def almost_valid_requests(draw: st.DrawFn) -> dict[str, Any]:
    request = draw(valid_requests())
    for _ in range(draw(st.integers(1, 2))):
        request = change(draw, request, ("role", "type", "content"))
    return request


requests = valid_requests() | almost_valid_requests()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, upstream: Any) -> Iterator[RunningGateway]:
    config = {
        "default_model": "normal",
        "models": {
            "normal": {
                "provider": "openai",
                "base_url": upstream.url,
                "api_key_env": "TEST_UPSTREAM_KEY",
            }
        },
    }
    env = {"TEST_UPSTREAM_KEY": "sk-test"}
    with run_gateway(tmp_path_factory.mktemp("fuzz"), config, env) as running:
        yield running


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=20) as client:
        yield client


def _log_tail(gateway: RunningGateway, lines: int = 30) -> str:
    return "\n".join(gateway.log().splitlines()[-lines:])


def _post(gateway: RunningGateway, client: httpx.Client, body: dict[str, Any]) -> None:
    raw = json.dumps(body).encode()
    url = f"{gateway.api}/chat/completions"
    headers = {"content-type": "application/json"}
    with client.stream("POST", url, content=raw, headers=headers) as response:
        content = response.read()
    assert response.status_code < 500, (
        f"{response.status_code} for {raw[:500]!r}: {content[:300]!r}\n{_log_tail(gateway)}"
    )
    if response.status_code >= 400:
        error = json.loads(content)["error"]
        assert set(error) == {"message", "type", "param", "code"}, content
        assert isinstance(error["message"], str) and error["message"]
        assert isinstance(error["type"], str) and error["type"]
        assert error["param"] is None or isinstance(error["param"], str)
        assert error["code"] is None or isinstance(error["code"], str)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(body=requests)
def test_no_request_gets_a_5xx(
    body: dict[str, Any], gateway: RunningGateway, client: httpx.Client
) -> None:
    _post(gateway, client, body)


MESSAGES = [{"role": "user", "content": "hi"}]
#: Inputs that once were a 500, each tried every run (Hypothesis stops at the first
#: failing explicit example, and these would hide what it finds).
EDGE_CASES = {
    "role-object": {"model": "normal", "messages": [{"role": {}, "content": "hi"}]},
    "role-list": {"model": "normal", "messages": [{"role": ["user"], "content": "hi"}]},
    "seed-2**64-cached": {"model": "normal", "messages": MESSAGES, "temperature": 0, "seed": 2**64},
    "vendor-2**64-cached": {
        "model": "normal",
        "messages": MESSAGES,
        "temperature": 0,
        "top_k": 2**64,
    },
    "logit-bias-1e20-cached": {
        "model": "normal",
        "messages": MESSAGES,
        "seed": 1,
        "logit_bias": {"1": 1e20},
    },
    "max-tokens-1e20-cached": {
        "model": "normal",
        "messages": MESSAGES,
        "temperature": 0,
        "max_tokens": 1e20,
    },
    "message-extra-1e20-cached": {
        "model": "normal",
        "messages": [{"role": "user", "content": "hi", "x": 1e20}],
        "temperature": 0,
    },
}


@pytest.mark.parametrize("body", list(EDGE_CASES.values()), ids=list(EDGE_CASES))
def test_edge_cases(body: dict[str, Any], gateway: RunningGateway, client: httpx.Client) -> None:
    _post(gateway, client, body)
