"""Scenario errors: each problem as one sentence naming file, line and field, and what to change.

``ScenarioError`` collects ``Issue``s (line, field path, what to change) into one message a person can
act on, one problem per line. ``line_for`` maps a field path back to its YAML line (the map of lines
comes from ``source``), and ``pydantic_issue`` rewrites one of pydantic's validation errors as such a
sentence (it consults the schema to list the allowed keys).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel

from simulacra.scenario.schema import ScenarioDef


@dataclass(frozen=True)
class Issue:
    """One problem: the YAML line (when known), the field path, and what to change."""

    line: int | None
    path: str
    message: str


class ScenarioError(ValueError):
    """A scenario that cannot be used; ``str()`` is the message a user sees, one problem per line."""

    def __init__(self, source: str, issues: list[Issue]) -> None:
        self.source = source
        self.issues = sorted(issues, key=lambda i: (i.line is None, i.line or 0))
        super().__init__("\n".join(self._format(i) for i in self.issues))

    def _format(self, i: Issue) -> str:
        head = self.source
        if i.line is not None:
            head += f", line {i.line}"
        if i.path:
            head += f", {i.path}"
        return f"{head}: {i.message}"


def path_str(loc: tuple) -> str:
    """``("residents", 3, "home")`` → ``residents[3].home``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif out:
            out += f".{part}"
        else:
            out = str(part)
    return out


def line_for(lines: dict[tuple, int], loc: tuple) -> int | None:
    loc = tuple(loc)
    while loc and loc not in lines:
        loc = loc[:-1]
    return lines.get(loc)


def _model_at(loc: tuple) -> type[BaseModel] | None:
    """The schema class validating the mapping at ``loc`` (for listing allowed keys)."""
    t: Any = ScenarioDef
    for part in loc:
        t = _unwrap(t)
        if isinstance(t, type) and issubclass(t, BaseModel):
            if not isinstance(part, str) or part not in t.model_fields:
                return None
            t = t.model_fields[part].annotation
        elif get_origin(t) in (list, tuple):
            t = get_args(t)[0]
        elif get_origin(t) is dict:
            t = get_args(t)[1]
        else:
            return None
    t = _unwrap(t)
    return t if isinstance(t, type) and issubclass(t, BaseModel) else None


def _unwrap(t: Any) -> Any:
    while True:
        origin = get_origin(t)
        if origin is Annotated:
            t = get_args(t)[0]
        elif origin in (Union, type(int | None)):
            members = [a for a in get_args(t) if a is not type(None)]
            t = members[0] if len(members) == 1 else t
            if len(members) != 1:
                return t
        else:
            return t


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "nothing"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def pydantic_issue(err: dict, lines: dict[tuple, int]) -> Issue:
    loc = tuple(err["loc"])
    kind = err["type"]
    value = err.get("input")
    ctx = err.get("ctx", {})
    if kind == "missing":
        return Issue(line_for(lines, loc[:-1]), path_str(loc[:-1]), f"missing required key '{loc[-1]}'")
    if kind == "extra_forbidden":
        model = _model_at(loc[:-1])
        allowed = list(model.model_fields) if model else []
        key = str(loc[-1])
        guess = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
        hint = f"; did you mean '{guess[0]}'?" if guess else ""
        return Issue(
            line_for(lines, loc), path_str(loc[:-1]), f"unknown key '{key}'{hint} (allowed: {', '.join(allowed)})"
        )
    line, path = line_for(lines, loc), path_str(loc)
    if kind == "literal_error":
        return Issue(line, path, f"{_show(value)} is not allowed; use one of {ctx.get('expected')}")
    if kind in ("int_parsing", "int_type", "int_from_float"):
        return Issue(line, path, f"expected a whole number, got {_show(value)}")
    if kind in ("float_parsing", "float_type"):
        return Issue(line, path, f"expected a number, got {_show(value)}")
    if kind in ("bool_parsing", "bool_type"):
        return Issue(line, path, f"expected true or false, got {_show(value)}")
    if kind == "string_type":
        return Issue(line, path, f"expected text, got {_show(value)}")
    if kind in ("list_type", "tuple_type"):
        return Issue(line, path, f"expected a list, got {_show(value)}")
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return Issue(line, path, f"expected a mapping of keys to values, got {_show(value)}")
    if kind in ("too_short", "too_long") and isinstance(value, list | tuple):
        if "min_length" in ctx and ctx.get("min_length") == ctx.get("max_length"):
            want = f"exactly {ctx['min_length']}"
        elif kind == "too_short":
            want = f"at least {ctx.get('min_length')}"
        else:
            want = f"at most {ctx.get('max_length')}"
        noun = "entries" if not (kind == "too_short" and ctx.get("min_length") == 1) else "entry"
        return Issue(line, path, f"expected {want} {noun}, got {len(value)}")
    if kind == "string_too_short":
        return Issue(line, path, "must not be empty")
    if kind == "string_too_long":
        return Issue(line, path, f"must be at most {ctx.get('max_length')} character(s), got {_show(value)}")
    if kind == "string_pattern_mismatch":
        if path.endswith("color"):
            return Issue(line, path, f"{_show(value)} is not a colour; write it as #rrggbb, e.g. '#a0522d'")
        return Issue(
            line, path, f"{_show(value)} is not a valid id; use lower-case letters, digits, '-' and '_' (e.g. 'party')"
        )
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        bound = {
            "greater_than_equal": f"at least {ctx.get('ge')}",
            "greater_than": f"more than {ctx.get('gt')}",
            "less_than_equal": f"at most {ctx.get('le')}",
            "less_than": f"less than {ctx.get('lt')}",
        }[kind]
        return Issue(line, path, f"{_show(value)} is out of range; it must be {bound}")
    if kind in ("datetime_parsing", "datetime_type", "datetime_from_date_parsing"):
        return Issue(line, path, f"{_show(value)} is not a date and time; write it like 2025-02-14 17:00")
    if kind == "value_error":
        return Issue(line, path, str(ctx.get("error", err["msg"])))
    return Issue(line, path, f"{err['msg']} (got {_show(value)})")
