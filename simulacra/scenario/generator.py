"""The town generator: valid scenarios of any size, as plain data ready to write as YAML.

``generate_scenario(n, seed)`` builds a town of ``n`` residents: households, housing, workplaces, schools,
venues and parks scaled to the population and laid out as blocks of lots along streets, routines for
every resident, and a social graph built from households, coworkers, neighbours and a few friends
across town, plus two facts to diffuse and a party to attend. ``dump_scenario`` writes such data as
readable YAML (the grid as a literal block). Name tables and layout constants live here too; the
generator is kept apart from the loader because it only produces data (``loader`` validates it) and
shares nothing with it but the ``HH:MM-HH:MM`` reader from ``schema``.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from simulacra.scenario.schema import parse_hours
from simulacra.world import format_minutes

FIRST_NAMES = (
    "Ada Aiko Alba Amara Anika Arlo Asha Bea Benno Bram Caleb Cato Celia Cyrus Dalia Dara Dev Edda Elio Elsa Emeka "
    "Enzo Esme Ezra Farah Felix Fenna Flora Gaia Gideon Greta Hana Hugo Ida Ilan Imani Ines Ira Isak Jada Jonah "
    "Juno Kai Kaito Kenji Kira Lars Leila Lena Levi Lila Lior Luca Lumi Mads Maia Malik Mara Marek Mateo Mei Mika "
    "Mila Milo Nadia Naveen Nell Nia Niko Noor Nora Odile Olek Omar Orla Otto Paz Pia Priya Quinn Rafa Rania Ravi "
    "Reza Rhea Rosa Rumi Sade Sami Sana Selma Soren Suki Tamar Tariq Tess Theo Tomas Uma Vera Viggo Wren Yara Yusuf "
    "Zain Zara Zofia Anouk Basil Cleo Dorian Eshe Fern Hollis Idris Jovan Kalani Linnea Moss Nico Oona Perrin Rowan "
    "Saoirse Tobias Vesna Wilder Xenia Yosef Zeno Agnes Bruno Carmen Desmond Elif Frida Goran Helga Ivo Janne Klara"
).split()
SURNAMES = (
    "Abara Achterberg Alvarado Amsel Arden Balogun Bernardi Birk Brandt Calloway Castell Chandra Corvin Dahl "
    "Delacroix Drummond Eberle Ekwueme Elling Falk Farrow Fenwick Galloway Garza Grell Halvorsen Hartigan Hoshino "
    "Ibarra Ivers Jansson Jaramillo Kagame Kowal Kristoff Lachance Lindqvist Lorne Madsen Marchetti Mbeki Morrow "
    "Nakamura Navarro Nyberg Oduya Okafor Olsen Ortega Pellerin Petrov Quayle Rahimi Rask Reyes Rinaldi Rosen "
    "Saarinen Sato Selby Sorensen Strand Takeda Tamsin Thorne Ulloa Varga Vasquez Voss Wachter Wainwright Yilmaz "
    "Yoon Zamora Zeller Achebe Bellamy Carrow Dunmore Estrada Fairweather Gallo Haddad Iqbal Jovanovic Kiplagat "
    "Laurent Moreau Nakashima Oyelaran Pasternak Quint Rosales Szabo Teller Underhill Valdivia Winslow Yamada"
).split()
TRAITS = (
    "curious warm shy talkative patient stubborn generous meticulous dreamy practical witty anxious cheerful "
    "reserved ambitious easygoing thoughtful blunt kind restless loyal playful proud gentle sceptical organised "
    "forgetful brave sentimental frugal hospitable nosy principled sociable quiet artistic sporty bookish "
    "adventurous cautious"
).split()
STREET_WORDS = (
    "Alder Birch Cedar Damson Elder Fennel Gorse Hazel Ivy Juniper Larch Linden Maple Nettle Oak Poplar Quince "
    "Rowan Sorrel Tansy Willow Yarrow Ash Bramble Clover Daisy Heather Lupin Meadow Orchard Pebble Rush Sedge "
    "Thistle Vetch Wren Heron Kestrel Lark Plover Swift Finch Robin Starling"
).split()
STREET_SUFFIXES = ("Lane", "Road", "Street", "Way", "Row", "Avenue")

# type, kind, slots, occupations, hours
BUSINESSES = (
    ("Bakery", "work", 2, ("baker", "shop assistant"), "05:00-13:00"),
    ("Grocery", "work", 2, ("grocer", "cashier"), "08:00-18:00"),
    ("Clinic", "work", 2, ("nurse", "doctor", "receptionist"), "08:00-17:00"),
    ("Workshop", "work", 2, ("carpenter", "joiner"), "07:30-16:00"),
    ("Office", "work", 2, ("accountant", "designer", "programmer", "clerk"), "09:00-17:30"),
    ("Garage", "work", 2, ("mechanic",), "08:00-17:00"),
    ("Pharmacy", "work", 2, ("pharmacist", "assistant"), "08:30-18:00"),
    ("Bookshop", "work", 2, ("bookseller",), "10:00-18:00"),
    ("Post Office", "work", 2, ("postal worker",), "07:00-15:00"),
    ("Factory", "work", 4, ("machinist", "technician", "foreman"), "06:00-14:00"),
)
VENUES = (
    ("Café", "venue", 2, ("barista",), "07:00-15:00"),
    ("Pub", "venue", 2, ("bartender", "cook"), "16:00-23:30"),
    ("Restaurant", "venue", 2, ("chef", "waiter"), "11:00-21:30"),
    ("Library", "venue", 2, ("librarian",), "09:00-18:00"),
    ("Gym", "venue", 2, ("trainer",), "06:00-14:00"),
)
SCHOOL = ("School", "work", 8, ("teacher",), "08:00-16:00")
STUDENT_HOURS = "08:15-15:00"
ROW_SLOTS = 8  # a block row holds 8 home-sized lots
LOT_W, LOT_D = 6, 7  # a home lot: 6 wide, 7 deep, walls included
STREET = 2


@dataclass
class _Lot:
    kind: str  # home, work, venue, outdoor
    slots: int
    type: str = ""
    name: str = ""
    x: int = 0
    y: int = 0
    top: bool = True  # faces the street above (door in the top wall)
    staff: list[int] | None = None
    occupations: tuple[str, ...] = ()
    hours: str = ""
    row_index: int = 0
    slot_index: int = 0


@dataclass
class _Town:
    """The town as planned: its people, their households, the lots, and who works where."""

    people: list[dict[str, Any]]
    households: list[list[int]]
    students: list[int]
    homes: list[_Lot]  # one per household, in household order
    venues: list[_Lot]
    parks: list[_Lot]
    schools: list[_Lot]
    businesses: list[_Lot]  # those with staff
    employers: list[_Lot]  # venues, schools and every business opened, staffed or not
    all_lots: list[_Lot]
    school_for: dict[int, _Lot] = field(default_factory=dict)  # student -> nearest school


def generate_scenario(residents: int, seed: int = 0) -> dict[str, Any]:
    """A valid scenario (plain data, ready for YAML) for a town of ``residents`` people.

    Households of 1-5 (couples, children, housemates), one home each; enough workplaces for the
    working adults, schools for the children, venues and parks scaled to the population; laid out
    as blocks of lots along 2-tile streets. Relationships: household members, coworkers (everyone in
    a small workplace, a handful in a large one), neighbours next door, and a couple of friends
    across town. Two facts to diffuse (a council candidacy, a party) and the party to attend.
    """
    if residents < 1:
        raise ValueError("a town needs at least one resident")
    rng = np.random.default_rng(seed)
    people, households = _households(residents, rng)
    town = _plan_lots(residents, people, households, rng)
    tiles, width, height = _lay_out(town, rng)
    places = [_place(lot) for lot in town.all_lots]
    out_people = _residents(town, rng)
    _relationships(town, out_people, rng)
    information, events, interviews = _story(town, out_people, rng)
    speed = max(8, (width + height) // 12)
    return {
        "name": f"Generated town of {residents:,} (seed {seed})",
        "description": "Generated by `simulacra scenario generate`: households, workplaces, venues and parks.",
        "simulation": {
            "start": "2025-03-03 07:00",  # a Monday
            "minutes_per_step": 10,
            "duration": "2d",
            "seed": int(seed),
            "vision_radius": 4,
            "attention_bandwidth": 5,
            "walk_speed": int(speed),
        },
        "model": {"temperature": 0.7, "top_p": 0.95, "max_tokens": 256},
        "information": information,
        "events": events,
        "measurement": {
            "interviews": interviews,
            "relationship_question": "Do you know {name}?",
            "attendance": ["party"],
        },
        "map": {"outdoors": "the street", "tiles": "\n".join(tiles), "spawn": [], "places": places},
        "residents": out_people,
    }


def _households(residents: int, rng: np.random.Generator) -> tuple[list[dict[str, Any]], list[list[int]]]:
    """People (name, age, role) in households of 1-5: singles, housemates, couples and their children."""
    people: list[dict[str, Any]] = []
    households: list[list[int]] = []
    used_names: set[str] = set()

    def unique_name(first: str, last: str) -> str:
        name = f"{first} {last}"
        k = 0
        while name in used_names:
            k += 1
            first2 = FIRST_NAMES[int(rng.integers(len(FIRST_NAMES)))]
            name = f"{first2} {last}" if k < 5 else f"{first2} {chr(65 + k % 26)}. {last}"
        used_names.add(name)
        return name

    def new_person(last: str, age: int, role: str) -> int:
        first = FIRST_NAMES[int(rng.integers(len(FIRST_NAMES)))]
        people.append({"name": unique_name(first, last), "age": int(age), "role": role})
        return len(people) - 1

    while len(people) < residents:
        size = int(rng.choice([1, 2, 3, 4, 5], p=[0.28, 0.34, 0.16, 0.14, 0.08]))
        size = min(size, residents - len(people))
        last = SURNAMES[int(rng.integers(len(SURNAMES)))]
        members: list[int] = []
        if size == 1:
            members.append(new_person(last, rng.integers(19, 88), "single"))
        else:
            style = rng.random()
            if style < 0.15 or size == 2 and style < 0.3:
                for _ in range(size):  # housemates, each with their own surname
                    other = SURNAMES[int(rng.integers(len(SURNAMES)))]
                    members.append(new_person(other, rng.integers(19, 40), "housemate"))
            else:
                a = int(rng.integers(24, 80))
                members.append(new_person(last, a, "partner"))
                members.append(new_person(last, max(19, a + int(rng.integers(-6, 7))), "partner"))
                for _ in range(size - 2):
                    child_age = int(rng.integers(0, max(1, min(18, a - 19))))
                    members.append(new_person(last, child_age, "child"))
        households.append(members)
    return people, households


def _plan_lots(
    residents: int, people: list[dict[str, Any]], households: list[list[int]], rng: np.random.Generator
) -> _Town:
    """A home per household, venues, parks and schools scaled to the town, and businesses until everyone works."""
    # occupations: children at school, most working-age adults at work
    students = [i for i, p in enumerate(people) if 5 <= p["age"] < 18]
    workers = [i for i, p in enumerate(people) if 18 <= p["age"] < 67 and rng.random() < 0.88]
    homes: list[_Lot] = [_Lot("home", 1) for _ in households]
    n_venues = max(len(VENUES), residents // 120)
    venues = []
    for k in range(n_venues):
        t = VENUES[k % len(VENUES)]
        venues.append(_Lot(t[1], t[2], t[0], occupations=t[3], hours=t[4]))
    parks = [_Lot("outdoor", 2, "Park") for _ in range(max(1, residents // 400))]
    schools = [
        _Lot("work", SCHOOL[2], SCHOOL[0], occupations=SCHOOL[3], hours=SCHOOL[4])
        for _ in range(math.ceil(len(students) / 200))
    ]
    # expected staff per employer: it weights where workers are hired, and new businesses open until
    # the expected jobs cover everyone who works
    expected = [3.0] * len(venues) + [10.0] * len(schools)
    businesses: list[_Lot] = []
    while sum(expected) < len(workers):
        t = BUSINESSES[int(rng.integers(len(BUSINESSES)))]
        businesses.append(_Lot(t[1], t[2], t[0], occupations=t[3], hours=t[4]))
        expected.append(float(rng.integers(15, 41)) if t[2] >= 4 else float(rng.integers(3, 13)))
    employers = venues + schools + businesses
    for lot in employers:
        lot.staff = []
    weights = np.array(expected) / sum(expected)
    for w, e in zip(workers, rng.choice(len(employers), size=len(workers), p=weights), strict=True):
        employers[int(e)].staff.append(w)
    businesses = [b for b in businesses if b.staff]  # an employer nobody works at does not exist
    for k, lot in enumerate(homes):
        lot.staff = households[k]
    all_lots = homes + venues + parks + schools + businesses
    return _Town(people, households, students, homes, venues, parks, schools, businesses, employers, all_lots)


def _pack_rows(lots: list[_Lot], order: np.ndarray) -> list[list[_Lot]]:
    """Lots in ``order`` packed into block rows of ``ROW_SLOTS`` slots."""
    rows: list[list[_Lot]] = []
    current: list[_Lot] = []
    used = 0
    for k in order:
        lot = lots[int(k)]
        if used + lot.slots > ROW_SLOTS:
            rows.append(current)
            current, used = [], 0
        current.append(lot)
        used += lot.slots
    if current:
        rows.append(current)
    return rows


def _lay_out(town: _Town, rng: np.random.Generator) -> tuple[list[str], int, int]:
    """Place and name every lot: rows of lots, pairs of rows a block (top row faces north), streets between.

    Sets each lot's position and name; returns the grid's rows, its width and its height.
    """
    rows = _pack_rows(town.all_lots, rng.permutation(len(town.all_lots)))
    n_blocks = math.ceil(len(rows) / 2)
    block_w, block_h = ROW_SLOTS * LOT_W + STREET, 2 * LOT_D + STREET
    bx_count = max(1, round(math.sqrt(n_blocks * block_h / block_w)))
    by_count = math.ceil(n_blocks / bx_count)
    width, height = STREET + bx_count * block_w, STREET + by_count * block_h
    grid = np.full((height, width), ord("."), np.uint32)
    h_streets = [
        f"{STREET_WORDS[k % len(STREET_WORDS)]} {STREET_SUFFIXES[(k // len(STREET_WORDS)) % len(STREET_SUFFIXES)]}"
        for k in range(by_count + 1)
    ]
    numbers: Counter[str] = Counter()
    names_used: set[str] = set()

    def unique(name: str) -> str:
        base, k = name, 1
        while name in names_used:
            k += 1
            name = f"{base} {k}"
        names_used.add(name)
        return name

    for r, row in enumerate(rows):
        block = r // 2
        bx, by = block % bx_count, block // bx_count
        top = r % 2 == 0
        x = STREET + bx * block_w
        y = STREET + by * block_h + (0 if top else LOT_D)
        street = h_streets[by] if top else h_streets[by + 1]
        for slot, lot in enumerate(row):
            w = lot.slots * LOT_W
            lot.x, lot.y, lot.top, lot.row_index, lot.slot_index = x, y, top, r, slot
            if lot.kind == "outdoor":
                grid[y : y + LOT_D, x : x + w] = ord(",")
                lot.name = unique(f"{STREET_WORDS[int(rng.integers(len(STREET_WORDS)))]} Park")
            else:
                grid[y : y + LOT_D, x : x + w] = ord("#")
                grid[y + 1 : y + LOT_D - 1, x + 1 : x + w - 1] = ord("_")
                grid[y if top else y + LOT_D - 1, x + w // 2] = ord("+")
                numbers[street] += 1
                number = 2 * numbers[street] - (1 if top else 0)
                if lot.kind == "home":
                    lot.name = unique(f"{number} {street}")
                else:
                    owner = SURNAMES[int(rng.integers(len(SURNAMES)))]
                    lot.name = unique(f"{owner} {lot.type}" if lot.type not in ("School",) else f"{street} School")
            x += w
    grid[0, 0] = ord("*")
    grid[height - 1, width - 1] = ord("*")
    return ["".join(map(chr, row)) for row in grid], width, height


def _objects(lot: _Lot) -> list[dict[str, Any]]:
    """A home's bed and stove, a park's bench, a workplace's counter (or its own thing)."""
    w = lot.slots * LOT_W
    far = lot.y + LOT_D - 2 if lot.top else lot.y + 1  # the interior row away from the door
    if lot.kind == "home":
        return [
            {"name": "bed", "at": [lot.x + 1, far], "state": "made", "states": ["made", "unmade", "in use"]},
            {"name": "stove", "at": [lot.x + w - 2, far], "state": "off", "states": ["off", "on"]},
        ]
    if lot.kind == "outdoor":
        return [{"name": "bench", "at": [lot.x + 1, lot.y + 1], "state": "free", "states": ["free", "in use"]}]
    thing = {"Café": "coffee machine", "Pub": "bar tap", "Library": "reading desk", "School": "blackboard"}
    return [{"name": thing.get(lot.type, "counter"), "at": [lot.x + 1, far], "state": "idle"}]


