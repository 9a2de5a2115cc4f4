"""Loading a scenario: validate it completely and get a ``Scenario`` that builds a ``Town``.

``parse_scenario`` runs the layers in order: the schema (types, unknown keys, ranges), the
cross-reference checks, the map itself (``TownMap.build``), then the checks that need the built map;
the first layer with problems raises one ``ScenarioError`` listing all of them. ``load_scenario``
reads the YAML first (``source``), so every problem names its line. ``packaged_scenarios`` and
``resolve_scenario_path`` find the scenario files shipped in ``scenarios/``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from simulacra.scenario.checks import check_against_map, check_names_and_references
from simulacra.scenario.errors import Issue, ScenarioError, line_for, path_str, pydantic_issue
from simulacra.scenario.schema import WEEKDAYS, MapDef, ObjectDef, ScenarioDef, duration_steps
from simulacra.scenario.source import read_yaml, read_yaml_text
from simulacra.world import (
    Clock,
    MapError,
    MapSpec,
    ObjectSpec,
    PlaceSpec,
    RelationSpec,
    ResidentSpec,
    Routine,
    Terrain,
    Town,
    TownMap,
)


def map_spec(m: MapDef) -> MapSpec:
    def objects(defs: list[ObjectDef]) -> list[ObjectSpec]:
        return [
            ObjectSpec(o.name, tuple(o.at), o.state, tuple(o.states) if o.states else None, o.description) for o in defs
        ]

    places = [
        PlaceSpec(
            name=p.name,
            kind=p.kind,
            char=p.char,
            rects=[tuple(r) for r in p.rects],
            rooms=[
                PlaceSpec(r.name, p.kind, r.char, [tuple(x) for x in r.rects], [], objects(r.objects), r.description)
                for r in p.rooms
            ],
            objects=objects(p.objects),
            description=p.description,
            color=p.color,
        )
        for p in m.places
    ]
    return MapSpec(
        tiles=m.tiles.split("\n"),
        places=places,
        legend={ch: Terrain(t.name, t.walkable, t.color) for ch, t in m.legend.items()},
        spawn=[tuple(s) for s in m.spawn],
        outdoors=m.outdoors,
    )


@dataclass
class Scenario:
    """A validated scenario: its definition, its built map, and what a ``Town`` needs."""

    definition: ScenarioDef
    town_map: TownMap
    source: str

    @property
    def max_steps(self) -> int:
        """Steps the simulation runs (simulation.duration at simulation.minutes_per_step)."""
        sim = self.definition.simulation
        return duration_steps(sim.duration, sim.minutes_per_step)

    @property
    def clock(self) -> Clock:
        sim = self.definition.simulation
        return Clock(sim.start, sim.minutes_per_step)

    def resident_specs(self) -> list[ResidentSpec]:
        """The world's view of each resident; everything else about them goes in ``profile``."""
        specs = []
        for r in self.definition.residents:
            rt = r.routine
            work = rt.work if rt.work is not None else ((9 * 60, 17 * 60) if r.workplace else None)
            specs.append(
                ResidentSpec(
                    name=r.name,
                    home=r.home,
                    workplace=r.workplace,
                    routine=Routine(
                        wake=rt.wake,
                        sleep=rt.sleep,
                        work=work,
                        workdays=tuple(WEEKDAYS.index(d) for d in rt.workdays),
                        leisure=tuple(rt.leisure),
                        outing_chance=rt.outing_chance,
                    ),
                    start=tuple(r.start) if r.start else None,
                    profile={
                        "age": r.age,
                        "traits": list(r.traits),
                        "occupation": r.occupation,
                        "lifestyle": r.lifestyle,
                        "memories": list(r.memories),
                    },
                )
            )
        return specs

    def relations(self) -> list[RelationSpec]:
        """Every relationship written in the scenario, as directed edges."""
        return [
            RelationSpec(r.name, rel.name, rel.strength, rel.note)
            for r in self.definition.residents
            for rel in r.relationships
        ]

    def build_town(self, *, seed: int | None = None, **overrides: Any) -> Town:
        """A fresh ``Town`` for this scenario (``seed`` defaults to simulation.seed)."""
        sim = self.definition.simulation
        kwargs: dict[str, Any] = {
            "start": sim.start,
            "minutes_per_step": sim.minutes_per_step,
            "seed": sim.seed if seed is None else seed,
            "vision_radius": sim.vision_radius,
            "attention_bandwidth": sim.attention_bandwidth,
            "walk_speed": sim.walk_speed,
            "relations": self.relations(),
            "max_steps": self.max_steps,
        }
        kwargs.update(overrides)
        return Town(self.town_map, self.resident_specs(), **kwargs)

    def summary(self) -> dict[str, Any]:
        """Counts and settings for ``simulacra scenario check``."""
        d = self.definition
        kinds = Counter(p.kind for p in d.map.places)
        n = len(d.residents)
        edges = sum(len(r.relationships) for r in d.residents)
        sim = d.simulation
        return {
            "name": d.name,
            "residents": n,
            "map": f"{self.town_map.width}x{self.town_map.height} tiles",
            "places": dict(sorted(kinds.items())),
            "rooms": sum(len(p.rooms) for p in d.map.places),
            "objects": len(self.town_map.objects),
            "relationships": edges,
            "density": edges / (n * (n - 1)) if n > 1 else 0.0,
            "information": [f"{f.id}: {f.fact} (holder: {f.holder})" for f in d.information],
            "events": [f"{e.id}: {e.title} at {e.place}, {e.start:%a %d %b %H:%M}-{e.end:%H:%M}" for e in d.events],
            "start": f"{sim.start:%A %d %B %Y %H:%M}",
            "steps": f"{self.max_steps} x {sim.minutes_per_step} min ({sim.duration})",
            "seed": sim.seed,
            "interviews": sum(len(iv.questions) for iv in d.measurement.interviews),
        }


