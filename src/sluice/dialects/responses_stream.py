"""OpenAI Responses events from canonical events: the response as it streams.

Events follow ``ResponseStreamEvent`` in OpenAI's published API description, each an
SSE event with its ``event:`` name and a ``sequence_number`` counted from 0:
``response.created``, ``response.in_progress``, then per output item
``response.output_item.added``, its content events, ``response.output_item.done``, and
last ``response.completed`` (``response.incomplete`` when the answer was cut short, by
the token limit or a content filter; after a failure ``error`` then ``response.failed``).

Each canonical part is one output item, in order of appearance: a text run is a
``message`` (``output_text``), a refusal run a ``message`` (``refusal``), a tool call a
``function_call`` keeping the upstream's tool-call id as ``call_id``, reasoning a
``reasoning`` item (its text as summary text when the request asked for a summary, as
reasoning text otherwise; a signature as ``encrypted_content``).

The event sequence is a function of the canonical events and of what the encoder was
made with (response id, creation time, the request's echo) and nothing else: the same
events always give the same bytes, sequence numbers and item ids. Item ids derive from
the response id. The response id is always the gateway's (``resp_…``), whatever the
upstream calls its answer, so that it names the stored response; for the same reason
``Verbatim`` events are read whatever their format, never written as they came.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from sluice.errors import RateLimited, RequestError, SluiceError
from sluice.events import (
    Annotations,
    Finish,
    PartEnd,
    ReasoningDelta,
    RedactedReasoning,
    RefusalDelta,
    Start,
    StreamError,
    StreamEvent,
    TextDelta,
    ToolCallDelta,
    Usage,
    Verbatim,
)

ID_PREFIX = "resp_"


def usage_body(usage: Usage) -> dict[str, Any]:
    return {
        "input_tokens": usage.input_tokens,
        "input_tokens_details": {
            "cached_tokens": usage.cached_tokens,
            "cache_write_tokens": usage.cache_write_tokens,
        },
        "output_tokens": usage.output_tokens,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
        "total_tokens": usage.input_tokens + usage.output_tokens,
    }


def response_error(code: str | None, message: str, kind: str = "") -> dict[str, Any]:
    """``ResponseError``: its code is one of a closed set."""
    if code == "rate_limit_exceeded" or kind == RateLimited.type:
        public = "rate_limit_exceeded"
    elif kind == RequestError.type:
        public = "invalid_prompt"
    else:
        public = "server_error"
    return {"code": public, "message": message}


def _annotation(item: Any) -> Any:
    """An annotation in the Responses shape (chat completions nests the citation)."""
    if isinstance(item, dict) and isinstance(item.get("url_citation"), dict):
        return {"type": item.get("type", "url_citation"), **item["url_citation"]}
    return item


def _logprobs(items: list[Any] | None) -> list[Any]:
    if not items:
        return []
    return [
        {
            "token": p.get("token", ""),
            "logprob": p.get("logprob", 0.0),
            "bytes": p.get("bytes") or [],
            "top_logprobs": p.get("top_logprobs") or [],
        }
        for p in items
        if isinstance(p, dict)
    ]


class _Item:
    """One output item while it streams."""

    __slots__ = (
        "annotations",
        "call_id",
        "done",
        "id",
        "kind",
        "logprobs",
        "name",
        "output_index",
        "part_open",
        "prefix",
        "signature",
        "text",
    )

    def __init__(self, kind: str, item_id: str, output_index: int) -> None:
        #: message (text), refusal (a message holding a refusal), function_call, reasoning
        self.kind = kind
        self.id = item_id
        self.output_index = output_index
        self.text: list[str] = []
        self.done = False
        self.annotations: list[Any] = []
        self.logprobs: list[Any] = []
        self.call_id = ""
        self.name = ""
        self.signature: str | None = None
        #: A reasoning item's content part was announced (and so must be closed).
        self.part_open = False
        #: The start of this item's delta events, up to the delta itself.
        self.prefix = b""

    def resource(self, summaries: bool, status: str | None = None) -> dict[str, Any]:
        """The item as ``output`` lists it."""
        status = status or ("completed" if self.done else "incomplete")
        text = "".join(self.text)
        if self.kind == "function_call":
            return {
                "id": self.id,
                "type": "function_call",
                "status": status,
                "arguments": text,
                "call_id": self.call_id,
                "name": self.name,
            }
        if self.kind == "reasoning":
            item: dict[str, Any] = {"id": self.id, "type": "reasoning", "summary": []}
            if text or not self.signature:
                if summaries:
                    item["summary"] = [{"type": "summary_text", "text": text}]
                else:
                    item["content"] = [{"type": "reasoning_text", "text": text}]
            if self.signature is not None:
                item["encrypted_content"] = self.signature
            item["status"] = status
            return item
        return {
            "id": self.id,
            "type": "message",
            "status": status,
            "role": "assistant",
            "content": [self.part()],
        }

    def part(self, text: str | None = None) -> dict[str, Any]:
        """The message's content part (for a message or a refusal)."""
        if text is None:
            text = "".join(self.text)
        if self.kind == "refusal":
            return {"type": "refusal", "refusal": text}
        return {
            "type": "output_text",
            "text": text,
            "annotations": self.annotations if text else [],
            "logprobs": self.logprobs if text else [],
        }