def _place(lot: _Lot) -> dict[str, Any]:
    """The map.places entry of a laid-out lot (an outdoor lot is all floor, a building its inside)."""
    w = lot.slots * LOT_W
    rect = [lot.x, lot.y, w, LOT_D] if lot.kind == "outdoor" else [lot.x + 1, lot.y + 1, w - 2, LOT_D - 2]
    return {"name": lot.name, "kind": lot.kind, "rects": [rect], "objects": _objects(lot)}


@dataclass
class _Whereabouts:
    """Where each person lives and works or studies, and the places to go out to."""

    home_of: dict[int, _Lot]
    work_of: dict[int, _Lot]
    school_for: dict[int, _Lot]
    outings: list[_Lot]
    out_xy: np.ndarray


def _residents(town: _Town, rng: np.random.Generator) -> list[dict[str, Any]]:
    """Every resident's scenario entry; fills ``town.school_for`` (each student's nearest school)."""
    home_of: dict[int, _Lot] = {}
    work_of: dict[int, _Lot] = {}
    for lot in town.homes:
        for i in lot.staff or []:
            home_of[i] = lot
    for lot in town.schools + town.businesses + town.venues:
        for i in lot.staff or []:
            work_of[i] = lot
    if town.schools:
        sc = np.array([[s.x, s.y] for s in town.schools])
        for i in town.students:
            h = home_of[i]
            town.school_for[i] = town.schools[int(np.argmin(np.abs(sc - [h.x, h.y]).sum(axis=1)))]
    outings = town.venues + town.parks
    where = _Whereabouts(home_of, work_of, town.school_for, outings, np.array([[v.x, v.y] for v in outings]))
    return [_resident(i, p, town, where, rng) for i, p in enumerate(town.people)]


