"""Configuration errors, and how they find the line of the key they are about."""

from __future__ import annotations

import yaml

#: Keys from the top of the document down to one value, e.g. ("models", "gpt", "provider").
Keys = tuple[str, ...]


class ConfigError(Exception):
    """The configuration is wrong; the message says what and where."""

    def __init__(self, message: str, path: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        #: The keys from the top of the file down to the offending one, to find its line.
        self.path = path


def key_name(at: Keys) -> str:
    """``models.gpt.provider``; the empty path is the ``top level``."""
    return ".".join(at) or "top level"


def error_at(at: Keys, problem: str) -> ConfigError:
    return ConfigError(f"{key_name(at)}: {problem}", at)


def line_of(node: yaml.Node | None, path: Keys) -> int | None:
    """The line of the deepest key on ``path`` that the document has (1-based)."""
    line = None
    for key in path:
        if isinstance(node, yaml.SequenceNode) and key.isdigit() and int(key) < len(node.value):
            node = node.value[int(key)]
            mark = node.start_mark
            line = mark.line + 1 if mark is not None else line
            continue
        if not isinstance(node, yaml.MappingNode):
            break
        found = None
        # The last match wins, as in the loaded data (merge keys come before own keys).
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.value == key:
                found = key_node, value_node
        if found is None:
            break
        mark = found[0].start_mark
        line = mark.line + 1 if mark is not None else line
        node = found[1]
    return line
