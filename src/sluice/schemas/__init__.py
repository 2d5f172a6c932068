"""Request bodies checked against OpenAI's published API description.

The JSON Schemas beside this module are generated from that description by
``scripts/extract_schemas.py`` (the description itself does not ship). ``validate``
raises a ``RequestError`` for the first problem, with ``param`` in OpenAI's spelling
(``messages[0].role``) and a message that names the parameter and what it must be.

jsonschema reports a failed ``oneOf``/``anyOf`` as "not valid under any of the given
schemas". The explanation here picks the branch the client meant, as OpenAI's
``discriminator`` would: first by the instance's JSON type, then by a member every
remaining branch pins to its own values (``role`` for messages, ``type`` for content
parts and tools), and names the deepest parameter inside that branch.

Beyond the schema, unknown top-level members are accepted (``scripts/extract_schemas.py``
opens the top level; OpenAI-compatible servers take vendor fields such as ``top_k``),
a top-level ``null`` counts as absent (clients send unset options as ``null``), and
``tool_choice`` needs ``tools``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import cache
from importlib import resources
from typing import Any

import fastjsonschema
from jsonschema import Draft202012Validator, ValidationError

from sluice.errors import RequestError

__all__ = ["NAMES", "validate"]

NAMES = ("openai_chat_request", "openai_responses_request", "openai_embeddings_request")

Schema = Mapping[str, Any]
Rule = Callable[[dict[str, Any]], RequestError | None]
Path = list[str | int]
#: Where an error is in the body as sent (jsonschema may have seen a narrowed copy).
Place = Callable[[ValidationError], Path]

#: Keywords that only say "one of these": another error at the same depth says more.
_WEAK = frozenset({"anyOf", "oneOf"})
_TYPE_ORDER = ("string", "integer", "number", "boolean", "object", "array", "null")
_ARTICLES = {
    "object": "an object",
    "array": "an array",
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "a boolean",
    "null": "null",
}


class _Checker:
    """One schema, compiled twice: fastjsonschema turns it into Python code that says
    quickly whether a body is valid; jsonschema explains a body that is not (its errors
    carry paths and the failures inside every ``oneOf`` branch, fastjsonschema's only a
    message). The schemas use only keywords that both read alike (Draft 7's; see
    scripts/extract_schemas.py)."""

    def __init__(self, schema: Schema, rules: Sequence[Rule] = ()) -> None:
        self.schema = schema
        self.check = fastjsonschema.compile(
            dict(schema), use_default=False, use_formats=False, detailed_exceptions=False
        )
        self.explainer = Draft202012Validator(schema)
        parts = [schema, *(self.resolve(part) for part in schema.get("allOf", ()))]
        self.required = frozenset(name for part in parts for name in part.get("required", ()))
        self.rules = rules

    def resolve(self, schema: Any) -> Any:
        """A schema with its ``$ref`` (local to this file) followed."""
        while isinstance(schema, Mapping) and "$ref" in schema:
            ref: str = schema["$ref"]
            target: Any = self.schema
            for part in ref.removeprefix("#").split("/")[1:]:
                target = target[part]
            schema = target
        return schema

    def first_error(self, data: dict[str, Any]) -> tuple[ValidationError, Place] | None:
        """The first problem in ``data`` and where it is, or None if there is none."""
        try:
            self.check(data)
        except fastjsonschema.JsonSchemaValueException as exc:
            narrowed, place = _narrow(data, exc.message)
            tries = [(narrowed, place)] if narrowed is not data else []
            for body, where in [*tries, (data, _as_is)]:
                errors = list(self.explainer.iter_errors(body))
                if errors:
                    return min(enumerate(errors), key=_relevance)[1], where
            # The two disagree: jsonschema, which implements Draft 2020-12 itself, is
            # the one to believe.
        return None


def _tool_choice_needs_tools(data: dict[str, Any]) -> RequestError | None:
    if data.get("tool_choice") is not None and data.get("tools") is None:
        return RequestError(
            "'tool_choice' is only allowed when 'tools' are given", param="tool_choice"
        )
    return None


_RULES: Mapping[str, Sequence[Rule]] = {"openai_chat_request": [_tool_choice_needs_tools]}


@cache
def _checker(name: str) -> _Checker:
    """Compiled on first use (the Responses schema takes a fifth of a second)."""
    if name not in NAMES:
        raise KeyError(f"no request schema named {name!r}; there are {', '.join(NAMES)}")
    text = resources.files(__name__).joinpath(f"{name}.json").read_text(encoding="utf-8")
    return _Checker(json.loads(text), _RULES.get(name, ()))


def validate(name: str, data: dict[str, Any]) -> None:
    """Raise ``RequestError`` for the first way ``data`` breaks the schema ``name``."""
    checker = _checker(name)
    if None in data.values():
        data = {k: v for k, v in data.items() if v is not None or k in checker.required}
    try:
        found = checker.first_error(data)
    except RecursionError as exc:
        raise RequestError("the request body is nested too deeply") from exc
    if found is not None:
        error, place = found
        raise _Explanation(checker, place).explain(error)
    for rule in checker.rules:
        problem = rule(data)
        if problem is not None:
            raise problem


def _as_is(error: ValidationError) -> Path:
    return list(error.absolute_path)


_STEP = re.compile(r"\.([^.\[\s]+)|\[(\d+)\]")


def _narrow(data: dict[str, Any], message: str) -> tuple[dict[str, Any], Place]:
    """``data`` with every array on the way to where fastjsonschema stopped cut down to
    the item it stopped in, and the ``Place`` that maps paths in the copy back.

    jsonschema takes some 25 times as long as the compiled check: over every message of
    a body of megabytes that is seconds on the event loop, over the one that failed
    what checking one message costs. The message of fastjsonschema's exception starts
    with the failing place, ``data.messages[30].content[2]``; a name it cannot read
    (a key with a dot, say) only stops the narrowing there.
    """
    name = message.split(" ", 1)[0]
    if not name.startswith("data"):
        return data, _as_is
    steps: Path = []
    position = len("data")
    while (match := _STEP.match(name, position)) is not None:
        key, index = match.groups()
        steps.append(key if key is not None else int(index))
        position = match.end()
    #: Path in the copy of an array cut down to one item → that item's index in ``data``.
    cuts: dict[tuple[str | int, ...], int] = {}

    def cut(node: Any, depth: int, at: Path) -> Any:
        if depth == len(steps):
            return node
        step = steps[depth]
        if isinstance(step, int) and isinstance(node, list) and step < len(node):
            cuts[tuple(at)] = step
            return [cut(node[step], depth + 1, [*at, 0])]
        if isinstance(step, str) and isinstance(node, dict) and step in node:
            return {**node, step: cut(node[step], depth + 1, [*at, step])}
        return node

    narrowed = cut(data, 0, [])
    if not cuts:
        return data, _as_is

    def place(error: ValidationError) -> Path:
        path = list(error.absolute_path)
        return [
            cuts.get(tuple(path[:k]), step) if type(step) is int else step
            for k, step in enumerate(path)
        ]

    return narrowed, place


def _relevance(item: tuple[int, ValidationError]) -> tuple[int, bool, int]:
    """The first problem: the shallowest in the document, a precise keyword over a
    "none of these", then the schema's order."""
    index, error = item
    return len(error.absolute_path), error.validator in _WEAK, index


