"""Request validation against OpenAI's published schemas (sluice.schemas): what real
clients send passes, each kind of mistake is a 400 that names the parameter, and the
schema files in the package are what scripts/extract_schemas.py makes of the spec."""

from __future__ import annotations

import copy
import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from pydantic import BaseModel

from sluice import schemas
from sluice.errors import RequestError
from tests import openapi
from tests.gateway import RunningGateway, run_gateway

ROOT = Path(__file__).resolve().parent.parent
MESSAGES: list[Any] = [{"role": "user", "content": "hi"}]
TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": MESSAGES, **fields}


def problem(data: dict[str, Any]) -> RequestError:
    with pytest.raises(RequestError) as caught:
        schemas.validate("openai_chat_request", data)
    assert caught.value.status == 400
    assert caught.value.type == "invalid_request_error"
    return caught.value


# -- mistakes -----------------------------------------------------------------------

#: (id, body, param, words the message must contain)
INVALID: list[tuple[str, dict[str, Any], str, list[str]]] = [
    ("no-model", {"messages": MESSAGES}, "model", ["'model' is required"]),
    ("model-null", {"model": None, "messages": MESSAGES}, "model", ["must be a string"]),
    ("model-number", chat(model=5), "model", ["'model' must be a string", "got an integer"]),
    ("no-messages", {"model": "m"}, "messages", ["'messages' is required"]),
    ("messages-empty", chat(messages=[]), "messages", ["non-empty array"]),
    ("messages-string", chat(messages="hi"), "messages", ["must be an array", "got a string"]),
    ("message-string", chat(messages=["hi"]), "messages[0]", ["must be an object"]),
    (
        "role-object",
        chat(messages=[{"role": {}, "content": "x"}]),
        "messages[0].role",
        ["messages[0].role must be one of", "user", "assistant", "got {}"],
    ),
    (
        "role-number",
        chat(messages=[{"role": 1, "content": "x"}]),
        "messages[0].role",
        ["must be one of", "got 1"],
    ),
    (
        "role-unknown",
        chat(messages=[MESSAGES[0], {"role": "robot", "content": "x"}]),
        "messages[1].role",
        ['got "robot"'],
    ),
    ("role-missing", chat(messages=[{"content": "x"}]), "messages[0].role", ["is required"]),
    (
        "content-number",
        chat(messages=[{"role": "user", "content": 5}]),
        "messages[0].content",
        ["must be a string or an array", "got an integer"],
    ),
    (
        "text-part-without-text",
        chat(messages=[{"role": "user", "content": [{"type": "text"}]}]),
        "messages[0].content[0].text",
        ["messages[0].content[0].text is required"],
    ),
    (
        "text-part-text-number",
        chat(messages=[{"role": "user", "content": [{"type": "text", "text": 3}]}]),
        "messages[0].content[0].text",
        ["must be a string"],
    ),
    (
        "part-unknown-type",
        chat(messages=[{"role": "user", "content": [{"type": "video", "url": "x"}]}]),
        "messages[0].content[0].type",
        ["must be one of", "text", "image_url", 'got "video"'],
    ),
    (
        "image-without-url",
        chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]),
        "messages[0].content[0].image_url.url",
        ["is required"],
    ),
    (
        "tool-message-without-id",
        chat(messages=[{"role": "tool", "content": "42"}]),
        "messages[0].tool_call_id",
        ["is required"],
    ),
    ("tools-object", chat(tools=TOOL), "tools", ["'tools' must be an array", "got an object"]),
    (
        "tool-without-name",
        chat(tools=[TOOL, {"type": "function", "function": {"description": "x"}}]),
        "tools[1].function.name",
        ["tools[1].function.name is required"],
    ),
    (
        "tool-name-number",
        chat(tools=[{"type": "function", "function": {"name": 7}}]),
        "tools[0].function.name",
        ["must be a string"],
    ),
    (
        "tool-without-type",
        chat(tools=[{"function": {"name": "f"}}]),
        "tools[0].type",
        ["is required"],
    ),
    ("tool-choice-without-tools", chat(tool_choice="auto"), "tool_choice", ["'tools'"]),
    (
        "tool-choice-unknown",
        chat(tools=[TOOL], tool_choice="sometimes"),
        "tool_choice",
        ["none, auto, required"],
    ),
    (
        "tool-choice-function-without-name",
        chat(tools=[TOOL], tool_choice={"type": "function", "function": {}}),
        "tool_choice.function.name",
        ["is required"],
    ),
    (
        "response-format-string",
        chat(response_format="json"),
        "response_format",
        ["'response_format' must be an object", "got a string"],
    ),
    (
        "response-format-unknown-type",
        chat(response_format={"type": "xml"}),
        "response_format.type",
        ["text, json_schema, json_object"],
    ),
    (
        "json-schema-without-name",
        chat(response_format={"type": "json_schema", "json_schema": {"schema": {}}}),
        "response_format.json_schema.name",
        ["is required"],
    ),
    ("logprobs-string", chat(logprobs="yes"), "logprobs", ["must be a boolean"]),
    ("top-logprobs-high", chat(logprobs=True, top_logprobs=21), "top_logprobs", ["at most 20"]),
    ("stop-number", chat(stop=5), "stop", ["must be a string, an array or null"]),
    ("stop-list-number", chat(stop=["a", 3]), "stop[1]", ["must be a string"]),
    ("stop-too-many", chat(stop=["a", "b", "c", "d", "e"]), "stop", ["at most 4 items"]),
    ("seed-string", chat(seed="1"), "seed", ["'seed' must be an integer", "got a string"]),
    ("seed-fraction", chat(seed=1.5), "seed", ["must be an integer", "got a number"]),
    ("seed-2**64", chat(seed=2**64), "seed", ["at most"]),
    ("seed-1e20", chat(seed=1e20), "seed", ["at most"]),
    ("n-zero", chat(n=0), "n", ["'n' must be at least 1", "got 0"]),
    ("n-negative", chat(n=-3), "n", ["at least 1"]),
    ("n-string", chat(n="2"), "n", ["must be an integer"]),
    ("temperature-high", chat(temperature=2.5), "temperature", ["at most 2"]),
    ("temperature-string", chat(temperature="hot"), "temperature", ["must be a number"]),
    ("top-p-high", chat(top_p=1.5), "top_p", ["at most 1"]),
    ("presence-penalty-low", chat(presence_penalty=-3), "presence_penalty", ["at least -2"]),
    ("max-tokens-string", chat(max_tokens="many"), "max_tokens", ["must be an integer"]),
    ("stream-string", chat(stream="yes"), "stream", ["must be a boolean"]),
    ("stream-options-string", chat(stream_options="x"), "stream_options", ["an object"]),
    (
        "include-usage-string",
        chat(stream=True, stream_options={"include_usage": "yes"}),
        "stream_options.include_usage",
        ["must be a boolean"],
    ),
    ("logit-bias-string", chat(logit_bias={"50256": "x"}), "logit_bias.50256", ["integer"]),
    ("user-number", chat(user=5), "user", ["must be a string"]),
    ("metadata-number", chat(metadata={"a": 1}), "metadata.a", ["must be a string"]),
    ("functions-without-name", chat(functions=[{"description": "x"}]), "functions[0].name", []),
    ("function-call-unknown", chat(function_call="always"), "function_call", ["none, auto"]),
    (
        "assistant-tool-call-without-arguments",
        chat(
            messages=[
                MESSAGES[0],
                {
                    "role": "assistant",
                    "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f"}}],
                },
            ]
        ),
        "messages[1].tool_calls[0].function.arguments",
        ["is required"],
    ),
]


