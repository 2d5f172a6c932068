"""The Vercel AI SDK UI message stream (``POST /api/chat``) against the real gateway:
through the SDK's own ``DefaultChatTransport`` and ``readUIMessageStream`` (Node), every
chunk checked against its ``uiMessageChunkSchema``; over the simulator and over the
OpenAI-compatible test upstream."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests import ui_sdk
from tests.conftest import StartGateway, upstream_config
from tests.gateway import RunningGateway, run_gateway
from tests.upstream.scenarios import (
    MULTIBYTE_TEXT,
    TOOL_ARGUMENTS,
    TOOL_CALL_ID,
    TOOL_NAME,
    expected_reasoning,
    expected_text,
)

KEY_ENV = {"TEST_UPSTREAM_KEY": "sk-upstream-secret"}
USER = {"id": "u1", "role": "user", "parts": [{"type": "text", "text": "Tell me a story"}]}
WEATHER = {
    TOOL_NAME: {
        "description": "The weather in a city",
        "inputSchema": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
            "required": ["city"],
        },
    }
}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, upstream: Any) -> Iterator[RunningGateway]:
    """``story`` is the simulator; every other name goes to the test upstream, where the
    name picks the scenario. One attempt per request and no circuit breaker: failures
    are the point, and one test's must not cool the upstream for the next."""
    config = upstream_config(
        upstream.url,
        routing={"retries": 0, "allowed_fails": 0},
        timeouts={"idle": 2},
        keepalive_interval=0.2,
    )
    config["models"]["story"] = {
        "provider": "simulator",
        "ttft": 0.01,
        "tokens_per_second": 0,
        "max_tokens": 40,
    }
    with run_gateway(tmp_path_factory.mktemp("ui"), config, KEY_ENV) as running:
        yield running


def api(gateway: RunningGateway) -> str:
    return f"{gateway.url}/api/chat"


def chat(gateway: RunningGateway, model: str | None, **request: Any) -> dict[str, Any]:
    request.setdefault("messages", [USER])
    if model is not None:
        request.setdefault("body", {})["model"] = model
    out = ui_sdk.send(api(gateway), request)
    assert out["problems"] == [], out["problems"]
    return out


def types(out: dict[str, Any]) -> list[str]:
    return [chunk["type"] for chunk in out["chunks"]]


def text_of(message: dict[str, Any]) -> str:
    return "".join(p["text"] for p in message["parts"] if p["type"] == "text")


def raw_post(gateway: RunningGateway, body: Any, **options: Any) -> httpx.Response:
    with httpx.Client(timeout=20) as client:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return client.post(
            api(gateway), content=content, headers={"content-type": "application/json"}, **options
        )


# -- the simulator ------------------------------------------------------------------


def test_simulator_text_through_the_sdk(gateway: RunningGateway) -> None:
    out = chat(gateway, "story", body={"maxOutputTokens": 5})
    assert out["status"] == 200 and out["errors"] == [] and "thrown" not in out
    assert out["headers"]["x-vercel-ai-ui-message-stream"] == "v1"
    assert out["headers"]["content-type"].startswith("text/event-stream")
    message = out["message"]
    # The message id is derived from the record's id (x-request-id).
    assert message["id"] == f"msg-{out['headers']['x-request-id']}"
    assert message["role"] == "assistant"
    assert [p["type"] for p in message["parts"]] == ["step-start", "text"]
    assert message["parts"][1]["state"] == "done" and text_of(message)
    sent = types(out)
    assert sent[:3] == ["start", "start-step", "text-start"]
    assert sent[-3:] == ["text-end", "finish-step", "finish"]
    assert set(sent[3:-3]) == {"text-delta"}
    assert out["chunks"][0]["messageId"] == message["id"]
    assert out["chunks"][-1]["finishReason"] == "length"
    metadata = message["metadata"]
    assert metadata["model"] == "story"
    assert metadata["usage"]["outputTokens"] == 5
    assert metadata["usage"]["totalTokens"] == metadata["usage"]["inputTokens"] + 5
    rows = gateway.wait_records(1)
    assert rows[-1]["api"] == "ui_stream" and rows[-1]["route"] == "/api/chat"


