"""Made-up values that validate against a JSON Schema, the same for the same seed.

The simulator fills tool-call arguments and ``json_schema`` answers with these. It
covers the subset of JSON Schema that OpenAI function tools and Structured Outputs use
(and Pydantic writes):

- ``type`` (one or a list), ``enum``, ``const``;
- objects: ``properties``, ``required`` (always present), ``additionalProperties``
  (``false``: nothing else; a schema: the values of a free-form map),
  ``minProperties`` / ``maxProperties``;
- arrays: ``items``, ``prefixItems`` (and draft 4's ``items`` list), ``minItems`` /
  ``maxItems``, ``uniqueItems``;
- numbers: ``minimum`` / ``maximum``, ``exclusiveMinimum`` / ``exclusiveMaximum``
  (numbers, or draft 4's booleans), ``multipleOf``;
- strings: ``minLength`` / ``maxLength``, ``format`` (``date-time``, ``date``,
  ``time``, ``email``, ``uri``, ``uuid``, ``ipv4``, ``hostname``); the text comes from
  the word model;
- ``anyOf`` / ``oneOf`` (one branch, with the schema's other keywords), ``allOf``
  (merged one level deep), and ``$ref`` to anywhere in the same document (``#``,
  ``#/$defs/...``, ``#/definitions/...``), recursive ones included: past
  ``MAX_DEPTH`` nesting levels a value takes the least it may (no optional property,
  the fewest items, a ``null`` branch when there is one).

Not honoured: ``pattern``, ``not``, ``if`` / ``then`` / ``else``,
``patternProperties``, ``contains``, ``dependentRequired``, references to other
documents. A value for a schema that needs them may not validate.
"""

from __future__ import annotations

import copy
import math
import random
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from sluice.providers.wordmodel import WordModel

__all__ = ["MAX_DEPTH", "schema_value"]

#: Nesting levels filled generously; deeper ones get the least their schema allows.
MAX_DEPTH = 4
#: The most items an array gets unless ``minItems`` asks for more.
_MAX_ITEMS = 3
_REF_HOPS = 32
_SCALARS = frozenset({"string", "integer", "number", "boolean", "null"})


def schema_value(schema: Mapping[str, Any] | bool, rng: random.Random, words: WordModel) -> Any:
    """A value that validates against ``schema``; it depends only on the arguments."""
    root = schema if isinstance(schema, Mapping) else {}
    return _Maker(rng, words, root).value(schema, 0)