@pytest.mark.parametrize(
    ("data", "param", "words"), [case[1:] for case in INVALID], ids=[case[0] for case in INVALID]
)
def test_a_mistake_is_named(data: dict[str, Any], param: str, words: list[str]) -> None:
    error = problem(data)
    assert error.param == param, error.message
    for word in words:
        assert word in error.message
    # The message names the parameter it is about.
    assert param.split("[")[0].split(".")[0] in error.message


def test_the_first_problem_is_the_shallowest() -> None:
    error = problem(chat(n=0, messages=[{"role": "user", "content": 5}]))
    assert error.param == "n"


def test_places_deep_in_long_arrays_keep_their_indices() -> None:
    """The explanation looks at the failing message alone; the indices it names are
    those of the body as sent."""
    parts: list[Any] = [{"type": "text", "text": "x"}] * 9
    messages: list[Any] = [*MESSAGES * 40]
    messages[37] = {"role": "user", "content": [*parts[:5], {"type": "text"}, *parts[5:]]}
    error = problem(chat(messages=messages))
    assert error.param == "messages[37].content[5].text"
    assert error.message == "messages[37].content[5].text is required"
    messages[37] = MESSAGES[0]
    messages[12] = {"role": "user", "content": "x", "name": 5}
    messages[30] = {"role": {}, "content": "x"}
    assert problem(chat(messages=messages)).param == "messages[12].name"
    error = problem(chat(messages=messages, logit_bias={"a.b": "x"}))
    assert error.param == "logit_bias.a.b"


