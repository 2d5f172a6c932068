"""The test upstream itself: every scenario, seen by a raw socket and by the openai SDK."""

from __future__ import annotations

import itertools
import json
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.upstream import scenarios as sc
from tests.upstream.fixture import ROOT, Upstream, read_ready_line, start_upstream

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say three words"}]


@pytest.fixture(scope="module")
def up() -> Iterator[Upstream]:
    with start_upstream() as server:
        yield server


@pytest.fixture(scope="module")
def client(up: Upstream) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=up.url, api_key="test", max_retries=0, timeout=5) as sdk:
        yield sdk


# ------------------------------------------------------------------ raw client


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes
    chunks: list[bytes] = field(default_factory=list)  #: HTTP chunks, as framed
    complete: bool = True  #: the body ended as HTTP says (last chunk / Content-Length)


class RawClient:
    """A blocking HTTP/1.1 client that keeps every ``recv`` it made."""

    def __init__(self, port: int, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buffer = b""
        self.reads: list[bytes] = []

    def close(self) -> None:
        self.sock.close()

    def send(self, body: Any, headers: dict[str, str] | None = None, path: str = "") -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        lines = [f"POST {path or '/v1/chat/completions'} HTTP/1.1", "host: test"]
        lines += ["content-type: application/json", f"content-length: {len(data)}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + data)

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        if data:
            self.reads.append(data)
            self.buffer += data
        return bool(data)

    def _take_until(self, marker: bytes) -> bytes | None:
        while marker not in self.buffer:
            if not self._fill():
                return None
        line, self.buffer = self.buffer.split(marker, 1)
        return line

    def _take(self, size: int) -> bytes | None:
        while len(self.buffer) < size:
            if not self._fill():
                return None
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def read_head(self) -> tuple[int, dict[str, str]]:
        raw = self._take_until(b"\r\n\r\n")
        assert raw is not None, "connection closed before the response head"
        status_line, *lines = raw.decode("latin-1").split("\r\n")
        headers = dict(line.split(": ", 1) for line in lines)
        return int(status_line.split()[1]), {k.lower(): v for k, v in headers.items()}

    def read_response(self) -> Response:
        status, headers = self.read_head()
        if "content-length" in headers:
            body = self._take(int(headers["content-length"]))
            if body is None:
                return Response(status, headers, self.buffer, complete=False)
            return Response(status, headers, body)
        response = Response(status, headers, b"")
        while True:
            size_line = self._take_until(b"\r\n")
            if size_line is None:
                response.complete = False
                return response
            data = self._take(int(size_line, 16) + 2)
            if data is None:
                response.complete = False
                return response
            if not data[:-2]:
                return response
            response.chunks.append(data[:-2])
            response.body += data[:-2]

    def request(self, body: Any, headers: dict[str, str] | None = None) -> Response:
        self.send(body, headers)
        return self.read_response()


def raw(up: Upstream, body: Any, headers: dict[str, str] | None = None) -> Response:
    c = RawClient(up.port)
    try:
        return c.request(body, headers)
    finally:
        c.close()


def sse_data(body: bytes) -> list[bytes]:
    """The ``data`` of each event; lines end at CR, LF or CRLF only (never U+2028)."""
    events: list[bytes] = []
    data: list[bytes] = []
    for line in re.split(rb"\r\n|\r|\n", body):
        if not line:
            if data:
                events.append(b"\n".join(data))
            data = []
        elif line.startswith(b"data:"):
            data.append(line[5:].removeprefix(b" "))
    return events


def chat(model: str, stream: bool = True, usage: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": MESSAGES, "stream": stream}
    if usage:
        body["stream_options"] = {"include_usage": True}
    return body


def closed_connection(up: Upstream, model: str) -> dict[str, Any]:
    found = up.connection_for(model, timeout=3)
    assert found is not None, f"no closed connection served {model}"
    return found


# ----------------------------------------------------------------- pure helpers


def test_specs_parse_with_defaults_and_reject_nonsense() -> None:
    assert sc.parse_spec("paced:n=20,interval=0.05").number("interval") == 0.05
    assert sc.parse_spec("paced").integer("n") == 10
    with pytest.raises(sc.UnknownScenario):
        sc.parse_spec("gpt-4o")
    for bad in ("paced:m=1", "paced:n=x", "paced:n", "error_status:status=200", "large:size=0"):
        with pytest.raises(sc.BadScenario):
            sc.parse_spec(bad)


@pytest.mark.parametrize("name", sorted(sc.SCENARIOS))
def test_neighbouring_deltas_differ(name: str) -> None:
    found = sc.deltas(sc.parse_spec(name))
    assert all(a != b for a, b in itertools.pairwise(found))


def test_multibyte_pieces_cut_characters_lines_and_crlf() -> None:
    body = "data: é\r\n\r\n".encode()
    assert sc.multibyte_pieces(body) == [b"da", b"ta: \xc3", b"\xa9\r", b"\n\r", b"\n"]


# ------------------------------------------------------------------- streaming


def test_stream_chunks_are_shaped_like_openai(up: Upstream) -> None:
    response = raw(up, chat("normal:n=3", usage=True))
    assert response.status == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["transfer-encoding"] == "chunked"
    events = sse_data(response.body)
    assert events[-1] == b"[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    spec = sc.parse_spec("normal:n=3")
    assert chunks == sc.stream_chunks(spec, "normal:n=3", include_usage=True, prompt=3)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[-2]["choices"][0] == {
        "index": 0,
        "delta": {},
        "logprobs": None,
        "finish_reason": "stop",
    }
    assert all(c["usage"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}


def test_no_usage_field_unless_asked(up: Upstream) -> None:
    chunks = [json.loads(e) for e in sse_data(raw(up, chat("normal:n=2")).body)[:-1]]
    assert len(chunks) == 4
    assert all("usage" not in c for c in chunks)


@pytest.mark.parametrize(
    "model",
    [
        "normal",
        "paced:n=4,interval=0.01",
        "burst",
        "burst:n=5",
        "comments:n=3",
        "separators",
        "multibyte",
        "large:n=2,size=300000",
        "slow_first:delay=0.01",
        "slow_first_body:delay=0.01",
        "reasoning",
    ],
)
def test_sdk_streams_the_expected_text(client: openai.OpenAI, model: str) -> None:
    stream = client.chat.completions.create(
        model=model, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    text, usage = [], None
    for chunk in stream:
        assert chunk.model == model
        if chunk.choices and chunk.choices[0].delta.content:
            text.append(chunk.choices[0].delta.content)
        usage = chunk.usage or usage
    assert "".join(text) == sc.expected_text(model)
    assert usage is not None and usage.prompt_tokens == 3


@pytest.mark.parametrize("model", ["normal:n=4", "multibyte", "separators", "reasoning"])
def test_sdk_non_stream(client: openai.OpenAI, model: str) -> None:
    result = client.chat.completions.create(model=model, messages=MESSAGES)
    assert result.object == "chat.completion"
    assert result.choices[0].message.content == sc.expected_text(model)
    assert result.choices[0].finish_reason == "stop"
    assert result.usage is not None
    assert result.usage.completion_tokens == sc.completion_tokens(sc.parse_spec(model))


def test_reasoning_deltas_come_first(up: Upstream) -> None:
    chunks = [json.loads(e) for e in sse_data(raw(up, chat("reasoning:steps=2,n=1")).body)[:-1]]
    deltas = [c["choices"][0]["delta"] for c in chunks[1:-1]]
    assert deltas == [
        {"reasoning_content": "think0"},
        {"reasoning_content": " think1"},
        {"content": "word0"},
    ]


def test_tool_call_streams_arguments_in_pieces(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(model="tool_call", messages=MESSAGES, stream=True)
    arguments, names, finish = [], [], None
    for chunk in stream:
        choice = chunk.choices[0]
        finish = choice.finish_reason or finish
        for call in choice.delta.tool_calls or ():
            assert call.index == 0
            if call.function and call.function.name:
                names.append(call.function.name)
            if call.function and call.function.arguments:
                arguments.append(call.function.arguments)
    assert names == [sc.TOOL_NAME]
    assert "".join(arguments) == sc.TOOL_ARGUMENTS
    assert finish == "tool_calls"
    result = client.chat.completions.create(model="tool_call", messages=MESSAGES)
    calls = result.choices[0].message.tool_calls
    assert calls is not None and json.loads(calls[0].function.arguments) == {  # type: ignore[union-attr]
        "city": "Paris",
        "unit": "celsius",
    }


def test_choices_streams_the_requested_n_interleaved(up: Upstream) -> None:
    response = raw(up, {**chat("choices:n=3", usage=True), "n": 2})
    chunks = [json.loads(e) for e in sse_data(response.body)[:-1]]
    spec = sc.parse_spec("choices:n=3")
    assert chunks == sc.stream_chunks(spec, "choices:n=3", include_usage=True, prompt=3, choices=2)
    indices = [c["choices"][0]["index"] for c in chunks[:-1]]
    assert indices == [0, 1] * 5  # role, three content rounds, finish
    for index in (0, 1):
        text = "".join(
            c["choices"][0]["delta"].get("content") or ""
            for c in chunks[:-1]
            if c["choices"][0]["index"] == index
        )
        assert text == sc.choice_text("choices:n=3", index) == f"c{index}w0 c{index}w1 c{index}w2"
    assert chunks[-1]["usage"]["completion_tokens"] == 6
    # Without ``n``, one choice.
    single = [json.loads(e) for e in sse_data(raw(up, chat("choices:n=3")).body)[:-1]]
    assert {c["choices"][0]["index"] for c in single} == {0}


def test_choices_non_stream(client: openai.OpenAI) -> None:
    result = client.chat.completions.create(model="choices:n=2", messages=MESSAGES, n=3)
    assert [c.index for c in result.choices] == [0, 1, 2]
    assert [c.message.content for c in result.choices] == ["c0w0 c0w1", "c1w0 c1w1", "c2w0 c2w1"]


def test_logprobs_only_when_asked(client: openai.OpenAI) -> None:
    plain = list(
        client.chat.completions.create(model="logprobs:n=2", messages=MESSAGES, stream=True)
    )
    assert all(c.choices[0].logprobs is None for c in plain)
    stream = client.chat.completions.create(
        model="logprobs:n=2", messages=MESSAGES, stream=True, logprobs=True, top_logprobs=2
    )
    tokens = []
    for chunk in stream:
        choice = chunk.choices[0]
        if choice.delta.content:
            assert choice.logprobs is not None and choice.logprobs.content is not None
            (entry,) = choice.logprobs.content
            assert entry.token == choice.delta.content
            assert [t.token for t in entry.top_logprobs] == [entry.token, "alt1"]
            tokens.append(entry.token)
        else:
            assert choice.logprobs is None
    assert tokens == ["word0", " word1"]
    result = client.chat.completions.create(
        model="logprobs:n=2", messages=MESSAGES, logprobs=True, top_logprobs=1
    )
    logprobs = result.choices[0].logprobs
    assert logprobs is not None and logprobs.content is not None
    assert [t.token for t in logprobs.content] == ["word0", " word1"]
    assert [len(t.top_logprobs) for t in logprobs.content] == [1, 1]


def test_header_overrides_the_model(client: openai.OpenAI) -> None:
    result = client.chat.completions.create(
        model="gpt-4o", messages=MESSAGES, extra_headers={sc.SCENARIO_HEADER: "normal:n=2"}
    )
    assert result.model == "gpt-4o"
    assert result.choices[0].message.content == "word0 word1"


def test_models_lists_the_scenarios(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == list(sc.SCENARIOS)


# --------------------------------------------------------------------- wire details


def test_multibyte_is_cut_inside_characters_lines_and_crlf(up: Upstream) -> None:
    c = RawClient(up.port)
    try:
        response = c.request(chat("multibyte"))
    finally:
        c.close()
    expected = sc.multibyte_pieces(response.body)
    assert response.chunks == expected
    assert any(p.endswith(b"\r") for p in expected)
    assert any(p.endswith(b"da") for p in expected)
    assert any(_cut_inside_character(p) for p in expected)
    assert len(c.reads) > len(expected) // 4  # the pieces arrived as separate reads, mostly
    texts = [
        json.loads(e)["choices"][0]["delta"].get("content") for e in sse_data(response.body)[:-1]
    ]
    assert "".join(t for t in texts if t) == sc.MULTIBYTE_TEXT


def _cut_inside_character(piece: bytes) -> bool:
    try:
        piece.decode()
    except UnicodeDecodeError:
        return True
    return False


def test_separators_are_raw_in_the_json(up: Upstream) -> None:
    body = raw(up, chat("separators")).body
    for separator in ("\u2028", "\u2029", "\u0085"):
        assert separator.encode() in body
    assert len(sse_data(body)) == 1 + len(sc.SEPARATOR_CHUNKS) + 2


def test_comments_and_crlf_everywhere(up: Upstream) -> None:
    body = raw(up, chat("comments:n=2")).body
    assert b": keep-alive\r\n" in body and b": ping\r\n" in body
    assert b"\n" not in body.replace(b"\r\n", b"") and b"\r" not in body.replace(b"\r\n", b"")
    assert sse_data(body)[-1] == b"[DONE]"


def test_errors_are_openai_shaped(up: Upstream) -> None:
    response = raw(up, chat("error_status:status=429,retry_after=0.25"))
    assert response.status == 429
    assert response.headers["retry-after"] == "1"
    assert response.headers["retry-after-ms"] == "250"
    assert json.loads(response.body)["error"]["code"] == "rate_limit_exceeded"
    unknown = raw(up, chat("gpt-4o"))
    assert unknown.status == 404
    assert json.loads(unknown.body) == {
        "error": {
            "message": "The model `gpt-4o` does not exist (no such test scenario).",
            "type": "invalid_request_error",
            "param": "model",
            "code": "model_not_found",
        }
    }
    assert raw(up, chat("paced:speed=3")).status == 400
    assert raw(up, b"{not json").status == 400


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, openai.BadRequestError),
        (401, openai.AuthenticationError),
        (404, openai.NotFoundError),
        (429, openai.RateLimitError),
        (500, openai.InternalServerError),
        (503, openai.InternalServerError),
    ],
)
def test_sdk_sees_error_statuses(
    client: openai.OpenAI, status: int, error: type[openai.APIStatusError]
) -> None:
    with pytest.raises(error) as caught:
        client.chat.completions.create(model=f"error_status:status={status}", messages=MESSAGES)
    assert caught.value.status_code == status


def test_midstream_error_ends_the_body_cleanly(up: Upstream, client: openai.OpenAI) -> None:
    response = raw(up, chat("midstream_error:after=2"))
    assert response.complete
    events = sse_data(response.body)
    assert len(events) == 4 and b"[DONE]" not in events
    assert json.loads(events[-1])["error"]["type"] == "server_error"
    with pytest.raises(openai.APIError, match="after 3 chunks"):
        list(
            client.chat.completions.create(model="midstream_error", messages=MESSAGES, stream=True)
        )


def test_bad_json_line(up: Upstream) -> None:
    response = raw(up, chat("bad_json:after=1"))
    assert response.complete
    assert sse_data(response.body)[-1] == sc.BAD_JSON


# ------------------------------------------------------------- connections


def test_keep_alive_serves_several_requests(up: Upstream) -> None:
    up.reset()
    c = RawClient(up.port)
    try:
        first = c.request(chat("normal:n=2"))
        second = c.request(chat("burst:n=3", stream=False))
        third = c.request(chat("error_status:status=503"))
    finally:
        c.close()
    assert (first.status, second.status, third.status) == (200, 200, 503)
    conn = closed_connection(up, "normal:n=2")
    requests = [r for r in up.log()["requests"] if r["connection"] == conn["id"]]
    assert conn["requests"] == 3 and conn["closed_by"] == "peer"
    assert [r["scenario"] for r in requests] == ["normal", "burst", "error_status"]
    request = requests[0]
    assert request["method"] == "POST" and request["path"] == "/v1/chat/completions"
    assert request["headers"]["content-type"] == "application/json"
    assert request["body"] == chat("normal:n=2")
    assert conn["opened_at"] <= request["received_at"] <= conn["closed_at"]


def test_connection_close_is_honoured(up: Upstream) -> None:
    up.reset()
    response = raw(up, chat("normal:n=5"), headers={"connection": "close"})
    assert response.headers["connection"] == "close"
    assert closed_connection(up, "normal:n=5")["closed_by"] == "server"


def test_drop_closes_mid_stream(up: Upstream, client: openai.OpenAI) -> None:
    up.reset()
    response = raw(up, chat("drop:after=2"))
    assert not response.complete
    assert len(sse_data(response.body)) == 3
    assert closed_connection(up, "drop:after=2")["closed_by"] == "server"
    with pytest.raises(openai.APIConnectionError):
        list(client.chat.completions.create(model="drop", messages=MESSAGES, stream=True))
    not_streamed = raw(up, chat("drop", stream=False))
    assert not not_streamed.complete and not_streamed.status == 200


def test_drop_with_reset(up: Upstream) -> None:
    c = RawClient(up.port)
    try:
        c.send(chat("drop:after=1,rst=1"))
        with pytest.raises(ConnectionResetError):
            for _ in range(100):
                if not c._fill():
                    break
    finally:
        c.close()


@pytest.mark.parametrize(
    "model",
    ["stall:after=2", "slow_first:delay=5", "slow_first_body:delay=5", "paced:interval=5"],
)
def test_peer_close_is_seen_at_once_while_idle(up: Upstream, model: str) -> None:
    up.reset()
    c = RawClient(up.port)
    c.send(chat(model))
    if not model.startswith("slow_first:"):
        c.read_head()
    time.sleep(0.05)
    closed = time.time()
    c.close()
    conn = closed_connection(up, model)
    assert conn["closed_by"] == "peer"
    assert 0 <= conn["closed_at"] - closed < 0.1


def test_stall_sends_nothing_more(up: Upstream) -> None:
    c = RawClient(up.port, timeout=0.2)
    try:
        c.send(chat("stall:after=1", stream=False))
        status, headers = c.read_head()
        assert status == 200
        with pytest.raises(TimeoutError):
            c._take(int(headers["content-length"]))
        assert 0 < len(c.buffer) < int(headers["content-length"])
    finally:
        c.close()


def test_slow_first_delays_headers_and_slow_first_body_delays_the_body(up: Upstream) -> None:
    for model, head_min, body_min in (
        ("slow_first:delay=0.2", 0.2, 0.2),
        ("slow_first_body:delay=0.2", 0.0, 0.2),
    ):
        c = RawClient(up.port)
        try:
            start = time.monotonic()
            c.send(chat(model))
            c.read_head()
            head_at = time.monotonic() - start
            assert c._take_until(b"\r\n") is not None
            body_at = time.monotonic() - start
        finally:
            c.close()
        assert head_at >= head_min and body_at >= body_min
        if not head_min:
            assert head_at < 0.15


def test_paced_is_paced(up: Upstream) -> None:
    start = time.monotonic()
    response = raw(up, chat("paced:n=4,interval=0.03"))
    assert time.monotonic() - start >= 5 * 0.03  # 7 events, 6 gaps
    assert len(sse_data(response.body)) == 7


def test_reset_clears_the_log(up: Upstream) -> None:
    raw(up, chat("normal:n=6"))
    closed_connection(up, "normal:n=6")
    up.reset()
    log = up.log()
    assert log["requests"] == []
    # Closed connections are gone; open ones (the SDK's pool) stay, counted from zero.
    # Control connections (/_log, /_reset) are never listed.
    assert all(c["closed_at"] is None and c["requests"] == 0 for c in log["connections"])


def test_malformed_http_gets_400(up: Upstream) -> None:
    c = RawClient(up.port)
    try:
        c.sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        status, _ = c.read_head()
    finally:
        c.close()
    assert status == 400


def test_cli_port_file(tmp_path: Path) -> None:
    port_file = tmp_path / "port"
    command = [sys.executable, "-m", "tests.upstream.server", "--port", "0"]
    process = subprocess.Popen(
        [*command, "--port-file", str(port_file)], cwd=ROOT, stdout=subprocess.PIPE
    )
    try:
        line = read_ready_line(process, timeout=10)
        port = int(port_file.read_text())
        assert line == f"listening on http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=5)
        if process.stdout is not None:
            process.stdout.close()
    assert process.returncode == 0