class _Maker:
    __slots__ = ("_rng", "_root", "_words")

    def __init__(self, rng: random.Random, words: WordModel, root: Mapping[str, Any]) -> None:
        self._rng = rng
        self._words = words
        self._root = root

    def value(self, schema: Mapping[str, Any] | bool, depth: int) -> Any:
        if schema is False:
            raise ValueError("no value validates against the schema false")
        if schema is True:
            schema = {}
        assert isinstance(schema, Mapping)
        schema = self._resolve(schema)
        if "allOf" in schema:
            schema = _merge(schema, [self._resolve(s) for s in schema["allOf"] if s is not True])
        if "const" in schema:
            return copy.deepcopy(schema["const"])
        if "enum" in schema:
            return copy.deepcopy(self._rng.choice(list(schema["enum"])))
        for key in ("anyOf", "oneOf"):
            branches = schema.get(key)
            if branches:
                rest = {k: v for k, v in schema.items() if k != key}
                branch = self._resolve(self._branch(branches, depth))
                return self.value({**rest, **branch}, depth)
        kind = schema.get("type")
        if isinstance(kind, list):
            kind = self._type_of(kind, depth)
        if kind is None:
            kind = _inferred_type(schema)
        if kind == "object":
            return self._object(schema, depth)
        if kind == "array":
            return self._array(schema, depth)
        if kind == "integer":
            return self._integer(schema)
        if kind == "number":
            return self._number(schema)
        if kind == "boolean":
            return self._rng.random() < 0.5
        if kind == "null":
            return None
        return self._string(schema)

    # -- references and choices ------------------------------------------------------

    def _resolve(self, schema: Mapping[str, Any]) -> Mapping[str, Any]:
        """``schema`` with its ``$ref`` followed (and its other keywords kept over it)."""
        for _ in range(_REF_HOPS):
            ref = schema.get("$ref")
            if not isinstance(ref, str):
                return schema
            target = self._pointer(ref)
            schema = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
        raise ValueError("$ref chain too long (a reference to itself?)")

    def _pointer(self, ref: str) -> Mapping[str, Any]:
        if not ref.startswith("#"):
            return {}  # another document: anything goes, as far as this side can tell
        node: Any = self._root
        for token in ref[1:].split("/")[1:]:
            token = token.replace("~1", "/").replace("~0", "~")
            try:
                node = node[int(token)] if isinstance(node, list) else node[token]
            except (LookupError, ValueError, TypeError):
                raise ValueError(f"$ref {ref!r} points at nothing in the schema") from None
        if node is True:
            return {}
        if not isinstance(node, Mapping):
            raise ValueError(f"$ref {ref!r} does not point to a schema")
        found: Mapping[str, Any] = node
        return found

    def _branch(self, branches: list[Any], depth: int) -> Mapping[str, Any]:
        schemas: list[Mapping[str, Any]] = [
            {} if b is True else b for b in branches if isinstance(b, Mapping) or b is True
        ]
        if depth >= MAX_DEPTH:
            # Deep down, take the branch that ends soonest: null, then any scalar.
            for test in (_is_null, _is_scalar):
                found = [s for s in schemas if test(self._resolve(s))]
                if found:
                    return found[0]
        rich = [s for s in schemas if not _is_null(self._resolve(s))]
        return self._rng.choice(rich or schemas)

    def _type_of(self, kinds: list[str], depth: int) -> str | None:
        if not kinds:
            return None
        if depth >= MAX_DEPTH:
            for kind in ("null", "boolean", "integer", "number", "string"):
                if kind in kinds:
                    return kind
        rich = [k for k in kinds if k != "null"]
        return self._rng.choice(rich or kinds)

    # -- containers ------------------------------------------------------------------

    def _object(self, schema: Mapping[str, Any], depth: int) -> dict[str, Any]:
        rng = self._rng
        properties: Mapping[str, Any] = schema.get("properties") or {}
        required = [name for name in schema.get("required") or () if isinstance(name, str)]
        extra = schema.get("additionalProperties", True)
        most = schema.get("maxProperties")
        least = schema.get("minProperties", 0)
        chosen = set(required)
        for name in properties:
            if name in chosen or (most is not None and len(chosen) >= most):
                continue
            if depth < MAX_DEPTH and rng.random() < 0.6:
                chosen.add(name)
        out: dict[str, Any] = {}
        for name, sub in properties.items():
            if name in chosen:
                out[name] = self.value(sub, depth + 1)
        for name in required:
            if name not in out:  # required but not described: whatever else may be there
                out[name] = self.value(extra if isinstance(extra, Mapping) else {}, depth + 1)
        if extra is not False:
            # A free-form map (no properties), or one that needs more keys than it has.
            want = max(0, least - len(out))
            if not properties and depth < MAX_DEPTH:
                want = max(want, rng.randint(1, 2))
            if most is not None:
                want = min(want, most - len(out))
            sub = extra if isinstance(extra, Mapping) else {"type": "string"}
            for _ in range(want * 4):
                if want <= 0:
                    break
                key = self._words.word(rng).lower()
                if key not in out:
                    out[key] = self.value(sub, depth + 1)
                    want -= 1
        return out

    def _array(self, schema: Mapping[str, Any], depth: int) -> list[Any]:
        rng = self._rng
        items: Any = schema.get("items", {})
        prefix: list[Any] = list(schema.get("prefixItems") or ())
        if isinstance(items, list):  # draft 4's tuple form
            prefix, items = items, schema.get("additionalItems", {})
        least = int(schema.get("minItems", 0))
        most = schema.get("maxItems")
        if items is False:
            most = len(prefix) if most is None else min(most, len(prefix))
        if depth >= MAX_DEPTH:
            low = high = least
        else:
            low = max(least, len(prefix) or 1)
            high = max(low, len(prefix) or (_MAX_ITEMS if depth < 2 else 2))
        if most is not None:
            high, low = min(high, most), min(low, most)
        count = rng.randint(low, max(low, high))
        unique = schema.get("uniqueItems") is True
        out: list[Any] = []
        for i in range(count):
            sub = prefix[i] if i < len(prefix) else items
            if not unique:
                out.append(self.value(sub, depth + 1))
                continue
            left = self._finite(sub)
            if left is not None:  # booleans, enums: draw from what is not taken yet
                left = [v for v in left if v not in out]
                if not left:
                    break
                out.append(copy.deepcopy(rng.choice(left)))
                continue
            for _ in range(10):
                value = self.value(sub, depth + 1)
                if value not in out:
                    out.append(value)
                    break
        return out

    def _finite(self, schema: Any) -> list[Any] | None:
        """Every value ``schema`` allows, when they are few (booleans, enums, a const)."""
        if not isinstance(schema, Mapping):
            return None
        schema = self._resolve(schema)
        if "const" in schema:
            return [schema["const"]]
        if "enum" in schema:
            return list(schema["enum"])
        if schema.get("type") == "boolean":
            return [False, True]
        return None

    # -- scalars ---------------------------------------------------------------------

    def _string(self, schema: Mapping[str, Any]) -> str:
        rng = self._rng
        shape = _FORMATS.get(str(schema.get("format")))
        text = shape(self) if shape else self._words.phrase(rng, rng.randint(1, 4))
        least = int(schema.get("minLength", 0))
        most = schema.get("maxLength")
        while len(text) < least:
            text += " " + self._words.phrase(rng, 3)
        if most is not None and len(text) > most:
            text = text[:most]
            if text.endswith(" ") and len(text) > least:
                text = text.rstrip()
        return text

    def _integer(self, schema: Mapping[str, Any]) -> int:
        low, high, low_open, high_open = _bounds(schema)
        lo = None if low is None else (math.floor(low) + 1 if low_open else math.ceil(low))
        hi = None if high is None else (math.ceil(high) - 1 if high_open else math.floor(high))
        lo, hi = (int(bound) for bound in _default_range(lo, hi))
        step = schema.get("multipleOf")
        if isinstance(step, int) and not isinstance(step, bool) and step > 0:
            first, last = -(-lo // step), hi // step
            if first <= last:
                return self._rng.randint(first, last) * step
        return self._rng.randint(lo, max(lo, hi))

    def _number(self, schema: Mapping[str, Any]) -> float | int:
        rng = self._rng
        low, high, low_open, high_open = _bounds(schema)
        lo, hi = _default_range(low, high)

        def inside(v: float) -> bool:
            above = v > lo if low_open else v >= lo
            below = v < hi if high_open else v <= hi
            return above and below

        step = _number(schema.get("multipleOf"))
        if step is not None and step > 0:
            first, last = math.ceil(lo / step), math.floor(hi / step)
            if first <= last:
                start = rng.randint(first, last)
                # Floats: the multiple must divide back exactly, as validators check it.
                for k in (start, *range(first, min(last, first + 50) + 1)):
                    v: float = k * step
                    if isinstance(v, float):
                        v = round(v, 12)
                    if inside(v) and (v / step).is_integer():
                        return v
        value = round(rng.uniform(lo, hi), 2)
        if not inside(value):
            value = (lo + hi) / 2
        return value

    def _date_time(self) -> str:
        return f"{self._date()}T{self._time()}"

    def _date(self) -> str:
        rng = self._rng
        return f"{rng.randint(2020, 2026)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"

    def _time(self) -> str:
        rng = self._rng
        return f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}Z"

    def _email(self) -> str:
        return f"{self._words.word(self._rng).lower()}@example.com"

    def _uri(self) -> str:
        return f"https://example.com/{self._words.word(self._rng).lower()}"

    def _uuid(self) -> str:
        return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))

    def _ipv4(self) -> str:
        return "192.0.2." + str(self._rng.randint(1, 254))  # TEST-NET-1, RFC 5737

    def _hostname(self) -> str:
        return f"{self._words.word(self._rng).lower()}.example.com"