def _center(lot: _Lot) -> tuple[int, int]:
    return lot.x + lot.slots * LOT_W // 2, lot.y + LOT_D // 2


def _resident(i: int, p: dict[str, Any], town: _Town, where: _Whereabouts, rng: np.random.Generator) -> dict[str, Any]:
    """One resident: traits, occupation, routine (work or school hours, wake, sleep, outings), memories."""
    age = p["age"]
    h = where.home_of[i]
    wake = int(rng.integers(22, 33)) * 15  # 05:30-08:00
    sleep = int(rng.integers(86, 97)) * 15 % (24 * 60)  # 21:30-00:00
    entry: dict[str, Any] = {"name": p["name"], "age": age}
    entry["traits"] = [str(t) for t in rng.choice(TRAITS, size=3, replace=False)]
    routine: dict[str, Any] = {}
    workplace = None
    if i in where.work_of:
        lot = where.work_of[i]
        workplace = lot.name
        entry["occupation"] = str(lot.occupations[int(rng.integers(len(lot.occupations)))])
        routine["work"], wake, sleep = _shift(lot, wake, sleep, rng)
    elif i in where.school_for:
        workplace = where.school_for[i].name
        entry["occupation"] = "student"
        routine["work"] = STUDENT_HOURS
        sleep = int(rng.integers(80, 86)) * 15
    else:
        entry["occupation"] = "retired" if age >= 67 else ("toddler" if age < 5 else "between jobs")
    if age < 5:
        wake, sleep = 7 * 60, 19 * 60 + 30
    entry["lifestyle"] = f"wakes around {format_minutes(wake)} and goes to bed around {format_minutes(sleep)}" + (
        f"; {routine['work']} at {workplace}" if workplace else ""
    )
    entry["home"] = h.name
    if workplace:
        entry["workplace"] = workplace
    routine["wake"] = format_minutes(wake)
    routine["sleep"] = format_minutes(sleep)
    if age >= 12:
        hx, hy = _center(h)
        near = np.argsort(np.abs(where.out_xy - [hx, hy]).sum(axis=1), kind="stable")[:3]
        routine["leisure"] = [where.outings[int(k)].name for k in near]
        routine["outing_chance"] = round(float(rng.uniform(0.15, 0.5)), 2)
    entry["routine"] = routine
    mem = [
        f"I live at {h.name}"
        + (f" with {_list_names([town.people[j]['name'] for j in h.staff if j != i])}" if len(h.staff) > 1 else "")
        + "."
    ]
    if workplace:
        mem.append(
            f"I go to school at {workplace}."
            if entry["occupation"] == "student"
            else f"I work as a {entry['occupation']} at {workplace}."
        )
    entry["memories"] = mem
    return entry


