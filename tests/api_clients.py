"""The three client APIs, driven through their official SDKs, each answer read into one
shape (``Answer``) so that tests can hold them side by side: the text, the reasoning,
the tool calls, how the answer stopped, the usage as the client reads it, and how a
failure reached the client.

``chat`` is the ``openai`` SDK's chat completions, ``responses`` its Responses API,
``messages`` the ``anthropic`` SDK's Messages API. Streamed, each reads the SDK's own
stream (``messages.stream`` and ``get_final_message()`` for Anthropic); not streamed,
the one object the SDK returns.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anthropic
import openai

from tests.gateway import RunningGateway

PROMPT = "Tell me a story"
#: The words of ``PROMPT``: what the test upstreams count as its input tokens.
PROMPT_WORDS = 4
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
    "required": ["city"],
}
TOOL = "get_weather"
DESCRIPTION = "The weather in a city"
CHAT_TOOLS: Any = [
    {
        "type": "function",
        "function": {"name": TOOL, "description": DESCRIPTION, "parameters": SCHEMA},
    }
]
RESPONSES_TOOLS: Any = [
    {"type": "function", "name": TOOL, "description": DESCRIPTION, "parameters": SCHEMA}
]
ANTHROPIC_TOOLS: Any = [{"name": TOOL, "description": DESCRIPTION, "input_schema": SCHEMA}]
#: Anthropic's thinking budget floor; ``max_tokens`` must be above it.
THINKING_BUDGET = 1024


@dataclass
class Ask:
    """What a test asks, whatever the client API."""

    prompt: str = PROMPT
    #: Offer ``get_weather`` and require a call.
    tools: bool = False
    #: Ask for reasoning (an effort, or Anthropic's thinking budget).
    reasoning: bool = False
    max_tokens: int = 1000
    #: A tool call of an earlier answer and its result, sent back: (id, name, arguments
    #: as JSON text, result).
    result: tuple[str, str, str, str] | None = None
    #: More request fields, in the client API's own shape (sent as they are).
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Call:
    id: str
    name: str
    #: The arguments, parsed.
    arguments: Any


@dataclass
class Usage:
    #: Every input token, cache reads and writes included (canonical, as OpenAI counts).
    input: int
    output: int
    cached: int
    #: Cache writes; None when the API has no field for them (chat completions).
    written: int | None


@dataclass
class Answer:
    text: str = ""
    reasoning: str = ""
    calls: list[Call] = field(default_factory=list)
    #: OpenAI's ``tool_calls[].index`` of each call (chat completions streams).
    indices: list[int] = field(default_factory=list)
    #: ``stop``, ``tool_calls``, ``length`` or the API's own word.
    stop: str | None = None
    usage: Usage | None = None
    #: How a failure reached the client: the SDK's exception, or (Responses streams)
    #: the ``error`` event before ``response.failed``.
    error: Any = None
    #: The final object: ChatCompletion, Response, Message (None after a failure).
    final: Any = None
    #: The stream's event or chunk types, in order (streams only).
    events: list[str] = field(default_factory=list)


def _arguments(text: str) -> Any:
    return json.loads(text) if text.strip() else {}


# -- chat completions -------------------------------------------------------------


def _chat_usage(usage: Any) -> Usage:
    details = usage.prompt_tokens_details
    cached = (details.cached_tokens or 0) if details is not None else 0
    return Usage(usage.prompt_tokens, usage.completion_tokens, cached, None)


def _chat_messages(ask: Ask) -> list[Any]:
    messages: list[Any] = [{"role": "user", "content": ask.prompt}]
    if ask.result is not None:
        call_id, name, arguments, result = ask.result
        function = {"name": name, "arguments": arguments}
        messages.append(
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": call_id, "type": "function", "function": function}],
            }
        )
        messages.append({"role": "tool", "tool_call_id": call_id, "content": result})
    return messages


def chat(gateway: RunningGateway, model: str, ask: Ask, stream: bool) -> Answer:
    kwargs: dict[str, Any] = {
        "model": model,
        "messages": _chat_messages(ask),
        "max_tokens": ask.max_tokens,
    }
    if ask.tools or ask.result is not None:
        kwargs["tools"] = CHAT_TOOLS
    if ask.tools:
        kwargs["tool_choice"] = "required"
    if ask.reasoning:
        kwargs["reasoning_effort"] = "low"
    if ask.extra:
        kwargs["extra_body"] = ask.extra
    answer = Answer()
    with openai.OpenAI(base_url=gateway.api, api_key="unused", max_retries=0, timeout=20) as sdk:
        if not stream:
            try:
                completion = sdk.chat.completions.create(**kwargs)
            except openai.APIError as exc:
                answer.error = exc
                return answer
            answer.final = completion
            choice = completion.choices[0]
            message = choice.message
            answer.text = message.content or ""
            answer.reasoning = (message.model_extra or {}).get("reasoning_content") or ""
            for call in message.tool_calls or ():
                function = call.function  # type: ignore[union-attr]
                answer.calls.append(Call(call.id, function.name, _arguments(function.arguments)))
            answer.stop = choice.finish_reason
            if completion.usage is not None:
                answer.usage = _chat_usage(completion.usage)
            return answer
        calls: dict[int, list[str]] = {}
        try:
            chunks = sdk.chat.completions.create(
                **kwargs, stream=True, stream_options={"include_usage": True}
            )
            for chunk in chunks:
                answer.events.append("usage" if chunk.usage is not None else "chunk")
                if chunk.usage is not None:
                    answer.usage = _chat_usage(chunk.usage)
                for choice in chunk.choices:
                    delta = choice.delta
                    answer.text += delta.content or ""
                    answer.reasoning += (delta.model_extra or {}).get("reasoning_content") or ""
                    for call in delta.tool_calls or ():
                        entry = calls.setdefault(call.index, ["", "", ""])
                        if call.id:
                            entry[0] = call.id
                        if call.function is not None:
                            entry[1] += call.function.name or ""
                            entry[2] += call.function.arguments or ""
                    if choice.finish_reason:
                        answer.stop = choice.finish_reason
        except openai.APIError as exc:
            answer.error = exc
        answer.indices = sorted(calls)
        answer.calls = [Call(c[0], c[1], _arguments(c[2])) for _, c in sorted(calls.items())]
        return answer


# -- Responses --------------------------------------------------------------------


def _responses_input(ask: Ask) -> Any:
    if ask.result is None:
        return ask.prompt
    call_id, name, arguments, result = ask.result
    return [
        {"role": "user", "content": ask.prompt},
        {"type": "function_call", "call_id": call_id, "name": name, "arguments": arguments},
        {"type": "function_call_output", "call_id": call_id, "output": result},
    ]


def _from_response(response: Any, answer: Answer) -> None:
    answer.final = response
    answer.text = response.output_text
    for item in response.output:
        if item.type == "reasoning":
            parts = [*(item.content or ()), *(item.summary or ())]
            answer.reasoning += "".join(p.text for p in parts)
        elif item.type == "function_call":
            answer.calls.append(Call(item.call_id, item.name, _arguments(item.arguments)))
    if response.status == "incomplete":
        answer.stop = "length"
    elif response.status == "completed":
        answer.stop = "tool_calls" if answer.calls else "stop"
    else:
        answer.stop = response.status
    usage = response.usage
    if usage is not None:
        details = usage.input_tokens_details
        extra = details.model_extra or {}
        answer.usage = Usage(
            usage.input_tokens,
            usage.output_tokens,
            details.cached_tokens,
            extra.get("cache_write_tokens"),
        )


def responses(gateway: RunningGateway, model: str, ask: Ask, stream: bool) -> Answer:
    kwargs: dict[str, Any] = {
        "model": model,
        "input": _responses_input(ask),
        "max_output_tokens": ask.max_tokens,
        "store": False,
    }
    if ask.tools or ask.result is not None:
        kwargs["tools"] = RESPONSES_TOOLS
    if ask.tools:
        kwargs["tool_choice"] = "required"
    if ask.reasoning:
        kwargs["reasoning"] = {"effort": "low"}
    if ask.extra:
        kwargs["extra_body"] = ask.extra
    answer = Answer()
    with openai.OpenAI(base_url=gateway.api, api_key="unused", max_retries=0, timeout=20) as sdk:
        if not stream:
            try:
                _from_response(sdk.responses.create(**kwargs), answer)
            except openai.APIError as exc:
                answer.error = exc
            return answer
        try:
            events = list(sdk.responses.create(**kwargs, stream=True))
        except openai.APIError as exc:
            answer.error = exc
            return answer
    answer.events = [e.type for e in events]
    streamed = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    last = events[-1]
    if last.type == "response.failed":
        answer.error = events[-2]
        answer.text = streamed
        answer.final = last.response
        return answer
    _from_response(last.response, answer)
    assert streamed == answer.text, "the deltas and the final response disagree"
    return answer


# -- Anthropic Messages -----------------------------------------------------------

_STOPS = {"end_turn": "stop", "tool_use": "tool_calls", "max_tokens": "length"}


def _anthropic_messages(ask: Ask) -> list[Any]:
    messages: list[Any] = [{"role": "user", "content": ask.prompt}]
    if ask.result is not None:
        call_id, name, arguments, result = ask.result
        use = {"type": "tool_use", "id": call_id, "name": name, "input": json.loads(arguments)}
        messages.append({"role": "assistant", "content": [use]})
        back = {"type": "tool_result", "tool_use_id": call_id, "content": result}
        messages.append({"role": "user", "content": [back]})
    return messages


def _from_message(message: Any, answer: Answer) -> None:
    answer.final = message
    for block in message.content:
        if block.type == "text":
            answer.text += block.text
        elif block.type == "thinking":
            answer.reasoning += block.thinking
        elif block.type == "tool_use":
            answer.calls.append(Call(block.id, block.name, block.input))
    answer.stop = _STOPS.get(message.stop_reason, message.stop_reason)
    usage = message.usage
    read = usage.cache_read_input_tokens or 0
    written = usage.cache_creation_input_tokens or 0
    answer.usage = Usage(usage.input_tokens + read + written, usage.output_tokens, read, written)


def messages(gateway: RunningGateway, model: str, ask: Ask, stream: bool) -> Answer:
    kwargs: dict[str, Any] = {
        "model": model,
        "max_tokens": ask.max_tokens,
        "messages": _anthropic_messages(ask),
    }
    if ask.tools or ask.result is not None:
        kwargs["tools"] = ANTHROPIC_TOOLS
    if ask.tools:
        kwargs["tool_choice"] = {"type": "any"}
    if ask.reasoning:
        kwargs["thinking"] = {"type": "enabled", "budget_tokens": THINKING_BUDGET}
    if ask.extra:
        kwargs["extra_body"] = ask.extra
    answer = Answer()
    sdk = anthropic.Anthropic(base_url=gateway.url, api_key="unused", max_retries=0, timeout=20)
    with sdk:
        if not stream:
            try:
                _from_message(sdk.messages.create(**kwargs), answer)
            except anthropic.APIError as exc:
                answer.error = exc
            return answer
        streamed = ""
        try:
            with sdk.messages.stream(**kwargs) as events:
                for event in events:
                    answer.events.append(event.type)
                    if event.type == "text":
                        streamed += event.text
                message = events.get_final_message()
        except anthropic.APIError as exc:
            answer.error = exc
            answer.text = streamed
            return answer
    _from_message(message, answer)
    assert streamed == answer.text, "the text events and the final message disagree"
    return answer


Client = Callable[[RunningGateway, str, Ask, bool], Answer]
CLIENTS: dict[str, Client] = {"chat": chat, "responses": responses, "anthropic": messages}


# -- background responses ------------------------------------------------------------


def text_of(events: list[Any]) -> str:
    """The text a Responses event stream carried."""
    return "".join(e.delta for e in events if e.type == "response.output_text.delta")


def poll(client: openai.OpenAI, response_id: str, timeout: float) -> Any:
    """The response once it is no longer queued or in progress (or when ``timeout``
    seconds passed: the caller's assertions then say what it was)."""
    deadline = time.monotonic() + timeout
    while True:
        response = client.responses.retrieve(response_id)
        if response.status not in ("queued", "in_progress") or time.monotonic() > deadline:
            return response
        time.sleep(0.05)
