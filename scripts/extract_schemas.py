"""Write the request schemas the gateway validates against, from OpenAI's published API
description, into ``src/sluice/schemas/`` as self-contained JSON Schema (Draft 2020-12).

Usage: ``python scripts/extract_schemas.py [--check] [SPEC]`` (SPEC defaults to
``../shared/specs/openai-openapi.yaml`` beside the repository). ``--check`` writes
nothing and exits 1 when a file differs from what the spec gives.

The description is OpenAPI 3.1 with OpenAPI 3.0 habits left in. Per schema:

- every ``$ref`` to ``#/components/schemas/X`` becomes ``#/$defs/X`` and X is copied
  into ``$defs`` (the root itself is ``#``), so recursion stays a reference;
- ``$recursiveRef: "#"`` (Draft 2019-09, gone from 2020-12) under a component with
  ``$recursiveAnchor`` is a reference to that component;
- ``nullable: true`` (3.0) becomes ``"null"`` in ``type`` (and ``null`` in ``enum``),
  or ``anyOf [schema, {"type": "null"}]`` where the schema has no ``type`` of its own;
- OpenAPI-only keywords are dropped: ``discriminator`` (the branches' own ``enum`` of the
  tag says the same, and sluice.schemas reads the tag from there), ``example(s)``,
  ``xml``, ``externalDocs`` and every ``x-*``; so is ``description``: it is prose for
  people, would make the files twice as large, and the spec is where to read it;
- the request object itself accepts unknown members (``additionalProperties: false`` is
  dropped at the top level only): OpenAI-compatible servers take vendor fields.

Then, for the validators (sluice.schemas compiles these with fastjsonschema, which reads
Draft 7, and explains errors with jsonschema, which reads 2020-12), the same documents
stay valid but the schema is said in a way both read alike and one that is fast to check:

- a ``$ref`` with assertions beside it becomes ``allOf [{"$ref": ...}, ...]`` (Draft 7
  ignores a ``$ref``'s siblings);
- a ``oneOf`` whose branches cannot both match (different JSON types, or a required tag
  pinned to different values: what ``discriminator`` declares) becomes ``anyOf``, and
  the tag comes first among each branch's properties, so a validator stops at the first
  branch that matches and leaves a wrong one at its first member.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT.parent / "shared" / "specs" / "openai-openapi.yaml"
OUT = ROOT / "src" / "sluice" / "schemas"

#: Output file stem → component in ``#/components/schemas``.
TARGETS = {
    "openai_chat_request": "CreateChatCompletionRequest",
    "openai_responses_request": "CreateResponse",
    "openai_embeddings_request": "CreateEmbeddingRequest",
}

COMPONENT = "#/components/schemas/"
#: Keywords whose value is a map of name → schema, a list of schemas, or one schema.
SCHEMA_MAPS = frozenset({"properties", "patternProperties", "$defs", "dependentSchemas"})
SCHEMA_LISTS = frozenset({"allOf", "anyOf", "oneOf", "prefixItems"})
SCHEMA_ONE = frozenset(
    {
        "items",
        "additionalProperties",
        "unevaluatedProperties",
        "unevaluatedItems",
        "propertyNames",
        "contains",
        "not",
        "if",
        "then",
        "else",
    }
)
DROPPED = frozenset(
    {
        "description",
        "discriminator",
        "example",
        "examples",
        "externalDocs",
        "xml",
        "$recursiveAnchor",
    }
)
#: What fastjsonschema (Draft 7) and jsonschema (2020-12) read alike. Anything else in
#: a schema stops the extraction: a spec that starts using it needs a look.
SHARED_KEYWORDS = frozenset(
    {
        *("$schema", "$comment", "$defs", "$ref", "title", "default", "deprecated"),
        *("readOnly", "writeOnly", "format", "type", "enum", "const", "properties"),
        *("patternProperties", "additionalProperties", "required", "propertyNames"),
        *("minProperties", "maxProperties", "items", "minItems", "maxItems", "uniqueItems"),
        *("contains", "minLength", "maxLength", "pattern", "minimum", "maximum"),
        *("exclusiveMinimum", "exclusiveMaximum", "multipleOf", "allOf", "anyOf", "oneOf"),
        *("not", "if", "then", "else"),
    }
)
#: Keywords that only annotate: beside a ``$ref`` they change nothing.
ANNOTATIONS = frozenset({"title", "default", "deprecated", "readOnly", "writeOnly", "$comment"})
#: Keywords that test an instance through another schema: with one of them beside
#: ``nullable``, "or null" cannot be said by adding to ``type``.
APPLICATORS = SCHEMA_LISTS | {"$ref", "not", "if"}


def load_spec(path: Path) -> dict[str, Any]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with path.open("rb") as file:
        spec: dict[str, Any] = yaml.load(file, Loader=loader)
    return spec


class _Extractor:
    def __init__(self, components: dict[str, Any], root: str) -> None:
        self.components = components
        self.root = root
        self.defs: dict[str, Any] = {}
        self.pending: list[str] = []

    def ref(self, name: str) -> dict[str, Any]:
        if name not in self.components:
            raise KeyError(f"$ref to a missing component: {name}")
        if name == self.root:
            return {"$ref": "#"}
        if name not in self.defs:
            self.defs[name] = None  # claimed: converted once, after the current one
            self.pending.append(name)
        return {"$ref": f"#/$defs/{name}"}

    def schema(self, node: Any, owner: str) -> Any:
        if isinstance(node, bool):
            return node
        if not isinstance(node, dict):
            raise TypeError(f"{owner}: a schema must be an object or a boolean, got {node!r}")
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key in DROPPED or key.startswith("x-") or key == "nullable":
                continue
            if key == "$ref":
                if not value.startswith(COMPONENT):
                    raise ValueError(f"{owner}: unsupported $ref {value!r}")
                out.update(self.ref(value[len(COMPONENT) :]))
            elif key == "$recursiveRef":
                if value != "#":
                    raise ValueError(f"{owner}: unsupported $recursiveRef {value!r}")
                out.update(self.ref(owner))
            elif key in SCHEMA_MAPS:
                out[key] = {name: self.schema(sub, owner) for name, sub in value.items()}
            elif key in SCHEMA_LISTS:
                out[key] = [self.schema(sub, owner) for sub in value]
            elif key in SCHEMA_ONE:
                out[key] = self.schema(value, owner)
            else:
                out[key] = copy.deepcopy(value)
        if "$ref" in out and out.keys() - ANNOTATIONS - {"$ref"}:
            # A $ref's siblings apply in 2020-12 but are ignored by Draft 7 tools: say
            # the same thing in a way that both read alike.
            out = {"allOf": [{"$ref": out.pop("$ref")}, *out.pop("allOf", [])], **out}
        if node.get("nullable") is True:
            out = _or_null(out)
        return out

    def run(self) -> dict[str, Any]:
        body = self.schema(self.components[self.root], self.root)
        while self.pending:
            name = self.pending.pop(0)
            self.defs[name] = self.schema(self.components[name], name)
        body = _open_top_level(body, self.defs)
        _exclusive(body, self.defs)
        for sub in self.defs.values():
            _exclusive(sub, self.defs)
        schema: dict[str, Any] = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$comment": (
                f"{self.root} from OpenAI's API description, converted by "
                "scripts/extract_schemas.py; do not edit by hand"
            ),
            **body,
        }
        if self.defs:
            schema["$defs"] = dict(sorted(self.defs.items()))
        _check_keywords(schema, self.root)
        return schema


def _check_keywords(node: Any, where: str) -> None:
    if isinstance(node, list):
        for i, item in enumerate(node):
            _check_keywords(item, f"{where}/{i}")
        return
    if not isinstance(node, dict):
        return
    for key, value in node.items():
        if key not in SHARED_KEYWORDS:
            raise ValueError(f"{where}: {key!r} is not a keyword both validators read alike")
        if key in SCHEMA_MAPS:
            for name, sub in value.items():
                _check_keywords(sub, f"{where}/{key}/{name}")
        elif key in SCHEMA_LISTS or key in SCHEMA_ONE:
            _check_keywords(value, f"{where}/{key}")


def _or_null(schema: dict[str, Any]) -> dict[str, Any]:
    kind = schema.get("type")
    if kind is not None and not APPLICATORS & schema.keys():
        schema = dict(schema)
        kinds = kind if isinstance(kind, list) else [kind]
        if "null" not in kinds:
            schema["type"] = [*kinds, "null"]
        if "enum" in schema and None not in schema["enum"]:
            schema["enum"] = [*schema["enum"], None]
        return schema
    return {"anyOf": [schema, {"type": "null"}]}


def _open_top_level(body: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Drop ``additionalProperties: false`` from the request object itself: from the root
    and from what it includes with ``allOf`` or ``$ref`` (a definition that says so is
    copied under a new name first, so other uses of it stay as they were)."""
    body = dict(body)
    if body.get("additionalProperties") is False:
        del body["additionalProperties"]
    if "allOf" in body:
        body["allOf"] = [_open_top_level(part, defs) for part in body["allOf"]]
    ref = body.get("$ref", "")
    if ref.startswith("#/$defs/"):
        name = ref[len("#/$defs/") :]
        opened = _open_top_level(defs[name], defs)
        if opened != defs[name]:
            defs[f"{name}_open"] = opened
            body["$ref"] = f"#/$defs/{name}_open"
    return body