def parse_scenario(data: Any, lines: dict[tuple, int] | None = None, source: str = "<scenario>") -> Scenario:
    """Validate plain scenario data (from YAML or built in code) and build its map."""
    lines = lines or {}
    try:
        d = ScenarioDef.model_validate(data)
    except ValidationError as exc:
        raise ScenarioError(source, [pydantic_issue(e, lines) for e in exc.errors()]) from None
    problems = check_names_and_references(d)
    if problems:
        raise ScenarioError(source, [Issue(line_for(lines, loc), path_str(loc), msg) for loc, msg in problems])
    try:
        town_map = TownMap.build(map_spec(d.map))
    except MapError as exc:
        issues = [Issue(line_for(lines, ("map", *p.loc)), path_str(("map", *p.loc)), p.message) for p in exc.problems]
        raise ScenarioError(source, issues) from None
    problems = check_against_map(d, town_map)
    if problems:
        raise ScenarioError(source, [Issue(line_for(lines, loc), path_str(loc), msg) for loc, msg in problems])
    return Scenario(d, town_map, source)


def load_scenario(path: str | Path) -> Scenario:
    """Read, validate and resolve a scenario file; raises ``ScenarioError`` naming file, line and field."""
    data, lines = read_yaml(path)
    return parse_scenario(data, lines, str(path))


def load_scenario_text(text: str, source: str = "<scenario>") -> Scenario:
    """``load_scenario`` for YAML in a string."""
    data, lines = read_yaml_text(text, source)
    return parse_scenario(data, lines, source)


def packaged_scenarios() -> dict[str, Path]:
    """The scenario files shipped with the package (``town25``, ``town3``), by name."""
    import importlib.resources

    found: dict[str, Path] = {}
    try:  # installed: the scenarios/ folder ships as the package data of simulacra.scenarios
        for entry in importlib.resources.files("simulacra.scenarios").iterdir():
            if entry.name.endswith(".yaml"):
                found.setdefault(entry.name[: -len(".yaml")], Path(str(entry)))
    except (ModuleNotFoundError, TypeError, FileNotFoundError, NotADirectoryError):
        pass
    checkout = Path(__file__).resolve().parents[2] / "scenarios"  # a source checkout
    if checkout.is_dir():
        for f in sorted(checkout.glob("*.yaml")):
            found.setdefault(f.stem, f)
    return dict(sorted(found.items()))


def resolve_scenario_path(name_or_path: str | Path) -> Path:
    """A path as given, or the packaged scenario of that name (``town25`` → scenarios/town25.yaml)."""
    p = Path(name_or_path)
    if p.exists():
        return p
    packaged = packaged_scenarios()
    return packaged.get(str(name_or_path), p)
