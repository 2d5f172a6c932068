"""Reading a LiteLLM document: its values, and messages that name a key and its line."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml

from sluice.config.errors import ConfigError, Keys, line_of
from sluice.config.values import Secret

#: Where LiteLLM reads references to the environment: ``os.environ/NAME``.
ENV_PREFIX = "os.environ/"
#: What to tell about some keys Sluice does not read.
HINTS = {
    "general_settings.master_key": "ignored; set SLUICE_MASTER_KEY instead",
    "environment_variables": "ignored; Sluice reads the environment it is started with",
    "litellm_settings.cache": "ignored; see Sluice's own cache settings",
    "model_info": "ignored (model metadata and prices: see Sluice's pricing)",
}


def dotted(path: Keys) -> str:
    """``model_list[2].litellm_params.model``."""
    out = ""
    for key in path:
        out += f"[{key}]" if key.isdigit() else (f".{key}" if out else key)
    return out


class Reader:
    """Reads values out of one LiteLLM document, collecting warnings as it goes."""

    def __init__(self, root: yaml.Node | None, env: Mapping[str, str], origin: str) -> None:
        self.root = root
        self.env = env
        self.origin = origin
        #: (line, message), sorted by line at the end.
        self.warnings: list[tuple[int, str]] = []

    # -- messages --------------------------------------------------------------

    def where(self, path: Keys) -> str:
        line = line_of(self.root, path)
        return f"{self.origin}{f' line {line}' if line else ''}: {dotted(path)}"

    def fail(self, path: Keys, problem: str) -> ConfigError:
        return ConfigError(f"{self.where(path)}: {problem}", path)

    def warn(self, path: Keys, problem: str | None = None) -> None:
        hint = problem or HINTS.get(dotted(path)) or HINTS.get(path[-1])
        message = f"{self.where(path)}: {hint or 'not supported by Sluice; ignored'}"
        self.warnings.append((line_of(self.root, path) or 0, message))

    def unknown(self, data: Mapping[Any, Any], known: set[str], at: Keys) -> None:
        for key in data:
            if str(key) not in known:
                self.warn((*at, str(key)))

    # -- values ----------------------------------------------------------------

    def mapping(self, value: Any, at: Keys) -> Mapping[Any, Any]:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise self.fail(at, f"expected a mapping, got {type(value).__name__}")
        return value

    def text(self, value: Any, at: Keys) -> str:
        if not isinstance(value, str) or not value:
            raise self.fail(at, f"expected a non-empty string, got {value!r}")
        return value

    def count(self, value: Any, at: Keys) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise self.fail(at, f"expected a non-negative integer, got {value!r}")
        return value

    def number(self, value: Any, at: Keys) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise self.fail(at, f"expected a non-negative number, got {value!r}")
        return float(value)

    def secret(self, value: Any, at: Keys) -> tuple[str | None, Secret | None]:
        """``os.environ/NAME`` → (NAME, None); a literal → (None, the value, warned)."""
        text = self.text(value, at)
        if text.startswith(ENV_PREFIX):
            name = text[len(ENV_PREFIX) :]
            if not self.env.get(name):
                raise self.fail(at, f"environment variable {name} is not set")
            return name, None
        self.warn(
            at,
            "a secret written in the config file: used, but keep secrets in the environment"
            f" ({ENV_PREFIX}NAME)",
        )
        return None, Secret(text)

    def resolve(self, value: Any, at: Keys) -> str:
        """A string or a number, or ``os.environ/NAME`` for the variable's value."""
        if isinstance(value, str) and value.startswith(ENV_PREFIX):
            name = value[len(ENV_PREFIX) :]
            if not self.env.get(name):
                raise self.fail(at, f"environment variable {name} is not set")
            return self.env[name]
        if isinstance(value, str):
            return self.text(value, at)
        return str(self.count(value, at))
