"""What the simulator answers when a request asks for more than one plain story.

``plan_for`` reads the request once; ``draft`` lays out one choice as parts (each an
iterable of token events); ``steps`` writes those out as steps of at most one token,
which the provider paces as it paces words. Everything depends only on the request
and the seeds, so the same request always gets the same answer. The rules:

- **Reasoning** (``request.reasoning``): a short reasoning part first, longer for a
  higher effort or budget, closed by a ``ReasoningDelta`` that carries only its
  signature. Its tokens count as output tokens and as reasoning tokens.
- **Tool calls**, when ``request.tools`` is set and the conversation does not end with
  tool results. ``tool_choice`` ``tool`` calls that tool. ``required`` calls the tools
  the last user message names (in the order it names them), then the others in the
  order given: two calls when there are two tools and ``parallel_tool_calls`` is not
  false, else one. ``auto`` (or no ``tool_choice``) calls the named tools the same
  way, or the first tool when the message asks for one ("use a tool", "call the
  function"), and otherwise writes text. ``none`` writes text. A message names a
  tool when the tool's name appears in it as words, ``_`` and ``-`` read as spaces
  ("get_weather" or "get weather"). Each call is one part: a delta with the call's
  id (``call_…``, from the seed) and name, then its arguments in small pieces; the
  arguments validate against the tool's ``parameters`` (see ``schema_values``). The
  choice finishes with ``tool_calls``.
- **JSON** (``response_format``): ``json_object`` gets an object, ``json_schema`` a
  value of its schema, as text in small pieces.
- **Tool results**: a conversation that ends with tool results gets a text answer
  that quotes each result with its tool's name, then a few sentences — so a tool loop
  ends.
- **Logprobs** (OpenAI chat's ``logprobs``, with ``top_logprobs``, which ride in
  ``extra``): every text delta carries its logprob and the alternatives asked for.

The order when several apply: tool calls, else JSON, else the answer to tool
results, else a story; reasoning comes first in any case.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import random
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from itertools import chain
from typing import Any

from sluice.errors import RequestError
from sluice.events import (
    ChatRequest,
    Finish,
    FinishReason,
    Message,
    PartEnd,
    ReasoningDelta,
    StreamEvent,
    TextDelta,
    TextPart,
    Tool,
    ToolCallDelta,
    ToolCallPart,
    ToolResultPart,
    message_text,
)
from sluice.providers.schema_values import schema_value
from sluice.providers.wordmodel import WordModel

__all__ = ["Counts", "Plan", "draft", "plan_for", "steps", "story_words"]

#: Reasoning words by effort; a token budget gets a 32nd of it, within the same range.
_REASONING = {"minimal": 8, "low": 16, "medium": 32, "high": 64}
#: What ``json_object`` (or ``json_schema`` without a schema) answers with.
_OBJECT: Mapping[str, Any] = {
    "type": "object",
    "properties": {
        "title": {"type": "string"},
        "summary": {"type": "string", "minLength": 20},
        "words": {"type": "integer", "minimum": 1, "maximum": 500},
    },
    "required": ["title", "summary", "words"],
    "additionalProperties": False,
}
#: A tool result is quoted up to this many characters.
_QUOTE = 160
_ASKS_FOR_A_TOOL = re.compile(
    r"\b(?:use|using|call|calling|invoke|run)\b[^.?!]{0,40}?\b(?:tool|function)s?\b"
)
# About a token each: a word, up to three digits, or a run of other marks, with the
# whitespace before it. The pieces join back into the text they came from.
_PIECE = re.compile(r"\s*(?:[A-Za-z]+|\d{1,3}|[^\sA-Za-z\d]+)|\s+")
_WORD = re.compile(r"\s*\S+")


@dataclass(frozen=True, slots=True)
class Plan:
    """What every choice of one request writes (see the module doc)."""

    #: The tools to call, in order; none: write text.
    calls: tuple[Tool, ...] = ()
    #: The schema of a JSON answer.
    schema: Mapping[str, Any] | None = None
    #: The tool results the conversation ends with, each with its tool's name.
    results: tuple[tuple[str, ToolResultPart], ...] = ()
    #: Reasoning words to write first (0: none).
    reasoning: int = 0
    #: Alternatives per token when logprobs were asked for; None: no logprobs.
    logprobs: int | None = None

    @property
    def plain(self) -> bool:
        """Nothing but a story: the provider's own cheap path."""
        return (
            not self.calls
            and self.schema is None
            and not self.results
            and not self.reasoning
            and self.logprobs is None
        )