# -- over the OpenAI-compatible test upstream ----------------------------------------


def test_text_and_the_request_the_upstream_got(gateway: RunningGateway, upstream: Any) -> None:
    upstream.reset()
    system = {"id": "s1", "role": "system", "parts": [{"type": "text", "text": "Be brief."}]}
    earlier = {
        "id": "a0",
        "role": "assistant",
        "parts": [
            {"type": "step-start"},
            {"type": "reasoning", "text": "hmm", "state": "done"},
            {"type": "text", "text": "Once upon a time.", "state": "done"},
        ],
    }
    out = chat(
        gateway,
        "normal",
        messages=[system, USER, earlier, {**USER, "id": "u2"}],
        body={"temperature": 0.5, "maxOutputTokens": 99, "projectId": "the app's own"},
        trigger="regenerate-message",
    )
    assert out["errors"] == []
    assert text_of(out["message"]) == expected_text("normal")
    assert out["chunks"][-1]["finishReason"] == "stop"
    usage = out["message"]["metadata"]["usage"]
    # The upstream's own count: the words of the messages it got (2 + 4 + 4 + 4).
    assert (usage["inputTokens"], usage["outputTokens"]) == (14, 10)
    assert out["message"]["metadata"]["model"] == "normal"
    sent = upstream.log()["requests"][-1]["body"]
    assert sent["model"] == "normal"
    assert sent["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Tell me a story"},
        {"role": "assistant", "content": "Once upon a time."},
        {"role": "user", "content": "Tell me a story"},
    ]
    assert sent["temperature"] == 0.5 and sent["max_tokens"] == 99
    assert "projectId" not in sent  # the application's field, not the model's


def test_default_model(start_gateway: StartGateway, upstream: Any) -> None:
    gateway = start_gateway(upstream_config(upstream.url, default_model="normal:n=2"), env=KEY_ENV)
    out = chat(gateway, None)
    assert text_of(out["message"]) == expected_text("normal:n=2")


def test_reasoning(gateway: RunningGateway) -> None:
    out = chat(gateway, "reasoning")
    parts = out["message"]["parts"]
    assert [p["type"] for p in parts] == ["step-start", "reasoning", "text"]
    assert parts[1]["text"] == expected_reasoning("reasoning")
    assert parts[1]["state"] == parts[2]["state"] == "done"
    assert parts[2]["text"] == expected_text("reasoning")
    sent = types(out)
    assert sent.index("reasoning-end") < sent.index("text-start")


