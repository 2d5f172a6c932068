"""Made-up values validate against their JSON Schema, seed after seed."""

from __future__ import annotations

import random
from enum import StrEnum
from typing import Any, Literal, Optional

import jsonschema
import pydantic
import pytest
from openai.lib._pydantic import to_strict_json_schema

from sluice.providers.schema_values import schema_value
from sluice.providers.wordmodel import default_model


class Unit(StrEnum):
    celsius = "celsius"
    fahrenheit = "fahrenheit"


class Address(pydantic.BaseModel):
    street: str
    city: str
    postcode: Optional[str] = None  # noqa: UP045 (the spelling Pydantic users write)


class Person(pydantic.BaseModel):
    name: str = pydantic.Field(min_length=2, max_length=40)
    age: int = pydantic.Field(ge=0, le=130)
    height: float = pydantic.Field(gt=0.5, lt=2.5)
    unit: Unit
    tags: list[str] = pydantic.Field(max_length=5)
    home: Address
    previous: list[Address] = []
    kind: Literal["customer", "supplier"]
    scores: dict[str, int] = {}
    nickname: str | None = None


class Tree(pydantic.BaseModel):
    label: str
    children: list[Tree]
    parent: Tree | None = None


WEATHER = {
    "type": "object",
    "properties": {
        "location": {"type": "string", "description": "City and country, e.g. Paris, France"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 14},
    },
    "required": ["location"],
    "additionalProperties": False,
}

SCHEMAS: dict[str, dict[str, Any]] = {
    "weather": WEATHER,
    "pydantic": Person.model_json_schema(),
    "pydantic strict": to_strict_json_schema(Person),
    "recursive": Tree.model_json_schema(),
    "recursive strict": to_strict_json_schema(Tree),
    "numbers": {
        "type": "object",
        "properties": {
            "tenth": {"type": "number", "multipleOf": 0.1, "minimum": 1, "maximum": 2},
            "fives": {"type": "integer", "multipleOf": 5, "exclusiveMinimum": 10},
            "open": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
            "negative": {"type": "integer", "maximum": -5},
        },
        "required": ["tenth", "fives", "open", "negative"],
    },
    "unique booleans": {
        "type": "array",
        "items": {"type": "boolean"},
        "uniqueItems": True,
        "minItems": 2,
    },
    "unique enum": {
        "type": "array",
        "items": {"enum": ["a", "b", "c"]},
        "uniqueItems": True,
        "minItems": 3,
    },
    "free-form map": {
        "type": "object",
        "minProperties": 3,
        "additionalProperties": {"type": "integer"},
    },
    "all of": {
        "allOf": [
            {
                "properties": {"a": {"type": "string", "minLength": 30, "maxLength": 32}},
                "required": ["a"],
            },
            {"properties": {"b": {"type": ["null", "integer"]}}, "required": ["b"]},
        ]
    },
    "formats": {
        "type": "object",
        "properties": {
            key: {"type": "string", "format": key}
            for key in ("date-time", "date", "time", "email", "uri", "uuid", "ipv4", "hostname")
        },
        "required": ["date-time", "date", "time", "email", "uri", "uuid", "ipv4", "hostname"],
    },
    "tuple": {
        "type": "array",
        "prefixItems": [{"type": "integer"}, {"type": "string"}],
        "items": False,
    },
    "one of": {
        "oneOf": [
            {"type": "string", "maxLength": 3},
            {"type": "object", "properties": {"x": {"const": 1}}, "required": ["x"]},
        ]
    },
    "ref with siblings": {
        "$defs": {
            "Point": {"type": "object", "properties": {"x": {"type": "number"}}, "required": ["x"]}
        },
        "type": "object",
        "properties": {"at": {"$ref": "#/$defs/Point", "description": "where"}},
        "required": ["at"],
        "additionalProperties": False,
    },
    "empty": {},
    "no parameters": {"type": "object", "properties": {}},
}


@pytest.mark.parametrize("name", SCHEMAS)
def test_values_validate(name: str) -> None:
    schema = SCHEMAS[name]
    validator_class = jsonschema.validators.validator_for(schema)
    validator = validator_class(schema, format_checker=validator_class.FORMAT_CHECKER)
    for seed in range(100):
        value = schema_value(schema, random.Random(seed), default_model())
        errors = [e.message for e in validator.iter_errors(value)]
        assert not errors, (seed, value, errors)


def test_draft_4_boolean_bounds() -> None:
    schema = {
        "$schema": "http://json-schema.org/draft-04/schema#",
        "type": "number",
        "minimum": 0,
        "exclusiveMinimum": True,
        "maximum": 0.5,
        "exclusiveMaximum": True,
    }
    validator = jsonschema.Draft4Validator(schema)
    for seed in range(50):
        validator.validate(schema_value(schema, random.Random(seed), default_model()))


def test_values_are_deterministic_and_varied() -> None:
    values = [schema_value(WEATHER, random.Random(seed), default_model()) for seed in range(20)]
    again = [schema_value(WEATHER, random.Random(seed), default_model()) for seed in range(20)]
    assert values == again
    assert len({v["location"] for v in values}) >= 10
    assert {v.get("unit") for v in values} >= {"celsius", "fahrenheit"}
    # Optional properties come and go; required ones are always there.
    assert any("days" in v for v in values) and any("days" not in v for v in values)


def test_recursion_ends() -> None:
    def depth(node: dict[str, Any]) -> int:
        below = [*node["children"], *([node["parent"]] if node.get("parent") else [])]
        return 1 + max((depth(n) for n in below), default=0)

    deepest = max(
        depth(schema_value(SCHEMAS["recursive strict"], random.Random(s), default_model()))
        for s in range(50)
    )
    assert 2 <= deepest <= 8


def test_impossible_schemas_say_so() -> None:
    with pytest.raises(ValueError):
        schema_value(False, random.Random(0), default_model())
    with pytest.raises(ValueError, match="points at nothing"):
        schema_value({"$ref": "#/$defs/Missing"}, random.Random(0), default_model())
    with pytest.raises(ValueError):
        schema_value({"$ref": "#"}, random.Random(0), default_model())