def plan_for(request: ChatRequest) -> Plan:
    results = _results(request.messages)
    fmt = request.response_format
    schema: Mapping[str, Any] | None = None
    if fmt is not None and fmt.type != "text":
        schema = fmt.schema if fmt.type == "json_schema" and fmt.schema is not None else _OBJECT
    logprobs = None
    extra = request.extra
    if extra and request.source == "openai_chat" and extra.get("logprobs") is True:
        top = extra.get("top_logprobs")
        logprobs = top if isinstance(top, int) and not isinstance(top, bool) else 0
        logprobs = max(0, min(20, logprobs))
    return Plan(
        calls=() if results else _calls(request),
        schema=schema,
        results=results,
        reasoning=_reasoning_words(request),
        logprobs=logprobs,
    )


def _calls(request: ChatRequest) -> tuple[Tool, ...]:
    tools = request.tools
    choice = request.tool_choice
    mode = choice.mode if choice is not None else "auto"
    if not tools or mode == "none":
        return ()
    if mode == "tool":
        assert choice is not None
        return tuple(t for t in tools if t.name == choice.name)[:1]
    text = _last_user_text(request.messages)
    named = _named(tools, text)
    count = 1 if request.parallel_tool_calls is False else 2
    if mode == "required":
        return tuple([*named, *(t for t in tools if t not in named)][:count])
    if named:
        return tuple(named[:count])
    if _ASKS_FOR_A_TOOL.search(text.lower()):
        return (tools[0],)
    return ()


def _words_of(text: str) -> str:
    return " " + " ".join(re.findall(r"[a-z0-9]+", text.lower())) + " "


def _named(tools: list[Tool], text: str) -> list[Tool]:
    """The tools ``text`` names, in the order it first names them."""
    words = _words_of(text)
    found = [(words.find(_words_of(t.name)), i) for i, t in enumerate(tools)]
    return [tools[i] for at, i in sorted(found) if at >= 0]


def _results(messages: list[Message]) -> tuple[tuple[str, ToolResultPart], ...]:
    """The tool results the conversation ends with, each with its tool's name."""
    trailing: list[ToolResultPart] = []
    for message in reversed(messages):
        parts = [p for p in message.parts if isinstance(p, ToolResultPart)]
        if not parts:
            break
        trailing[:0] = parts
    if not trailing:
        return ()
    names = {
        p.id: p.name for m in messages for p in m.parts if isinstance(p, ToolCallPart) and p.id
    }
    return tuple((names.get(p.call_id, "the tool"), p) for p in trailing)


