"""Scenario files: load one, check every cross-reference, and get a ``Scenario`` that builds a ``Town``.

A scenario is one YAML file: the town map, the residents, seeded information and events, simulation,
model and sampling settings, and the measurement protocol. ``load_scenario(path)`` validates it
completely (types, unknown keys, every cross-reference, the map itself) and returns a ``Scenario``
that builds a ``simulacra.world.Town``. Every problem becomes one line a person can act on::

    scenarios/bad.yaml, line 12, residents[3].home: unknown place 'Bakery House' (known homes: ...);
    fix the name or add the place to map.places

The pieces live in their own modules: the pydantic schema in ``simulacra.scenario_schema``, YAML
reading with line numbers and the error sentences in ``simulacra.scenario_yaml``, and the town
generator in ``simulacra.town_generator``. Their public names are re-exported here, so
``from simulacra.scenario import load_scenario, generate_scenario, ScenarioError`` keeps working.
"""

from __future__ import annotations

import difflib
from collections import Counter
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from simulacra.scenario_schema import WEEKDAYS, MapDef, ObjectDef, ScenarioDef, duration_steps
from simulacra.scenario_yaml import (
    Issue,
    ScenarioError,
    _line_for,
    _pydantic_issue,
    path_str,
    read_yaml,
    read_yaml_text,
)
from simulacra.town_generator import dump_scenario, generate_scenario
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

# ---- references ---------------------------------------------------------------------------------


def _known(names: list[str], limit: int = 8) -> str:
    if not names:
        return "none"
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _did_you_mean(name: str, names: list[str]) -> str:
    guess = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
    return f"did you mean '{guess[0]}'? " if guess else ""


def _check_names_and_references(d: ScenarioDef) -> list[tuple[tuple, str]]:
    """Cross-references that need only the definitions (the map itself is checked by building it)."""
    out: list[tuple[tuple, str]] = []
    areas = {p.name: p for p in d.map.places}
    rooms = {f"{p.name}:{r.name}": p for p in d.map.places for r in p.rooms}
    homes = [p.name for p in d.map.places if p.kind == "home"]
    workplaces = [p.name for p in d.map.places if p.kind in ("work", "venue")]
    outings = [p.name for p in d.map.places if p.kind in ("venue", "outdoor", "work")]
    everywhere = [p.name for p in d.map.places] + list(rooms) + [d.map.outdoors]
    residents = [r.name for r in d.residents]
    first_index: dict[str, int] = {}
    for i, r in enumerate(d.residents):
        if r.name in first_index:
            out.append(
                (
                    ("residents", i, "name"),
                    f"'{r.name}' is also the name of residents[{first_index[r.name]}]; resident names must be unique",
                )
            )
        else:
            first_index[r.name] = i

    def area_kind(name: str) -> str | None:
        p = areas.get(name) or rooms.get(name)
        return p.kind if p is not None else None

    for i, r in enumerate(d.residents):
        if r.home is not None:
            kind = area_kind(r.home)
            if kind is None:
                out.append(
                    (
                        ("residents", i, "home"),
                        f"unknown place '{r.home}' ({_did_you_mean(r.home, homes)}known homes: {_known(homes)}); "
                        "fix the name or add the place to map.places",
                    )
                )
            elif kind != "home":
                out.append(
                    (
                        ("residents", i, "home"),
                        f"'{r.home}' is a place of kind {kind}, not a home (known homes: {_known(homes)}); "
                        "pick a home or set that place's kind to home",
                    )
                )
        if r.workplace is not None:
            kind = area_kind(r.workplace)
            if kind is None:
                out.append(
                    (
                        ("residents", i, "workplace"),
                        f"unknown place '{r.workplace}' ({_did_you_mean(r.workplace, workplaces)}known workplaces: "
                        f"{_known(workplaces)}); fix the name or add the place to map.places",
                    )
                )
            elif kind == "home":
                out.append(
                    (
                        ("residents", i, "workplace"),
                        f"'{r.workplace}' is a home; a workplace must be a place of kind work or venue",
                    )
                )
        elif r.routine.work is not None:
            out.append(
                (("residents", i, "routine", "work"), "work hours are set but there is no workplace; add workplace")
            )
        for k, place in enumerate(r.routine.leisure):
            if area_kind(place) is None:
                out.append(
                    (
                        ("residents", i, "routine", "leisure", k),
                        f"unknown place '{place}' ({_did_you_mean(place, outings)}places to go out to: "
                        f"{_known(outings)}); fix the name or add the place to map.places",
                    )
                )
        seen: dict[str, int] = {}
        for k, rel in enumerate(r.relationships):
            loc = ("residents", i, "relationships", k, "name")
            if rel.name == r.name:
                out.append((loc, "a resident cannot have a relationship with themself; remove this entry"))
            elif rel.name not in first_index:
                out.append(
                    (
                        loc,
                        f"unknown resident '{rel.name}' ({_did_you_mean(rel.name, residents)}relationships must name "
                        "residents of this scenario)",
                    )
                )
            elif rel.name in seen:
                out.append((loc, f"'{rel.name}' is already listed in relationships[{seen[rel.name]}]; merge the two"))
            seen.setdefault(rel.name, k)

    facts = [f.id for f in d.information]
    for k, f in enumerate(d.information):
        if facts.index(f.id) != k:
            out.append((("information", k, "id"), f"the id '{f.id}' is used twice; fact ids must be unique"))
        if f.holder not in first_index:
            out.append(
                (
                    ("information", k, "holder"),
                    f"unknown resident '{f.holder}' ({_did_you_mean(f.holder, residents)}the holder must be one of "
                    "the residents)",
                )
            )
    sim = d.simulation
    sim_end = sim.start + timedelta(minutes=duration_steps(sim.duration, sim.minutes_per_step) * sim.minutes_per_step)
    events = [e.id for e in d.events]
    for k, e in enumerate(d.events):
        if events.index(e.id) != k:
            out.append((("events", k, "id"), f"the id '{e.id}' is used twice; event ids must be unique"))
        if e.host not in first_index:
            out.append(
                (
                    ("events", k, "host"),
                    f"unknown resident '{e.host}' ({_did_you_mean(e.host, residents)}the host must be one of the "
                    "residents)",
                )
            )
        if e.place not in everywhere:
            out.append(
                (
                    ("events", k, "place"),
                    f"unknown place '{e.place}' ({_did_you_mean(e.place, everywhere)}places: {_known(everywhere)}); "
                    "fix the name or add the place to map.places",
                )
            )
        if e.end <= e.start:
            out.append(
                (("events", k, "end"), f"the event ends ({e.end:%Y-%m-%d %H:%M}) before it starts ({e.start:%H:%M})")
            )
        elif e.start < sim.start or e.end > sim_end:
            out.append(
                (
                    ("events", k, "start"),
                    f"the event runs {e.start:%Y-%m-%d %H:%M} to {e.end:%Y-%m-%d %H:%M} but the simulation runs "
                    f"{sim.start:%Y-%m-%d %H:%M} to {sim_end:%Y-%m-%d %H:%M}; "
                    "move the event or change simulation.start / simulation.duration",
                )
            )
        if e.information is not None and e.information not in facts:
            out.append(
                (
                    ("events", k, "information"),
                    f"unknown fact '{e.information}' (facts: {_known(facts)}); name an id from information",
                )
            )
    for k, iv in enumerate(d.measurement.interviews):
        if iv.fact not in facts:
            out.append(
                (
                    ("measurement", "interviews", k, "fact"),
                    f"unknown fact '{iv.fact}' (facts: {_known(facts)}); interviews must name an id from information",
                )
            )
    if "{name}" not in d.measurement.relationship_question:
        out.append(
            (
                ("measurement", "relationship_question"),
                "the question must contain {name}, where each other resident's name goes",
            )
        )
    for k, ev in enumerate(d.measurement.attendance):
        if ev not in events:
            out.append(
                (("measurement", "attendance", k), f"unknown event '{ev}' (events: {_known(events)}); name an event id")
            )
    return out