_FORMATS: dict[str, Callable[[_Maker], str]] = {
    "date-time": _Maker._date_time,
    "date": _Maker._date,
    "time": _Maker._time,
    "email": _Maker._email,
    "uri": _Maker._uri,
    "url": _Maker._uri,
    "uuid": _Maker._uuid,
    "ipv4": _Maker._ipv4,
    "hostname": _Maker._hostname,
}


def _merge(schema: Mapping[str, Any], parts: list[Mapping[str, Any]]) -> dict[str, Any]:
    """``allOf`` as one schema: properties and required lists united, the rest overlaid."""
    merged: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
    for part in parts:
        for key, value in part.items():
            if key == "properties":
                merged["properties"] = {**merged.get("properties", {}), **value}
            elif key == "required":
                merged["required"] = [*merged.get("required", []), *value]
            else:
                merged.setdefault(key, value)
    return merged


def _inferred_type(schema: Mapping[str, Any]) -> str:
    if {"properties", "additionalProperties", "required"} & schema.keys():
        return "object"
    if {"items", "prefixItems"} & schema.keys():
        return "array"
    if {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"} & schema.keys():
        return "number"
    return "string"


def _is_null(schema: Mapping[str, Any]) -> bool:
    return schema.get("type") == "null" or schema.get("const", 0) is None


def _is_scalar(schema: Mapping[str, Any]) -> bool:
    kind = schema.get("type")
    return "enum" in schema or "const" in schema or (isinstance(kind, str) and kind in _SCALARS)


def _bounds(schema: Mapping[str, Any]) -> tuple[float | None, float | None, bool, bool]:
    """(low, high, low is exclusive, high is exclusive), in either draft's spelling."""
    low = _number(schema.get("minimum"))
    high = _number(schema.get("maximum"))
    low_open = high_open = False
    ex_low, ex_high = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
    if ex_low is True:
        low_open = True
    elif (bound := _number(ex_low)) is not None and (low is None or bound >= low):
        low, low_open = bound, True
    if ex_high is True:
        high_open = True
    elif (bound := _number(ex_high)) is not None and (high is None or bound <= high):
        high, high_open = bound, True
    return low, high, low_open, high_open


def _number(value: Any) -> float | None:
    """``value`` if it is a JSON number (ints stay ints), else None."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value
    return None


def _default_range(low: float | None, high: float | None) -> tuple[float, float]:
    """Fill a missing bound: within a hundred of the other, or 0 to 100."""
    if low is None and high is None:
        return 0, 100
    if low is None:
        assert high is not None
        return (0 if high >= 0 else high - 100), high
    if high is None:
        return low, low + 100
    return low, high
