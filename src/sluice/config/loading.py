"""Reading the configuration: the YAML file (or text), then the environment, then flags."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from sluice.config.errors import ConfigError, line_of
from sluice.config.litellm import parse_litellm
from sluice.config.proxies import proxies_from
from sluice.config.settings import Settings, build
from sluice.config.values import integer

MERGE_TAG = "tag:yaml.org,2002:merge"


def _duplicate_keys(loader: yaml.SafeLoader, root: yaml.Node, origin: str) -> None:
    """Refuse a mapping that names one key twice: YAML says keys are unique, and PyYAML
    would keep the last silently, so a setting written twice would lose its first line.
    Keys a merge (``<<``) brings in may be overridden: that is what merging is for."""
    seen: set[int] = set()
    todo = [root]
    while todo:
        node = todo.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            todo.extend(node.value)
        if not isinstance(node, yaml.MappingNode):
            continue
        first: dict[Any, yaml.Node] = {}
        for key_node, value_node in node.value:
            todo.append(value_node)
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == MERGE_TAG:
                continue
            key = loader.construct_object(key_node)
            try:
                earlier = first.setdefault(key, key_node)
            except TypeError:  # not hashable: PyYAML refuses it when it constructs
                continue
            if earlier is not key_node:
                line, again = earlier.start_mark.line + 1, key_node.start_mark.line + 1
                raise ConfigError(
                    f"{origin} line {again}: duplicate key {key_node.value!r}"
                    f" (first at line {line}); write each key once"
                )


def parse(text: str, env: Mapping[str, str], origin: str = "<config>") -> Settings:
    """Build settings from YAML text and the environment."""
    loader = yaml.SafeLoader(text)
    try:
        # Compose, then construct, so that errors can point at a key's line.
        root = loader.get_single_node()
        if root is not None:
            _duplicate_keys(loader, root, origin)
        loaded = loader.construct_document(root) if root is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{origin}: not valid YAML{at}: {problem}") from exc
    finally:
        loader.dispose()
    if loaded is None:
        loaded = {}
    if not isinstance(loaded, Mapping):
        raise ConfigError(f"{origin}: expected a mapping at the top, got {type(loaded).__name__}")
    if "model_list" in loaded:
        return parse_litellm(loaded, root, env, origin)
    try:
        return build(loaded, env, origin)
    except ConfigError as exc:
        line = line_of(root, exc.path)
        raise ConfigError(f"{origin}{f' line {line}' if line else ''}: {exc}", exc.path) from None


def load(
    path: str | None = None,
    env: Mapping[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    """Read the YAML file (``path`` or ``SLUICE_CONFIG``), the environment, then flags."""
    env = dict(os.environ) if env is None else env
    path = path or env.get("SLUICE_CONFIG") or None
    if path:
        file = Path(path)
        try:
            text = file.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read the config file: {exc.strerror}") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: the config file is not UTF-8 text: {exc}") from exc
        settings = parse(text, env, origin=path)
    else:
        settings = parse("", env, origin="defaults")
    # A flag left unset arrives as None: the environment, then the file, decide.
    flags = {key: value for key, value in overrides.items() if value is not None}
    if "SLUICE_HOST" in env and "host" not in flags:
        flags["host"] = env["SLUICE_HOST"]
    for key, minimum, maximum in (("port", 0, 65_535), ("workers", 1, None)):
        name = f"SLUICE_{key.upper()}"
        if key not in flags and name in env:
            try:
                number = int(env[name])
            except ValueError:
                raise ConfigError(f"{name}: expected an integer, got {env[name]!r}") from None
            flags[key] = integer({name: number}, name, (), 0, minimum, maximum)
        elif key in flags:
            flags[key] = integer(flags, key, (), 0, minimum, maximum)
    grace = env.get("SLUICE_SHUTDOWN_GRACE")
    if grace is not None:
        try:
            seconds = float(grace)
        except ValueError:
            seconds = -1.0
        if not 0 <= seconds < math.inf:
            raise ConfigError(
                f"SLUICE_SHUTDOWN_GRACE: expected a non-negative number, got {grace!r}"
            )
        flags["shutdown_grace"] = seconds
    proxies = proxies_from(env)
    if proxies != settings.proxies:
        flags["proxies"] = proxies
    return replace(settings, **flags) if flags else settings
