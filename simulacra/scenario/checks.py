"""Cross-reference checks: every name a scenario uses must name something the scenario defines.

``check_names_and_references`` needs only the validated definitions (homes and workplaces are
places of the right kind, relationships and hosts name residents, events and interviews name facts,
events fall inside the simulated time); ``check_against_map`` needs the built map (start tiles,
room in every home). Each returns ``(field path, message)`` pairs in the order the fields appear,
which the loader turns into ``Issue``s.
"""

from __future__ import annotations

import difflib
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta

from simulacra.scenario.schema import EventDef, PlaceDef, ResidentDef, ScenarioDef, duration_steps
from simulacra.world import TownMap

Problems = list[tuple[tuple, str]]


def _known(names: list[str], limit: int = 8) -> str:
    if not names:
        return "none"
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _did_you_mean(name: str, names: list[str]) -> str:
    guess = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
    return f"did you mean '{guess[0]}'? " if guess else ""


@dataclass
class _Names:
    """What a scenario defines, by name: the targets every reference is checked against."""

    areas: dict[str, PlaceDef]
    rooms: dict[str, PlaceDef]  # "area:room" -> its area
    homes: list[str]
    workplaces: list[str]
    outings: list[str]
    everywhere: list[str]
    residents: list[str]
    first_index: dict[str, int] = field(default_factory=dict)  # resident name -> its first index

    @classmethod
    def of(cls, d: ScenarioDef) -> _Names:
        places = d.map.places
        rooms = {f"{p.name}:{r.name}": p for p in places for r in p.rooms}
        return cls(
            areas={p.name: p for p in places},
            rooms=rooms,
            homes=[p.name for p in places if p.kind == "home"],
            workplaces=[p.name for p in places if p.kind in ("work", "venue")],
            outings=[p.name for p in places if p.kind in ("venue", "outdoor", "work")],
            everywhere=[p.name for p in places] + list(rooms) + [d.map.outdoors],
            residents=[r.name for r in d.residents],
        )

    def area_kind(self, name: str) -> str | None:
        p = self.areas.get(name) or self.rooms.get(name)
        return p.kind if p is not None else None


def check_names_and_references(d: ScenarioDef) -> Problems:
    """Cross-references that need only the definitions (the map itself is checked by building it)."""
    names = _Names.of(d)
    out = _unique_resident_names(d, names)
    for i, r in enumerate(d.residents):
        out += _check_resident_places(i, r, names)
        out += _check_relationships(i, r, names)
    facts = [f.id for f in d.information]
    out += _check_information(d, names, facts)
    out += _check_events(d, names, facts)
    out += _check_measurement(d, facts, [e.id for e in d.events])
    return out


def _unique_resident_names(d: ScenarioDef, names: _Names) -> Problems:
    """Duplicate resident names; fills ``names.first_index``."""
    out: Problems = []
    for i, r in enumerate(d.residents):
        if r.name in names.first_index:
            out.append(
                (
                    ("residents", i, "name"),
                    f"'{r.name}' is also the name of residents[{names.first_index[r.name]}]; "
                    "resident names must be unique",
                )
            )
        else:
            names.first_index[r.name] = i
    return out


def _check_resident_places(i: int, r: ResidentDef, names: _Names) -> Problems:
    """A resident's home, workplace (and work hours without one) and leisure places."""
    out: Problems = []
    homes, workplaces = names.homes, names.workplaces
    if r.home is not None:
        kind = names.area_kind(r.home)
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
        kind = names.area_kind(r.workplace)
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
        out.append((("residents", i, "routine", "work"), "work hours are set but there is no workplace; add workplace"))
    for k, place in enumerate(r.routine.leisure):
        if names.area_kind(place) is None:
            out.append(
                (
                    ("residents", i, "routine", "leisure", k),
                    f"unknown place '{place}' ({_did_you_mean(place, names.outings)}places to go out to: "
                    f"{_known(names.outings)}); fix the name or add the place to map.places",
                )
            )
    return out


