"""Write the part of OpenAI's published API description that ``POST /chat/completions``
needs into ``tests/data/openai_chat_openapi.json``, for the schemathesis test
(``tests/test_chat_schemathesis.py``): CI has the repository, not the 3 MB description.

Usage: ``python scripts/extract_chat_openapi.py [--check] [SPEC]`` (SPEC defaults to
``../shared/specs/openai-openapi.yaml`` beside the repository). ``--check`` writes
nothing and exits 1 when the file differs from what the spec gives.

Kept: the operation (its request body and its 200 responses), the server (``/v1``, so
that any base URL ending there works), and every component schema the operation
reaches, as they are. Dropped: prose (``description``, ``summary``) and ``x-*`` keys,
which make most of the bytes and say nothing to a generator.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT.parent / "shared" / "specs" / "openai-openapi.yaml"
OUT = ROOT / "tests" / "data" / "openai_chat_openapi.json"
PATH, METHOD = "/chat/completions", "post"
COMPONENT = "#/components/schemas/"
#: Keys whose value is a map of names: a member called ``description`` there is data.
NAME_MAPS = frozenset({"properties", "patternProperties", "$defs", "schemas", "content"})


def _strip(node: Any, names: bool = False) -> Any:
    if isinstance(node, list):
        return [_strip(item) for item in node]
    if not isinstance(node, dict):
        return node
    return {
        key: _strip(value, key in NAME_MAPS and not names)
        for key, value in node.items()
        if names or not (key in ("description", "summary") or key.startswith("x-"))
    }


def _refs(node: Any, found: set[str]) -> None:
    if isinstance(node, list):
        for item in node:
            _refs(item, found)
    elif isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str) and value.startswith(COMPONENT):
                found.add(value[len(COMPONENT) :])
            else:
                _refs(value, found)


def extract(spec: dict[str, Any]) -> dict[str, Any]:
    operation = _strip(spec["paths"][PATH][METHOD])
    operation["responses"] = {"200": operation["responses"]["200"]}
    schemas = spec["components"]["schemas"]
    wanted: set[str] = set()
    _refs(operation, wanted)
    done: set[str] = set()
    while wanted - done:
        name = min(wanted - done)
        done.add(name)
        _refs(schemas[name], wanted)
    return {
        "openapi": spec["openapi"],
        "info": {
            "title": f"{spec['info']['title']}: {METHOD.upper()} {PATH} only",
            "version": spec["info"]["version"],
        },
        "servers": [{"url": "/v1"}],
        "paths": {PATH: {METHOD: operation}},
        "components": {"schemas": {name: _strip(schemas[name]) for name in sorted(done)}},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", nargs="?", default=str(SPEC))
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    with open(args.spec, encoding="utf-8") as file:
        spec = yaml.load(file, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    text = json.dumps(extract(spec), indent=1, sort_keys=True, ensure_ascii=False) + "\n"
    if args.check:
        same = OUT.exists() and OUT.read_text(encoding="utf-8") == text
        print(f"{OUT.relative_to(ROOT)}: {'up to date' if same else 'differs'}")
        return 0 if same else 1
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT.relative_to(ROOT)} ({len(text)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