def test_tool_call_then_the_turn_after_its_result(gateway: RunningGateway, upstream: Any) -> None:
    upstream.reset()
    out = chat(gateway, "tool_call", body={"tools": WEATHER, "toolChoice": "required"})
    message = out["message"]
    [step, tool] = message["parts"]
    assert step["type"] == "step-start"
    assert tool["type"] == f"tool-{TOOL_NAME}"
    assert tool["toolCallId"] == TOOL_CALL_ID and tool["state"] == "input-available"
    assert tool["input"] == json.loads(TOOL_ARGUMENTS)
    sent = types(out)
    assert sent.count("tool-input-start") == 1 and sent.count("tool-input-available") == 1
    assert sent.count("tool-input-delta") >= 2
    deltas = [c["inputTextDelta"] for c in out["chunks"] if c["type"] == "tool-input-delta"]
    assert "".join(deltas) == TOOL_ARGUMENTS
    assert out["chunks"][-1]["finishReason"] == "tool-calls"
    request = upstream.log()["requests"][-1]["body"]
    assert request["tools"][0]["function"]["name"] == TOOL_NAME
    assert request["tools"][0]["function"]["parameters"] == WEATHER[TOOL_NAME]["inputSchema"]
    assert request["tool_choice"] == "required"

    # The client ran the tool: the same assistant message goes on after its output.
    done = {**tool, "state": "output-available", "output": {"celsius": 21}}
    answered = {**message, "parts": [step, done]}
    upstream.reset()
    more = chat(gateway, "normal", messages=[USER, answered], body={"tools": WEATHER})
    assert more["chunks"][0]["messageId"] == message["id"]
    continued = more["message"]
    assert continued["id"] == message["id"]
    assert [p["type"] for p in continued["parts"]] == [
        "step-start",
        f"tool-{TOOL_NAME}",
        "step-start",
        "text",
    ]
    assert continued["parts"][1]["output"] == {"celsius": 21}
    assert text_of(continued) == expected_text("normal")
    sent_messages = upstream.log()["requests"][-1]["body"]["messages"]
    assert sent_messages[1:] == [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": TOOL_CALL_ID,
                    "type": "function",
                    "function": {"name": TOOL_NAME, "arguments": TOOL_ARGUMENTS.replace(" ", "")},
                }
            ],
        },
        {"role": "tool", "tool_call_id": TOOL_CALL_ID, "content": '{"celsius":21}'},
    ]


def test_multibyte_text_split_across_reads(gateway: RunningGateway) -> None:
    out = chat(gateway, "multibyte")
    assert text_of(out["message"]) == MULTIBYTE_TEXT


@pytest.mark.parametrize("model", ["midstream_error:after=3", "drop:after=3"])
def test_a_failure_after_the_first_byte_is_an_error_chunk(
    gateway: RunningGateway, model: str
) -> None:
    out = chat(gateway, model)
    assert out["status"] == 200 and "thrown" not in out
    assert len(out["errors"]) == 1 and out["errors"][0]
    sent = types(out)
    assert sent[-1] == "error" and out["chunks"][-1]["errorText"] == out["errors"][0]
    assert "finish" not in sent and "finish-step" not in sent  # never a clean end
    [_, text] = out["message"]["parts"]
    assert text["text"] == expected_text(model)
    assert text["state"] == "streaming"  # the part was never finished
    rows = gateway.wait_records(1)
    assert rows[-1]["outcome"] == "error"


def test_an_error_before_the_first_byte_is_a_status(gateway: RunningGateway) -> None:
    """...and leaves nothing to resume (a reloaded page must not get the error again)."""
    out = chat(gateway, "error_status:status=429", chatId="chat-refused")
    assert out["status"] == 429 and out["message"] is None
    assert out["headers"]["x-vercel-ai-ui-message-stream"] is None  # not a stream
    assert json.loads(out["thrown"])["error"]["code"] == "rate_limit_exceeded"
    again = ui_sdk.send(api(gateway), {"resume": True, "chatId": "chat-refused"})
    assert again["status"] == 204


def test_keepalive_comments_while_waiting(gateway: RunningGateway) -> None:
    body = {"messages": [USER], "model": "slow_first_body:delay=1,n=2"}
    with (
        httpx.Client(timeout=20) as client,
        client.stream("POST", api(gateway), json=body) as response,
    ):
        raw = b"".join(response.iter_raw())
    head, _, _ = raw.partition(b"data: ")
    assert head.count(b": keep-alive\n\n") >= 2
    checked = ui_sdk.validate(raw)
    assert checked["problems"] == []
    assert [c["type"] for c in checked["chunks"]][-1] == "finish"