def test_validate_leaves_the_body_as_it_was() -> None:
    data = chat(temperature=None, tools=[TOOL], tool_choice="auto", top_k=None)
    before = copy.deepcopy(data)
    schemas.validate("openai_chat_request", data)
    assert data == before


def test_unknown_schema_name() -> None:
    with pytest.raises(KeyError):
        schemas.validate("openai_nothing", {})


# -- what real clients send ----------------------------------------------------------


class Answer(BaseModel):
    city: str
    degrees: float


def _sdk_calls() -> list[tuple[str, dict[str, Any]]]:
    """Keyword arguments for ``client.chat.completions.create``, as applications use it."""
    image = (
        "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8"
        "/5+hHgAHggJ/PchI7wAAAABJRU5ErkJggg=="
    )
    return [
        ("plain", {"messages": MESSAGES}),
        (
            "tools",
            {
                "messages": [
                    {"role": "system", "content": "Use the tools."},
                    {"role": "user", "content": "Weather in Paris?"},
                    {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [
                            {
                                "id": "call_1",
                                "type": "function",
                                "function": {"name": "get_weather", "arguments": '{"city":"P"}'},
                            }
                        ],
                    },
                    {"role": "tool", "tool_call_id": "call_1", "content": "21 degrees"},
                ],
                "tools": [TOOL, openai.pydantic_function_tool(Answer)],
                "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
                "parallel_tool_calls": False,
            },
        ),
        (
            "images",
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "What is in this picture?"},
                            {"type": "image_url", "image_url": {"url": image, "detail": "low"}},
                            {
                                "type": "image_url",
                                "image_url": {"url": "https://example.com/a.png"},
                            },
                        ],
                    }
                ],
                "max_completion_tokens": 300,
            },
        ),
        (
            "json-schema",
            {
                "messages": MESSAGES,
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {
                        "name": "answer",
                        "schema": Answer.model_json_schema(),
                        "strict": True,
                    },
                },
                "temperature": 0,
                "seed": 7,
            },
        ),
        (
            "stream-options",
            {
                "messages": MESSAGES,
                "stream": True,
                "stream_options": {"include_usage": True},
                "stop": ["\n\n"],
                "logprobs": True,
                "top_logprobs": 3,
                "n": 1,
                "user": "u-1",
                "metadata": {"team": "a"},
                "store": False,
            },
        ),
        (
            "deprecated-fields",
            {
                "messages": [
                    MESSAGES[0],
                    {
                        "role": "assistant",
                        "content": None,
                        "function_call": {"name": "get_weather", "arguments": "{}"},
                    },
                    {"role": "function", "name": "get_weather", "content": "sunny"},
                ],
                "functions": [TOOL["function"]],
                "function_call": "auto",
                "max_tokens": 50,
            },
        ),
        (
            "vendor-fields",
            {
                "messages": MESSAGES,
                "extra_body": {
                    "top_k": 40,
                    "repetition_penalty": 1.1,
                    "chat_template_kwargs": {"enable_thinking": False},
                    "min_p": 0.05,
                },
            },
        ),
    ]


SDK_CALLS = _sdk_calls()