def _shift(lot: _Lot, wake: int, sleep: int, rng: np.random.Generator) -> tuple[str, int, int]:
    """A worker's hours (the workplace's, shifted by up to half an hour) and the wake and sleep they imply."""
    start, end = parse_hours(lot.hours)
    shift = int(rng.integers(-2, 3)) * 15  # people arrive and leave within half an hour of each other
    start, end = max(0, start + shift), min(24 * 60 - 1, end + shift)
    work = f"{format_minutes(start)}-{format_minutes(end)}"
    if end > 22 * 60 or start < 6 * 60:
        wake = min(wake, start - 60) if start < 6 * 60 else max(wake, 9 * 60)
        sleep = (end + 60) % (24 * 60) if end > 22 * 60 else min(sleep, 21 * 60 + 30)
    return work, wake, sleep


class _Ties:
    """Relationships being built: per person, the other's name -> (note, strength); the strongest tie wins."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self.rel: list[dict[str, tuple[str, float]]] = [{} for _ in names]

    def relate(self, a: int, b: int, note_ab: str, note_ba: str, strength: float) -> None:
        ra, rb = self.rel[a], self.rel[b]
        na, nb = self.names[a], self.names[b]
        if nb not in ra or ra[nb][1] < strength:
            ra[nb] = (note_ab, strength)
        if na not in rb or rb[na][1] < strength:
            rb[na] = (note_ba, strength)


def _relationships(town: _Town, out_people: list[dict[str, Any]], rng: np.random.Generator) -> None:
    """Each entry's ``relationships``: household, coworkers and classmates, neighbours, friends; strongest first."""
    ties = _Ties([entry["name"] for entry in out_people])
    _household_ties(town, ties)
    _work_ties(town, ties, rng)
    _neighbour_ties(town, ties, rng)
    _friend_ties(town, ties, rng)
    for entry, rel in zip(out_people, ties.rel, strict=True):
        if rel:
            entry["relationships"] = [
                {"name": n, "note": note, "strength": s}
                for n, (note, s) in sorted(rel.items(), key=lambda kv: -kv[1][1])
            ]