# -- explaining one error ---------------------------------------------------------


class _Explanation:
    def __init__(self, checker: _Checker, place: Place) -> None:
        self.checker = checker
        self.place = place

    def explain(self, error: ValidationError) -> RequestError:
        while error.validator in _WEAK and error.context:
            chosen = self.choose_branch(error)
            if isinstance(chosen, RequestError):
                return chosen
            error = chosen
        return _describe(error, self.place(error))

    def choose_branch(self, error: ValidationError) -> ValidationError | RequestError:
        """The error inside the ``oneOf``/``anyOf`` branch the client meant, or the
        ``RequestError`` that says no branch fits the instance at all."""
        checker = self.checker
        instance: Any = error.instance
        alternatives: Any = error.validator_value
        path = self.place(error)
        branches = [checker.resolve(branch) for branch in alternatives]
        candidates = [i for i, b in enumerate(branches) if _accepts(checker, b, instance)]
        if not candidates:
            kinds: set[str] = set()
            for branch in branches:
                kinds |= _types(checker, branch) or set()
            return _type_error(path, kinds, instance)
        if isinstance(instance, dict) and len(candidates) > 1:
            tag = _discriminator(checker, [branches[i] for i in candidates])
            if tag is not None:
                if tag not in instance:
                    return _error([*path, tag], f"{_name([*path, tag])} is required")
                values = {i: _tag_values(checker, branches[i], tag) for i in candidates}
                matching = [i for i in candidates if instance[tag] in values[i]]
                if not matching:
                    allowed = [v for i in candidates for v in values[i]]
                    return _enum_error([*path, tag], allowed, instance[tag])
                candidates = matching
        by_branch: dict[int, list[ValidationError]] = {}
        for sub in error.context or ():
            by_branch.setdefault(int(sub.relative_schema_path[0]), []).append(sub)
        errors = [sub for i in candidates for sub in by_branch.get(i, ())]
        if not errors:  # the instance fits a candidate: oneOf matched more than one
            return _describe(error, path)
        if len({int(sub.relative_schema_path[0]) for sub in errors}) > 1:
            # Several branches still fit: follow the one that got furthest into the body.
            deepest = max(errors, key=lambda sub: len(sub.absolute_path))
            branch = deepest.relative_schema_path[0]
            errors = [sub for sub in errors if sub.relative_schema_path[0] == branch]
        return min(enumerate(errors), key=_relevance)[1]