# -- bad bodies and keys -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "bot", "parts": []}]}, "messages[0].role"),
        ({"messages": [{"role": "user"}]}, "messages[0].parts"),
        (
            {"messages": [{"role": "user", "parts": [{"type": "text"}]}]},
            "messages[0].parts[0].text",
        ),
        (
            {"messages": [{"role": "assistant", "parts": [{"type": "tool-x", "state": "ok"}]}]},
            "messages[0].parts[0].toolCallId",
        ),
        ({"messages": [USER], "trigger": "resubmit"}, "trigger"),
        ({"messages": [USER], "model": ""}, "model"),
        ({"messages": [USER], "temperature": 9}, "temperature"),
        ({"messages": [USER], "toolChoice": "auto"}, "toolChoice"),
        ({"messages": [USER], "id": 7}, "id"),
    ],
)
def test_a_bad_body_is_a_400_naming_the_field(
    gateway: RunningGateway, body: Any, field: str
) -> None:
    response = raw_post(gateway, body)
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/json"
    assert "x-vercel-ai-ui-message-stream" not in response.headers
    error = response.json()["error"]
    assert error["param"] == field and field in error["message"]


def test_a_body_that_is_not_json(gateway: RunningGateway) -> None:
    response = raw_post(gateway, b"{not json")
    assert response.status_code == 400 and "JSON" in response.json()["error"]["message"]
    assert raw_post(gateway, {"messages": [USER]}).status_code == 200
    with httpx.Client(timeout=20) as client:
        assert client.get(api(gateway)).status_code == 405


def test_keys(start_gateway: StartGateway, upstream: Any) -> None:
    gateway = start_gateway(
        upstream_config(upstream.url), env={**KEY_ENV, "SLUICE_MASTER_KEY": "sk-master-test"}
    )
    refused = ui_sdk.send(api(gateway), {"messages": [USER]})
    assert refused["status"] == 401
    assert json.loads(refused["thrown"])["error"]["type"] == "authentication_error"
    with httpx.Client(timeout=20) as client:
        assert client.get(f"{api(gateway)}/chat-1/stream").status_code == 401
        assert client.post(f"{api(gateway)}/chat-1/stop").status_code == 401
        headers = {"authorization": "Bearer sk-master-test"}
        assert client.get(f"{api(gateway)}/chat-1/stream", headers=headers).status_code == 204
    out = chat(gateway, "normal:n=2", headers={"Authorization": "Bearer sk-master-test"})
    assert text_of(out["message"]) == expected_text("normal:n=2")


# -- resume and stop -----------------------------------------------------------------------


class Streaming(threading.Thread):
    """A ``POST /api/chat`` read in the background, its raw bytes kept."""

    def __init__(
        self, gateway: RunningGateway, chat_id: str, model: str, sign: bytes = b"text-delta"
    ) -> None:
        super().__init__(daemon=True)
        self.body = {"id": chat_id, "messages": [USER], "model": model}
        self.url = api(gateway)
        self.raw = b""
        #: Set once ``sign`` was read.
        self.started = threading.Event()
        self._sign = sign

    def run(self) -> None:
        with (
            httpx.Client(timeout=20) as client,
            client.stream("POST", self.url, json=self.body) as response,
        ):
            for piece in response.iter_raw():
                self.raw += piece
                if self._sign in self.raw:
                    self.started.set()
        self.started.set()


def test_resume_replays_then_follows(gateway: RunningGateway) -> None:
    model = "paced:n=60,interval=0.05"
    streaming = Streaming(gateway, "chat-resume", model)
    streaming.start()
    assert streaming.started.wait(10)
    out = ui_sdk.send(api(gateway), {"resume": True, "chatId": "chat-resume"})
    streaming.join(10)
    assert out["status"] == 200 and out["problems"] == [] and out["errors"] == []
    assert text_of(out["message"]) == expected_text(model)
    # The same stream as the one the first client got, message id and all.
    first = ui_sdk.validate(streaming.raw)
    assert first["problems"] == []
    assert out["chunks"] == first["chunks"]
    # Once the answer is over the chat has no stream to resume.
    again = ui_sdk.send(api(gateway), {"resume": True, "chatId": "chat-resume"})
    assert again["status"] == 204 and again["message"] is None and "thrown" not in again