def _household_ties(town: _Town, ties: _Ties) -> None:
    people = town.people
    for members in town.households:
        for x in members:
            for y in members:
                if x < y:
                    rx, ry = people[x]["role"], people[y]["role"]
                    if rx == "partner" and ry == "partner":
                        ties.relate(x, y, "partner", "partner", 0.9)
                    elif rx == "partner" and ry == "child":
                        ties.relate(x, y, "child", "parent", 0.9)
                    elif rx == "child" and ry == "child":
                        ties.relate(x, y, "sibling", "sibling", 0.8)
                    else:
                        ties.relate(x, y, "housemate", "housemate", 0.6)


def _work_ties(town: _Town, ties: _Ties, rng: np.random.Generator) -> None:
    """Everyone in a small workplace or school knows everyone; in a large one, about five others each."""
    for lot in town.employers + town.schools:  # schools are employers too: their ties are drawn twice
        staff = list(lot.staff or [])
        if lot.type == "School":
            staff += [i for i in town.students if town.school_for.get(i) is lot]
        if len(staff) < 2:
            continue
        if len(staff) <= 10:
            pairs = [(a, b) for k, a in enumerate(staff) for b in staff[k + 1 :]]
        else:
            pairs = []
            for a in staff:
                for b in rng.choice(staff, size=5, replace=False):
                    if a != int(b):
                        pairs.append((a, int(b)))
        for a, b in pairs:
            note = "classmate" if lot.type == "School" and a in town.school_for and b in town.school_for else "coworker"
            ties.relate(a, b, note, note, 0.45)