def _check_relationships(i: int, r: ResidentDef, names: _Names) -> Problems:
    """Each relationship names another resident, once."""
    out: Problems = []
    seen: dict[str, int] = {}
    for k, rel in enumerate(r.relationships):
        loc = ("residents", i, "relationships", k, "name")
        if rel.name == r.name:
            out.append((loc, "a resident cannot have a relationship with themself; remove this entry"))
        elif rel.name not in names.first_index:
            out.append(
                (
                    loc,
                    f"unknown resident '{rel.name}' ({_did_you_mean(rel.name, names.residents)}relationships must "
                    "name residents of this scenario)",
                )
            )
        elif rel.name in seen:
            out.append((loc, f"'{rel.name}' is already listed in relationships[{seen[rel.name]}]; merge the two"))
        seen.setdefault(rel.name, k)
    return out


def _id_and_resident(
    section: str, k: int, ids: list[str], item_id: str, role: str, who: str, names: _Names
) -> Problems:
    """An item's id is the first of its kind, and the resident in its `role` field exists."""
    out: Problems = []
    if ids.index(item_id) != k:
        kind = "fact" if section == "information" else "event"
        out.append(((section, k, "id"), f"the id '{item_id}' is used twice; {kind} ids must be unique"))
    if who not in names.first_index:
        hint = _did_you_mean(who, names.residents)
        out.append(((section, k, role), f"unknown resident '{who}' ({hint}the {role} must be one of the residents)"))
    return out


def _check_information(d: ScenarioDef, names: _Names, facts: list[str]) -> Problems:
    """Fact ids are unique and every fact's holder is a resident."""
    out: Problems = []
    for k, f in enumerate(d.information):
        out += _id_and_resident("information", k, facts, f.id, "holder", f.holder, names)
    return out


def _check_events(d: ScenarioDef, names: _Names, facts: list[str]) -> Problems:
    """Event ids, hosts, places, times (inside the simulation) and announcing facts."""
    out: Problems = []
    events = [e.id for e in d.events]
    for k, e in enumerate(d.events):
        out += _id_and_resident("events", k, events, e.id, "host", e.host, names)
        if e.place not in names.everywhere:
            everywhere = names.everywhere
            out.append(
                (
                    ("events", k, "place"),
                    f"unknown place '{e.place}' ({_did_you_mean(e.place, everywhere)}places: {_known(everywhere)}); "
                    "fix the name or add the place to map.places",
                )
            )
        out += _check_event_time(d, k, e)
        if e.information is not None and e.information not in facts:
            out.append(
                (
                    ("events", k, "information"),
                    f"unknown fact '{e.information}' (facts: {_known(facts)}); name an id from information",
                )
            )
    return out


def _check_event_time(d: ScenarioDef, k: int, e: EventDef) -> Problems:
    """An event ends after it starts, and runs inside the simulated time."""
    sim = d.simulation
    sim_end = sim.start + timedelta(minutes=duration_steps(sim.duration, sim.minutes_per_step) * sim.minutes_per_step)
    if e.end <= e.start:
        return [(("events", k, "end"), f"the event ends ({e.end:%Y-%m-%d %H:%M}) before it starts ({e.start:%H:%M})")]
    if e.start < sim.start or e.end > sim_end:
        return [
            (
                ("events", k, "start"),
                f"the event runs {e.start:%Y-%m-%d %H:%M} to {e.end:%Y-%m-%d %H:%M} but the simulation runs "
                f"{sim.start:%Y-%m-%d %H:%M} to {sim_end:%Y-%m-%d %H:%M}; "
                "move the event or change simulation.start / simulation.duration",
            )
        ]
    return []


def _check_measurement(d: ScenarioDef, facts: list[str], events: list[str]) -> Problems:
    """Interviews name facts, the relationship question has a {name} slot, attendance names events."""
    out: Problems = []
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


def check_against_map(d: ScenarioDef, town_map: TownMap) -> Problems:
    """Checks that need the built map: start tiles and whether every home has room for its residents."""
    out: Problems = []
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