def _reasoning_words(request: ChatRequest) -> int:
    reasoning = request.reasoning
    if reasoning is None:
        return 0
    if reasoning.budget_tokens is not None:
        return max(8, min(64, reasoning.budget_tokens // 32))
    return _REASONING.get(reasoning.effort or "", 32)


def _last_user_text(messages: list[Message]) -> str:
    for message in reversed(messages):
        if message.role == "user":
            return message_text(message)
    return ""


# -- drafting a choice -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Part:
    """One part of a choice: its token events, then events that close it."""

    events: Iterable[StreamEvent]
    tail: tuple[StreamEvent, ...] = ()
    reasoning: bool = False


@dataclass(slots=True)
class Draft:
    parts: list[Part]
    reason: FinishReason


def story_words(rng: random.Random, words: WordModel, budget: int, prompt: str) -> Iterator[str]:
    """A story that fits ``budget`` words: the one plain answers tell."""
    length = rng.randint(max(1, budget * 55 // 100), max(1, budget * 85 // 100))
    return words.story(rng, length, prompt, limit=budget)


def draft(
    plan: Plan,
    request: ChatRequest,
    choice: int,
    story_rng: random.Random,
    rng: random.Random,
    words: WordModel,
    budget: int,
) -> Draft:
    """Choice ``choice`` laid out as parts; raises ``RequestError`` for a schema no value
    can be made for. ``story_rng`` draws only the story (so that it is the same story
    as without extras); ``rng`` draws everything else."""
    prompt = _last_user_text(request.messages)
    parts: list[Part] = []
    if plan.reasoning:
        thought = list(words.story(rng, plan.reasoning, prompt, limit=plan.reasoning * 2))
        digest = hashlib.sha256(f"{rng.random()}:{''.join(thought)}".encode()).digest()
        signature = base64.b64encode(digest).decode("ascii")
        parts.append(
            Part(
                [ReasoningDelta(w, 0, choice) for w in thought],
                (ReasoningDelta("", 0, choice, signature=signature),),
                reasoning=True,
            )
        )
    if plan.calls:
        for i, tool in enumerate(plan.calls):
            index = len(parts)
            where = f"tools[{i}].function.parameters"
            arguments = _json(tool.parameters or {"type": "object"}, rng, words, where)
            call_id = "call_" + hashlib.sha256(f"{rng.random()}:{index}".encode()).hexdigest()[:24]
            head = ToolCallDelta(index, call_id, tool.name, "", choice)
            rest = [ToolCallDelta(index, arguments=p, choice=choice) for p in _pieces(arguments)]
            parts.append(Part([head, *rest]))
        return Draft(parts, "tool_calls")
    index = len(parts)
    text: Iterable[str]
    if plan.schema is not None:
        text = _pieces(_json(plan.schema, rng, words, "response_format.json_schema.schema"))
    elif plan.results:
        said = " ".join(_quote(name, result) for name, result in plan.results)
        length = story_rng.randint(15, 30)
        tale = words.story(story_rng, length, prompt, limit=40)
        text = chain(_WORD.findall(said), (w if w[0].isspace() else " " + w for w in tale))
    else:
        text = story_words(story_rng, words, budget, prompt)
    parts.append(Part(_text_events(text, index, choice, plan.logprobs, rng, words)))
    return Draft(parts, "stop")


def _json(schema: Mapping[str, Any], rng: random.Random, words: WordModel, where: str) -> str:
    try:
        value = schema_value(schema, rng, words)
    except (ValueError, LookupError, TypeError) as exc:
        raise RequestError(
            f"{where}: no value can be made for this schema: {exc}", param=where
        ) from exc
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _pieces(text: str) -> list[str]:
    return _PIECE.findall(text)


def _quote(name: str, result: ToolResultPart) -> str:
    said = " ".join(" ".join(p.text for p in result.content if isinstance(p, TextPart)).split())
    if len(said) > _QUOTE:
        said = said[: _QUOTE - 3] + "..."
    verb = "failed with" if result.is_error else "returned"
    return f"{name} {verb} {said or 'nothing'}."


def _text_events(
    texts: Iterable[str],
    index: int,
    choice: int,
    top: int | None,
    rng: random.Random,
    words: WordModel,
) -> Iterator[StreamEvent]:
    if top is None:
        for text in texts:
            yield TextDelta(text, index, choice)
        return
    for text in texts:
        yield TextDelta(text, index, choice, [_logprob(text, top, rng, words)])


def _logprob(token: str, top: int, rng: random.Random, words: WordModel) -> dict[str, Any]:
    """A made-up logprob for ``token`` and ``top`` alternatives (``token`` first), with
    probabilities that fall and add up to less than one."""
    chance = 0.35 + 0.6 * rng.random()
    logprob = round(math.log(chance), 5)
    alternatives = [{"token": token, "logprob": logprob, "bytes": list(token.encode())}]
    lead = token[: len(token) - len(token.lstrip())]
    taken = {token}
    share = 1.0 - chance
    for _ in range(top - 1):
        share /= 2
        other = lead + words.word(rng)
        if other in taken:
            other = lead + words.word(rng) + "s"
        if other in taken:
            continue
        taken.add(other)
        p = round(math.log(share), 5)
        alternatives.append({"token": other, "logprob": p, "bytes": list(other.encode())})
    return {
        "token": token,
        "logprob": logprob,
        "bytes": list(token.encode()),
        "top_logprobs": alternatives[:top],
    }


# -- writing a choice ------------------------------------------------------------


@dataclass(slots=True)
class Counts:
    """Tokens written, over every choice."""

    output: int = 0
    reasoning: int = 0


def steps(draft: Draft, choice: int, limit: int, counts: Counts) -> Iterator[list[StreamEvent]]:
    """The choice as steps that each hold at most one token (a token event with the
    part ends and closing events before it); the last holds its ``Finish``. Past
    ``limit`` tokens the choice finishes with ``length``."""
    produced = 0
    carry: list[StreamEvent] = []
    for index, part in enumerate(draft.parts):
        started = False
        for event in part.events:
            if produced >= limit:
                if started:
                    carry.append(PartEnd(index, choice))
                carry.append(Finish("length", "length", choice))
                yield carry
                return
            produced += 1
            counts.output += 1
            if part.reasoning:
                counts.reasoning += 1
            started = True
            carry.append(event)
            yield carry
            carry = []
        carry.extend(part.tail)
        carry.append(PartEnd(index, choice))
    carry.append(Finish(draft.reason, draft.reason, choice))
    yield carry