def _neighbour_ties(town: _Town, ties: _Ties, rng: np.random.Generator) -> None:
    """Adults in homes next to each other in a row know each other half the time."""
    people = town.people
    by_row: dict[int, list[_Lot]] = {}
    for lot in town.homes:
        by_row.setdefault(lot.row_index, []).append(lot)
    for row_lots in by_row.values():
        row_lots.sort(key=lambda lot: lot.slot_index)
        for left, right in zip(row_lots, row_lots[1:], strict=False):
            if right.slot_index - left.slot_index > 1:
                continue
            for a in left.staff:
                for b in right.staff:
                    if people[a]["age"] >= 18 and people[b]["age"] >= 18 and rng.random() < 0.5:
                        ties.relate(a, b, "neighbour", "neighbour", 0.3)


def _friend_ties(town: _Town, ties: _Ties, rng: np.random.Generator) -> None:
    """Up to two friends anywhere in town for everyone 16 or older."""
    adults = [i for i, p in enumerate(town.people) if p["age"] >= 16]
    if len(adults) > 2:
        for a in adults:
            for _ in range(int(rng.integers(0, 3))):
                b = adults[int(rng.integers(len(adults)))]
                if b != a:
                    ties.relate(a, b, "friend", "friend", 0.6)


def _story(
    town: _Town, out_people: list[dict[str, Any]], rng: np.random.Generator
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """The seeded information (a council candidacy, a party), the party as an event, and the interviews."""
    people = town.people
    adult_ids = [i for i, p in enumerate(people) if p["age"] >= 25] or list(range(len(people)))
    candidate = out_people[adult_ids[int(rng.integers(len(adult_ids)))]]["name"]
    host = out_people[adult_ids[int(rng.integers(len(adult_ids)))]]["name"]
    cafe = next(v.name for v in town.venues if v.type == "Café")
    information = [
        {
            "id": "candidacy",
            "holder": candidate,
            "fact": f"{candidate} is running for town council",
            "memory": "I have decided to run for town council; the vote is next month.",
            "keywords": ["council", "running", "election"],
        },
        {
            "id": "party",
            "holder": host,
            "fact": f"{host} is hosting a party at {cafe} on Monday from 5 to 7 pm",
            "memory": f"I am hosting a party at {cafe} on Monday from 5 to 7 pm and want to invite people.",
            "keywords": ["party", cafe],
        },
    ]
    events = [
        {
            "id": "party",
            "title": f"{host}'s party",
            "host": host,
            "place": cafe,
            "start": "2025-03-03 17:00",
            "end": "2025-03-03 19:00",
            "information": "party",
        }
    ]
    interviews = [
        {"fact": "candidacy", "questions": ["Do you know who is running for town council?"], "expected": candidate},
        {
            "fact": "party",
            "questions": [f"Do you know about a party at {cafe}?", "Who is hosting it, and when?"],
            "expected": host,
        },
    ]
    return information, events, interviews


def _list_names(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


class _Dumper(getattr(yaml, "CSafeDumper", yaml.SafeDumper)):  # type: ignore[misc]
    pass


def _str_presenter(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    if "\n" in data:
        return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="|")
    return dumper.represent_scalar("tag:yaml.org,2002:str", data)


_Dumper.add_representer(str, _str_presenter)


def dump_scenario(data: dict[str, Any], path: str | Path | None = None) -> str:
    """YAML text for scenario data (grid as a literal block, short lists inline); written to ``path`` if given."""
    text = yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=120, default_flow_style=None)
    if path is not None:
        Path(path).write_text(text, encoding="utf-8")
    return text