def _types(checker: _Checker, schema: Any) -> set[str] | None:
    """The JSON types a schema can accept, or None for any."""
    schema = checker.resolve(schema)
    if not isinstance(schema, Mapping):
        return None if schema else set()
    if "type" in schema:
        kind = schema["type"]
        return {kind} if isinstance(kind, str) else set(kind)
    for keyword in ("anyOf", "oneOf"):
        if keyword in schema:
            union: set[str] = set()
            for branch in schema[keyword]:
                kinds = _types(checker, branch)
                if kinds is None:
                    return None
                union |= kinds
            return union
    if "allOf" in schema:
        known = [k for k in (_types(checker, part) for part in schema["allOf"]) if k is not None]
        return set.intersection(*known) if known else None
    if "enum" in schema:
        return {_type_of(value) for value in schema["enum"]}
    if "const" in schema:
        return {_type_of(schema["const"])}
    return None


def _accepts(checker: _Checker, schema: Any, instance: Any) -> bool:
    kinds = _types(checker, schema)
    if kinds is None:
        return True
    kind = _type_of(instance)
    return kind in kinds or (kind == "integer" and "number" in kinds)


def _type_of(instance: Any) -> str:
    if instance is None:
        return "null"
    if isinstance(instance, bool):
        return "boolean"
    if isinstance(instance, int) or (isinstance(instance, float) and instance.is_integer()):
        return "integer"
    if isinstance(instance, float):
        return "number"
    if isinstance(instance, str):
        return "string"
    if isinstance(instance, list):
        return "array"
    return "object"


def _discriminator(checker: _Checker, branches: Sequence[Any]) -> str | None:
    """A member that every branch pins to a few values of its own (OpenAI's
    ``discriminator``: ``role`` for messages, ``type`` for parts and tools)."""
    first = branches[0]
    if not isinstance(first, Mapping):
        return None
    for tag in first.get("properties", {}):
        if all(_tag_values(checker, branch, tag) for branch in branches):
            return str(tag)
    return None