def _check_against_map(d: ScenarioDef, town_map: TownMap) -> list[tuple[tuple, str]]:
    """Checks that need the built map: start tiles and whether every home has room for its residents."""
    out: list[tuple[tuple, str]] = []
    totals = Counter(r.home for r in d.residents if r.home is not None and r.start is None)
    living: Counter[str] = Counter()
    for i, r in enumerate(d.residents):
        if r.start is not None:
            x, y = r.start
            if not (0 <= x < town_map.width and 0 <= y < town_map.height):
                out.append(
                    (("residents", i, "start"), f"(x={x}, y={y}) is outside the {town_map.width}x{town_map.height} map")
                )
            elif not town_map.walkable[town_map.tile(x, y)]:
                out.append((("residents", i, "start"), f"(x={x}, y={y}) is not a floor tile; pick a walkable tile"))
        if r.home is not None and r.start is None:
            living[r.home] += 1
            room = len(town_map.place(r.home).tiles)
            if living[r.home] == room + 1:
                out.append(
                    (
                        ("residents", i, "home"),
                        f"'{r.home}' has room for {room} resident{'s' if room != 1 else ''} (free floor tiles) but "
                        f"{totals[r.home]} live there; enlarge it or house this resident elsewhere",
                    )
                )
    return out


# ---- the loaded scenario ------------------------------------------------------------------------


def _map_spec(m: MapDef) -> MapSpec:
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
        raise ScenarioError(source, [_pydantic_issue(e, lines) for e in exc.errors()]) from None
    problems = _check_names_and_references(d)
    if problems:
        raise ScenarioError(source, [Issue(_line_for(lines, loc), path_str(loc), msg) for loc, msg in problems])
    try:
        town_map = TownMap.build(_map_spec(d.map))
    except MapError as exc:
        issues = [Issue(_line_for(lines, ("map", *p.loc)), path_str(("map", *p.loc)), p.message) for p in exc.problems]
        raise ScenarioError(source, issues) from None
    problems = _check_against_map(d, town_map)
    if problems:
        raise ScenarioError(source, [Issue(_line_for(lines, loc), path_str(loc), msg) for loc, msg in problems])
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
    checkout = Path(__file__).resolve().parent.parent / "scenarios"  # a source checkout
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