_ITEM_PREFIX = {"message": "msg", "refusal": "msg", "function_call": "fc", "reasoning": "rs"}


class ResponseBuilder:
    """The response as canonical events arrive, and (``events``) its stream events.

    ``feed`` takes batches; ``settle`` ends the response (completed, incomplete or
    failed, from what the events said) and ``fail``/``cancel`` end it otherwise. Each
    returns the Response object, the same on every call once it ended.

    A ``queued`` response (background mode) opens as OpenAI opens one:
    ``response.created`` and ``response.queued`` with the status ``queued`` at once, then
    ``response.in_progress`` when its upstream starts; otherwise ``response.created`` and
    ``response.in_progress`` come together, with the status ``in_progress``.
    """

    def __init__(
        self,
        response_id: str,
        created_at: int,
        model: str,
        echo: Mapping[str, Any],
        summaries: bool,
        events: bool,
        queued: bool = False,
    ) -> None:
        self.id = response_id
        self.created_at = created_at
        self.model = model
        self._echo = dict(echo)
        self._summaries = summaries
        self._out: list[bytes] | None = [] if events else None
        self._seq = 0
        self._opened = False
        self._items: list[_Item] = []
        self._parts: dict[int, _Item] = {}
        self._finish: Finish | None = None
        self._usage: Usage | None = None
        self._final: dict[str, Any] | None = None
        self._stem = response_id.removeprefix(ID_PREFIX)
        self._queued = queued
        if queued:
            shell = self.response("queued")
            self._emit("response.created", {"response": shell})
            self._emit("response.queued", {"response": shell})

    def take(self) -> bytes:
        """The stream bytes made since the last call."""
        out = self._out
        if not out:
            return b""
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        return data

    # -- serialisation ---------------------------------------------------------------

    def _emit(self, kind: str, body: dict[str, Any]) -> None:
        seq = self._seq
        self._seq += 1
        if self._out is None:
            return
        event = {"type": kind, **body, "sequence_number": seq}
        self._out.append(b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n")

    def _delta(self, item: _Item, text: str) -> None:
        """A delta event: the item's prefix, the text and the sequence number."""
        seq = self._seq
        self._seq += 1
        if self._out is None:
            return
        self._out.append(
            item.prefix + orjson.dumps(text) + b',"sequence_number":' + str(seq).encode() + b"}\n\n"
        )

    def response(self, status: str) -> dict[str, Any]:
        echo = self._echo
        body: dict[str, Any] = {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "background": False,
            "error": None,
            "incomplete_details": None,
            "instructions": echo.get("instructions"),
            "max_output_tokens": echo.get("max_output_tokens"),
            "model": self.model,
            "output": [
                item.resource(self._summaries, "in_progress" if status == "in_progress" else None)
                for item in self._items
            ],
            # Required fields, whatever the echo lacks.
            "parallel_tool_calls": True,
            "temperature": None,
            "tool_choice": "auto",
            "tools": [],
            "top_p": None,
            "metadata": {},
        }
        body.update(echo)
        if self._usage is not None:
            body["usage"] = usage_body(self._usage)
        return body

    def snapshot(self) -> dict[str, Any]:
        """The response as it stands: ``queued`` before its upstream started,
        ``in_progress`` with the output so far, or as it ended."""
        if self._final is not None:
            return self._final
        return self.response("in_progress" if self._opened else "queued")

    # -- events ----------------------------------------------------------------------

    def _open(self) -> None:
        if not self._opened:
            self._opened = True
            shell = self.response("in_progress")
            if not self._queued:
                self._emit("response.created", {"response": shell})
            self._emit("response.in_progress", {"response": shell})

    def _item(self, part: int, kind: str) -> _Item:
        item = self._parts.get(part)
        if item is not None:
            return item
        self._open()
        index = len(self._items)
        item = _Item(kind, f"{_ITEM_PREFIX[kind]}_{self._stem}_{index}", index)
        self._items.append(item)
        self._parts[part] = item
        return item

    def _added(self, item: _Item, content: bool = True) -> None:
        """``output_item.added`` and the events that open the item's content (none for
        reasoning that comes encrypted and whole)."""
        index = item.output_index
        added = item.resource(self._summaries, "in_progress")
        if item.kind in ("message", "refusal"):
            added["content"] = []
        elif item.kind == "reasoning":
            added["summary"] = []
            added.pop("content", None)
            added.pop("encrypted_content", None)
        self._emit("response.output_item.added", {"output_index": index, "item": added})
        head: dict[str, Any] = {"item_id": item.id, "output_index": index}
        delta = ""
        if item.kind in ("message", "refusal"):
            part = item.part("")
            self._emit("response.content_part.added", {**head, "content_index": 0, "part": part})
            if item.kind == "message":
                delta = "response.output_text.delta"
                head = {**head, "content_index": 0, "logprobs": []}
            else:
                delta = "response.refusal.delta"
                head = {**head, "content_index": 0}
        elif item.kind == "reasoning":
            item.part_open = content
            if not content:
                delta = "response.reasoning_text.delta"
            elif self._summaries:
                part = {"type": "summary_text", "text": ""}
                self._emit(
                    "response.reasoning_summary_part.added",
                    {**head, "summary_index": 0, "part": part},
                )
                delta = "response.reasoning_summary_text.delta"
                head = {**head, "summary_index": 0}
            else:
                part = {"type": "reasoning_text", "text": ""}
                self._emit(
                    "response.content_part.added", {**head, "content_index": 0, "part": part}
                )
                delta = "response.reasoning_text.delta"
                head = {**head, "content_index": 0}
        else:
            delta = "response.function_call_arguments.delta"
        start = orjson.dumps({"type": delta, **head})[:-1]
        item.prefix = b"event: " + delta.encode() + b"\ndata: " + start + b',"delta":'

    def _done(self, item: _Item) -> None:
        """The events that close the item's content, and ``output_item.done``."""
        if item.done:
            return
        item.done = True
        text = "".join(item.text)
        head: dict[str, Any] = {"item_id": item.id, "output_index": item.output_index}
        if item.kind in ("message", "refusal"):
            if item.kind == "message":
                self._emit(
                    "response.output_text.done",
                    {**head, "content_index": 0, "text": text, "logprobs": item.logprobs},
                )
            else:
                self._emit("response.refusal.done", {**head, "content_index": 0, "refusal": text})
            self._emit(
                "response.content_part.done", {**head, "content_index": 0, "part": item.part()}
            )
        elif item.kind == "reasoning" and item.part_open:
            if self._summaries:
                part = {"type": "summary_text", "text": text}
                self._emit(
                    "response.reasoning_summary_text.done",
                    {**head, "summary_index": 0, "text": text},
                )
                self._emit(
                    "response.reasoning_summary_part.done",
                    {**head, "summary_index": 0, "part": part},
                )
            else:
                part = {"type": "reasoning_text", "text": text}
                self._emit(
                    "response.reasoning_text.done", {**head, "content_index": 0, "text": text}
                )
                self._emit("response.content_part.done", {**head, "content_index": 0, "part": part})
        elif item.kind == "function_call":
            self._emit(
                "response.function_call_arguments.done",
                {**head, "name": item.name, "arguments": text},
            )
        self._emit(
            "response.output_item.done",
            {"output_index": item.output_index, "item": item.resource(self._summaries)},
        )

    def feed(self, batch: list[StreamEvent]) -> None:
        if self._final is not None:
            return
        for event in batch:
            kind = type(event)
            if kind is TextDelta:
                e: TextDelta = event  # type: ignore[assignment]
                if e.text or e.logprobs:
                    item = self._item(e.index, "message")
                    if not item.prefix:
                        self._added(item)
                    item.text.append(e.text)
                    if e.logprobs:
                        logprobs = _logprobs(e.logprobs)
                        item.logprobs.extend(logprobs)
                        self._emit(
                            "response.output_text.delta",
                            {
                                "item_id": item.id,
                                "output_index": item.output_index,
                                "content_index": 0,
                                "delta": e.text,
                                "logprobs": logprobs,
                            },
                        )
                    else:
                        self._delta(item, e.text)
            elif kind is ToolCallDelta:
                t: ToolCallDelta = event  # type: ignore[assignment]
                item = self._item(t.index, "function_call")
                if t.name:
                    item.name += t.name
                if not item.prefix:
                    # The call id is settled when the item is announced: clients match
                    # the item's end to its start by it.
                    item.call_id = t.id or f"call_{self._stem}_{item.output_index}"
                    self._added(item)
                if t.arguments:
                    item.text.append(t.arguments)
                    self._delta(item, t.arguments)
            elif kind is PartEnd:
                ended = self._parts.get(event.index)  # type: ignore[union-attr]
                if ended is not None:
                    self._done(ended)
            elif kind is Usage:
                self._usage = event  # type: ignore[assignment]
            elif kind is Finish:
                self._finish = event  # type: ignore[assignment]
                self._open()
                for item in self._items:
                    self._done(item)
            elif kind is Start:
                s: Start = event  # type: ignore[assignment]
                if s.model and not self._opened:
                    self.model = s.model
                self._open()
            elif kind is ReasoningDelta:
                r: ReasoningDelta = event  # type: ignore[assignment]
                item = self._item(r.index, "reasoning")
                if r.signature is not None:
                    item.signature = r.signature
                if not item.prefix:
                    self._added(item)
                if r.text:
                    item.text.append(r.text)
                    self._delta(item, r.text)
            elif kind is RefusalDelta:
                x: RefusalDelta = event  # type: ignore[assignment]
                item = self._item(x.index, "refusal")
                if not item.prefix:
                    self._added(item)
                item.text.append(x.text)
                self._delta(item, x.text)
            elif kind is Annotations:
                self._annotate(event)  # type: ignore[arg-type]
            elif kind is RedactedReasoning:
                d: RedactedReasoning = event  # type: ignore[assignment]
                item = self._item(d.index, "reasoning")
                item.signature = d.data
                if not item.prefix:
                    self._added(item, content=False)
                self._done(item)
            elif kind is StreamError:
                z: StreamError = event  # type: ignore[assignment]
                self._failed(z.message, z.code, z.type, None)
                return
            elif kind is Verbatim:
                self.feed(event.expanded())  # type: ignore[union-attr]

    def _annotate(self, event: Annotations) -> None:
        item = self._item(event.index, "message")
        if not item.prefix:
            self._added(item)
        for annotation in event.items:
            self._emit(
                "response.output_text.annotation.added",
                {
                    "item_id": item.id,
                    "output_index": item.output_index,
                    "content_index": 0,
                    "annotation_index": len(item.annotations),
                    "annotation": _annotation(annotation),
                },
            )
            item.annotations.append(_annotation(annotation))

    # -- endings ---------------------------------------------------------------------

    def settle(self) -> dict[str, Any]:
        """End the response as the events said: completed, incomplete or failed."""
        if self._final is not None:
            return self._final
        self._open()
        for item in self._items:
            self._done(item)
        finish = self._finish
        reason = finish.reason if finish is not None else "stop"
        if reason == "error":
            native = finish.native if finish is not None else None
            message = f"the upstream ended the answer with an error ({native or 'error'})"
            return self._failed(message, "upstream_error", "upstream_error", None)
        if reason in ("length", "content_filter"):
            response = self.response("incomplete")
            why = "max_output_tokens" if reason == "length" else "content_filter"
            response["incomplete_details"] = {"reason": why}
            self._emit("response.incomplete", {"response": response})
        else:
            response = self.response("completed")
            self._emit("response.completed", {"response": response})
        self._final = response
        return response

    def fail(self, exc: SluiceError) -> dict[str, Any]:
        """End the response with a failure after the stream started."""
        if self._final is not None:
            return self._final
        return self._failed(exc.message, exc.code, exc.type, exc.param)

    def _failed(
        self, message: str, code: str | None, kind: str, param: str | None
    ) -> dict[str, Any]:
        self._open()
        response = self.response("failed")
        response["error"] = response_error(code, message, kind)
        self._emit("error", {"code": code, "message": message, "param": param})
        self._emit("response.failed", {"response": response})
        self._final = response
        return response

    def cancel(self) -> dict[str, Any]:
        """The response as it stood when the client went away and the generation was
        stopped: ``cancelled``, its unfinished items ``incomplete``. Nothing is sent."""
        if self._final is not None:
            return self._final
        self._final = self.response("cancelled")
        return self._final