def _exclusive(node: Any, defs: dict[str, Any]) -> None:
    """Write every ``oneOf`` whose branches cannot both match as ``anyOf`` (in place):
    the same documents are valid, and a validator may stop at the first branch that
    matches instead of trying them all (the difference between 2 and 7 branches tried
    for each message)."""
    if isinstance(node, list):
        for item in node:
            _exclusive(item, defs)
        return
    if not isinstance(node, dict):
        return
    for key, value in node.items():
        if key in SCHEMA_MAPS:
            for sub in value.values():
                _exclusive(sub, defs)
        elif key in SCHEMA_LISTS or key in SCHEMA_ONE:
            _exclusive(value, defs)
    if "oneOf" in node and "anyOf" not in node and _disjoint(node["oneOf"], defs):
        node["anyOf"] = node.pop("oneOf")


def _disjoint(branches: list[Any], defs: dict[str, Any]) -> bool:
    """No document can match two of the branches: their JSON types differ, or those of
    a type are objects that require one member and pin it to different values."""
    seen: dict[str, list[Any]] = {}
    for branch in branches:
        kinds = _types(branch, defs)
        if kinds is None:
            return False
        if "number" in kinds:
            kinds = kinds | {"integer"}
        for kind in kinds:
            seen.setdefault(kind, []).append(branch)
    for kind, group in seen.items():
        if len(group) > 1 and (kind != "object" or not _tagged(group, defs)):
            return False
    return True


