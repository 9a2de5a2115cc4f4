"""Reading scenario YAML with a line number for every field.

Line numbers come from composing the YAML into nodes (which keep their marks) and building the Python
data ourselves, remembering the line of every path; pydantic's error locations are paths, so each maps
back to a line (``errors.line_for``). Building the data ourselves also lets us reject duplicate keys,
and keep ``17:00`` (YAML 1.1 reads it as the number 1020) and ``on``/``off`` (YAML 1.1 booleans) as the
text the author wrote.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from simulacra.scenario.errors import Issue, ScenarioError, path_str

_SAFE = yaml.SafeLoader("")
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_BOOL = "tag:yaml.org,2002:bool"
_MERGE = "tag:yaml.org,2002:merge"


class _Builder:
    """Builds plain Python data from composed YAML nodes, remembering the line of every path."""

    def __init__(self) -> None:
        self.lines: dict[tuple, int] = {}
        self.issues: list[Issue] = []

    def scalar(self, node: yaml.ScalarNode) -> Any:
        plain = not node.style  # None from the Python parser, "" from libyaml
        if plain and node.tag in (_INT, _FLOAT) and ":" in node.value:
            return node.value  # 17:00 is a time, not YAML 1.1's base-60 number 1020
        if plain and node.tag == _BOOL and node.value.lower() not in ("true", "false"):
            return node.value  # "on", "off", "yes", "no" stay words (a stove is "on")
        return _SAFE.construct_object(node, deep=True)

    def build(self, node: yaml.Node, path: tuple, line: int) -> Any:
        self.lines.setdefault(path, line)
        if isinstance(node, yaml.MappingNode):
            out: dict = {}
            first: dict = {}
            for key_node, value_node in self._pairs(node):
                key = self.scalar(key_node) if isinstance(key_node, yaml.ScalarNode) else str(key_node.value)
                kline = key_node.start_mark.line + 1
                if key in out:
                    self.issues.append(
                        Issue(
                            kline,
                            path_str((*path, key)),
                            f"the key '{key}' appears twice in this mapping (first on line {first[key]}); keep one",
                        )
                    )
                    continue
                first[key] = kline
                out[key] = self.build(value_node, (*path, key), kline)
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*path, k), item.start_mark.line + 1) for k, item in enumerate(node.value)]
        if node.style in ("|", ">") and "\n" in node.value:
            first_row = node.start_mark.line + 2  # content starts on the line after the '|' indicator
            for r in range(node.value.count("\n") + 1):
                self.lines.setdefault((*path, r), first_row + r)
        return self.scalar(node)

    def _pairs(self, node: yaml.MappingNode) -> list[tuple[yaml.Node, yaml.Node]]:
        pairs = []
        merged = []
        for k, v in node.value:
            if k.tag == _MERGE:
                for m in v.value if isinstance(v, yaml.SequenceNode) else [v]:
                    if isinstance(m, yaml.MappingNode):
                        merged.extend(self._pairs(m))
            else:
                pairs.append((k, v))
        keys = {k.value for k, _ in pairs}
        return pairs + [(k, v) for k, v in merged if k.value not in keys]


def read_yaml(path: str | Path) -> tuple[Any, dict[tuple, int]]:
    """Parse a YAML file into plain data and a map from field path to line; ``ScenarioError`` on failure."""
    source = str(path)
    p = Path(path)
    if not p.is_file():
        raise ScenarioError(source, [Issue(None, "", "file not found; check the path")])
    text = p.read_text(encoding="utf-8")
    return read_yaml_text(text, source)


def read_yaml_text(text: str, source: str = "<scenario>") -> tuple[Any, dict[tuple, int]]:
    """Like ``read_yaml`` for a string."""
    loader_cls = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        node = yaml.compose(text, Loader=loader_cls)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or "invalid YAML"
        if exc.context:
            problem = f"{exc.context}, {problem}"
        line = mark.line + 1 if mark else None
        col = f"column {mark.column + 1}" if mark else ""
        raise ScenarioError(
            source, [Issue(line, col, f"not valid YAML ({problem}); check the indentation and quoting here")]
        ) from None
    if node is None:
        raise ScenarioError(
            source, [Issue(None, "", "the file is empty; a scenario needs name, map, residents and simulation")]
        )
    b = _Builder()
    data = b.build(node, (), node.start_mark.line + 1)
    if b.issues:
        raise ScenarioError(source, b.issues)
    return data, b.lines
