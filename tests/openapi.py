"""Validate payloads against OpenAI's published API description (OpenAPI 3.0 flavour)."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import pytest

SPEC = Path(__file__).resolve().parents[2] / "shared" / "specs" / "openai-openapi.yaml"


def _nullable(node: Any) -> Any:
    """OpenAPI 3.0's ``nullable: true`` is JSON Schema's ``anyOf [..., null]``."""
    if isinstance(node, list):
        return [_nullable(item) for item in node]
    if not isinstance(node, dict):
        return node
    converted = {k: _nullable(v) for k, v in node.items() if k != "nullable"}
    if node.get("nullable") is True:
        return {"anyOf": [converted, {"type": "null"}]}
    return converted


@cache
def _components() -> dict[str, Any]:
    import yaml

    spec = yaml.safe_load(SPEC.read_text())
    return dict(_nullable(spec["components"]))


def validator(schema_name: str) -> Any:
    """A validator for ``#/components/schemas/<schema_name>``; skips if the spec is absent."""
    if not SPEC.exists():
        pytest.skip(f"OpenAI's API description is not at {SPEC}")
    import jsonschema

    schema = {"$ref": f"#/components/schemas/{schema_name}", "components": _components()}
    return jsonschema.Draft202012Validator(schema)