def _resolve(node: Any, defs: dict[str, Any]) -> Any:
    while isinstance(node, dict) and node.get("$ref", "").startswith("#/$defs/"):
        node = defs[node["$ref"][len("#/$defs/") :]]
    return node


def _types(node: Any, defs: dict[str, Any]) -> set[str] | None:
    node = _resolve(node, defs)
    if not isinstance(node, dict) or "type" not in node:
        return None
    kind = node["type"]
    return {kind} if isinstance(kind, str) else set(kind)


def _tagged(branches: list[Any], defs: dict[str, Any]) -> bool:
    """Some member is required by every branch and pinned to values no other has. That
    member is moved first among each branch's properties, where a validator that checks
    them in order finds the wrong branch at once (the order means nothing otherwise)."""
    resolved = [_resolve(branch, defs) for branch in branches]
    for tag in resolved[0].get("properties", {}):
        values: list[Any] = []
        for branch in resolved:
            member = _resolve(branch.get("properties", {}).get(tag), defs)
            if tag not in branch.get("required", ()) or not isinstance(member, dict):
                break
            pinned = [member["const"]] if "const" in member else member.get("enum")
            if not pinned:
                break
            values.extend(pinned)
        else:
            if len(values) == len({json.dumps(v) for v in values}):
                for branch in resolved:
                    properties = branch["properties"]
                    branch["properties"] = {tag: properties[tag], **properties}
                return True
    return False


def extract(spec: dict[str, Any], root: str) -> dict[str, Any]:
    """The JSON Schema of ``#/components/schemas/<root>``, with everything it references."""
    return _Extractor(spec["components"]["schemas"], root).run()


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=1, ensure_ascii=False) + "\n"


def generate(spec_path: Path) -> dict[Path, str]:
    """Each output file and the text it should have."""
    spec = load_spec(spec_path)
    return {OUT / f"{stem}.json": render(extract(spec, root)) for stem, root in TARGETS.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("spec", nargs="?", type=Path, default=SPEC)
    parser.add_argument("--check", action="store_true", help="only report stale files")
    args = parser.parse_args(argv)
    stale = []
    for path, text in generate(args.spec).items():
        current = path.read_text() if path.exists() else None
        if current == text:
            continue
        stale.append(path)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    for path in stale:
        verb = "out of date" if args.check else "written"
        print(f"{path.relative_to(ROOT)}: {verb}", file=sys.stderr)
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