@pytest.mark.parametrize(
    ("model", "sign"),
    [("paced:n=1000,interval=0.05", b"text-delta"), ("slow_first_body:delay=30", b"keep-alive")],
    ids=["mid-stream", "waiting-for-first-token"],
)
def test_stop(gateway: RunningGateway, upstream: Any, model: str, sign: bytes) -> None:
    upstream.reset()
    streaming = Streaming(gateway, "chat-stop", model, sign)
    streaming.start()
    assert streaming.started.wait(10)
    with httpx.Client(timeout=20) as client:
        stopped_at = time.monotonic()
        stop = client.post(f"{api(gateway)}/chat-stop/stop")
        streaming.join(10)
        assert time.monotonic() - stopped_at < 2
        assert stop.json() == {"id": "chat-stop", "stopped": True}
        assert client.post(f"{api(gateway)}/chat-stop/stop").json()["stopped"] is False
    checked = ui_sdk.validate(streaming.raw)
    assert checked["problems"] == []
    sent = [c["type"] for c in checked["chunks"]]
    assert sent[-1] == "abort" and "finish" not in sent and "error" not in sent
    # The upstream request was cancelled, not left to write its 1,000 chunks.
    assert upstream.connection_for(model) is not None


def test_the_answer_goes_on_when_its_first_client_leaves(gateway: RunningGateway) -> None:
    """The client that asked leaves mid-answer: the answer goes on, and whoever resumed
    it gets it whole, from ``start`` to ``finish``."""
    model = "paced:n=60,interval=0.02"
    body = json.dumps({"id": "chat-left", "messages": [USER], "model": model}).encode()
    port = int(gateway.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            b"POST /api/chat HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        received = b""
        while b"text-delta" not in received:
            received += sock.recv(65536)
        resumed: list[bytes] = []
        with (
            httpx.Client(timeout=20) as client,
            client.stream("GET", f"{api(gateway)}/chat-left/stream") as response,
        ):
            pieces = response.iter_raw()
            resumed.append(next(pieces))
            sock.close()  # the first client leaves
            resumed.extend(pieces)
    checked = ui_sdk.validate(b"".join(resumed))
    assert checked["problems"] == []
    sent = [c["type"] for c in checked["chunks"]]
    assert sent[:3] == ["start", "start-step", "text-start"]
    assert sent[-1] == "finish" and "error" not in sent
    text = "".join(c["delta"] for c in checked["chunks"] if c["type"] == "text-delta")
    assert text == expected_text(model)


def test_a_cut_and_a_reconnect_give_the_uncut_message(gateway: RunningGateway) -> None:
    """``DefaultChatTransport`` sends, the connection drops mid-answer, the transport
    reconnects (``reconnectToStream``) and ``readUIMessageStream`` assembles the message
    from the resumed stream alone: the same message as an uncut run."""
    model = "paced:n=40,interval=0.03"
    body = {"model": model}
    uncut = ui_sdk.send(api(gateway), {"chatId": "chat-uncut", "messages": [USER], "body": body})
    cut = ui_sdk.send(
        api(gateway),
        {"chatId": "chat-cut", "messages": [USER], "body": body, "cutAfter": 6},
    )
    assert cut["problems"] == [] and cut["errors"] == [] and "thrown" not in cut
    assert [c["type"] for c in cut["cut"]][:3] == ["start", "start-step", "text-start"]
    assert len(cut["cut"]) == 6 and cut["cut"][-1]["type"] == "text-delta"
    assert cut["message"]["id"] == cut["cut"][0]["messageId"]
    assert cut["message"]["parts"] == uncut["message"]["parts"]
    assert text_of(cut["message"]) == expected_text(model)
    # Read whole once: the chat has no answer to resume any more.
    again = ui_sdk.send(api(gateway), {"resume": True, "chatId": "chat-cut"})
    assert again["status"] == 204