def _tag_values(checker: _Checker, branch: Any, tag: str) -> list[Any]:
    if not isinstance(branch, Mapping):
        return []
    member = checker.resolve(branch.get("properties", {}).get(tag))
    if not isinstance(member, Mapping):
        return []
    if "const" in member:
        return [member["const"]]
    return list(member.get("enum", []))


# -- messages -------------------------------------------------------------------


def _describe(error: ValidationError, path: Path) -> RequestError:
    keyword = error.validator
    # jsonschema types these "or Unset": an error from iter_errors has them all.
    expected: Any = error.validator_value
    value: Any = error.instance
    schema: Any = error.schema
    name = _name(path)
    if keyword == "type":
        return _type_error(path, {expected} if isinstance(expected, str) else set(expected), value)
    if keyword == "enum":
        return _enum_error(path, expected, value)
    if keyword == "const":
        return _error(path, f"{name} must be {_show(expected)}; got {_show(value)}")
    if keyword == "required":
        missing = next(m for m in expected if m not in value)
        return _error([*path, missing], f"{_name([*path, missing])} is required")
    if keyword == "additionalProperties":
        known = schema.get("properties", {})
        extra = next(k for k in value if k not in known)
        return _error([*path, extra], f"{_name([*path, extra])} is not a known parameter")
    bounds = {
        "minimum": "at least",
        "maximum": "at most",
        "exclusiveMinimum": "greater than",
        "exclusiveMaximum": "less than",
    }
    if keyword in bounds:
        return _error(path, f"{name} must be {bounds[keyword]} {expected}; got {_show(value)}")
    if keyword == "minItems":
        if expected == 1:
            return _error(path, f"{name} must be a non-empty array")
        return _error(path, f"{name} must have at least {expected} items; got {len(value)}")
    if keyword == "maxItems":
        return _error(path, f"{name} must have at most {expected} items; got {len(value)}")
    if keyword == "minLength":
        return _error(path, f"{name} must be at least {expected} characters long")
    if keyword == "maxLength":
        return _error(path, f"{name} must be at most {expected} characters long; got {len(value)}")
    if keyword == "pattern":
        return _error(path, f"{name} must match the pattern {expected}; got {_show(value)}")
    if keyword in _WEAK:
        shapes = ", ".join(
            str(branch.get("title"))
            for branch in expected
            if isinstance(branch, Mapping) and "title" in branch
        )
        says = "more than one of" if keyword == "oneOf" and not error.context else "none of"
        detail = f" ({shapes})" if shapes else ""
        return _error(path, f"{name} matches {says} the shapes it may have{detail}")
    return _error(path, f"{name} is invalid: {_clip(error.message)}")


def _type_error(path: Path, kinds: Iterable[str], value: Any) -> RequestError:
    kinds = set(kinds)
    if "number" in kinds:
        kinds.discard("integer")
    words = [_ARTICLES[k] for k in _TYPE_ORDER if k in kinds]
    if not words:
        return _error(path, f"{_name(path)} is not allowed here")
    expected = words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"
    got = _ARTICLES[_type_of(value)]
    return _error(path, f"{_name(path)} must be {expected}; got {got}")


def _enum_error(path: Path, allowed: Iterable[Any], value: Any) -> RequestError:
    allowed = [v for v in allowed if v is not None]
    bare = all(isinstance(v, str) for v in allowed)
    shown = ", ".join(v if bare else _show(v) for v in allowed)
    return _error(path, f"{_name(path)} must be one of {shown}; got {_show(value)}")


def _error(path: Path, message: str) -> RequestError:
    return RequestError(message, param=_param(path))


def _param(path: Sequence[str | int]) -> str | None:
    """OpenAI's spelling of a place in the body: ``tools[1].function.name``."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or None


def _name(path: Sequence[str | int]) -> str:
    """How a message names a place: a top-level parameter in quotes, as OpenAI does."""
    param = _param(path)
    if param is None:
        return "the request body"
    return f"'{param}'" if len(path) == 1 else param


def _show(value: Any) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return _clip(text)


def _clip(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# The gateway serves chat completions: compile that one with the module, not on the
# first request.
_checker("openai_chat_request")