#: Bodies that LangChain's ChatOpenAI (langchain_openai ``_convert_message_to_dict`` and
#: ``_default_params``) and the Vercel AI SDK's OpenAI provider (``@ai-sdk/openai``
#: ``convertToOpenAIChatMessages``) build; neither library is installed here.
OTHER_CLIENTS: list[tuple[str, dict[str, Any]]] = [
    (
        "langchain-tools",
        {
            "model": "gpt-4o-mini",
            "stream": False,
            "n": 1,
            "temperature": 0.7,
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Weather?", "name": "alice"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "type": "function",
                            "id": "call_9",
                            "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                        }
                    ],
                },
                {"role": "tool", "content": "cold", "tool_call_id": "call_9"},
            ],
            "tools": [TOOL],
            "tool_choice": "auto",
        },
    ),
    (
        "langchain-streaming-nulls",
        {
            "model": "gpt-4o-mini",
            "stream": True,
            "stream_options": {"include_usage": True},
            "n": None,
            "temperature": None,
            "top_logprobs": None,
            "max_tokens": None,
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        },
    ),
    (
        "vercel-ai-sdk",
        {
            "model": "gpt-4o",
            "max_tokens": 1024,
            "temperature": 0,
            "top_p": 1,
            "frequency_penalty": 0,
            "presence_penalty": 0,
            "seed": 42,
            "stream": True,
            "stream_options": {"include_usage": True},
            "messages": [
                {"role": "system", "content": "You are terse."},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Describe"},
                        {"type": "image_url", "image_url": {"url": "https://example.com/x.jpg"}},
                        {
                            "type": "input_audio",
                            "input_audio": {"data": "UklGRg==", "format": "wav"},
                        },
                        {
                            "type": "file",
                            "file": {
                                "filename": "a.pdf",
                                "file_data": "data:application/pdf;base64,JVBE",
                            },
                        },
                    ],
                },
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [
                        {
                            "id": "t1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": "{}"},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "t1", "content": '{"temp": 3}'},
            ],
            "tools": [{**TOOL, "function": {**TOOL["function"], "strict": True}}],
            "tool_choice": "required",
            "response_format": {"type": "json_object"},
        },
    ),
    (
        "developer-role-and-reasoning",
        {
            "model": "o4-mini",
            "messages": [{"role": "developer", "content": "Think."}, MESSAGES[0]],
            "reasoning_effort": "low",
            "max_completion_tokens": 2000,
            "prediction": {"type": "content", "content": "draft"},
        },
    ),
]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, upstream: Any) -> Iterator[RunningGateway]:
    config = {
        "default_model": "normal",
        "models": {
            "*": {"provider": "openai", "base_url": upstream.url, "api_key_env": "UPSTREAM_KEY"}
        },
    }
    env = {"UPSTREAM_KEY": "sk-test"}
    with run_gateway(tmp_path_factory.mktemp("validation"), config, env) as running:
        yield running


@pytest.mark.parametrize("call", [c[1] for c in SDK_CALLS], ids=[c[0] for c in SDK_CALLS])
def test_what_the_openai_sdk_sends_is_valid(
    call: dict[str, Any], upstream: Any, gateway: RunningGateway
) -> None:
    """The SDK's own request body (as the test upstream received it) passes, and the
    gateway serves the same call."""
    direct = openai.OpenAI(base_url=upstream.url, api_key="sk-test", max_retries=0, timeout=20)
    upstream.reset()
    response = direct.chat.completions.create(model="normal", **call)
    if call.get("stream"):
        list(response)
    sent = upstream.log()["requests"][-1]["body"]
    schemas.validate("openai_chat_request", sent)

    through = openai.OpenAI(base_url=gateway.api, api_key="unused", max_retries=0, timeout=20)
    response = through.chat.completions.create(model="normal", **call)
    if call.get("stream"):
        assert list(response)
    else:
        assert response.choices


@pytest.mark.parametrize("body", [c[1] for c in OTHER_CLIENTS], ids=[c[0] for c in OTHER_CLIENTS])
def test_what_other_clients_send_is_valid(body: dict[str, Any]) -> None:
    schemas.validate("openai_chat_request", body)


def test_unknown_top_level_fields_pass_but_are_still_checked_below() -> None:
    schemas.validate("openai_chat_request", chat(top_k=40, repetition_penalty=1.1, guided_json={}))
    error = problem(chat(top_k=40, messages=[{"role": "user"}]))
    assert error.param == "messages[0].content"


def test_the_other_schemas_accept_vendor_fields() -> None:
    # The spec closes CreateEmbeddingRequest (additionalProperties: false): opened here.
    schemas.validate("openai_embeddings_request", {"model": "m", "input": "x", "truncate": True})
    schemas.validate("openai_responses_request", {"model": "m", "input": "hi", "top_k": 3})
    with pytest.raises(RequestError) as caught:
        schemas.validate("openai_embeddings_request", {"model": "m", "input": 5})
    assert caught.value.param == "input"


# -- the schema files --------------------------------------------------------------


def _extractor() -> Any:
    spec = importlib.util.spec_from_file_location(
        "extract_schemas", ROOT / "scripts/extract_schemas.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_schema_files_are_up_to_date_with_the_spec() -> None:
    if not openapi.SPEC.exists():
        pytest.skip(f"OpenAI's API description is not at {openapi.SPEC}")
    extractor = _extractor()
    for path, text in extractor.generate(openapi.SPEC).items():
        assert path.read_text() == text, f"{path.name} is stale: run scripts/extract_schemas.py"


@pytest.mark.parametrize("name", schemas.NAMES)
def test_schema_files_are_valid_2020_12(name: str) -> None:
    import jsonschema

    path = ROOT / "src" / "sluice" / "schemas" / f"{name}.json"
    jsonschema.Draft202012Validator.check_schema(json.loads(path.read_text()))
