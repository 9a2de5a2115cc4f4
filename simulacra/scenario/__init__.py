"""Scenario files: load one, check every cross-reference, and get a ``Scenario`` that builds a ``Town``.

A scenario is one YAML file: the town map, the residents, seeded information and events, simulation,
model and sampling settings, and the measurement protocol. ``load_scenario(path)`` validates it
completely (types, unknown keys, every cross-reference, the map itself) and returns a ``Scenario``
that builds a ``simulacra.world.Town``. Every problem becomes one line a person can act on::

    scenarios/bad.yaml, line 12, residents[3].home: unknown place 'Bakery House' (known homes: ...);
    fix the name or add the place to map.places

One job per module, in the order a file is read:

- ``schema``: the pydantic models (``ScenarioDef``) and the readers of ``17:00``, ``09:00-17:00``, ``1d 12h``
- ``errors``: ``Issue``, ``ScenarioError``; pydantic's errors as ``file, line, field: problem; fix`` sentences
- ``source``: YAML with a line number for every field path (``read_yaml``)
- ``checks``: cross-references between sections, and the checks that need the built map
- ``loader``: ``parse_scenario`` / ``load_scenario`` → ``Scenario`` (``build_town``, ``summary``); packaged files
- ``generator``: ``generate_scenario(n, seed)`` for towns of any size, ``dump_scenario``

The ``simulacra scenario generate`` / ``check`` commands are ``simulacra.commands.scenario``.

The public names are re-exported here: ``from simulacra.scenario import load_scenario``.
"""

from __future__ import annotations

from simulacra.scenario.errors import Issue, ScenarioError, path_str
from simulacra.scenario.generator import dump_scenario, generate_scenario
from simulacra.scenario.loader import (
    Scenario,
    load_scenario,
    load_scenario_text,
    packaged_scenarios,
    parse_scenario,
    resolve_scenario_path,
)
from simulacra.scenario.schema import ScenarioDef
from simulacra.scenario.source import read_yaml, read_yaml_text

__all__ = [
    "Issue",
    "Scenario",
    "ScenarioDef",
    "ScenarioError",
    "dump_scenario",
    "generate_scenario",
    "load_scenario",
    "load_scenario_text",
    "packaged_scenarios",
    "parse_scenario",
    "path_str",
    "read_yaml",
    "read_yaml_text",
    "resolve_scenario_path",
]
